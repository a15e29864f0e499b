"""Small JSON records the pipeline keeps next to its data: per-run step results and the current-version pointer,
and (:func:`processing_state`) which drops have been processed. Everything under ``state/`` is reached through here.

Every step stores its result under ``state/runs/<run>/<step>.json`` and returns the stored result when it runs again,
so retrying a task or rerunning a whole run repeats no work and gives the same answer. ``state/current.json`` points
at the live snapshot, ID table and catalogue; it is written last, once a run has published, so a run that fails
anywhere leaves the previous version in charge. It is written compare-and-swap against the version the run started
from, so two runs can never both move it (the second learns that it is stale).

Every record carries a SHA-256 checksum of its content, verified on read: a record damaged in storage (a flipped
byte, a hand edit) is an error, never a silently different decision.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from typing import Any

from lmindexer.layout import CURRENT
from lmindexer.pipeline.config import PipelineConfig
from lmindexer.storage.s3 import StorageError, exists, open_binary, write_bytes
from lmindexer.storage.state import ProcessingState
from lmindexer.storage.versioned import read_versioned, write_if_version

CHECKSUM_KEY = "_checksum"


def _canonical(value: dict[str, Any]) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str, ensure_ascii=False).encode()


def _checksum(value: dict[str, Any]) -> str:
    return "sha256:" + hashlib.sha256(_canonical(value)).hexdigest()


def encode_record(value: dict[str, Any]) -> bytes:
    """A record as stored: the object, pretty-printed, with the checksum of its content."""
    # Round-trip first, so the checksum covers exactly what a reader will parse (e.g. tuples become lists).
    plain = json.loads(_canonical(value))
    plain.pop(CHECKSUM_KEY, None)
    document = {**plain, CHECKSUM_KEY: _checksum(plain)}
    return (json.dumps(document, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode()


def decode_record(data: bytes, uri: str) -> dict[str, Any]:
    """Parse a stored record and verify its checksum (records written before checksums existed have none)."""
    try:
        value = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise StorageError(f"{uri} is not valid JSON ({exc}); the record is damaged: restore it from a backup") from exc
    if not isinstance(value, dict):
        raise StorageError(f"{uri} does not hold a JSON object; the record is damaged: restore it from a backup")
    stored = value.pop(CHECKSUM_KEY, None)
    if stored is not None and stored != _checksum(value):
        raise StorageError(
            f"{uri} does not match its checksum: the record was changed or damaged after it was written; restore "
            "it from a backup rather than editing it"
        )
    return value


def read_json(uri: str) -> dict[str, Any] | None:
    """The JSON object at ``uri``, or None when there is none."""
    if not exists(uri):
        return None
    with open_binary(uri) as stream:
        data = stream.read()
    return decode_record(data, uri)


def write_json(uri: str, value: dict[str, Any]) -> None:
    write_bytes(encode_record(value), uri)


def step_uri(config: PipelineConfig, run_id: str, step: str) -> str:
    return config.uri(config.state_prefix, "runs", run_id, f"{step}.json")


def remembered(config: PipelineConfig, run_id: str, step: str, compute: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Run ``compute`` once per (run, step); later calls return the stored result."""
    return remembered_at(step_uri(config, run_id, step), compute)


def remembered_at(uri: str, compute: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Run ``compute`` once per ``uri``; later calls return the result stored there."""
    stored = read_json(uri)
    if stored is not None:
        return stored
    result = compute()
    write_json(uri, result)
    return result


def current_uri(config: PipelineConfig) -> str:
    return config.uri(config.state_prefix, CURRENT)


def current(config: PipelineConfig) -> dict[str, Any] | None:
    return read_json(current_uri(config))


def current_versioned(config: PipelineConfig) -> tuple[dict[str, Any] | None, str | None]:
    """The live pointer and the version of ``current.json`` it was read at (``(None, None)``: nothing live yet)."""
    uri = current_uri(config)
    stored = read_versioned(uri)
    if stored.data is None:
        return None, None
    return decode_record(stored.data, uri), stored.version


def set_current(config: PipelineConfig, value: dict[str, Any], *, replacing: str | None) -> str:
    """Move the live pointer, compare-and-swap: only if ``current.json`` is still at version ``replacing``
    (``None``: only if there is none). Raises :class:`~lmindexer.storage.versioned.VersionConflict` otherwise."""
    return write_if_version(encode_record(value), current_uri(config), replacing)


def processing_state(config: PipelineConfig) -> ProcessingState:
    """Which drops have been processed (``state/processed.json``): what ``discover`` skips and ``commit`` marks."""
    return ProcessingState(config.base_uri, prefix=config.state_prefix)
