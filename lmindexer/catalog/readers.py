"""Streaming catalogue readers for JSONL, JSONL.gz, Parquet and CSV, from local paths and ``s3://`` URIs.

Rows are parsed, checked against the Item contract and handed out in batches, so a catalogue of any size is read in
bounded memory (only the item_ids seen so far are kept, to catch duplicates). Invalid rows never stop the read unless
``strict=True``: each one is reported with its rule and counted, and rows in = rows accepted + rows rejected.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import os
import zlib
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, BinaryIO

import pyarrow as pa
import pyarrow.parquet as pq

from lmindexer.catalog.items import Item, RowChecker, RowError, Rule
from lmindexer.errors import CatalogError
from lmindexer.storage.s3 import is_s3_uri, local_copy, open_binary

DEFAULT_BATCH_SIZE = 1024
_KEPT_EXAMPLES = 50


class CatalogFormat(StrEnum):
    JSONL = "jsonl"
    JSONL_GZ = "jsonl.gz"
    PARQUET = "parquet"
    CSV = "csv"
    CSV_GZ = "csv.gz"


_SUFFIXES = {
    ".jsonl": CatalogFormat.JSONL,
    ".ndjson": CatalogFormat.JSONL,
    ".jsonl.gz": CatalogFormat.JSONL_GZ,
    ".ndjson.gz": CatalogFormat.JSONL_GZ,
    ".parquet": CatalogFormat.PARQUET,
    ".pq": CatalogFormat.PARQUET,
    ".csv": CatalogFormat.CSV,
    ".csv.gz": CatalogFormat.CSV_GZ,
}


def detect_format(location: str | os.PathLike[str]) -> CatalogFormat:
    """The catalogue format implied by a file name."""
    name = str(location).lower().rstrip("/")
    for suffix in sorted(_SUFFIXES, key=len, reverse=True):
        if name.endswith(suffix):
            return _SUFFIXES[suffix]
    known = ", ".join(sorted(_SUFFIXES))
    raise CatalogError(f"cannot tell the format of {location} from its name (expected one of {known}); pass a format")


@dataclass
class ReadSummary:
    """Counts for one catalogue read; ``rows_in == accepted + rejected`` always holds."""

    source: str
    rows_in: int = 0
    accepted: int = 0
    rejected: int = 0
    rejections_by_rule: Counter[str] = field(default_factory=Counter)
    examples: list[RowError] = field(default_factory=list)

    @property
    def reconciles(self) -> bool:
        return self.rows_in == self.accepted + self.rejected

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "rows_in": self.rows_in,
            "accepted": self.accepted,
            "rejected": self.rejected,
            "rejections_by_rule": dict(sorted(self.rejections_by_rule.items())),
            "examples": [e.to_dict() for e in self.examples],
        }


# A parsed row: (row number, record or None, raw excerpt source, errors found while parsing)
_Parsed = tuple[int, Any, Any, list[RowError]]


class CatalogReader:
    """Reads one catalogue source in batches of valid :class:`Item` objects.

    ``on_reject`` receives the errors of each rejected row (for quarantine files); ``summary`` holds the counts once
    the batches are consumed. With ``strict=True`` the first invalid row raises :class:`CatalogError`.
    """

    def __init__(
        self,
        location: str | os.PathLike[str],
        *,
        fmt: CatalogFormat | str | None = None,
        batch_size: int = DEFAULT_BATCH_SIZE,
        strict: bool = False,
        on_reject: Callable[[Sequence[RowError]], None] | None = None,
        s3_client: Any = None,
    ) -> None:
        if batch_size < 1:
            raise CatalogError(f"batch size must be at least 1, got {batch_size}")
        self.location = str(location)
        try:
            self.format = CatalogFormat(fmt) if fmt else detect_format(self.location)
        except ValueError as exc:
            valid = ", ".join(f.value for f in CatalogFormat)
            raise CatalogError(f"unknown catalogue format {fmt!r}; valid formats: {valid}") from exc
        if not is_s3_uri(self.location) and not Path(self.location).is_file():
            raise CatalogError(f"catalogue not found: {self.location}")
        self.batch_size = batch_size
        self.strict = strict
        self.on_reject = on_reject
        self._s3 = s3_client
        self.source = Path(self.location).name if not is_s3_uri(self.location) else self.location
        self.summary = ReadSummary(source=self.location)
        self._checker = RowChecker(self.source)

    def __iter__(self) -> Iterator[list[Item]]:
        return self.batches()

    def batches(self) -> Iterator[list[Item]]:
        self.summary = ReadSummary(source=self.location)
        first_seen: dict[str, int] = {}
        batch: list[Item] = []
        for row, record, raw, parse_errors in self._parsed_rows():
            self.summary.rows_in += 1
            errors = parse_errors
            item = None
            if not errors:
                item, errors = self._checker.check(record, row, raw)
            if item is not None:
                previous = first_seen.get(item.item_id)
                if previous is not None:
                    errors = [
                        RowError(
                            source=self.source,
                            row=row,
                            field="item_id",
                            rule=Rule.DUPLICATE_ITEM_ID,
                            message=f"item_id {item.item_id!r} already appeared at row {previous}",
                            item_id=item.item_id,
                            raw=self._checker.row_error(row, Rule.DUPLICATE_ITEM_ID, "", raw).raw,
                        )
                    ]
                    item = None
                else:
                    first_seen[item.item_id] = row
            if item is None:
                self._reject(errors)
                continue
            self.summary.accepted += 1
            batch.append(item)
            if len(batch) >= self.batch_size:
                yield batch
                batch = []
        if batch:
            yield batch

    def read_all(self) -> list[Item]:
        """Every valid item at once; for catalogues known to be small (tests, evaluation)."""
        return [item for batch in self.batches() for item in batch]

    def _reject(self, errors: list[RowError]) -> None:
        if self.strict:
            raise CatalogError(f"invalid row (strict mode): {errors[0].describe()}")
        self.summary.rejected += 1
        for error in errors:
            self.summary.rejections_by_rule[error.rule.value] += 1
        if len(self.summary.examples) < _KEPT_EXAMPLES:
            self.summary.examples.extend(errors[: _KEPT_EXAMPLES - len(self.summary.examples)])
        if self.on_reject is not None:
            self.on_reject(errors)

    def _parsed_rows(self) -> Iterator[_Parsed]:
        try:
            if self.format is CatalogFormat.PARQUET:
                yield from self._parquet_rows()
            else:
                with open_binary(self.location, client=self._s3) as stream:
                    binary: BinaryIO = stream
                    if self.format in (CatalogFormat.JSONL_GZ, CatalogFormat.CSV_GZ):
                        binary = gzip.GzipFile(fileobj=stream)  # type: ignore[assignment]
                    if self.format in (CatalogFormat.JSONL, CatalogFormat.JSONL_GZ):
                        yield from self._jsonl_rows(binary)
                    else:
                        yield from self._csv_rows(binary)
        except (gzip.BadGzipFile, zlib.error, EOFError) as exc:
            raise CatalogError(f"{self.location}: not a readable gzip file ({exc})") from exc
        except pa.ArrowException as exc:
            raise CatalogError(f"{self.location}: not a readable Parquet file ({exc})") from exc

    def _jsonl_rows(self, stream: BinaryIO) -> Iterator[_Parsed]:
        for line_number, line in enumerate(stream, start=1):
            text = line.decode("utf-8", errors="surrogateescape")
            if line_number == 1:
                text = text.removeprefix("\ufeff")
            if not text.strip():
                continue  # blank lines are not rows
            try:
                record = json.loads(text)
            except json.JSONDecodeError as exc:
                error = self._checker.row_error(
                    line_number, Rule.MALFORMED_JSON, f"not valid JSON: {exc.msg} at column {exc.colno}", line
                )
                yield line_number, None, line, [error]
                continue
            yield line_number, record, line, []

    def _csv_rows(self, stream: BinaryIO) -> Iterator[_Parsed]:
        text = io.TextIOWrapper(stream, encoding="utf-8", errors="surrogateescape", newline="")  # type: ignore[arg-type]
        reader = csv.reader(text)
        try:
            header = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            raise CatalogError(f"{self.location}: unreadable CSV header ({exc})") from exc
        header = [h.removeprefix("\ufeff").strip() for h in header]
        if "item_id" not in header:
            raise CatalogError(f"{self.location}: the CSV header has no item_id column (columns: {', '.join(header)})")
        last_line = reader.line_num
        while True:
            start_line = last_line + 1
            try:
                values = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                last_line = reader.line_num
                yield start_line, None, "", [self._checker.row_error(start_line, Rule.MALFORMED_ROW, str(exc), "")]
                continue
            last_line = reader.line_num
            if not values or all(not v.strip() for v in values):
                continue
            raw = ",".join(values)
            if len(values) != len(header):
                message = f"row has {len(values)} fields; the header has {len(header)}"
                yield start_line, None, raw, [self._checker.row_error(start_line, Rule.MALFORMED_ROW, message, raw)]
                continue
            record = {name: (value if value != "" else None) for name, value in zip(header, values, strict=True)}
            yield start_line, record, raw, []

    def _parquet_rows(self) -> Iterator[_Parsed]:
        with local_copy(self.location, client=self._s3, suffix=".parquet") as path:
            parquet = pq.ParquetFile(path)
            if "item_id" not in parquet.schema_arrow.names:
                names = ", ".join(parquet.schema_arrow.names)
                raise CatalogError(f"{self.location}: the Parquet schema has no item_id column (columns: {names})")
            row = 0
            for record_batch in parquet.iter_batches(batch_size=self.batch_size):
                for record in record_batch.to_pylist():
                    row += 1
                    yield row, record, record, []


def read_items(location: str | os.PathLike[str], **kwargs: Any) -> tuple[list[Item], ReadSummary]:
    """Read a small catalogue whole. Prefer :class:`CatalogReader` batches for anything large."""
    reader = CatalogReader(location, **kwargs)
    items = reader.read_all()
    return items, reader.summary
