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

Stored tables are checked when read: Parquet page checksums catch flipped bytes in the data, and the structure is
verified (one row per item, one item per ID, IDs consistent with their codes), so a corrupted table is an error,
never a silent source of wrong IDs.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import math
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from lmindexer.errors import IdTableError
from lmindexer.storage.parquet import prefetch_columns
from lmindexer.storage.s3 import exists, open_random_access
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
        try:
            table = pq.read_table(pa.BufferReader(data), page_checksum_verification=True)
        except (pa.ArrowException, OSError) as exc:
            raise IdTableError(f"{location} is not a readable Parquet ID table: {exc}") from exc
        metadata = table.schema.metadata or {}
        if _METADATA_KEY not in metadata:
            raise IdTableError(f"{location} is not an lmindexer ID table (no ID space in its metadata)")
        try:
            space = IdSpace.from_json(metadata[_METADATA_KEY])
        except (ValueError, KeyError, TypeError) as exc:
            raise IdTableError(f"{location} has an unreadable ID space in its metadata ({exc})") from exc
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
        if pc.count_distinct(table.column("item_id")).as_py() != n:
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
            sids_unique = pc.count_distinct(table.column("sid")).as_py() == n
        if not sids_unique:
            problems.append("a semantic ID is held by more than one item")
        if problems:
            raise IdTableError(f"{location} is corrupted: {'; '.join(problems)}")

    def write(self, destination: str | os.PathLike[str], *, replacing: str | None = None) -> str:
        """Write the table to a local path or an ``s3://`` URI, compare-and-swap: only if the stored table is still
        at version ``replacing`` (``None``: only if there is none yet). Returns the new version; raises
        :class:`~lmindexer.storage.versioned.VersionConflict` when another writer got there first."""
        return write_if_version(self.to_parquet_bytes(), destination, replacing)

    @classmethod
    def read(cls, location: str | os.PathLike[str]) -> IdTable:
        stored = read_versioned(location)
        if stored.data is None:
            raise IdTableError(f"ID table not found: {location}")
        return cls.from_parquet_bytes(stored.data, location)


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
    """The ID table at ``location`` opened for reading some of its columns and row groups (byte ranges on S3), with
    its ID space; anything that is not a readable ID table is an :class:`IdTableError` naming it."""
    with open_random_access(location) as handle:
        try:
            parquet = pq.ParquetFile(handle, page_checksum_verification=True)
            metadata = parquet.schema_arrow.metadata or {}
            if _METADATA_KEY not in metadata:
                raise IdTableError(f"{location} is not an lmindexer ID table (no ID space in its metadata)")
            try:
                space = IdSpace.from_json(metadata[_METADATA_KEY])
            except (ValueError, KeyError, TypeError) as exc:
                raise IdTableError(f"{location} has an unreadable ID space in its metadata ({exc})") from exc
            yield _ColumnReader(handle, parquet), space
        except (pa.ArrowException, OSError) as exc:
            raise IdTableError(f"{location} is not a readable Parquet ID table: {exc}") from exc


def stored_item_ids(location: str | os.PathLike[str]) -> pa.ChunkedArray | None:
    """The item_id column of the ID table at ``location`` (None: no table there), read alone: for a membership
    question (which items already have an ID), without reading and verifying the whole table."""
    if not exists(location):
        return None
    with _stored_columns(location) as (reader, _):
        return reader.read(["item_id"]).column("item_id")


def read_id_rows(location: str | os.PathLike[str], item_ids: Iterable[str] | pa.Array) -> IdTable:
    """The rows of ``item_ids`` (those that have one) of the ID table at ``location``, in table order, verified as
    a table of their own: the item_id column and then only the row groups that hold the wanted rows are read (by
    byte ranges on S3), so a step that needs the rows of a run's thousand items does not read and verify a million.
    For reading only: the whole table's structure is what ``check`` verifies."""
    wanted = item_ids if isinstance(item_ids, pa.Array) else pa.array(sorted(set(item_ids)), pa.string())
    if not exists(location):
        raise IdTableError(f"ID table not found: {location}")
    with _stored_columns(location) as (reader, space):
        hits = pc.is_in(reader.read(["item_id"]).column("item_id"), value_set=wanted)
        rows = np.flatnonzero(hits.to_numpy(zero_copy_only=False))
        metadata = reader.parquet.metadata
        group_ends = np.cumsum([metadata.row_group(g).num_rows for g in range(metadata.num_row_groups)])
        groups = np.unique(np.searchsorted(group_ends, rows, side="right")).tolist()
        found = reader.read(row_groups=groups) if groups else reader.parquet.schema_arrow.empty_table()
    table = IdTable(found.filter(pc.is_in(found.column("item_id"), value_set=wanted)), space)
    table.verify(location)
    return table


@dataclass(frozen=True)
class StoredIdTable:
    """A table as read from storage, with the version a compare-and-swap write must name (``None``: not stored)."""

    table: IdTable
    version: str | None


def read_id_table(location: str | os.PathLike[str], space: IdSpace) -> StoredIdTable:
    """The table at ``location`` with its version, or an empty one of ``space``; refuses a table of another space."""
    stored = read_versioned(location)
    if stored.data is None:
        return StoredIdTable(IdTable.empty(space), None)
    table = IdTable.from_parquet_bytes(stored.data, location)
    if table.space.snapshot_version != space.snapshot_version:
        raise IdTableError(
            f"{location} holds IDs of snapshot {table.space.snapshot_version}, not {space.snapshot_version}; "
            "a new snapshot defines a new ID space, so write its IDs to a new table"
        )
    return StoredIdTable(table, stored.version)


@dataclass(frozen=True)
class StoredAllocation:
    """The outcome of :func:`store_allocation`: the table as written (or found), what changed, and how."""

    table: IdTable
    report: AllocationReport
    rows_before: int
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
) -> StoredAllocation:
    """Give every candidate without an ID one and store the table, compare-and-swap.

    Reads the table and its version, allocates on top of it, checks that every existing row is unchanged and
    writes only if the stored table is still that version. When another writer got there first, its rows are
    re-read and the allocation is made again on top of them (items it already gave an ID keep that ID); after
    ``attempts`` tries the call fails with :class:`IdTableError` and writes nothing. An absent table is created
    (empty if there are no candidates), so a completed call always leaves a stored table.
    """
    wanted = list(candidates)
    stamp = (assigned_at or dt.datetime.now(dt.UTC)).astimezone(dt.UTC)
    for attempt in range(1, attempts + 1):
        stored = read_id_table(location, space)
        before = stored.table
        after, report = before.allocate(wanted, assigned_at=stamp)
        if after is before and stored.version is not None:
            return StoredAllocation(after, report, len(before), stored.version, False, attempt)
        kept = after.table.slice(0, len(before)).replace_schema_metadata(None)
        if not kept.equals(before.table.replace_schema_metadata(None)):
            raise IdTableError(f"allocation changed existing rows of {location}; refusing to write it")
        try:
            version = after.write(location, replacing=stored.version)
        except VersionConflict:
            continue
        return StoredAllocation(after, report, len(before), version, True, attempt)
    raise IdTableError(
        f"{location} was changed by other writers {attempts} times while IDs were being allocated; nothing of this "
        "allocation was written: run it again"
    )


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
