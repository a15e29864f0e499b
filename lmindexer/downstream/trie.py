"""A prefix trie over semantic IDs, the constraint of beam search.

Each item's ID is a fixed-length tuple of tokens (its codes, then its suffix), unique per item. The trie answers
"which tokens may follow this prefix" so decoding can only produce IDs that exist, and maps a complete tuple back to
its item. Inserting and removing items is O(depth), so a newly indexed item becomes retrievable without rebuilding
anything, and a deleted one can no longer be returned. It also counts the items under every prefix, so a decoder can
leave out a set of items (a user's history) by pruning the prefixes that lead only to them.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection, Iterable, Iterator, Sequence

from lmindexer.errors import ConfigError

_ITEM = object()  # key of the leaf entry holding the item_id, never a token


class IdTrie:
    """Semantic IDs of a fixed depth, each mapped to one item_id."""

    def __init__(self, depth: int) -> None:
        if depth < 1:
            raise ConfigError(f"an ID trie needs a depth of at least 1, got {depth}")
        self.depth = depth
        self._root: dict = {}
        self._tokens_of: dict[str, tuple[int, ...]] = {}
        self._counts: Counter[tuple[int, ...]] = Counter()  # prefix (length 1..depth) -> items under it

    @classmethod
    def build(cls, depth: int, entries: Iterable[tuple[str, Sequence[int]]]) -> IdTrie:
        trie = cls(depth)
        for item_id, tokens in entries:
            trie.insert(item_id, tokens)
        return trie

    def __len__(self) -> int:
        return len(self._tokens_of)

    def __contains__(self, item_id: object) -> bool:
        return item_id in self._tokens_of

    def __iter__(self) -> Iterator[tuple[str, tuple[int, ...]]]:
        return iter(self._tokens_of.items())

    def _check(self, tokens: Sequence[int]) -> tuple[int, ...]:
        key = tuple(int(t) for t in tokens)
        if len(key) != self.depth:
            raise ConfigError(f"an ID in this trie has {self.depth} tokens, got {len(key)}: {key}")
        if any(t < 0 for t in key):
            raise ConfigError(f"ID tokens must be non-negative, got {key}")
        return key

    def insert(self, item_id: str, tokens: Sequence[int]) -> None:
        """Add an item; re-inserting an item under its own ID is a no-op, under a new ID it moves."""
        key = self._check(tokens)
        current = self._tokens_of.get(item_id)
        if current == key:
            return
        holder = self.item_for(key)
        if holder is not None:
            raise ConfigError(f"ID {key} already belongs to item {holder!r}; it cannot also be {item_id!r}'s")
        if current is not None:
            self.remove(item_id)
        node = self._root
        for token in key:
            node = node.setdefault(token, {})
        node[_ITEM] = item_id
        self._tokens_of[item_id] = key
        for length in range(1, self.depth + 1):
            self._counts[key[:length]] += 1

    def remove(self, item_id: str) -> bool:
        """Drop an item; its now-empty branches go too. False if the item was not there."""
        key = self._tokens_of.pop(item_id, None)
        if key is None:
            return False
        path = [self._root]
        for token in key:
            path.append(path[-1][token])
        del path[-1][_ITEM]
        for length in range(1, self.depth + 1):
            self._counts[key[:length]] -= 1
            if not self._counts[key[:length]]:
                del self._counts[key[:length]]
        for depth in range(self.depth, 0, -1):
            if path[depth]:
                break
            del path[depth - 1][key[depth - 1]]
        return True

    def _node(self, prefix: Sequence[int]) -> dict | None:
        node = self._root
        for token in prefix:
            node = node.get(int(token))
            if node is None:
                return None
        return node

    def allowed(self, prefix: Sequence[int]) -> list[int]:
        """Tokens that continue ``prefix`` towards at least one existing ID, ascending; [] if none or complete."""
        if len(prefix) >= self.depth:
            return []
        node = self._node(prefix)
        return sorted(t for t in node if t is not _ITEM) if node else []

    def count(self, prefix: Sequence[int]) -> int:
        """How many items have an ID starting with ``prefix`` (all of them for the empty prefix)."""
        key = tuple(int(t) for t in prefix)
        return self._counts.get(key, 0) if key else len(self._tokens_of)

    def excluded_counts(self, item_ids: Collection[str]) -> Counter[tuple[int, ...]]:
        """For the items of ``item_ids`` that are in the trie: how many of them lie under each of their prefixes.
        A prefix leads to an item outside ``item_ids`` exactly when :meth:`count` exceeds this count (see
        :meth:`open_children`); items not in the trie are ignored."""
        counts: Counter[tuple[int, ...]] = Counter()
        for item_id in set(item_ids):
            key = self._tokens_of.get(item_id)
            if key is not None:
                for length in range(1, self.depth + 1):
                    counts[key[:length]] += 1
        return counts

    def open_children(
        self, prefix: Sequence[int], excluded: Counter[tuple[int, ...]], allowed: Sequence[int] | None = None
    ) -> list[int]:
        """:meth:`allowed`, less the tokens under which every item is excluded (``excluded`` from
        :meth:`excluded_counts`): the continuations that still reach an item that may be returned. ``allowed``:
        :meth:`allowed` of ``prefix`` when the caller already has it."""
        key = tuple(int(t) for t in prefix)
        tokens = list(allowed) if allowed is not None else self.allowed(key)
        if not excluded:
            return tokens
        return [t for t in tokens if self._counts[(*key, t)] > excluded.get((*key, t), 0)]

    def item_for(self, tokens: Sequence[int]) -> str | None:
        """The item a complete ID belongs to, ``None`` if no item has it."""
        if len(tokens) != self.depth:
            return None
        node = self._node(tokens)
        return None if node is None else node.get(_ITEM)

    def tokens_of(self, item_id: str) -> tuple[int, ...] | None:
        return self._tokens_of.get(item_id)
