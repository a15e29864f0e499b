"""Streaming catalogue readers for JSONL, JSONL.gz, Parquet and CSV, from local paths and ``s3://`` URIs.

Rows are parsed, checked against the Item contract and handed out in batches, so a catalogue of any size is read in
bounded memory (only the item_ids seen so far are kept, to catch duplicates). Invalid rows never stop the read unless
``strict=True``: each one is reported with its rule and counted, and rows in = rows accepted + rows rejected, whatever
the bytes. Only problems of the whole file stop a read, with one :class:`~lmindexer.errors.CatalogError`: a missing
or corrupt file, a text file that is not UTF-8 but UTF-16/UTF-32, a CSV header without ``item_id`` or with a
repeated column.
"""

from __future__ import annotations

import codecs
import csv
import gzip
import io
import itertools
import os
import zlib
from collections import Counter, deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, NamedTuple, TextIO

import pyarrow as pa
import pyarrow.parquet as pq

from lmindexer.catalog.items import Item, RowChecker, RowError, Rule, parse_json
from lmindexer.errors import CatalogError
from lmindexer.storage.formats import CatalogFormat, detect_format
from lmindexer.storage.s3 import is_s3_uri, local_copy, open_binary

DEFAULT_BATCH_SIZE = 1024
# The most characters one row may hold: a JSONL line, or a CSV record with all its physical lines, line breaks not
# counted. Longer rows are rejected (row_too_large) and skipped without being held in memory whole.
MAX_ROW_CHARS = 16 * 1024 * 1024
_KEPT_EXAMPLES = 50
_LINE_BREAKS = ("\n", "\r")
_JSON_WHITESPACE = " \t\r\n"

# The csv module bounds each field at 131,072 characters by default, process-wide; a field is bounded by the row
# limit here instead. The limit is only ever raised, so other csv users in the process lose nothing.
csv.field_size_limit(max(csv.field_size_limit(), MAX_ROW_CHARS + 2))

