"""The inference precision is a fact of the snapshot: saved resolved, and used by whatever machine loads it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from lmindexer.indexers import create_indexer, load_snapshot
from lmindexer.indexers.base import SNAPSHOT_FILE

TINY = {"levels": 3, "codebook_size": 8}


def read_document(directory: Path) -> dict:
    return json.loads((directory / SNAPSHOT_FILE).read_text())


def write_document(directory: Path, document: dict) -> None:
    (directory / SNAPSHOT_FILE).write_text(json.dumps(document, indent=2, sort_keys=True) + "\n")


@pytest.fixture(scope="module")
def items(wiki_items):
    return wiki_items[:160]


def test_auto_is_saved_resolved_and_a_machine_without_bf16_still_assigns_in_it(items, tmp_path, cpu_bf16):
    cpu_bf16(True)
    fitted = create_indexer("rq-kmeans", {**TINY, "inference_precision": "auto"})
    assert fitted.config.inference_precision == "bf16"
    fitted.fit(items, progress=False)
    fitted.save(tmp_path / "snap")
    assert read_document(tmp_path / "snap")["config"]["inference_precision"] == "bf16"

    cpu_bf16(False)
    loaded = load_snapshot(tmp_path / "snap")
    assert loaded.config.inference_precision == "bf16"
    assert loaded.encoder.precision == "bf16"
    np.testing.assert_array_equal(loaded.codes(items), fitted.codes(items))


def test_a_snapshot_written_before_the_precision_option_assigns_in_fp32(
    items, tmp_path, cpu_bf16, as_written_before_digests
):
    cpu_bf16(True)
    fitted = create_indexer("rq-kmeans", {**TINY, "inference_precision": "fp32"})
    fitted.fit(items, progress=False)
    fitted.save(tmp_path / "snap")
    document = read_document(tmp_path / "snap")
    del document["config"]["inference_precision"]
    write_document(tmp_path / "snap", document)
    as_written_before_digests(tmp_path / "snap")

    loaded = load_snapshot(tmp_path / "snap")
    assert loaded.config.inference_precision == "fp32"
    assert loaded.encoder.precision == "fp32"
    np.testing.assert_array_equal(loaded.codes(items), fitted.codes(items))
