"""Search documents for tests: small items with colliding ID prefixes."""

from __future__ import annotations

from typing import Any

from lmindexer.catalog.items import Item
from lmindexer.search import build_document


def make_docs(count: int, *, version: str = "v1", start: int = 0, title: str = "item") -> list[dict[str, Any]]:
    """Search documents of ``count`` items whose 3-level IDs collide on prefixes (codes over K = 3, 4, 5)."""
    docs = []
    for n in range(start, start + count):
        item = Item(
            item_id=f"item-{n:04d}",
            title=f"{title} {n}",
            text=f"the text of {title} {n}",
            category=("shoes", "hats", "bags")[n % 3],
            attributes={"brand": f"brand-{n % 4}", "price": 10.0 + n},
            updated_at="2024-05-01T12:00:00+00:00",
        )
        codes = [n % 3, n % 4, n % 5]
        row = {"item_id": item.item_id, "codes": codes, "suffix": n // 60, "snapshot_version": version}
        docs.append(build_document(item, row))
    return docs
