"""What each step of the reindex pipeline hands the next: frozen dataclasses, one per step, in pipeline order.

A step stores its result as JSON under ``state/runs/<run>/`` and an orchestrator passes it between tasks as the
same JSON: ``to_xcom()`` writes it, ``from_xcom()`` reads it back, checking that every field is there and naming
any it does not know. A result is only data (URIs of what the step wrote, counts, decisions); the data itself stays
in the store.

Records written by earlier releases still read: a field added since has a default, and a field that was renamed is
read under its old name too (``RENAMED``).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, Self

from lmindexer.errors import UserError
from lmindexer.storage.drops import Drop

Change = Literal["retrain", "apply"]


class ResultError(UserError):
    """A step's result (a stored record or an orchestrator's hand-over) is not the shape its step writes."""


@dataclass(frozen=True)
class StepResult:
    """Base of every step result: JSON in and out, field by field."""

    # An earlier release's key -> the field it is now, so that records stored before the rename still read.
    RENAMED: ClassVar[Mapping[str, str]] = {}

    def to_xcom(self) -> dict[str, Any]:
        return {f.name: _to_json(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @classmethod
    def from_xcom(cls, data: Mapping[str, Any] | Self) -> Self:
        if isinstance(data, cls):
            return data
        if not isinstance(data, Mapping):
            raise ResultError(f"a {cls.__name__} is a JSON object, not {type(data).__name__}")
        values = {cls.RENAMED.get(key, key): value for key, value in data.items()}
        hints = typing.get_type_hints(cls)
        known = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise ResultError(f"{cls.__name__} has no field {', '.join(map(repr, unknown))}")
        missing = [
            name
            for name, f in known.items()
            if name not in values and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        ]
        if missing:
            raise ResultError(f"{cls.__name__} lacks {', '.join(map(repr, missing))}")
        return cls(**{name: _from_json(hints[name], value) for name, value in values.items()})

    @classmethod
    def many(cls, data: Iterable[Mapping[str, Any] | Self]) -> list[Self]:
        """A list of results from their JSON (a mapped task's or a list-valued step's hand-over)."""
        return [cls.from_xcom(entry) for entry in data]


def _to_json(value: Any) -> Any:
    if isinstance(value, StepResult):
        return value.to_xcom()
    if isinstance(value, Drop):
        return value.to_dict()
    if isinstance(value, Mapping):
        return {key: _to_json(entry) for key, entry in value.items()}
    if isinstance(value, list | tuple):
        return [_to_json(entry) for entry in value]
    return value


def _from_json(hint: Any, value: Any) -> Any:
    """``value`` as the field's declared type: nested results and drops are rebuilt, other values kept as JSON."""
    if value is None:
        return None
    origin = typing.get_origin(hint)
    if origin in (types.UnionType, typing.Union):
        options = [option for option in typing.get_args(hint) if option is not type(None)]
        return _from_json(options[0], value) if len(options) == 1 else value
    if isinstance(hint, type) and issubclass(hint, StepResult):
        return hint.from_xcom(value)
    if hint is Drop:
        return value if isinstance(value, Drop) else Drop.from_dict(dict(value))
    if origin is tuple:
        return tuple(value)
    return value


def to_xcom(value: Any) -> Any:
    """JSON of a result, of a drop, or of a list or mapping of them (what a task returns, what the CLI writes)."""
    return _to_json(value)


# -- in pipeline order --------------------------------------------------------------------------------------------
# discover -> list[Drop] (lmindexer.storage.drops)


@dataclass(frozen=True)
class ValidatedDrop(StepResult):
    """One drop after validation: accepted (good rows staged, bad rows quarantined with their rule) or quarantined
    whole, with the reason. ``rows_in == staged + quarantined``."""

    drop: Drop
    accepted: bool
    source: str
    run_id: str
    rows_in: int
    staged: int
    quarantined: int
    tombstones: int
    rejections_by_rule: dict[str, int]
    success: bool
    staged_uri: str | None
    quarantine_uri: str
    summary_uri: str
    reason: str | None = None
    # The validation's details (absent for a file that could not be read as a catalogue at all).
    invalid_share: float | None = None
    threshold: float | None = None
    suite_success: bool | None = None
    drop_clean: bool | None = None
    result_uri: str | None = None
    expectations: list[dict[str, Any]] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        """The counts worth recording in the processing state."""
        return {"rows_in": self.rows_in, "staged": self.staged, "quarantined": self.quarantined,
                "tombstones": self.tombstones}  # fmt: skip


