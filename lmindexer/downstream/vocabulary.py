"""How a semantic ID becomes tokens: one token per position, codes first, then the collision suffix.

Position ``p`` has its own vocabulary (``sizes[p]`` tokens, values ``0..sizes[p]-1``), so token values are the codes
themselves and a model keeps one embedding table per position. The suffix position gets room for more suffixes than
the ID table uses today, so items indexed later (which may take the next suffix of their code tuple) can still be
inserted into the trie and returned without retraining.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from lmindexer.downstream.trie import IdTrie
from lmindexer.errors import ConfigError
from lmindexer.idtable import IdTable, format_sid, parse_sid


@dataclass(frozen=True)
class IdVocabulary:
    """Token vocabulary sizes per position of one ID space."""

    snapshot_version: str
    method: str
    sizes: tuple[int, ...]

    @property
    def depth(self) -> int:
        return len(self.sizes)

    @classmethod
    def for_table(cls, table: IdTable, *, suffix_headroom: int = 16) -> IdVocabulary:
        """Codebook sizes of the table's ID space, plus a suffix position with ``suffix_headroom`` spare values."""
        if suffix_headroom < 0:
            raise ConfigError(f"suffix_headroom must be >= 0, got {suffix_headroom}")
        if len(table) == 0:
            raise ConfigError("the ID table is empty: there is nothing to retrieve")
        largest = max(table.table.column("suffix").to_pylist())
        sizes = (*table.space.codebook_sizes, int(largest) + 1 + suffix_headroom)
        return cls(table.space.snapshot_version, table.space.method, sizes)

    def tokens(self, codes: Sequence[int], suffix: int) -> tuple[int, ...]:
        tokens = (*(int(c) for c in codes), int(suffix))
        if len(tokens) != self.depth:
            raise ConfigError(f"an ID of this space has {self.depth - 1} codes, got {len(tokens) - 1}")
        for position, (token, size) in enumerate(zip(tokens, self.sizes, strict=True)):
            if not 0 <= token < size:
                what = "suffix" if position == self.depth - 1 else f"code {position + 1}"
                hint = "; retrain the model to widen its suffix vocabulary" if position == self.depth - 1 else ""
                raise ConfigError(f"{what} {token} is outside this model's vocabulary (0..{size - 1}){hint}")
        return tokens

    def tokens_of_sid(self, sid: str) -> tuple[int, ...]:
        codes, suffix = parse_sid(sid)
        return self.tokens(codes, suffix)

    @staticmethod
    def sid(tokens: Sequence[int]) -> str:
        return format_sid(tokens[:-1], tokens[-1])

    def trie(self, sids: Mapping[str, str] | Iterable[tuple[str, str]]) -> IdTrie:
        """A trie of ``item_id -> sid`` pairs."""
        pairs = sids.items() if isinstance(sids, Mapping) else sids
        return IdTrie.build(self.depth, ((item_id, self.tokens_of_sid(sid)) for item_id, sid in pairs))

    def to_json(self) -> str:
        return json.dumps({"snapshot_version": self.snapshot_version, "method": self.method, "sizes": self.sizes})

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> IdVocabulary:
        return cls(str(data["snapshot_version"]), str(data["method"]), tuple(int(s) for s in data["sizes"]))  # type: ignore[union-attr]
