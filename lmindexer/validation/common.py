"""What the validation steps share: the run layout under a base URI, the failure type, and deterministic JSON."""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any

from lmindexer.errors import ConfigError, UserError
from lmindexer.layout import QUARANTINE_PREFIX, STAGED_PREFIX, is_s3_uri, join_uri
from lmindexer.storage.s3 import S3Location

DEFAULT_STAGED_PREFIX = STAGED_PREFIX
DEFAULT_QUARANTINE_PREFIX = QUARANTINE_PREFIX
STAGED_ITEMS = "items.parquet"
REJECTED_ROWS = "rejected.jsonl"
VALIDATION_RESULT = "validation.json"
SUMMARY = "summary.json"

# Airflow run ids ("scheduled__2024-05-01T00:00:00+00:00") fit; "/" nests one run's drops ("<run>/<drop slug>").
_RUN_SEGMENT = re.compile(r"[A-Za-z0-9._:+=@,-]+")
_MAX_RUN_ID = 512
_MAX_JSON_STRING = 500


class ValidationFailed(UserError):
    """A validation gate failed. ``summary`` holds the result (counts, failed expectations, where the evidence is)."""

    def __init__(self, message: str, summary: Any) -> None:
        super().__init__(message)
        self.summary = summary


def check_run_id(run_id: str) -> str:
    """A run id is used as a path below the staged and quarantine prefixes, so it must stay inside them."""
    if not isinstance(run_id, str) or not run_id or len(run_id) > _MAX_RUN_ID:
        raise ConfigError(f"a run id must be a non-empty string of at most {_MAX_RUN_ID} characters: {run_id!r}")
    for segment in run_id.split("/"):
        if segment in ("", ".", "..") or not _RUN_SEGMENT.fullmatch(segment):
            raise ConfigError(
                f"invalid run id {run_id!r}: use letters, digits and . _ : + = @ , - in '/'-separated segments"
            )
    return run_id


@dataclass(frozen=True)
class RunLayout:
    """Where one validation run writes, relative to the bucket root (or a local directory)."""

    base_uri: str
    run_id: str
    staged_prefix: str = DEFAULT_STAGED_PREFIX
    quarantine_prefix: str = DEFAULT_QUARANTINE_PREFIX

    def __post_init__(self) -> None:
        check_run_id(self.run_id)
        if not self.base_uri:
            raise ConfigError("a base URI (s3://bucket or a local directory) is required")
        if is_s3_uri(self.base_uri):
            S3Location.parse(self.base_uri)  # fail before the drop is read, not when the outputs are written

    @property
    def staged_dir(self) -> str:
        return join_uri(self.base_uri, self.staged_prefix, self.run_id)

    @property
    def quarantine_dir(self) -> str:
        return join_uri(self.base_uri, self.quarantine_prefix, self.run_id)

    @property
    def staged_items(self) -> str:
        return join_uri(self.staged_dir, STAGED_ITEMS)

    @property
    def rejected_rows(self) -> str:
        return join_uri(self.quarantine_dir, REJECTED_ROWS)

    @property
    def validation_result(self) -> str:
        return join_uri(self.quarantine_dir, VALIDATION_RESULT)

    @property
    def summary(self) -> str:
        return join_uri(self.quarantine_dir, SUMMARY)


def jsonable(value: Any) -> Any:
    """Plain JSON values from what pandas, NumPy and GX hand back; long strings are clipped so a pathological row
    (a megabyte-long item_id) cannot bloat a stored result. NaN becomes null: strict JSON has no NaN."""
    if value is None or isinstance(value, bool | int):
        return value.item() if hasattr(value, "item") else value
    if isinstance(value, float):
        return None if math.isnan(value) or math.isinf(value) else float(value)
    if isinstance(value, str):
        return value if len(value) <= _MAX_JSON_STRING else value[:_MAX_JSON_STRING] + "…"
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [jsonable(v) for v in value]
    if hasattr(value, "item"):  # NumPy scalars
        return jsonable(value.item())
    if hasattr(value, "tolist"):
        return jsonable(value.tolist())
    return str(value)


def dumps_line(data: Any) -> str:
    """One JSON line, readable UTF-8 where possible; text with lone surrogates (undecodable input bytes) falls back
    to ASCII escapes so the file stays valid UTF-8."""
    text = json.dumps(data, ensure_ascii=False, allow_nan=False)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = json.dumps(data, ensure_ascii=True, allow_nan=False)
    return text


def dumps_document(data: Any) -> bytes:
    text = json.dumps(data, indent=2, ensure_ascii=False, allow_nan=False)
    try:
        return (text + "\n").encode("utf-8")
    except UnicodeEncodeError:
        return (json.dumps(data, indent=2, ensure_ascii=True, allow_nan=False) + "\n").encode("ascii")
