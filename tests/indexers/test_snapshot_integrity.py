"""A snapshot is verified on load: its config, metadata, manifest and every file must be what was saved."""

from __future__ import annotations

import errno
import json
import re
import shutil

import numpy as np
import pytest

from lmindexer.errors import SnapshotError
from lmindexer.indexers import load_snapshot
from lmindexer.indexers.base import SNAPSHOT_FILE, WEIGHTS_FILE


def _document(directory):
    return json.loads((directory / SNAPSHOT_FILE).read_text())


def _write(directory, document):
    (directory / SNAPSHOT_FILE).write_text(json.dumps(document, indent=2, sort_keys=True) + "\n")


def _refused(directory, message):
    with pytest.raises(SnapshotError, match=message) as caught:
        load_snapshot(directory)
    assert "\n" not in str(caught.value), "a refusal is one line"
    return str(caught.value)


@pytest.fixture
def snapshot(fitted, tmp_path):
    directory = tmp_path / "snap"
    fitted["rq-kmeans"].save(directory)
    return directory


def test_a_snapshot_records_its_content_digest_and_its_version_ends_in_it(snapshot):
    document = _document(snapshot)
    integrity = document["integrity"]
    assert integrity["algorithm"] == "sha256" and re.fullmatch("[0-9a-f]{64}", integrity["digest"])
    assert document["version"].endswith("-" + integrity["digest"][:8])
    assert set(integrity["files"]) == {WEIGHTS_FILE}
    assert integrity["files"][WEIGHTS_FILE]["bytes"] == (snapshot / WEIGHTS_FILE).stat().st_size
    assert {"config.text_template", "metadata.encoder_fingerprint", "manifest", "method"} <= set(integrity["entries"])


def test_an_edited_text_template_is_refused_naming_the_key(snapshot, wiki_items):
    document = _document(snapshot)
    document["config"]["text_template"] = "{text}"
    _write(snapshot, document)
    _refused(snapshot, r"snapshot .*snap does not match what was saved: config\.text_template was edited$")


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d["config"].update(levels=2, codebook_size=[8, 8]), r"config\.codebook_size was edited; "),
        (lambda d: d["config"].pop("seed"), r"config\.seed was removed from snapshot\.json"),
        (lambda d: d["config"].update(extra=1), r"config\.extra was added to snapshot\.json"),
        (lambda d: d["metadata"].update(encoder_fingerprint="0" * 16), r"metadata\.encoder_fingerprint was edited"),
        (lambda d: d["manifest"].update(items=1), r"manifest was edited"),
        (lambda d: d.update(method="hkmeans"), r"method was edited"),
        (lambda d: d.update(weights="other.safetensors"), r"weights was edited"),
    ],
    ids=["codebook-size", "removed-key", "added-key", "metadata", "manifest", "method", "weights-name"],
)
def test_an_edited_snapshot_document_is_refused(snapshot, edit, message):
    document = _document(snapshot)
    edit(document)
    _write(snapshot, document)
    _refused(snapshot, message)


def test_an_edited_version_is_refused(snapshot):
    document = _document(snapshot)
    document["version"] = document["version"][:-8] + "00000000"
    _write(snapshot, document)
    _refused(snapshot, r"its version .* does not end in its content digest")


def _flip_a_byte(path):
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (_flip_a_byte, r"file weights\.safetensors changed$"),
        (lambda p: p.write_bytes(p.read_bytes()[:100]), r"file weights\.safetensors has 100 bytes, saved with \d+$"),
        (lambda p: p.unlink(), r"file weights\.safetensors is missing$"),
        (lambda p: shutil.copy(p, p.with_name("weights-2.safetensors")), r"unexpected file weights-2\.safetensors$"),
        (lambda p: (p.parent / "notes" / "x.txt").parent.mkdir() or (p.parent / "notes" / "x.txt").write_text("x"),
         r"unexpected file notes/x\.txt$"),
    ],
    ids=["changed", "truncated", "missing", "extra-weights", "extra-asset"],
)  # fmt: skip
def test_damaged_or_extra_files_are_refused(snapshot, damage, message):
    damage(snapshot / WEIGHTS_FILE)
    _refused(snapshot, message)


