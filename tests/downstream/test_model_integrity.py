"""A saved generative model is verified on load: its document and every file must be what was saved."""

from __future__ import annotations

import errno
import json
import re

import pytest
from testsupport.downstream_models import TINY_GENERATIVE

from lmindexer.downstream.generative import DOCUMENT, WEIGHTS, GenerativeModel
from lmindexer.errors import SnapshotError


@pytest.fixture(scope="module")
def model(rq_ids):
    snapshot, table = rq_ids
    return GenerativeModel.create(table, snapshot, TINY_GENERATIVE)


@pytest.fixture
def saved(model, tmp_path):
    return model.save(tmp_path / "retriever")


def _document(directory):
    return json.loads((directory / DOCUMENT).read_text())


def _edit(directory, edit):
    document = _document(directory)
    edit(document)
    (directory / DOCUMENT).write_text(json.dumps(document))


def _refused(directory, message):
    with pytest.raises(SnapshotError, match=message) as caught:
        GenerativeModel.load(directory)
    assert "\n" not in str(caught.value), "a refusal is one line"


def test_a_saved_model_records_the_digest_of_every_part(saved):
    integrity = _document(saved)["integrity"]
    assert integrity["algorithm"] == "sha256" and re.fullmatch("[0-9a-f]{64}", integrity["digest"])
    assert WEIGHTS in integrity["files"] and any(name.startswith("tokenizer/") for name in integrity["files"])
    assert {"ids", "vocabulary", "backbone_config", "config.beam_size"} <= set(integrity["entries"])


def test_a_verified_model_loads_with_its_ids(model, saved):
    loaded = GenerativeModel.load(saved)
    assert dict(loaded.trie) == dict(model.trie)


def _move_an_item(document):
    item_id = next(iter(document["ids"]))
    document["ids"][item_id] = "0-0-999"


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda d: _edit(d, _move_an_item), r"ids was edited$"),
        (lambda d: _edit(d, lambda doc: doc["config"].update(beam_size=3)), r"config\.beam_size was edited$"),
        (lambda d: _edit(d, lambda doc: doc["vocabulary"].update(method="hkmeans")), r"vocabulary was edited$"),
        (lambda d: _edit(d, lambda doc: doc["backbone_config"].update(layer_norm_eps=0.1)),
         r"backbone_config was edited$"),
        (lambda d: (d / WEIGHTS).write_bytes((d / WEIGHTS).read_bytes()[:64]),
         r"file weights\.safetensors has 64 bytes, saved with \d+$"),
        (lambda d: (d / WEIGHTS).unlink(), r"file weights\.safetensors is missing$"),
        (lambda d: (d / "tokenizer" / "extra.txt").write_text("x"), r"unexpected file tokenizer/extra\.txt$"),
    ],
    ids=["ids", "config", "vocabulary", "backbone-config", "truncated-weights", "missing-weights", "extra-file"],
)  # fmt: skip
def test_a_changed_model_is_refused_naming_what_differs(saved, damage, message):
    damage(saved)
    _refused(saved, rf"generative model .*retriever does not match what was saved: {message}")


def test_a_changed_weights_file_of_the_same_size_is_refused(saved):
    data = bytearray((saved / WEIGHTS).read_bytes())
    data[-1] ^= 0x01
    (saved / WEIGHTS).write_bytes(bytes(data))
    _refused(saved, r"file weights\.safetensors changed$")


def test_a_model_saved_without_digests_is_refused(saved):
    _edit(saved, lambda document: document.pop("integrity"))
    _refused(saved, r"records no content digest .* cannot be verified; train it again")


def test_a_model_on_s3_is_verified_after_download(saved, s3_bucket):
    from lmindexer.storage.s3 import upload_file

    prefix = f"s3://{s3_bucket}/retriever/models/r1"
    files = sorted(p for p in saved.rglob("*") if p.is_file())
    for path in files:
        if path.name != WEIGHTS:  # an upload that stopped before the weights
            upload_file(path, f"{prefix}/{path.relative_to(saved).as_posix()}")
    _refused(prefix, rf"generative model {prefix} does not match what was saved: file weights\.safetensors is missing$")
    upload_file(saved / WEIGHTS, f"{prefix}/{WEIGHTS}")
    assert len(GenerativeModel.load(prefix).trie) == len(GenerativeModel.load(saved).trie)


def test_a_failed_save_keeps_the_previous_model(model, saved, monkeypatch):
    from safetensors import SafetensorError

    before = {p.relative_to(saved): p.read_bytes() for p in saved.rglob("*") if p.is_file()}

    def disk_full(_tensors, _path):
        # The text safetensors raises when the disk fills up (seen on a full tmpfs).
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr("lmindexer.integrity.save_file", disk_full)
    with pytest.raises(OSError, match="No space left on device") as caught:
        model.save(saved)
    assert caught.value.errno == errno.ENOSPC
    assert {p.relative_to(saved): p.read_bytes() for p in saved.rglob("*") if p.is_file()} == before
    assert sorted(p.name for p in saved.parent.iterdir()) == ["retriever"], "no staging directory is left behind"
