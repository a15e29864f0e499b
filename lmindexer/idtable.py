"""The ID table: one unique semantic ID per item, stored as Parquet.

A semantic ID is the item's L learned codes plus a suffix that makes it unique: items whose codes collide get
suffixes 0, 1, 2, ... (unbounded). Allocation is incremental: adding items never changes an existing row, and each
new item takes the next free suffix of its code tuple (one past the largest ever handed out, so a deleted item's ID
is never reused). Within one allocation, new items are ordered by (codes, item_id), so the result does not depend on
the order in which the catalogue listed them.

Every write of a stored table is compare-and-swap (:mod:`lmindexer.storage.versioned`): it replaces exactly the
version that was read, or it fails. :func:`store_allocation` is the one way the platform adds IDs to a stored table:
it reads the table with its version, allocates, and writes if nobody else wrote in between; otherwise it re-reads
and allocates again on top of the other writer's rows. So two writers can never both report success while one's
IDs vanish, and an ID once reported never changes owner.

A table is stored as one Parquet file, or, at a location ending in ``.json`` (:func:`is_parted`), as immutable
Parquet parts under a manifest: a write then adds one part holding the rows it allocated (reading only the columns
allocation needs) and swaps the manifest, so its cost follows the new rows, not the table; every ``max_parts``
writes the table is compacted into one part. Readers take either form.

Stored tables are checked when read: Parquet page checksums catch flipped bytes in the data, and the structure is
verified (one row per item, one item per ID, IDs consistent with their codes), so a corrupted table is an error,
never a silent source of wrong IDs.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
import math
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from lmindexer.errors import IdTableError
from lmindexer.layout import DEFAULT_MAX_PARTS, is_s3_uri, join_uri
from lmindexer.storage.parquet import prefetch_columns
from lmindexer.storage.s3 import StorageError, exists, local_copy, open_random_access, read_bytes, write_bytes
from lmindexer.storage.versioned import VersionConflict, read_versioned, write_if_version

SID_SEPARATOR = "-"
_METADATA_KEY = b"lmindexer.id_space"
ARGMAX, BALANCED = "argmax", "balanced"
LAST_LEVEL_POLICIES = (ARGMAX, BALANCED)
# How often a writer re-reads and re-allocates after another writer changed the table under it.
DEFAULT_WRITE_ATTEMPTS = 8
# Rows per Parquet row group of a stored table: a reader of a few rows (:func:`read_id_rows`) decodes only the
# groups that hold them, and the rows a run appends land in the last ones.
ROW_GROUP_ROWS = 65_536

# The columns whose values repeat, dictionary-encoded; item_id, sid and text_hash differ on every row, where a
# dictionary is built only to be dropped (at a million rows: a fifth of the write, half of the read).
_REPEATING_COLUMNS = ["codes.list.element", "suffix", "snapshot_version", "assigned_at"]

# A table stored as parts (:func:`is_parted`): its manifest format, its parts' folder beside the manifest.
MANIFEST_FORMAT = "lmindexer.id-table"
PARTS_FOLDER = "parts"
# Looking up fewer ids than a table's rows / this: the ids are hashed, not the table's item_id column.
_FEW_ROWS_RATIO = 8

SCHEMA = pa.schema(
    [
        pa.field("item_id", pa.string(), nullable=False),
        pa.field("codes", pa.list_(pa.int32()), nullable=False),
        pa.field("suffix", pa.int64(), nullable=False),
        pa.field("sid", pa.string(), nullable=False),
        pa.field("snapshot_version", pa.string(), nullable=False),
        pa.field("text_hash", pa.string(), nullable=False),
        pa.field("assigned_at", pa.timestamp("us", tz="UTC"), nullable=False),
    ]
)


def format_sid(codes: Sequence[int], suffix: int) -> str:
    """``(12, 204, 7)`` and suffix 0 -> ``"12-204-7-0"``."""
    return SID_SEPARATOR.join(str(int(c)) for c in (*codes, suffix))


def sid_prefix(codes: Sequence[int], level: int) -> str:
    """``(12, 7, 30)`` at level 2 -> ``"12-7"``: the first ``level`` codes, as the search documents' prefix fields."""
    return SID_SEPARATOR.join(str(int(c)) for c in codes[:level])


def parse_sid(sid: str) -> tuple[tuple[int, ...], int]:
    """Inverse of :func:`format_sid`."""
    try:
        parts = [int(p) for p in sid.split(SID_SEPARATOR)]
    except ValueError:
        raise IdTableError(f"not a semantic ID: {sid!r}") from None
    if len(parts) < 2 or any(p < 0 for p in parts):
        raise IdTableError(f"not a semantic ID: {sid!r}")
    return tuple(parts[:-1]), parts[-1]


@dataclass(frozen=True)
class IdSpace:
    """What the codes of a table mean: the snapshot that produced them, its codebook sizes, and how the last code is
    chosen (``"argmax"``: each item's own best code; ``"balanced"``: its most preferred code that no other item
    under the same prefix holds, see :meth:`IdTable.allocate`). Tables written before the last-level policy existed
    are ``"argmax"``."""

    snapshot_version: str
    method: str
    codebook_sizes: tuple[int, ...]
    last_level: str = ARGMAX

    def __post_init__(self) -> None:
        if self.last_level not in LAST_LEVEL_POLICIES:
            raise IdTableError(f"unknown last-level policy {self.last_level!r}; use one of {LAST_LEVEL_POLICIES}")

    @property
    def levels(self) -> int:
        return len(self.codebook_sizes)

    def to_json(self) -> str:
        return json.dumps(
            {
                "snapshot_version": self.snapshot_version,
                "method": self.method,
                "codebook_sizes": self.codebook_sizes,
                "last_level": self.last_level,
            }
        )

    @classmethod
    def from_json(cls, text: str | bytes) -> IdSpace:
        data = json.loads(text)
        return cls(
            data["snapshot_version"],
            data["method"],
            tuple(int(k) for k in data["codebook_sizes"]),
            str(data.get("last_level", ARGMAX)),
        )


@dataclass(frozen=True)
class Candidate:
    """An item that should have an ID: its learned codes, the hash of the text they came from and, for a balanced
    last level, its last-level codes in order of preference (best first; the first is ``codes[-1]``)."""

    item_id: str
    codes: tuple[int, ...]
    text_hash: str
    preferences: tuple[int, ...] = ()


