"""Where the platform keeps derived data it can rebuild: embeddings, downloaded data sets."""

from __future__ import annotations

import os
from pathlib import Path

CACHE_ENV = "LMINDEXER_CACHE_DIR"
DEFAULT_CACHE_DIR = Path("~/.cache/lmindexer")


def cache_root(override: str | os.PathLike[str] | None = None) -> Path:
    """``override``, else ``$LMINDEXER_CACHE_DIR``, else ``~/.cache/lmindexer``."""
    if override is not None:
        return Path(override).expanduser()
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else DEFAULT_CACHE_DIR.expanduser()
