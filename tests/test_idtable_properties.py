"""Property-based tests of ID allocation: under any interleaving of assigning, deleting and re-adding items, every ID
is unique, an item's ID never changes, and an ID once handed out is never given to another item."""

from __future__ import annotations

import datetime as dt
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from lmindexer.idtable import Candidate, IdSpace, IdTable, parse_sid, store_allocation
from lmindexer.layout import DEFAULT_MAX_PARTS

SPACE = IdSpace("rq-kmeans-20260101T000000Z-abcd1234", "rq-kmeans", (3, 2), "argmax")
ITEMS = [f"item-{n}" for n in range(12)]
codes = st.tuples(st.integers(0, 2), st.integers(0, 1))
texts = st.sampled_from(["a", "b", "c"])


class Allocation(RuleBasedStateMachine):
    """The catalogue changes in arbitrary ways between runs; each run allocates the live items into a stored table."""

    space = SPACE
    name = "ids.parquet"  # one file
    max_parts = DEFAULT_MAX_PARTS

    def __init__(self) -> None:
        super().__init__()
        self.folder = tempfile.TemporaryDirectory()
        self.uri = str(Path(self.folder.name) / self.name)
        self.live: dict[str, tuple[tuple[int, int], str]] = {}  # item -> (codes the indexer gives now, text)
        self.reported: dict[str, str] = {}  # every ID ever reported, by item
        self.rows: list[dict] = []  # the stored rows after the last run
        self.clock = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)

    def teardown(self) -> None:
        self.folder.cleanup()

    def candidate(self, item: str, item_codes: tuple[int, int], text: str) -> Candidate:
        return Candidate(item, item_codes, text)

    @rule(item=st.sampled_from(ITEMS), item_codes=codes, text=texts)
    def add_or_change(self, item: str, item_codes: tuple[int, int], text: str) -> None:
        # a re-added item, or one whose text changed, may well be coded differently now
        self.live[item] = (item_codes, text)

    @rule(item=st.sampled_from(ITEMS))
    def delete(self, item: str) -> None:
        self.live.pop(item, None)

    @rule(order=st.randoms(use_true_random=False))
    def run(self, order) -> None:
        candidates = [self.candidate(i, c, t) for i, (c, t) in self.live.items()]
        order.shuffle(candidates)  # the catalogue's row order must not matter
        self.clock += dt.timedelta(hours=1)
        stored = store_allocation(self.uri, self.space, candidates, assigned_at=self.clock, max_parts=self.max_parts)
        for item, sid in stored.added.sid_map().items():
            assert item not in self.reported  # an item with an ID is never given another
            self.reported[item] = sid
        new_rows = IdTable.read(self.uri).table.to_pylist()
        assert new_rows[: len(self.rows)] == self.rows  # existing rows are never rewritten
        assert new_rows[len(self.rows) :] == stored.added.table.to_pylist()  # what was reported is what is stored
        assert (stored.rows_before, stored.rows_after) == (len(self.rows), len(new_rows))
        self.rows = new_rows

    @invariant()
    def ids_are_unique_stable_and_never_reused(self) -> None:
        if not self.rows:
            return
        table = IdTable.read(self.uri)
        sids = table.sid_map()
        assert len(set(sids.values())) == len(sids)  # one item per ID, deleted items' IDs included
        for item, sid in self.reported.items():
            assert sids[item] == sid  # an ID once reported never changes, and never changes owner
        by_tuple: dict[tuple[int, ...], list[int]] = {}
        for row in self.rows:
            by_tuple.setdefault(tuple(row["codes"]), []).append(row["suffix"])
        for suffixes in by_tuple.values():
            assert suffixes == list(range(len(suffixes)))  # each new item took the next free suffix
        for sid in sids.values():
            parse_sid(sid)