@dataclass
class AllocationReport:
    candidates: int = 0
    newly_assigned: int = 0
    already_assigned: int = 0
    text_changed: int = 0
    moved_to_free_code: int = 0  # balanced last level: new items whose own last code was taken, given a free one
    changed_item_ids: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "candidates": self.candidates,
            "newly_assigned": self.newly_assigned,
            "already_assigned": self.already_assigned,
            "text_changed": self.text_changed,
            "moved_to_free_code": self.moved_to_free_code,
            "changed_item_ids_sample": self.changed_item_ids[:20],
        }


@dataclass(frozen=True)
class _AllocationBase:
    """What allocating on top of a table reads of it: each row's item_id, codes and suffix, and the text hashes of
    the rows the candidates already hold (read on demand: usually none, and never the whole column). Built from an
    :class:`IdTable` in memory or from the columns of a table stored as parts, so both allocate the same way."""

    space: IdSpace
    item_ids: pa.ChunkedArray
    codes: np.ndarray  # (rows, levels), table order
    suffixes: np.ndarray
    text_hashes_at: Callable[[np.ndarray], list[str]]

    def __len__(self) -> int:
        return len(self.suffixes)

    def tuple_keys(self, stored: np.ndarray, wanted: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Each row of ``stored`` and of ``wanted`` (code tuples of the same length) as one integer, equal exactly
        when the tuples are equal, so that grouping and membership on code tuples run in numpy: mixed radix over
        the codebook sizes, or, where that would not fit in 62 bits, a joint numbering of the distinct tuples."""
        width = stored.shape[1]
        sizes = self.space.codebook_sizes[:width]
        if math.prod(sizes) < 2**62:
            encoded = []
            for rows in (stored, wanted):
                keys = np.zeros(len(rows), dtype=np.int64)
                for level, size in enumerate(sizes):
                    keys = keys * size + rows[:, level].astype(np.int64)
                encoded.append(keys)
            return encoded[0], encoded[1]
        _, inverse = np.unique(np.concatenate([stored, wanted]).astype(np.int64), axis=0, return_inverse=True)
        inverse = inverse.reshape(-1)
        return inverse[: len(stored)], inverse[len(stored) :]

    def next_suffixes(self, only: Iterable[tuple[int, ...]] | None = None) -> dict[tuple[int, ...], int]:
        """For each code tuple in use (or each of ``only``), the suffix the next item with that tuple will get."""
        if not len(self):
            return {}
        levels = self.space.levels
        codes, suffixes = self.codes, self.suffixes
        wanted = np.asarray(sorted(set(only)) if only is not None else [], dtype=np.int64).reshape(-1, levels)
        keys, wanted_keys = self.tuple_keys(codes, wanted)
        if only is not None:
            mask = np.isin(keys, wanted_keys)
            codes, keys, suffixes = codes[mask], keys[mask], suffixes[mask]
        if not len(keys):
            return {}
        order = np.lexsort((suffixes, keys))
        last_of_group = np.r_[keys[order][1:] != keys[order][:-1], True]
        chosen = order[last_of_group]
        return {
            tuple(row): int(largest) + 1
            for row, largest in zip(codes[chosen].tolist(), suffixes[chosen].tolist(), strict=True)
        }

    def rows_of(self, item_ids: Sequence[str]) -> np.ndarray:
        """The row of each of ``item_ids`` in the table, -1 for those without one: one hash lookup in Arrow, so
        the cost on a large table is a pass over its item_id column rather than a Python dict of every row."""
        if not len(self) or not item_ids:
            return np.full(len(item_ids), -1, dtype=np.int64)
        wanted = pa.array(item_ids, type=pa.string())
        if len(wanted) * _FEW_ROWS_RATIO > len(self):
            found = pc.index_in(wanted, value_set=self.item_ids)
            return found.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)
        # A run's thousand items against a million rows: hash the few ids and pass once over the table's column,
        # rather than hash the million (item_ids are unique in a table, so each id has at most one row).
        distinct = pc.unique(wanted)
        position = pc.index_in(self.item_ids, value_set=distinct)
        held = pc.is_valid(position).to_numpy(zero_copy_only=False)
        rows_of_distinct = np.full(len(distinct), -1, dtype=np.int64)
        rows_of_distinct[pc.drop_null(position).to_numpy().astype(np.int64)] = np.flatnonzero(held)
        return rows_of_distinct[pc.index_in(wanted, value_set=distinct).to_numpy(zero_copy_only=False)]

    def taken_last_codes(self, prefixes: Iterable[tuple[int, ...]]) -> dict[tuple[int, ...], set[int]]:
        """For each of ``prefixes`` (the first L-1 codes), the last codes its rows hold (deleted items' included:
        their IDs stay reserved)."""
        wanted = sorted(set(prefixes))
        if not len(self) or not wanted:
            return {}
        # In numpy: a drop touching every prefix of a million-row table costs a vectorised pass, not a Python
        # loop per row.
        levels = self.space.levels
        codes = self.codes
        keys, wanted_keys = self.tuple_keys(
            codes[:, : levels - 1], np.asarray(wanted, dtype=np.int64).reshape(len(wanted), levels - 1)
        )
        order = np.argsort(wanted_keys)
        sorted_keys = wanted_keys[order]
        position = np.minimum(np.searchsorted(sorted_keys, keys), len(sorted_keys) - 1)
        mask = sorted_keys[position] == keys
        prefix_of = order[position[mask]].astype(np.int64)  # index into ``wanted`` of each matching row
        last = codes[mask, -1].astype(np.int64)
        size = self.space.codebook_sizes[-1]
        if len(wanted) * size < 2**62:
            pairs = np.unique(prefix_of * size + last)
            pairs = np.stack([pairs // size, pairs % size], axis=1)
        else:
            pairs = np.unique(np.stack([prefix_of, last], axis=1), axis=0)
        taken: dict[tuple[int, ...], set[int]] = {}
        for index, code in pairs.tolist():
            taken.setdefault(wanted[index], set()).add(code)
        return taken

    def balanced_last_codes(self, fresh: Mapping[str, Candidate]) -> dict[str, tuple[int, ...]]:
        """The balanced last level: within each prefix, new items take distinct last codes that no row holds yet,
        each as high in its order of preference as possible (a minimum-cost assignment of items to free codes, the
        cost being the rank of the code in the item's preferences). An item left without an acceptable free code (a
        prefix with more items than codes) keeps its own code and is separated by the suffix. One new item alone
        simply takes its nearest free code. Deterministic: items are taken in item_id order."""
        from scipy.optimize import linear_sum_assignment

        size = self.space.codebook_sizes[-1]
        groups: dict[tuple[int, ...], list[Candidate]] = {}
        for candidate in fresh.values():
            groups.setdefault(candidate.codes[:-1], []).append(candidate)
        taken = self.taken_last_codes(groups)
        chosen: dict[str, tuple[int, ...]] = {}
        for prefix, members in groups.items():
            members.sort(key=lambda c: c.item_id)
            free = [code for code in range(size) if code not in taken.get(prefix, set())]
            if not free:
                continue
            column = {code: n for n, code in enumerate(free)}
            unacceptable = size + 1
            cost = np.full((len(members), len(free)), unacceptable, dtype=np.int64)
            for row, candidate in enumerate(members):
                ranked = candidate.preferences or candidate.codes[-1:]
                for rank, code in enumerate(ranked):
                    if code >= 0 and code in column:
                        cost[row, column[code]] = min(cost[row, column[code]], rank)
            rows, columns = linear_sum_assignment(cost)
            for row, col in zip(rows, columns, strict=True):
                if cost[row, col] < unacceptable:
                    chosen[members[row].item_id] = (*prefix, free[col])
        return chosen

    def check_codes(self, candidate: Candidate) -> None:
        sizes = self.space.codebook_sizes
        if len(candidate.codes) != len(sizes) or any(
            not 0 <= c < k for c, k in zip(candidate.codes, sizes, strict=False)
        ):
            raise IdTableError(f"codes {candidate.codes} of {candidate.item_id!r} do not fit codebook sizes {sizes}")

    def allocate(self, candidates: Iterable[Candidate], stamp: dt.datetime) -> tuple[pa.Table, AllocationReport]:
        """The rows to add (possibly none) for the candidates without an ID: each takes the next free suffix of
        its code tuple (under a balanced last level, first a free last code of its prefix)."""
        report = AllocationReport()
        offered = list(candidates)
        stored_rows = self.rows_of([c.item_id for c in offered])
        held = stored_rows >= 0
        stored_hash = iter(self.text_hashes_at(stored_rows[held]) if held.any() else [])
        fresh: dict[str, Candidate] = {}
        for candidate, is_held in zip(offered, held.tolist(), strict=True):
            report.candidates += 1
            self.check_codes(candidate)
            if is_held:
                report.already_assigned += 1
                if next(stored_hash) != candidate.text_hash:
                    report.text_changed += 1
                    report.changed_item_ids.append(candidate.item_id)
                continue
            if candidate.item_id in fresh:
                raise IdTableError(f"item_id {candidate.item_id!r} appears twice in one allocation")
            fresh[candidate.item_id] = candidate
        rows: dict[str, list[Any]] = {name: [] for name in SCHEMA.names}
        if not fresh:
            return pa.Table.from_pydict(rows, schema=SCHEMA), report
        chosen = self.balanced_last_codes(fresh) if self.space.last_level == BALANCED else {}
        placed = [replace(c, codes=chosen.get(c.item_id, c.codes)) for c in fresh.values()]
        following = self.next_suffixes(only=[c.codes for c in placed])
        for candidate in sorted(placed, key=lambda c: (c.codes, c.item_id)):
            suffix = following.get(candidate.codes, 0)
            following[candidate.codes] = suffix + 1
            rows["item_id"].append(candidate.item_id)
            rows["codes"].append(list(candidate.codes))
            rows["suffix"].append(suffix)
            rows["sid"].append(format_sid(candidate.codes, suffix))
            rows["snapshot_version"].append(self.space.snapshot_version)
            rows["text_hash"].append(candidate.text_hash)
            rows["assigned_at"].append(stamp)
        report.newly_assigned = len(fresh)
        report.moved_to_free_code = sum(1 for c in placed if c.codes != fresh[c.item_id].codes)
        return pa.Table.from_pydict(rows, schema=SCHEMA), report


class IdTable:
    """An immutable-by-convention ID table: every change returns a new table with the old rows untouched."""

    def __init__(self, table: pa.Table, space: IdSpace) -> None:
        if not table.schema.remove_metadata().equals(SCHEMA):
            raise IdTableError(f"ID table schema differs from the expected one:\n{table.schema}")
        self.table = table.replace_schema_metadata({_METADATA_KEY: space.to_json().encode()})
        self.space = space
        self._index: dict[str, int] | None = None
        self._codes: np.ndarray | None = None

    @classmethod
    def empty(cls, space: IdSpace) -> IdTable:
        return cls(SCHEMA.empty_table(), space)

    def __len__(self) -> int:
        return self.table.num_rows

    @property
    def item_ids(self) -> list[str]:
        return self.table.column("item_id").to_pylist()

    def _row_index(self) -> dict[str, int]:
        if self._index is None:
            self._index = {item_id: i for i, item_id in enumerate(self.item_ids)}
        return self._index

    def __contains__(self, item_id: object) -> bool:
        return item_id in self._row_index()

    def row(self, item_id: str) -> dict[str, Any]:
        index = self._row_index().get(item_id)
        if index is None:
            raise KeyError(item_id)
        return self.table.slice(index, 1).to_pylist()[0]

    def sid_map(self) -> dict[str, str]:
        return dict(zip(self.item_ids, self.table.column("sid").to_pylist(), strict=True))

    def text_hashes(self) -> dict[str, str]:
        return dict(zip(self.item_ids, self.table.column("text_hash").to_pylist(), strict=True))

    def codes_list(self) -> list[tuple[int, ...]]:
        return [tuple(c) for c in self.table.column("codes").to_pylist()]

    def _allocation_base(self) -> _AllocationBase:
        column = self.table.column("text_hash")
        return _AllocationBase(
            self.space, self.table.column("item_id"), self.code_matrix(), self.table.column("suffix").to_numpy(),
            lambda rows: pc.take(column, pa.array(rows)).to_pylist(),
        )  # fmt: skip

    def next_suffixes(self, only: Iterable[tuple[int, ...]] | None = None) -> dict[tuple[int, ...], int]:
        """For each code tuple in use (or each of ``only``), the suffix the next item with that tuple will get.

        Computed in numpy over the code matrix, so an incremental allocation stays cheap on a large table."""
        return self._allocation_base().next_suffixes(only)

    def _rows_of(self, item_ids: Sequence[str]) -> np.ndarray:
        """The row of each of ``item_ids`` in the table, -1 for those without one."""
        return self._allocation_base().rows_of(item_ids)

    def code_matrix(self) -> np.ndarray:
        """The codes of every row, in table order, as a read-only (items, levels) integer array (built once; the
        table never changes)."""
        if self._codes is None:
            flat = pc.list_flatten(self.table.column("codes")).to_numpy(zero_copy_only=False)
            self._codes = flat.reshape(len(self), self.space.levels)
            self._codes.flags.writeable = False
        return self._codes

    def restricted(self, item_ids: Iterable[str] | pa.Array | pa.ChunkedArray) -> IdTable:
        """The rows of ``item_ids`` only, in table order and the same ID space (a view to read, never to store)."""
        keep = item_ids
        if not isinstance(keep, pa.Array | pa.ChunkedArray):
            keep = pa.array(sorted(set(keep)), pa.string())
        return IdTable(self.table.filter(pc.is_in(self.table.column("item_id"), value_set=keep)), self.space)

    def codes_of(self, item_ids: Iterable[str]) -> dict[str, tuple[int, ...]]:
        """The codes of those of ``item_ids`` that have a row. Callers ask batch after batch (the assign job, per
        catalogue batch), so the row index and the code matrix are built once per table and kept."""
        index = self._row_index()
        codes = self.code_matrix()
        return {item_id: tuple(codes[index[item_id]].tolist()) for item_id in item_ids if item_id in index}

    def allocate(
        self, candidates: Iterable[Candidate], *, assigned_at: dt.datetime | None = None
    ) -> tuple[IdTable, AllocationReport]:
        """Give every candidate without an ID the next free suffix of its code tuple."""
        stamp = (assigned_at or dt.datetime.now(dt.UTC)).astimezone(dt.UTC)
        added, report = self._allocation_base().allocate(candidates, stamp)
        if not added.num_rows:
            return self, report
        combined = pa.concat_tables([self.table.replace_schema_metadata(None), added])
        return IdTable(combined, self.space), report

    def taken_last_codes(self, prefixes: Iterable[tuple[int, ...]]) -> dict[tuple[int, ...], set[int]]:
        """For each of ``prefixes`` (the first L-1 codes), the last codes its rows hold (deleted items' included:
        their IDs stay reserved)."""
        return self._allocation_base().taken_last_codes(prefixes)

    # -- persistence ---------------------------------------------------------------------------------------------

    def to_parquet_bytes(self) -> bytes:
        """The table as a Parquet file (zstd, with page checksums so corruption is caught on read)."""
        buffer = io.BytesIO()
        pq.write_table(
            self.table, buffer, compression="zstd", write_page_checksum=True, row_group_size=ROW_GROUP_ROWS,
            use_dictionary=_REPEATING_COLUMNS,
        )  # fmt: skip
        return buffer.getvalue()

    @classmethod
    def from_parquet_bytes(cls, data: bytes, location: str | os.PathLike[str]) -> IdTable:
        """Parse and verify a stored table (``location`` only names it in errors)."""
        table, space = _parse_parquet(data, location)
        loaded = cls(table, space)
        loaded.verify(location)
        return loaded

    def verify(self, location: str | os.PathLike[str] = "the ID table") -> None:
        """Structural checks a sound table always passes: unique items, unique IDs, codes of the right length and
        range, and each ``sid`` spelling out its codes and suffix. Raises :class:`IdTableError` naming the first
        problem found."""
        n = len(self)
        if not n:
            return
        table = self.table
        problems = []
        if not _all_distinct(table.column("item_id")):
            problems.append("an item_id appears on more than one row")
        sids_unique: bool | None = None  # known without hashing the sid strings
        lengths = pc.list_value_length(table.column("codes"))
        if pc.min(lengths).as_py() != self.space.levels or pc.max(lengths).as_py() != self.space.levels:
            problems.append(f"a row does not have {self.space.levels} codes")
        elif pc.min(table.column("suffix")).as_py() < 0:
            problems.append("a suffix is negative")
        else:
            flat = pc.list_flatten(table.column("codes")).to_numpy(zero_copy_only=False).reshape(n, self.space.levels)
            sizes = self.space.codebook_sizes
            if (flat < 0).any() or any((flat[:, level] >= k).any() for level, k in enumerate(sizes)):
                problems.append(f"a code does not fit the codebook sizes {sizes}")
            else:
                parts = [pc.cast(pa.array(flat[:, level]), pa.string()) for level in range(self.space.levels)]
                parts.append(pc.cast(table.column("suffix"), pa.string()))
                expected = pc.binary_join_element_wise(*parts, SID_SEPARATOR)
                if not pc.all(pc.equal(expected, table.column("sid"))).as_py():
                    problems.append("a sid does not match its codes and suffix")
                else:
                    # Every sid spells its codes and suffix, so two equal sids are two equal (codes, suffix)
                    # rows: counted on integers rather than by hashing a million strings.
                    sids_unique = _distinct_rows(flat, table.column("suffix").to_numpy(), sizes)
        if sids_unique is None:
            sids_unique = _all_distinct(table.column("sid"))
        if not sids_unique:
            problems.append("a semantic ID is held by more than one item")
        if problems:
            raise IdTableError(f"{location} is corrupted: {'; '.join(problems)}")

    def write(self, destination: str | os.PathLike[str], *, replacing: str | None = None) -> str:
        """Write the table to a local path or an ``s3://`` URI, compare-and-swap: only if the stored table is still
        at version ``replacing`` (``None``: only if there is none yet). Returns the new version; raises
        :class:`~lmindexer.storage.versioned.VersionConflict` when another writer got there first. A location
        ending in ``.json`` (:func:`is_parted`) gets the table as one part under a new manifest."""
        if is_parted(destination):
            part = _write_part(destination, self)
            return _write_manifest(destination, _manifest(self.space, [part]), replacing)
        return write_if_version(self.to_parquet_bytes(), destination, replacing)

    @classmethod
    def read(cls, location: str | os.PathLike[str]) -> IdTable:
        """The whole table at ``location`` (one file, or every part of a table stored as parts), verified."""
        if is_parted(location):
            manifest, _ = _read_manifest(location)
            if manifest is None:
                raise IdTableError(f"ID table not found: {location}")
            return _read_parts(location, manifest)
        stored = read_versioned(location)
        if stored.data is None:
            raise IdTableError(f"ID table not found: {location}")
        return cls.from_parquet_bytes(stored.data, location)


def _parse_parquet(data: bytes, location: str | os.PathLike[str]) -> tuple[pa.Table, IdSpace]:
    """The rows and ID space of an ID table's Parquet bytes (page checksums checked; structure not yet verified)."""
    try:
        table = pq.read_table(pa.BufferReader(data), page_checksum_verification=True)
    except (pa.ArrowException, OSError) as exc:
        raise IdTableError(f"{location} is not a readable Parquet ID table: {exc}") from exc
    return table, _space_of(table.schema, location)


def _space_of(schema: pa.Schema, location: str | os.PathLike[str]) -> IdSpace:
    metadata = schema.metadata or {}
    if _METADATA_KEY not in metadata:
        raise IdTableError(f"{location} is not an lmindexer ID table (no ID space in its metadata)")
    try:
        return IdSpace.from_json(metadata[_METADATA_KEY])
    except (ValueError, KeyError, TypeError) as exc:
        raise IdTableError(f"{location} has an unreadable ID space in its metadata ({exc})") from exc


def _all_distinct(values: pa.Array | pa.ChunkedArray) -> bool:
    """Whether no value appears twice (no nulls: the schema has none). By the length of the unique values rather
    than ``count_distinct``, which at a million strings takes 2-4 times as long in a fresh process."""
    return len(pc.unique(values)) == len(values)


def _distinct_rows(codes: np.ndarray, suffixes: np.ndarray, sizes: Sequence[int]) -> bool:
    """Whether no two rows share their codes and suffix (codes already checked to fit ``sizes``): each row as one
    integer in mixed radix, or, where that could overflow, the rows themselves."""
    radix = [*sizes, int(suffixes.max()) + 1]
    if math.prod(radix) >= 2**63:
        rows = np.column_stack([codes.astype(np.int64), suffixes.astype(np.int64)])
        rows = rows[np.lexsort(rows.T[::-1])]
        return not (rows[1:] == rows[:-1]).all(axis=1).any()
    keys = np.zeros(len(codes), dtype=np.int64)
    for column, base in zip([*codes.T, suffixes], radix, strict=True):
        keys = keys * base + column.astype(np.int64)
    keys.sort()  # sorting integers costs a fraction of hashing them (np.unique)
    return not (keys[1:] == keys[:-1]).any()


@dataclass(frozen=True)
class _ColumnReader:
    """An open ID table file: reads of some columns and row groups, each fetched in as few requests as pay."""

    handle: Any
    parquet: pq.ParquetFile

    def read(self, columns: Sequence[str] | None = None, row_groups: Sequence[int] | None = None) -> pa.Table:
        names = self.parquet.schema_arrow.names if columns is None else columns
        prefetch_columns(self.handle, self.parquet, names, row_groups)
        if row_groups is None:
            return self.parquet.read(columns=columns)
        return self.parquet.read_row_groups(row_groups, columns=columns)


@contextmanager
def _stored_columns(location: str | os.PathLike[str]) -> Iterator[tuple[_ColumnReader, IdSpace]]:
    """The ID table file at ``location`` opened for reading some of its columns and row groups (byte ranges on
    S3), with its ID space; anything that is not a readable ID table is an :class:`IdTableError` naming it."""
    with open_random_access(location) as handle:
        try:
            parquet = pq.ParquetFile(handle, page_checksum_verification=True)
            yield _ColumnReader(handle, parquet), _space_of(parquet.schema_arrow, location)
        except (pa.ArrowException, OSError) as exc:
            raise IdTableError(f"{location} is not a readable Parquet ID table: {exc}") from exc


def _stored_files(location: str | os.PathLike[str]) -> Iterator[tuple[_ColumnReader, IdSpace]]:
    """Each file of the table at ``location``, oldest rows first, opened as :func:`_stored_columns` does: the file
    itself, or each part a manifest names (:func:`_open_part`)."""
    if not is_parted(location):
        if not exists(location):
            raise IdTableError(f"ID table not found: {location}")
        with _stored_columns(location) as opened:
            yield opened
        return
    manifest = _require_manifest(location)
    for part in manifest.parts:
        with _open_part(location, manifest, part) as opened:
            yield opened


def _take_rows(reader: _ColumnReader, rows: np.ndarray, columns: Sequence[str] | None = None) -> pa.Table:
    """Rows ``rows`` (ascending positions in the file) of an open ID table file: only the row groups holding them
    are read."""
    metadata = reader.parquet.metadata
    group_ends = np.cumsum([metadata.row_group(g).num_rows for g in range(metadata.num_row_groups)])
    groups = np.unique(np.searchsorted(group_ends, rows, side="right")).tolist()
    if not groups:
        schema = reader.parquet.schema_arrow
        return schema.empty_table() if columns is None else pa.schema([schema.field(c) for c in columns]).empty_table()
    found = reader.read(columns, row_groups=groups)
    group_starts = np.r_[0, group_ends[:-1]]
    # Position of each wanted row within the concatenation of the groups read.
    offsets = np.cumsum(np.r_[0, [metadata.row_group(g).num_rows for g in groups[:-1]]])
    local = rows - group_starts[np.searchsorted(group_ends, rows, side="right")]
    within = offsets[np.searchsorted(groups, np.searchsorted(group_ends, rows, side="right"))] + local
    return found.take(pa.array(within, pa.int64()))


def stored_item_ids(location: str | os.PathLike[str]) -> pa.ChunkedArray | None:
    """The item_id column of the ID table at ``location`` (None: no table there), read alone: for a membership
    question (which items already have an ID), without reading and verifying the whole table."""
    if not exists(location):
        return None
    chunks: list[pa.Array] = []
    for reader, _ in _stored_files(location):
        chunks.extend(reader.read(["item_id"]).column("item_id").chunks)
    return pa.chunked_array(chunks, pa.string())


def read_id_rows(location: str | os.PathLike[str], item_ids: Iterable[str] | pa.Array) -> IdTable:
    """The rows of ``item_ids`` (those that have one) of the ID table at ``location``, in table order, verified as
    a table of their own: the item_id column and then only the row groups that hold the wanted rows are read (by
    byte ranges on S3), so a step that needs the rows of a run's thousand items does not read and verify a million.
    For reading only: the whole table's structure is what ``check`` verifies."""
    wanted = item_ids if isinstance(item_ids, pa.Array) else pa.array(sorted(set(item_ids)), pa.string())
    if not exists(location):
        raise IdTableError(f"ID table not found: {location}")
    found: list[pa.Table] = []
    space: IdSpace | None = None
    for reader, file_space in _stored_files(location):
        space = file_space
        hits = pc.is_in(reader.read(["item_id"]).column("item_id"), value_set=wanted)
        found.append(_take_rows(reader, np.flatnonzero(hits.to_numpy(zero_copy_only=False))))
    if space is None:  # a table stored as parts that has none yet
        space = _require_manifest(location).id_space
    rows = pa.concat_tables([t.replace_schema_metadata(None) for t in found]) if found else SCHEMA.empty_table()
    table = IdTable(rows, space)
    table.verify(location)
    return table


@dataclass(frozen=True)
class StoredIdTable:
    """A table as read from storage, with the version a compare-and-swap write must name (``None``: not stored)."""

    table: IdTable
    version: str | None


def read_id_table(location: str | os.PathLike[str], space: IdSpace) -> StoredIdTable:
    """The table at ``location`` with its version, or an empty one of ``space``; refuses a table of another space."""
    if is_parted(location):
        manifest, version = _read_manifest(location)
        table = IdTable.empty(space) if manifest is None else _read_parts(location, manifest)
    else:
        stored = read_versioned(location)
        version = stored.version
        table = IdTable.empty(space) if stored.data is None else IdTable.from_parquet_bytes(stored.data, location)
    _check_space(location, table.space, space)
    return StoredIdTable(table, version)


def _check_space(location: str | os.PathLike[str], stored: IdSpace, wanted: IdSpace) -> None:
    if stored.snapshot_version != wanted.snapshot_version:
        raise IdTableError(
            f"{location} holds IDs of snapshot {stored.snapshot_version}, not {wanted.snapshot_version}; "
            "a new snapshot defines a new ID space, so write its IDs to a new table"
        )


@dataclass(frozen=True)
class StoredAllocation:
    """The outcome of :func:`store_allocation`: the rows it added (none: every candidate had an ID), the table's
    size before and after, the version stored, and how it got there."""

    added: IdTable
    report: AllocationReport
    rows_before: int
    rows_after: int
    version: str
    written: bool
    attempts: int


def store_allocation(
    location: str | os.PathLike[str],
    space: IdSpace,
    candidates: Iterable[Candidate],
    *,
    assigned_at: dt.datetime | None = None,
    attempts: int = DEFAULT_WRITE_ATTEMPTS,
    max_parts: int = DEFAULT_MAX_PARTS,
) -> StoredAllocation:
    """Give every candidate without an ID one and store the table, compare-and-swap.

    Reads the table and its version, allocates on top of it, checks that every existing row is unchanged and
    writes only if the stored table is still that version. When another writer got there first, its rows are
    re-read and the allocation is made again on top of them (items it already gave an ID keep that ID); after
    ``attempts`` tries the call fails with :class:`IdTableError` and writes nothing. An absent table is created
    (empty if there are no candidates), so a completed call always leaves a stored table.

    A table stored as parts (:func:`is_parted`) is not read or written whole: the allocation reads its item_id,
    codes and suffix columns, writes the new rows as one more part and swaps the manifest; the write that would
    make more than ``max_parts`` parts compacts the table into one instead.
    """
    if max_parts < 1:
        raise IdTableError(f"an ID table needs at least one part; max_parts is {max_parts}")
    wanted = list(candidates)
    stamp = (assigned_at or dt.datetime.now(dt.UTC)).astimezone(dt.UTC)
    allocate = _allocate_on_parts if is_parted(location) else _allocate_on_file
    for attempt in range(1, attempts + 1):
        try:
            outcome = allocate(location, space, wanted, stamp, max_parts)
        except VersionConflict:
            continue
        return replace(outcome, attempts=attempt)
    raise IdTableError(
        f"{location} was changed by other writers {attempts} times while IDs were being allocated; nothing of this "
        "allocation was written: run it again"
    )


def _allocate_on_file(
    location: str | os.PathLike[str], space: IdSpace, wanted: list[Candidate], stamp: dt.datetime, max_parts: int
) -> StoredAllocation:
    """One try of :func:`store_allocation` on a table stored as one file: read whole, written whole."""
    stored = read_id_table(location, space)
    before = stored.table
    after, report = before.allocate(wanted, assigned_at=stamp)
    added = IdTable(after.table.slice(len(before)), space)
    if after is before and stored.version is not None:
        return StoredAllocation(added, report, len(before), len(after), stored.version, False, 0)
    kept = after.table.slice(0, len(before)).replace_schema_metadata(None)
    if not kept.equals(before.table.replace_schema_metadata(None)):
        raise IdTableError(f"allocation changed existing rows of {location}; refusing to write it")
    version = after.write(location, replacing=stored.version)
    return StoredAllocation(added, report, len(before), len(after), version, True, 0)


def _allocate_on_parts(
    location: str | os.PathLike[str], space: IdSpace, wanted: list[Candidate], stamp: dt.datetime, max_parts: int
) -> StoredAllocation:
    """One try of :func:`store_allocation` on a table stored as parts: the new rows become one more part (or,
    past ``max_parts``, the table is compacted into one), and the manifest is swapped compare-and-swap."""
    manifest, version = _read_manifest(location)
    if manifest is not None:
        _check_space(location, manifest.id_space, space)
    base = _parts_allocation_base(location, manifest, space)
    rows, report = base.allocate(wanted, stamp)
    added = IdTable(rows, space)
    rows_before = 0 if manifest is None else manifest.rows
    if not len(added) and manifest is not None:
        return StoredAllocation(added, report, rows_before, rows_before, version or "", False, 0)
    parts = [] if manifest is None else list(manifest.parts)
    if len(parts) + 1 > max_parts:
        # Compaction: the whole table, verified, plus the new rows, as one part (the rows before it unchanged).
        before = _read_parts(location, manifest)  # type: ignore[arg-type]  # parts exist, so a manifest does
        parts = [_write_part(location, IdTable(pa.concat_tables([before.table, added.table]), space))]
    elif len(added):
        parts.append(_write_part(location, added))
    written = _write_manifest(location, _manifest(space, parts), version)
    return StoredAllocation(added, report, rows_before, rows_before + len(added), written, True, 0)


# -- stored as parts -------------------------------------------------------------------------------------------
#
# A location ending in ".json" holds an ID table stored as parts: a manifest (IdTableManifest) naming immutable
# Parquet parts beside it, oldest rows first, each an ID table of its own named by the SHA-256 of its bytes. A
# write adds one part holding the rows it allocated and swaps the manifest compare-and-swap, so adding a thousand
# IDs to a million-row table writes a thousand rows, not a million; the manifest is the one object writers race on.
# Every ``max_parts`` writes the table is compacted into one part. A part no manifest names (a writer that lost the
# race, or the parts a compaction replaced) is never read again; nothing is deleted (writers may not delete under
# ids/).


def is_parted(location: str | os.PathLike[str]) -> bool:
    """Whether ``location`` names an ID table stored as parts (a manifest ending in ``.json``) rather than one
    Parquet file."""
    return str(location).endswith(".json")


class IdTablePart(BaseModel):
    """One part of an ID table stored as parts: a Parquet ID table beside the manifest."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    file: str = Field(description="path of the part relative to the manifest's folder")
    rows: int = Field(ge=1)
    bytes: int = Field(ge=1)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="SHA-256 of the part's bytes, checked on a whole read")


class IdTableManifest(BaseModel):
    """An ID table stored as parts, oldest rows first: the table is the parts' rows in this order."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    format: Literal["lmindexer.id-table"] = MANIFEST_FORMAT
    format_version: Literal[1] = 1
    space: dict[str, Any] = Field(description="the ID space (IdSpace) every part's codes belong to")
    rows: int = Field(ge=0, description="rows of all parts together")
    parts: list[IdTablePart]

    @model_validator(mode="after")
    def _rows_add_up(self) -> IdTableManifest:
        if self.rows != sum(part.rows for part in self.parts):
            raise ValueError(f"rows is {self.rows} but the parts hold {sum(p.rows for p in self.parts)}")
        return self

    @property
    def id_space(self) -> IdSpace:
        return IdSpace.from_json(json.dumps(self.space))


def _manifest(space: IdSpace, parts: Sequence[IdTablePart]) -> IdTableManifest:
    return IdTableManifest(space=json.loads(space.to_json()), rows=sum(p.rows for p in parts), parts=list(parts))


def _read_manifest(location: str | os.PathLike[str]) -> tuple[IdTableManifest | None, str | None]:
    """The manifest at ``location`` with its version; ``(None, None)`` when there is none."""
    stored = read_versioned(location)
    if stored.data is None:
        return None, None
    try:
        manifest = IdTableManifest.model_validate_json(stored.data)
        manifest.id_space  # noqa: B018  # an unreadable space is a damaged manifest, said here
    except (ValidationError, ValueError, KeyError, TypeError, IdTableError) as exc:
        raise IdTableError(f"{location} is not an lmindexer ID table manifest: {exc}") from exc
    return manifest, stored.version


def _require_manifest(location: str | os.PathLike[str]) -> IdTableManifest:
    manifest, _ = _read_manifest(location)
    if manifest is None:
        raise IdTableError(f"ID table not found: {location}")
    return manifest


def _write_manifest(location: str | os.PathLike[str], manifest: IdTableManifest, replacing: str | None) -> str:
    return write_if_version(manifest.model_dump_json(indent=1).encode(), location, replacing)


def _part_uri(location: str | os.PathLike[str], part: IdTablePart) -> str:
    text = str(location)
    folder = text.rsplit("/", 1)[0] if is_s3_uri(text) else str(Path(text).parent)
    return join_uri(folder, part.file)


def _write_part(location: str | os.PathLike[str], table: IdTable) -> IdTablePart:
    """Store ``table`` as a part beside the manifest at ``location``. Named by its content, so writing the same
    rows again (a retried write) lands on the same object with the same bytes."""
    data = table.to_parquet_bytes()
    digest = hashlib.sha256(data).hexdigest()
    part = IdTablePart(file=f"{PARTS_FOLDER}/{digest}.parquet", rows=len(table), bytes=len(data), sha256=digest)
    write_bytes(data, _part_uri(location, part))
    return part


def _check_part(
    location: str | os.PathLike[str], manifest: IdTableManifest, part: IdTablePart, space: IdSpace, rows: int
) -> None:
    if rows != part.rows or space != manifest.id_space:
        raise IdTableError(
            f"{location}: part {part.file} holds {rows} rows of snapshot {space.snapshot_version}, but the manifest "
            f"says {part.rows} rows of snapshot {manifest.id_space.snapshot_version}"
        )


@contextmanager
def _open_part(
    location: str | os.PathLike[str], manifest: IdTableManifest, part: IdTablePart
) -> Iterator[tuple[_ColumnReader, IdSpace]]:
    """A part of the table at ``location`` opened for column reads, checked to hold what the manifest says."""
    uri = _part_uri(location, part)
    try:
        with _stored_columns(uri) as (reader, space):
            _check_part(location, manifest, part, space, reader.parquet.metadata.num_rows)
            yield reader, space
    except StorageError as exc:
        raise IdTableError(f"{location}: part {part.file} cannot be read: {exc}") from exc


def _read_parts(location: str | os.PathLike[str], manifest: IdTableManifest) -> IdTable:
    """Every part's rows, each part checked against its content hash, as one verified table."""
    tables = []
    for part in manifest.parts:
        uri = _part_uri(location, part)
        try:
            data = read_bytes(uri)
        except StorageError as exc:
            raise IdTableError(f"{location}: part {part.file} cannot be read: {exc}") from exc
        if len(data) != part.bytes or hashlib.sha256(data).hexdigest() != part.sha256:
            raise IdTableError(f"{location}: part {part.file} is damaged (its bytes differ from the manifest's hash)")
        table, space = _parse_parquet(data, uri)
        _check_part(location, manifest, part, space, table.num_rows)
        tables.append(table.replace_schema_metadata(None))
    table = IdTable(pa.concat_tables(tables) if tables else SCHEMA.empty_table(), manifest.id_space)
    table.verify(location)
    return table


@dataclass(frozen=True)
class _PartColumns:
    """The item_id, codes and suffix columns of every part of a table, in table order, and the rows from
    ``whole_from`` on, whole (see :func:`_read_part_columns`)."""

    item_ids: pa.ChunkedArray
    codes: np.ndarray  # (rows, levels)
    suffixes: np.ndarray
    part_ends: np.ndarray  # the row after each part's last
    recent: list[pa.Table]  # rows whole_from.. (no schema metadata), a table per part holding some


def _read_part_columns(
    location: str | os.PathLike[str], manifest: IdTableManifest | None, space: IdSpace, *, whole_from: int | None
) -> _PartColumns:
    """The item_id, codes and suffix columns of every part (byte ranges on S3, page checksums checked); a part
    holding rows from ``whole_from`` on (None: none) is read whole instead, its hash checked and its rows
    verified, and those rows kept. Not verified across parts: that is :func:`_verify_columns`."""
    item_ids: list[pa.Array] = []
    codes: list[np.ndarray] = []
    suffixes: list[np.ndarray] = []
    recent: list[pa.Table] = []
    part_start = 0
    for part in manifest.parts if manifest is not None else []:
        if whole_from is not None and part_start + part.rows > whole_from:
            whole = _read_parts(location, manifest.model_copy(update={"parts": [part], "rows": part.rows}))
            columns = whole.table
            recent.append(columns.slice(max(0, whole_from - part_start)).replace_schema_metadata(None))
        else:
            with _open_part(location, manifest, part) as (reader, _):
                columns = reader.read(["item_id", "codes", "suffix"])
        item_ids.extend(columns.column("item_id").chunks)
        flat = pc.list_flatten(columns.column("codes")).to_numpy(zero_copy_only=False)
        if len(flat) != part.rows * space.levels:
            raise IdTableError(f"{location} is corrupted: a row of part {part.file} does not have {space.levels} codes")
        codes.append(flat.reshape(part.rows, space.levels))
        suffixes.append(columns.column("suffix").to_numpy())
        part_start += part.rows
    return _PartColumns(
        item_ids=pa.chunked_array(item_ids, pa.string()),
        codes=np.concatenate(codes) if codes else np.zeros((0, space.levels), dtype=np.int32),
        suffixes=np.concatenate(suffixes) if suffixes else np.zeros(0, dtype=np.int64),
        part_ends=np.cumsum([len(s) for s in suffixes], dtype=np.int64),
        recent=recent,
    )


def _parts_allocation_base(
    location: str | os.PathLike[str], manifest: IdTableManifest | None, space: IdSpace
) -> _AllocationBase:
    """What allocation reads of a table stored as parts: the item_id, codes and suffix columns of every part (by
    byte ranges on S3), checked for codes that fit the space and one item per (codes, suffix); the text hashes of
    held rows come from the row groups that hold them."""
    columns = _read_part_columns(location, manifest, space, whole_from=None)
    # A writer's own check, on integers (not the item_ids: allocation looks them up and adds none twice).
    _verify_columns(location, space, columns.item_ids, columns.codes, columns.suffixes, check_items=False)
    part_ends = columns.part_ends

    def text_hashes_at(rows: np.ndarray) -> list[str]:
        order = np.argsort(rows, kind="stable")
        hashes = np.empty(len(rows), dtype=object)
        part_of = np.searchsorted(part_ends, rows[order], side="right")
        for index in np.unique(part_of).tolist():
            chosen = order[part_of == index]
            start = int(part_ends[index - 1]) if index else 0
            with _open_part(location, manifest, manifest.parts[index]) as (reader, _):  # type: ignore[union-attr]
                taken = _take_rows(reader, rows[chosen] - start, ["text_hash"])
            hashes[chosen] = taken.column("text_hash").to_pylist()
        return hashes.tolist()

    return _AllocationBase(space, columns.item_ids, columns.codes, columns.suffixes, text_hashes_at)


@dataclass(frozen=True)
class TableForCheck:
    """What the pipeline's ``check`` reads of a table whose rows before ``first_row`` were checked when they were
    added: every row's item_id and codes (for the lookup of live items and the quality metrics) and the rows from
    ``first_row`` on, whole (for the ID suite). Verified as :func:`read_for_check` says."""

    space: IdSpace
    rows: int
    first_row: int
    item_ids: pa.ChunkedArray
    codes: np.ndarray  # (rows, levels), table order
    recent: IdTable  # rows first_row.. of the table


def read_for_check(location: str | os.PathLike[str], first_row: int = 0) -> TableForCheck:
    """The table at ``location`` as :class:`TableForCheck` holds it. One file: read whole and verified
    (:meth:`IdTable.read`). Stored as parts: the parts holding rows from ``first_row`` on are read whole (their
    hashes checked) and verified, and the parts before them only by their item_id, codes and suffix columns (page
    checksums); across the whole table, one row per item, codes that fit the space and one item per (codes,
    suffix) are verified. The sids, text hashes and times of the earlier parts were verified by the check that
    added them and are immutable (each part is named by its hash), so they are not read again."""
    if not is_parted(location):
        table = IdTable.read(location)
        start = min(first_row, len(table))
        return TableForCheck(
            table.space, len(table), start, table.table.column("item_id"), table.code_matrix(),
            IdTable(table.table.slice(start), table.space),
        )  # fmt: skip
    manifest = _require_manifest(location)
    space = manifest.id_space
    start = min(first_row, manifest.rows)
    columns = _read_part_columns(location, manifest, space, whole_from=start)
    _verify_columns(location, space, columns.item_ids, columns.codes, columns.suffixes)
    table = pa.concat_tables(columns.recent) if columns.recent else SCHEMA.empty_table()
    return TableForCheck(space, manifest.rows, start, columns.item_ids, columns.codes, IdTable(table, space))


def _verify_columns(
    location: str | os.PathLike[str],
    space: IdSpace,
    item_ids: pa.ChunkedArray,
    codes: np.ndarray,
    suffixes: np.ndarray,
    *,
    check_items: bool = True,
) -> None:
    """The structure a whole table must have, on its item_id, codes and suffix columns alone: one row per item
    (``check_items``), codes that fit the space, and one item per (codes, suffix), i.e. per semantic ID."""
    if not len(suffixes):
        return
    sizes = space.codebook_sizes
    problems = []
    if check_items and not _all_distinct(item_ids):
        problems.append("an item_id appears on more than one row")
    if (codes < 0).any() or any((codes[:, level] >= k).any() for level, k in enumerate(sizes)):
        problems.append(f"a code does not fit the codebook sizes {sizes}")
    elif suffixes.min() < 0:
        problems.append("a suffix is negative")
    elif not _distinct_rows(codes, suffixes, sizes):
        problems.append("a semantic ID is held by more than one item")
    if problems:
        raise IdTableError(f"{location} is corrupted: {'; '.join(problems)}")


@contextmanager
def id_table_file(location: str | os.PathLike[str]) -> Iterator[Path]:
    """A local Parquet file holding the whole table at ``location``, for tools that read one file (a training
    subprocess): the file itself (a local copy from S3), or a table stored as parts written out as one, removed
    after the block."""
    if not is_parted(location):
        with local_copy(location, suffix=".parquet") as path:
            yield path
        return
    with tempfile.TemporaryDirectory(prefix="lmindexer-ids-") as tmp:
        path = Path(tmp) / "ids.parquet"
        path.write_bytes(IdTable.read(location).to_parquet_bytes())
        yield path


def id_stability(previous: IdTable, current: IdTable) -> dict[str, Any]:
    """Share of items present in both tables whose semantic ID is unchanged."""
    old = previous.sid_map()
    new = current.sid_map()
    common = old.keys() & new.keys()
    unchanged = sum(1 for item_id in common if old[item_id] == new[item_id])
    return {
        "common_items": len(common),
        "unchanged": unchanged,
        "stability": (unchanged / len(common)) if common else None,
        "only_in_previous": len(old.keys() - new.keys()),
        "only_in_current": len(new.keys() - old.keys()),
        "same_id_space": previous.space.snapshot_version == current.space.snapshot_version,
    }
