"""Content digests of stored models: recorded when a model directory is written, checked when it is read.

A stored model (an indexer snapshot, a generative retriever) is a directory: one JSON document plus weight and asset
files. The document records an ``integrity`` block: the SHA-256 of every file (with its size) and of every part of
the document itself, and one digest over all of them. Loading recomputes them and refuses the directory, naming each
part that differs, when anything was edited, truncated, removed or added after it was written: a snapshot whose
config or weights changed would otherwise silently hand out different IDs under the same version.

The digests guard against accidents (a hand edit, a partial copy, a corrupted download), not against someone who
rewrites the digests too; that needs signed storage.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import save_file

from lmindexer.errors import SnapshotError

ALGORITHM = "sha256"
INTEGRITY_KEY = "integrity"
_CHUNK = 1 << 20
_SHOWN = 6
# Rust's io::Error text, which safetensors passes on instead of raising OSError.
_OS_ERROR = re.compile(r"os error (\d+)")


@contextmanager
def replaced_atomically(target: Path) -> Iterator[Path]:
    """A staging directory beside ``target`` to write into: when the block ends, it replaces ``target`` with one
    rename (a half-written directory never replaces a good one); when the block fails, it is removed."""
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        yield staging
        if target.exists():
            shutil.rmtree(target)
        os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def write_safetensors(tensors: Mapping[str, torch.Tensor], path: Path) -> None:
    """``safetensors.torch.save_file``, but a failed write (disk full, read-only, permission) raises ``OSError`` with
    its errno, as Python's own writes do, instead of a ``SafetensorError`` that only mentions it in its text."""
    try:
        save_file(dict(tensors), str(path))
    except SafetensorError as exc:
        found = _OS_ERROR.search(str(exc))
        if found is None:
            raise
        code = int(found.group(1))
        raise OSError(code, os.strerror(code) if code in errno.errorcode else str(exc), str(path)) from exc


def file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def stored_files(directory: Path, document_file: str) -> dict[str, Path]:
    """Every regular file under ``directory`` by its relative POSIX path, except the document itself."""
    return {
        path.relative_to(directory).as_posix(): path
        for path in sorted(directory.rglob("*"))
        if path.is_file() and path.relative_to(directory).as_posix() != document_file
    }


def _value_digest(value: Any) -> str:
    canonical = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=True)
    return hashlib.sha256(canonical.encode()).hexdigest()


def document_parts(document: Mapping[str, Any], *, expand: Iterable[str], skip: Iterable[str]) -> dict[str, str]:
    """The digest of every top-level entry of ``document`` except ``skip`` (and the integrity block); the mappings
    named in ``expand`` get one digest per key (``config.text_template``), so a mismatch names the key."""
    expanded, skipped = set(expand), {*skip, INTEGRITY_KEY}
    parts: dict[str, str] = {}
    for key, value in document.items():
        if key in skipped:
            continue
        if key in expanded and isinstance(value, Mapping):
            parts[key] = "mapping"  # an entry replaced by a scalar must not go unnoticed
            for inner, inner_value in value.items():
                parts[f"{key}.{inner}"] = _value_digest(inner_value)
        else:
            parts[key] = _value_digest(value)
    return parts


def _overall(entries: Mapping[str, str], files: Mapping[str, Mapping[str, Any]]) -> str:
    return _value_digest({"entries": dict(entries), "files": {name: f["sha256"] for name, f in files.items()}})


def seal(
    directory: Path,
    document: Mapping[str, Any],
    *,
    document_file: str,
    expand: Iterable[str] = (),
    skip: Iterable[str] = (),
) -> dict[str, Any]:
    """The integrity block for ``document`` and the files already written to ``directory``.

    ``document`` must be exactly what will be stored (JSON values only): its parts are hashed in their JSON form.
    """
    stored = json.loads(json.dumps(document, allow_nan=True))
    files = {
        name: {"sha256": file_digest(path), "bytes": path.stat().st_size}
        for name, path in stored_files(directory, document_file).items()
    }
    entries = document_parts(stored, expand=expand, skip=skip)
    return {"algorithm": ALGORITHM, "digest": _overall(entries, files), "entries": entries, "files": files}