def test_an_edited_integrity_record_is_refused(snapshot):
    document = _document(snapshot)
    document["integrity"]["digest"] = "0" * 64
    _write(snapshot, document)
    _refused(snapshot, "its recorded content digest does not match its parts")
    document["integrity"] = {"algorithm": "sha256"}
    _write(snapshot, document)
    _refused(snapshot, "malformed 'integrity' record")


def test_a_snapshot_from_another_encoder_is_still_refused(snapshot, monkeypatch):
    from lmindexer.embeddings import _load_frozen_encoder

    # The digests hold, but the encoder available here is not the one the snapshot was fitted with. Encoders are
    # loaded once per process, so the one loaded here (with the other fingerprint) must not outlive the test.
    monkeypatch.setattr("lmindexer.embeddings._weights_fingerprint", lambda _path: "f" * 16)
    _load_frozen_encoder.cache_clear()
    try:
        _refused(snapshot, "would not reproduce")
    finally:
        _load_frozen_encoder.cache_clear()


def test_a_snapshot_written_before_digests_is_verified_by_its_version(
    snapshot, fitted, wiki_items, as_written_before_digests
):
    document = as_written_before_digests(snapshot)
    loaded = load_snapshot(snapshot)
    assert loaded.version == document["version"]
    np.testing.assert_array_equal(loaded.codes(wiki_items), fitted["rq-kmeans"].codes(wiki_items))


@pytest.mark.parametrize(
    "damage",
    [
        lambda d: _write(d, {**_document(d), "config": {**_document(d)["config"], "text_template": "{text}"}}),
        lambda d: (d / WEIGHTS_FILE).write_bytes((d / WEIGHTS_FILE).read_bytes()[:100]),
        lambda d: (d / "extra.bin").write_bytes(b"x"),
        lambda d: (d / WEIGHTS_FILE).unlink(),
    ],
    ids=["edited-config", "truncated-weights", "extra-file", "missing-weights"],
)
def test_a_changed_snapshot_written_before_digests_is_refused(snapshot, as_written_before_digests, damage):
    as_written_before_digests(snapshot)
    damage(snapshot)
    _refused(snapshot, r"does not match the content hash in its version \([0-9a-f]{8}, its files and config now")


def test_removing_the_digest_does_not_skip_the_check(snapshot):
    # Without its integrity record a snapshot is checked by its version, which ends in the digest, not the old hash.
    document = _document(snapshot)
    del document["integrity"]
    _write(snapshot, document)
    _refused(snapshot, "does not match the content hash in its version")


def test_a_snapshot_without_any_content_hash_is_refused(snapshot):
    document = _document(snapshot)
    del document["integrity"]
    document["version"] = "rq-kmeans-handmade"
    _write(snapshot, document)
    _refused(snapshot, "records no content digest .* so it cannot be verified")


def test_a_failed_save_keeps_the_previous_snapshot(fitted, snapshot, monkeypatch):
    from safetensors import SafetensorError

    before = {p.name: p.read_bytes() for p in snapshot.iterdir()}

    def disk_full(_tensors, _path):
        # The text safetensors raises when the disk fills up (seen on a full tmpfs).
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr("lmindexer.integrity.save_file", disk_full)
    with pytest.raises(OSError, match="No space left on device") as caught:
        fitted["rq-kmeans"].save(snapshot)
    assert caught.value.errno == errno.ENOSPC
    assert {p.name: p.read_bytes() for p in snapshot.iterdir()} == before
    assert sorted(p.name for p in snapshot.parent.iterdir()) == ["snap"], "no staging directory is left behind"


def test_a_snapshot_on_s3_is_verified_after_download(snapshot, s3_bucket):
    from lmindexer.storage.s3 import upload_file

    prefix = f"s3://{s3_bucket}/models/v1"
    upload_file(snapshot / SNAPSHOT_FILE, f"{prefix}/{SNAPSHOT_FILE}")
    missing = rf"snapshot {prefix} does not match what was saved: file weights\.safetensors is missing"
    with pytest.raises(SnapshotError, match=missing):
        load_snapshot(prefix + "/")
    upload_file(snapshot / WEIGHTS_FILE, f"{prefix}/{WEIGHTS_FILE}")
    assert load_snapshot(prefix).version == _document(snapshot)["version"]
    upload_file(snapshot / WEIGHTS_FILE, f"{prefix}/backup/{WEIGHTS_FILE}")
    with pytest.raises(SnapshotError, match=r"unexpected file backup/weights\.safetensors"):
        load_snapshot(prefix)
