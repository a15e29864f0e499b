"""Small JSON records the pipeline keeps next to its data: per-run step results and the current-version pointer.

Every step stores its result under ``state/runs/<run>/<step>.json`` and returns the stored result when it runs again,
so retrying a task or rerunning a whole run repeats no work and gives the same answer. ``state/current.json`` points
at the live snapshot, ID table and catalogue; it is written last, once a run has published, so a run that fails
anywhere leaves the previous version in charge.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from lmindexer.pipeline.config import PipelineConfig
from lmindexer.storage.s3 import StorageError, exists, open_binary, write_bytes

CURRENT = "current.json"


def read_json(uri: str) -> dict[str, Any] | None:
    """The JSON object at ``uri``, or None when there is none."""
    if not exists(uri):
        return None
    with open_binary(uri) as stream:
        data = stream.read()
    try:
        value = json.loads(data)
    except json.JSONDecodeError as exc:
        raise StorageError(f"{uri} is not valid JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise StorageError(f"{uri} does not hold a JSON object")
    return value


def write_json(uri: str, value: dict[str, Any]) -> None:
    write_bytes((json.dumps(value, indent=2, sort_keys=True, default=str) + "\n").encode(), uri)


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


def current(config: PipelineConfig) -> dict[str, Any] | None:
    return read_json(config.uri(config.state_prefix, CURRENT))


def set_current(config: PipelineConfig, value: dict[str, Any]) -> None:
    write_json(config.uri(config.state_prefix, CURRENT), value)