def _printable(name: str) -> str:
    return name if name.isprintable() else repr(name)


def verify(
    directory: Path,
    document: Mapping[str, Any],
    *,
    what: str,
    document_file: str,
    expand: Iterable[str] = (),
    skip: Iterable[str] = (),
) -> str:
    """Check ``document`` and the files of ``directory`` against the integrity block ``document`` records; returns
    the overall digest. Raises :class:`SnapshotError` naming every part that differs."""
    block = document.get(INTEGRITY_KEY)
    if not _well_formed(block):
        raise SnapshotError(f"{what} {directory}: its {document_file} has a malformed {INTEGRITY_KEY!r} record")
    if block["algorithm"] != ALGORITHM:
        raise SnapshotError(f"{what} {directory}: unsupported digest algorithm {block['algorithm']!r}")
    problems: list[str] = []
    recorded_entries: Mapping[str, str] = block["entries"]
    entries = document_parts(document, expand=expand, skip=skip)
    for name in sorted(set(recorded_entries) | set(entries)):
        if name not in entries:
            problems.append(f"{_printable(name)} was removed from {document_file}")
        elif name not in recorded_entries:
            problems.append(f"{_printable(name)} was added to {document_file}")
        elif entries[name] != recorded_entries[name]:
            problems.append(f"{_printable(name)} was edited")
    recorded_files: Mapping[str, Mapping[str, Any]] = block["files"]
    present = stored_files(directory, document_file)
    for name in sorted(set(recorded_files) | set(present)):
        if name not in present:
            problems.append(f"file {_printable(name)} is missing")
        elif name not in recorded_files:
            problems.append(f"unexpected file {_printable(name)}")
        else:
            size, saved = present[name].stat().st_size, recorded_files[name]["bytes"]
            if size != saved:
                problems.append(f"file {_printable(name)} has {size} bytes, saved with {saved}")
            elif file_digest(present[name]) != recorded_files[name]["sha256"]:
                problems.append(f"file {_printable(name)} changed")
    if problems:
        shown = "; ".join(problems[:_SHOWN])
        more = f"; and {len(problems) - _SHOWN} more" if len(problems) > _SHOWN else ""
        raise SnapshotError(f"{what} {directory} does not match what was saved: {shown}{more}")
    if _overall(recorded_entries, recorded_files) != block["digest"]:
        raise SnapshotError(f"{what} {directory}: its recorded content digest does not match its parts")
    return str(block["digest"])


def _well_formed(block: Any) -> bool:
    if not isinstance(block, Mapping):
        return False
    if not isinstance(block.get("algorithm"), str) or not isinstance(block.get("digest"), str):
        return False
    entries, files = block.get("entries"), block.get("files")
    if not isinstance(entries, Mapping) or not all(isinstance(v, str) for v in entries.values()):
        return False
    if not isinstance(files, Mapping):
        return False
    return all(
        isinstance(f, Mapping) and isinstance(f.get("sha256"), str) and isinstance(f.get("bytes"), int)
        for f in files.values()
    )


def legacy_content_hash(directory: Path, config: Any, *, document_file: str) -> str:
    """The content hash snapshots written before integrity records carry in their version: SHA-256 over every
    file's relative path and bytes (in path order), then the config as sorted-key JSON."""
    digest = hashlib.sha256()
    for name, path in stored_files(directory, document_file).items():
        digest.update(name.encode())
        with path.open("rb") as handle:
            for chunk in iter(lambda h=handle: h.read(_CHUNK), b""):
                digest.update(chunk)
    digest.update(json.dumps(config, sort_keys=True).encode())
    return digest.hexdigest()
