from __future__ import annotations

from pathlib import Path

import pytest
from drop_catalogue import Catalogue, write_catalogue


@pytest.fixture
def catalogue(tmp_path: Path) -> Catalogue:
    """A 54-row product drop: 40 good rows, a tombstone and one broken row of every class, as JSONL."""
    return write_catalogue(tmp_path / "drop-2024-05-01.jsonl")