# Byte-order marks of the encodings a catalogue is most often mistakenly saved in (UTF-32 first: its little-endian
# mark starts with UTF-16's).
_BYTE_ORDER_MARKS = (
    (codecs.BOM_UTF32_LE, "UTF-32 (little-endian, with a byte-order mark)"),
    (codecs.BOM_UTF32_BE, "UTF-32 (big-endian, with a byte-order mark)"),
    (codecs.BOM_UTF16_LE, "UTF-16 (little-endian, with a byte-order mark)"),
    (codecs.BOM_UTF16_BE, "UTF-16 (big-endian, with a byte-order mark)"),
)


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
                    message = f"item_id {item.item_id!r} already appeared at row {previous}"
                    if record.get("item_id") != item.item_id:
                        message += " (ids are compared in Unicode NFC form)"
                    errors = [
                        RowError(
                            source=self.source,
                            row=row,
                            field="item_id",
                            rule=Rule.DUPLICATE_ITEM_ID,
                            message=message,
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
                    text = self._utf8_text(binary)
                    if self.format in (CatalogFormat.JSONL, CatalogFormat.JSONL_GZ):
                        yield from self._jsonl_rows(text)
                    else:
                        yield from self._csv_rows(text)
        except (gzip.BadGzipFile, zlib.error, EOFError) as exc:
            raise CatalogError(f"{self.location}: not a readable gzip file ({exc})") from exc
        except pa.ArrowException as exc:
            raise CatalogError(f"{self.location}: not a readable Parquet file ({exc})") from exc

    def _utf8_text(self, binary: BinaryIO) -> TextIO:
        """The stream as UTF-8 text, after making sure it is not UTF-16 or UTF-32.

        Such a file decodes as valid-looking UTF-8 full of NUL characters, so every row would be rejected for
        reasons that hide the real one; it is refused as a whole instead. Bytes that are not UTF-8 stay readable
        as surrogate escapes, so each row holding some is rejected on its own (undecodable_bytes).
        """
        head = binary.read(4)
        encoding = _foreign_encoding(head)
        if encoding is not None:
            raise CatalogError(
                f"{self.location}: the file looks like {encoding}, not UTF-8; re-encode it as UTF-8 "
                "(e.g. iconv -f UTF-16 -t UTF-8) and upload it again"
            )
        buffered = io.BufferedReader(_Prefixed(head, binary))
        # newline="": universal line breaks (\n, \r\n and a lone \r all end a line), handed back untranslated.
        return io.TextIOWrapper(buffered, encoding="utf-8", errors="surrogateescape", newline="")

    def _too_large(self, line: _Line) -> RowError:
        return self._checker.row_error(
            line.number,
            Rule.ROW_TOO_LARGE,
            f"the row is longer than {MAX_ROW_CHARS:,} characters, the most a JSONL line or CSV record may hold",
            line.text,
        )

    def _jsonl_rows(self, text: TextIO) -> Iterator[_Parsed]:
        for line in _physical_lines(text):
            content = line.text.removeprefix("\ufeff") if line.number == 1 else line.text
            if line.too_long:
                yield line.number, None, content, [self._too_large(line)]
                continue
            if not content.strip(_JSON_WHITESPACE):
                continue  # blank lines are not rows
            record, problem = parse_json(content)
            if problem is not None:
                rule, message = problem
                yield line.number, None, content, [self._checker.row_error(line.number, rule, message, content)]
                continue
            yield line.number, record, content, []

    def _csv_rows(self, text: TextIO) -> Iterator[_Parsed]:
        lines = _LineQueue(_physical_lines(text))
        first = lines.pop()
        if first is None:
            return
        if first.too_long:
            raise CatalogError(f"{self.location}: the CSV header is longer than {MAX_ROW_CHARS:,} characters")
        header_record = _read_record(first._replace(text=first.text.removeprefix("\ufeff")), lines)
        if header_record.problem is not None:
            raise CatalogError(f"{self.location}: unreadable CSV header ({header_record.problem})")
        header = [h.strip() for h in header_record.fields]
        if "item_id" not in header:
            raise CatalogError(f"{self.location}: the CSV header has no item_id column (columns: {', '.join(header)})")
        _refuse_repeated_columns(self.location, header)
        while True:
            line = lines.pop()
            if line is None:
                return
            if line.too_long:
                yield line.number, None, line.text, [self._too_large(line)]
                continue
            record = _read_record(line, lines, expected_fields=len(header))
            if record.problem is not None:
                # Reject this physical line only and read on from the next one, so a stray quote cannot swallow
                # the valid rows after it.
                lines.push_back(record.continuation)
                error = self._checker.row_error(line.number, Rule.MALFORMED_ROW, record.problem, line.text)
                yield line.number, None, line.text, [error]
                continue
            values = record.fields
            if not values or all(not v.strip() for v in values):
                continue  # blank lines are not rows
            raw = record.text
            if len(values) != len(header):
                message = f"row has {len(values)} fields; the header has {len(header)}"
                yield line.number, None, raw, [self._checker.row_error(line.number, Rule.MALFORMED_ROW, message, raw)]
                continue
            row = {name: (value if value != "" else None) for name, value in zip(header, values, strict=True)}
            yield line.number, row, raw, []

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


class _Prefixed(io.RawIOBase):
    """``head`` (bytes already read to sniff the encoding) followed by the rest of ``stream``."""

    def __init__(self, head: bytes, stream: BinaryIO) -> None:
        self._head = head
        self._stream = stream

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        if self._head:
            size = min(len(view), len(self._head))
            view[:size] = self._head[:size]
            self._head = self._head[size:]
            return size
        data = self._stream.read(len(view))
        view[: len(data)] = data
        return len(data)


def _foreign_encoding(head: bytes) -> str | None:
    """The encoding ``head`` (the first bytes of a text file) betrays when it is UTF-16 or UTF-32, else ``None``.

    Without a byte-order mark the NUL bytes give it away: a catalogue starts with ASCII ("{" or a header name),
    which those encodings pad with zeros (the pattern RFC 4627 uses to tell JSON encodings apart).
    """
    for mark, name in _BYTE_ORDER_MARKS:
        if head.startswith(mark):
            return name
    zeros = tuple(byte == 0 for byte in head[:4])
    patterns = {
        (True, True, True, False): "UTF-32 (big-endian, without a byte-order mark)",
        (False, True, True, True): "UTF-32 (little-endian, without a byte-order mark)",
        (True, False, True, False): "UTF-16 (big-endian, without a byte-order mark)",
        (False, True, False, True): "UTF-16 (little-endian, without a byte-order mark)",
    }
    if len(zeros) == 4:
        return patterns.get(zeros)
    if len(zeros) >= 2 and zeros[0] != zeros[1]:  # a file of one UTF-16 character
        return f"UTF-16 ({'big' if zeros[0] else 'little'}-endian, without a byte-order mark)"
    return None


class _Line(NamedTuple):
    number: int  # 1-based physical line number
    text: str  # with its line break; cut short when too_long
    too_long: bool


def _content_length(line: str) -> int:
    if line.endswith("\r\n"):
        return len(line) - 2
    return len(line) - 1 if line.endswith(_LINE_BREAKS) else len(line)


def _physical_lines(text: TextIO) -> Iterator[_Line]:
    """The physical lines of a text stream, split at LF, CR LF or a lone CR, each at most ``MAX_ROW_CHARS`` long.

    A longer line is handed out cut short and marked ``too_long``; the rest of it is read past in bounded pieces.
    """
    # The duplicate check keeps every row number; ints from itertools.count are exact-size (4 bytes smaller than
    # the ones "+= 1" builds), which adds up over millions of rows.
    numbers = itertools.count(1)
    after_cr = False
    limit = MAX_ROW_CHARS + 2  # room for the content and a \r\n
    while True:
        line = text.readline(limit)
        if not line:
            return
        if after_cr and line == "\n":
            # The \n of a \r\n that a size-bounded read split from its \r: the same line break, not a new line.
            after_cr = False
            continue
        number = next(numbers)
        if line.endswith(_LINE_BREAKS):
            after_cr = line.endswith("\r")
            yield _Line(number, line, _content_length(line) > MAX_ROW_CHARS)
            continue
        if len(line) < limit:  # the last line, without a line break
            after_cr = False
            yield _Line(number, line, len(line) > MAX_ROW_CHARS)
            continue
        piece = line
        while piece and not piece.endswith(_LINE_BREAKS):
            piece = text.readline(limit)
        after_cr = piece.endswith("\r")
        yield _Line(number, line, True)


class _LineQueue:
    """Physical lines, with lines read ahead for a multi-line CSV record pushed back when the record is refused."""

    def __init__(self, lines: Iterator[_Line]) -> None:
        self._lines = lines
        self._back: deque[_Line] = deque()

    def pop(self) -> _Line | None:
        if self._back:
            return self._back.popleft()
        return next(self._lines, None)

    def push_back(self, lines: Sequence[_Line]) -> None:
        self._back.extendleft(reversed(lines))


class _Record(NamedTuple):
    fields: list[str]
    text: str  # the physical lines it was read from
    continuation: list[_Line]  # the lines after the first one
    problem: str | None  # why the first line cannot start a record


def _with_break(line: str) -> str:
    return line if line.endswith(_LINE_BREAKS) else line + "\n"


def _read_record(first: _Line, lines: _LineQueue, expected_fields: int | None = None) -> _Record:
    """Parse one CSV record starting at ``first``, reading further lines while a quoted field is open.

    A quoted field may span lines only if it closes within ``MAX_ROW_CHARS``, the record parses strictly (no stray
    quotes) and, for a data row, has ``expected_fields`` fields. Otherwise the quote on the first line is taken to
    be unbalanced: the record is refused (``problem``), and the lines read ahead are for the caller to push back.
    """
    if '"' not in first.text:
        # No quote, no quoted field: the csv module would split at the commas too, only slower.
        return _Record(first.text.rstrip("\r\n").split(","), first.text, [], None)
    continuation: list[_Line] = []
    ran_out = False
    size = _content_length(first.text)

    def feed() -> Iterator[str]:
        nonlocal ran_out, size
        # The last line of a file may lack a line break; one is added so that an open quote is told apart from a
        # record that simply ends there.
        yield _with_break(first.text)
        while True:
            line = lines.pop()
            if line is None or line.too_long or size + _content_length(line.text) > MAX_ROW_CHARS:
                if line is not None:
                    lines.push_back([line])
                ran_out = True
                return
            continuation.append(line)
            size += _content_length(line.text)
            yield _with_break(line.text)

    try:
        fields = next(csv.reader(feed()), [])
    except csv.Error as exc:
        return _Record([], first.text, continuation, str(exc))
    text = "".join([first.text, *(line.text for line in continuation)])
    if ran_out:
        return _Record(fields, text, continuation, "unbalanced quote: a quoted field opened on this line never closes")
    if continuation:
        try:
            next(csv.reader(iter([_with_break(first.text), *(_with_break(c.text) for c in continuation)]), strict=True))
        except csv.Error as exc:
            problem = f"unbalanced quote: the quoted field opened on this line spans lines but is malformed ({exc})"
            return _Record(fields, text, continuation, problem)
        if expected_fields is not None and len(fields) != expected_fields:
            last = continuation[-1].number
            problem = (
                f"unbalanced quote: read as a quoted field spanning lines {first.number}-{last}, the record has "
                f"{len(fields)} fields; the header has {expected_fields}"
            )
            return _Record(fields, text, continuation, problem)
    return _Record(fields, text, continuation, None)


def _refuse_repeated_columns(location: str, header: list[str]) -> None:
    positions: dict[str, list[int]] = {}
    for position, name in enumerate(header, start=1):
        positions.setdefault(name, []).append(position)
    for name, where in positions.items():
        if len(where) > 1:
            columns = ", ".join(str(p) for p in where)
            raise CatalogError(
                f"{location}: the CSV header names column {name!r} more than once (columns {columns}); "
                "each column needs a distinct name, or one value would silently replace the other"
            )


def read_items(location: str | os.PathLike[str], **kwargs: Any) -> tuple[list[Item], ReadSummary]:
    """Read a small catalogue whole. Prefer :class:`CatalogReader` batches for anything large."""
    reader = CatalogReader(location, **kwargs)
    items = reader.read_all()
    return items, reader.summary