class BalancedAllocation(Allocation):
    """The same under a balanced last level, with every item ranking every last code: additionally, a prefix never
    holds two items with the same code while it holds no more items than codes."""

    space = IdSpace(SPACE.snapshot_version, SPACE.method, SPACE.codebook_sizes, "balanced")

    def candidate(self, item: str, item_codes: tuple[int, int], text: str) -> Candidate:
        size = self.space.codebook_sizes[-1]
        order = tuple((item_codes[-1] + k) % size for k in range(size))  # its own code first, then the others
        return Candidate(item, item_codes, text, order)

    @invariant()
    def a_prefix_with_free_codes_has_no_collision(self) -> None:
        by_prefix: dict[tuple[int, ...], list[int]] = {}
        for row in self.rows:
            by_prefix.setdefault(tuple(row["codes"][:-1]), []).append(row["suffix"])
        for suffixes in by_prefix.values():
            if len(suffixes) <= self.space.codebook_sizes[-1]:
                assert set(suffixes) == {0}


SETTINGS = settings(
    max_examples=60, stateful_step_count=25, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
TestAllocation = Allocation.TestCase
TestAllocation.settings = SETTINGS
TestBalancedAllocation = BalancedAllocation.TestCase
TestBalancedAllocation.settings = SETTINGS


class HugeCodebookAllocation(Allocation):
    """The same where the code tuples do not fit one 62-bit integer (codebook sizes of 2**40), so the table's
    grouping by code tuple takes its general path."""

    space = IdSpace(SPACE.snapshot_version, SPACE.method, (2**40, 2**40), "argmax")


TestHugeCodebookAllocation = HugeCodebookAllocation.TestCase
TestHugeCodebookAllocation.settings = SETTINGS


@settings(max_examples=80, deadline=None)
@given(
    sizes=st.sampled_from([(3, 2), (2, 3, 2), (4,), (2**40, 2**40)]),
    rows=st.lists(st.tuples(st.integers(0, 2), st.integers(0, 2), st.integers(0, 1)), max_size=30),
    asked=st.lists(st.integers(0, 40), max_size=8),
)
def test_table_lookups_agree_with_a_row_by_row_reading(sizes, rows, asked):
    """``next_suffixes``, ``taken_last_codes`` and ``codes_of`` run vectorised over the whole table; they must say
    what reading the rows one by one says."""
    space = IdSpace(SPACE.snapshot_version, SPACE.method, sizes, "argmax")
    levels = len(sizes)
    candidates = [
        Candidate(f"item-{n}", tuple(min(c, k - 1) for c, k in zip(row, sizes, strict=False)), "h")
        for n, row in enumerate(rows)
    ]
    table, _ = IdTable.empty(space).allocate(candidates)
    stored = table.table.to_pylist()
    expected_next: dict[tuple[int, ...], int] = {}
    expected_taken: dict[tuple[int, ...], set[int]] = {}
    for row in stored:
        codes = tuple(row["codes"])
        expected_next[codes] = max(expected_next.get(codes, 0), row["suffix"] + 1)
        expected_taken.setdefault(codes[:-1], set()).add(codes[-1])
    assert table.next_suffixes() == expected_next
    some = [tuple(row["codes"]) for row in stored[::2]] + [(1,) * levels]
    assert table.next_suffixes(only=some) == {c: expected_next[c] for c in some if c in expected_next}
    prefixes = [c[:-1] for c in some]
    assert table.taken_last_codes(prefixes) == {p: expected_taken[p] for p in prefixes if p in expected_taken}
    ids = [f"item-{n}" for n in asked]
    assert table.codes_of(ids) == {row["item_id"]: tuple(row["codes"]) for row in stored if row["item_id"] in ids}


class PartedAllocation(Allocation):
    """The same on a table stored as parts that is compacted every third write, so that appends, compactions and
    runs that add nothing interleave."""

    name = "ids.json"
    max_parts = 3


class BalancedPartedAllocation(BalancedAllocation):
    name = "ids.json"
    max_parts = 3


TestPartedAllocation = PartedAllocation.TestCase
TestPartedAllocation.settings = SETTINGS
TestBalancedPartedAllocation = BalancedPartedAllocation.TestCase
TestBalancedPartedAllocation.settings = SETTINGS
