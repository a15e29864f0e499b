from __future__ import annotations

import pytest

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
