"""Where the platform keeps things under its base URI (``s3://bucket[/root]`` or a local directory): the default
prefixes, the name of the pointer to what is live, and the one way a location is joined. Declared once, here, for the
pipeline config, the validation run layout, drop discovery and the retriever's records alike; nothing here touches
storage, so any module may import it."""

from __future__ import annotations

import os
from pathlib import Path

S3_SCHEME = "s3://"

INCOMING_PREFIX = "incoming/"
STAGED_PREFIX = "staged/"
QUARANTINE_PREFIX = "quarantine/"
CATALOG_PREFIX = "catalog/"
IDS_PREFIX = "ids/"
MODELS_PREFIX = "models/"
STATE_PREFIX = "state/"
# What is live: the pipeline's pointer under its state prefix, the retriever's under the retriever's prefix.
CURRENT = "current.json"
# Parts a catalogue version or an ID table stored as parts may have before a write compacts it into one: each part
# costs a reader a request or two, and compaction rewrites the whole of it once in this many writes. Declared here,
# not beside the ID table, so that loading a pipeline config does not import Arrow, numpy and boto3.
DEFAULT_MAX_PARTS = 16


def is_s3_uri(location: str | os.PathLike[str]) -> bool:
    return isinstance(location, str) and location.startswith(S3_SCHEME)


def join_uri(base_uri: str, *parts: str) -> str:
    """``base_uri`` joined with relative parts; slashes around each part and empty parts do not count."""
    clean = [p.strip("/") for p in parts if p.strip("/")]
    if is_s3_uri(base_uri):
        return "/".join([base_uri.rstrip("/"), *clean])
    return str(Path(base_uri).joinpath(*clean))