@dataclass(frozen=True)
class Merged(StepResult):
    """The run's catalogue version (the live one with the accepted drops applied) and what changed."""

    catalog_uri: str
    delta_uri: str
    items: int
    previous_items: int
    base_run_id: str | None  # the run whose commit this version was merged onto (None: nothing was live)
    base_version: str | None  # the version of state/current.json merged onto
    new: int
    changed: int
    deleted: int
    unchanged: int = 0
    deletes_of_unknown_items: int = 0
    upserts_uri: str | None = None  # the rows of new and changed items (runs before it existed: None)


@dataclass(frozen=True)
class Decision(StepResult):
    """Apply the live snapshot to the new items, or retrain, and why."""

    mode: Change
    reason: str
    added_share: float | None = None


@dataclass(frozen=True)
class Snapshot(StepResult):
    """The snapshot the run's IDs come from: newly trained, or the live one."""

    RENAMED: ClassVar[Mapping[str, str]] = {"version": "snapshot_version"}

    trained: bool
    snapshot_uri: str
    snapshot_version: str


@dataclass(frozen=True)
class Shard(StepResult):
    """Rows ``start:end`` of the run's items to assign, one of ``shards``; ``todo_uri`` holds exactly those rows."""

    shard: int
    start: int
    end: int
    todo_uri: str
    shards: int


@dataclass(frozen=True)
class ShardCodes(StepResult):
    """A shard's learned codes (no suffixes yet), written to ``codes_uri``."""

    shard: int
    codes_uri: str
    items: int


@dataclass(frozen=True)
class Reduced(StepResult):
    """The ID table after allocating the run's new items: rows before and after, and how many writes it took."""

    ids_uri: str
    rows_before: int
    rows_after: int
    newly_assigned: int
    write_attempts: int


@dataclass(frozen=True)
class IdQuality(StepResult):
    """Quality of the live items' IDs: label agreement per level (with a label configured), collisions, use."""

    items: int
    level1_ami: float | None
    ami: list[float]
    collision_rate: float
    largest_bucket: int
    utilisation: list[float]


@dataclass(frozen=True)
class Checked(StepResult):
    """The ID table passed the ID checks and the quality gates (a failure raises instead)."""

    passed: bool
    metrics: IdQuality
    stability: dict[str, Any] | None
    id_rows_checked: int | None = None


@dataclass(frozen=True)
class Published(StepResult):
    """What reached the search engine: a new index loaded and verified beside the live one (``full``; ``swap_alias``
    makes it live), or upserts and deletes through the alias (``incremental``)."""

    mode: Literal["full", "incremental"]
    index: str | None
    refused: int
    quarantine_uri: str | None
    attempted: int = 0
    indexed: int = 0
    deleted: int = 0
    # The publisher's own account (bulk counts, verification, errors kept up to 50), as it reported it.
    details: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_xcom(cls, data: Mapping[str, Any] | Self) -> Self:
        if isinstance(data, cls):
            return data
        # Records before this type kept the publisher's account at the top level: read it into ``details``.
        own = {f.name for f in dataclasses.fields(cls)}
        if isinstance(data, Mapping) and not set(data) <= own:
            data = {k: v for k, v in data.items() if k in own} | {
                "details": {**dict(data.get("details") or {}), **{k: v for k, v in data.items() if k not in own}}
            }
        return super().from_xcom(data)


@dataclass(frozen=True)
class Swapped(StepResult):
    """The alias after ``swap_alias``: moved to the run's new index (``swapped``), found there already, or left as it
    was after an incremental publish (``alias`` None: nothing to move)."""

    alias: str | None
    index: str | None
    previous_index: str | None
    swapped: bool
    pruned: list[str] = field(default_factory=list)
    prune_error: str | None = None


@dataclass(frozen=True)
class LiveVersion(StepResult):
    """``state/current.json``: what is live (written by ``commit``, compare-and-swap)."""

    run_id: str
    snapshot_uri: str
    snapshot_version: str
    ids_uri: str
    catalog_uri: str
    items: int
    updated_at: str | None = None
    items_at_retrain: int | None = None  # catalogue size at the last retrain
    added_since_retrain: int = 0
    metrics: IdQuality | None = None
    index: str | None = None
    ids_rows: int | None = None  # rows of the ID table at commit (pointers before it existed: None)


@dataclass(frozen=True)
class Confirmed(StepResult):
    """The run's last word: every drop it took was accepted (a rejected one raises instead)."""

    drops: int
    rejected: int


def accepted(validated: Sequence[ValidatedDrop]) -> list[ValidatedDrop]:
    return [entry for entry in validated if entry.accepted]


__all__ = [
    "Checked",
    "Confirmed",
    "Decision",
    "IdQuality",
    "LiveVersion",
    "Merged",
    "Published",
    "Reduced",
    "ResultError",
    "Shard",
    "ShardCodes",
    "Snapshot",
    "StepResult",
    "Swapped",
    "ValidatedDrop",
    "accepted",
    "to_xcom",
]
