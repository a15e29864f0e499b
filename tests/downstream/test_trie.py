from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lmindexer.downstream.trie import IdTrie
from lmindexer.errors import ConfigError


def _trie() -> IdTrie:
    return IdTrie.build(3, [("a", (1, 2, 0)), ("b", (1, 2, 1)), ("c", (1, 5, 0)), ("d", (4, 0, 0))])


def test_allowed_next_tokens_follow_existing_ids():
    trie = _trie()
    assert trie.allowed(()) == [1, 4]
    assert trie.allowed((1,)) == [2, 5]
    assert trie.allowed((1, 2)) == [0, 1]
    assert trie.allowed((1, 3)) == []  # no ID starts like this
    assert trie.allowed((1, 2, 0)) == []  # complete
    assert trie.item_for((1, 2, 1)) == "b"
    assert trie.item_for((1, 2)) is None and trie.item_for((9, 9, 9)) is None
    assert len(trie) == 4 and "c" in trie and "z" not in trie


def test_remove_prunes_empty_branches_and_keeps_siblings():
    trie = _trie()
    assert trie.remove("c")
    assert trie.allowed((1,)) == [2]
    assert trie.remove("d")
    assert trie.allowed(()) == [1]
    assert not trie.remove("d")  # already gone
    assert trie.remove("a")
    assert trie.allowed((1, 2)) == [1]
    assert trie.remove("b")
    assert trie.allowed(()) == [] and len(trie) == 0


def test_insert_makes_a_new_id_reachable_and_moves_an_item():
    trie = _trie()
    trie.insert("e", (4, 0, 1))
    assert trie.allowed((4, 0)) == [0, 1]
    assert trie.item_for((4, 0, 1)) == "e"
    trie.insert("e", (4, 0, 1))  # idempotent
    assert len(trie) == 5
    trie.insert("e", (7, 7, 7))  # a new ID for the same item replaces the old one
    assert trie.item_for((4, 0, 1)) is None and trie.allowed((4, 0)) == [0]
    assert trie.tokens_of("e") == (7, 7, 7)


def test_bad_ids_are_refused():
    trie = _trie()
    with pytest.raises(ConfigError, match="already belongs to item 'a'"):
        trie.insert("z", (1, 2, 0))
    with pytest.raises(ConfigError, match="3 tokens"):
        trie.insert("z", (1, 2))
    with pytest.raises(ConfigError, match="non-negative"):
        trie.insert("z", (1, -2, 0))
    with pytest.raises(ConfigError, match="depth"):
        IdTrie(0)


def test_open_children_prune_prefixes_whose_items_are_all_excluded():
    trie = _trie()
    assert trie.count(()) == 4 and trie.count((1,)) == 3 and trie.count((1, 2)) == 2 and trie.count((9,)) == 0
    excluded = trie.excluded_counts({"a", "b", "zz"})  # zz is not in the trie: ignored
    assert trie.open_children((), excluded) == [1, 4]  # c is still under 1
    assert trie.open_children((1,), excluded) == [5]  # 1-2 holds only a and b
    assert trie.open_children((1,), trie.excluded_counts(set())) == [2, 5]
    everything = trie.excluded_counts({"a", "b", "c", "d"})
    assert trie.open_children((), everything) == []


# Items with distinct ids and distinct IDs of three tokens (one ID per item, one item per ID).
_ITEMS = st.dictionaries(st.tuples(*[st.integers(0, 2)] * 3), st.text("abcdef", min_size=1, max_size=3), max_size=20)


@settings(max_examples=60, deadline=None)
@given(
    by_tokens=_ITEMS.filter(lambda found: len(set(found.values())) == len(found)),
    removed=st.sets(st.text("abcdef", min_size=1, max_size=3), max_size=5),
    excluded=st.sets(st.text("abcdef", min_size=1, max_size=3), max_size=8),
)
def test_open_children_agree_with_a_scan_of_the_items(by_tokens, removed, excluded):
    """After inserts and removals, a token is open exactly when some item outside ``excluded`` lies under it."""
    ids = {item_id: tokens for tokens, item_id in by_tokens.items()}
    trie = IdTrie.build(3, ids.items())
    for item_id in removed:
        trie.remove(item_id)
    live = {item_id: tokens for item_id, tokens in ids.items() if item_id not in removed}
    prefixes = {tokens[:length] for tokens in live.values() for length in range(3)} | {()}
    counts = trie.excluded_counts(excluded)
    for prefix in prefixes:
        under = [tokens for tokens in live.values() if tokens[: len(prefix)] == prefix]
        assert trie.count(prefix) == len(under)
        reachable = sorted(
            {
                tokens[len(prefix)]
                for item_id, tokens in live.items()
                if tokens[: len(prefix)] == prefix and item_id not in excluded
            }
        )
        assert trie.open_children(prefix, counts) == reachable
