"""CSV files of image paths -> ImageRefs, read in bounded lines.

The csv module parses quoted fields with commas, quotes and newlines, which a
line-based ReadFromText would split; every row that cannot be used becomes a
``read`` dead letter naming ``file:line``.
"""
import csv
import re
from typing import List, Optional, Sequence, Tuple

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems

from beam_projector.transforms.records import (
    ERRORS_TAG,
    METRICS_NAMESPACE,
    ErrorRow,
    ImageRef,
    capped,
)
from beam_projector.transforms.sources.spec import (
    SourceError,
    quoted_names,
    resolve_ref,
)

# A CSV record (one row: a line, or several when a quoted field holds line
# breaks) longer than this is not a list of image paths: it is skipped as one
# row error without being held whole (a file with no newline at all, a field
# holding a pasted blob). Lines are read in chunks of this size.
MAX_CSV_LINE_BYTES = 1024 * 1024

# The quote state of the csv module's default (excel) dialect between the
# chunks of one record: at a field's start, inside an unquoted field, inside
# a quoted field, or just after a quote at a chunk's end (a doubled quote or
# the closing one: the next chunk tells).
_START, _FIELD, _QUOTED, _QUOTE_AT_END = range(4)
_FIELD_END = re.compile(rb"[,\r\n]")
# One whole record on one line, as the csv module reads it: fields split by
# ',', a quoted field closed on this line (possessive, so '"a""' cannot match
# as '"a"' + '"'), text after a closing quote joining the field, quotes inside
# unquoted fields taken literally. A line that does not match goes through
# the exact scanner.
_ONE_FIELD = rb'(?:"(?:[^"]|"")*+"[^,\r\n]*|[^",\r\n][^,\r\n]*|)'
_ONE_LINE_RECORD = re.compile(_ONE_FIELD + rb"(?:," + _ONE_FIELD + rb")*\r?\n")


def _scan(chunk: bytes, state: int) -> Tuple[int, bool]:
    """The quote state after ``chunk`` (a readline chunk of one record), and
    whether the record ends in it. The csv module's own rules, not strict: a
    quote opens a quoted field only at a field's start, a doubled quote is a
    literal, text after a closing quote joins the field, and a record ends at
    a line break outside quotes."""
    pos, n = 0, len(chunk)
    if state == _QUOTE_AT_END:
        if chunk[:1] == b'"':
            state, pos = _QUOTED, 1           # it was a doubled quote
        else:
            state = _FIELD                     # it closed the field
    while pos < n:
        if state == _START:
            c = chunk[pos]
            if c == 0x22:                      # '"' opens a quoted field
                state, pos = _QUOTED, pos + 1
            elif c == 0x0A:
                return _START, True
            else:
                state = _FIELD
        elif state == _FIELD:
            m = _FIELD_END.search(chunk, pos)
            if m is None:
                return _FIELD, False
            if chunk[m.start()] == 0x2C:       # ',' starts the next field
                state, pos = _START, m.end()
            else:                              # '\r' or '\n': the record ends on this line
                return (_START, True) if chunk.endswith(b"\n") else (_FIELD, False)
        else:                                  # _QUOTED: a quote doubles or closes
            q = chunk.find(b'"', pos)
            if q < 0:
                return _QUOTED, False
            if q + 1 == n:
                return _QUOTE_AT_END, False
            if chunk[q + 1] == 0x22:
                pos = q + 2
            else:
                state, pos = _FIELD, q + 1
    return state, False


class RecordTooLarge(Exception):
    """A record over the byte bound, already consumed; ``line`` is its first
    physical line. The message is its errors.tsv reason."""

    def __init__(self, first: int, last: int, size: int, unclosed: bool, limit: int):
        if unclosed:
            reason = (f"a quoted field opened on line {first} is not closed before the end "
                      f"of the file ({size:,} bytes); the rest of the file is skipped")
        elif first == last:
            reason = f"line longer than {limit} bytes; skipped"
        else:
            reason = f"CSV row at lines {first}-{last} is {size:,} bytes (more than {limit}); skipped"
        super().__init__(reason)
        self.line = first


class RecordLines:
    """The lines of a binary CSV stream for ONE ``csv.reader``, with the
    record boundaries tracked beside it.

    The csv module knows where a record ends only while it parses; once it
    raises (a field over its 128 KiB limit) it resets and resumes on the next
    physical line, which may be inside the quoted field it gave up on: every
    further line of the field became a row of its own. So the quote state is
    scanned here too (``_scan``), and ``skip_record()`` after a csv.Error
    consumes the rest of that record. A record over ``max_record_bytes`` is
    consumed to its real end without being held and raises RecordTooLarge
    (this is a class, not a generator, so raising does not end it).
    ``record_line`` is the first physical line of the last record begun: the
    ``file:line`` of its row or its error. Text is UTF-8 with bad bytes kept
    as surrogates, so one bad row is that row's error, not the file's.
    """

    def __init__(self, raw, max_record_bytes: int = MAX_CSV_LINE_BYTES):
        self._raw = raw
        self._max = max_record_bytes
        self._line_no = 0          # physical lines read so far
        self._state = _START       # quote state at the end of what was read
        self._size = 0             # bytes of the current record so far
        self._first_chunk = True
        self.record_line = 1

    def __iter__(self):
        return self

    def _chunk(self) -> bytes:
        chunk = self._raw.readline(self._max + 1)
        if self._first_chunk:
            self._first_chunk = False
            if chunk.startswith(b"\xef\xbb\xbf"):
                chunk = chunk[3:]  # a spreadsheet's BOM, else it joins the first column's name
        if chunk.endswith(b"\n"):
            self._line_no += 1
        return chunk

    def __next__(self) -> str:
        chunk = self._chunk()
        if not chunk:
            raise StopIteration
        if not self._size:
            self.record_line = self._line_no + (0 if chunk.endswith(b"\n") else 1)
            # the common case, one whole record on one line: no state to keep
            if chunk.endswith(b"\n") and (b'"' not in chunk
                                          or _ONE_LINE_RECORD.fullmatch(chunk)):
                return chunk.decode("utf-8", errors="surrogateescape")
        self._size += len(chunk)
        self._state, ended = _scan(chunk, self._state)
        if self._size > self._max:
            first, size = self.record_line, self._size
            while not ended:                   # consume the rest, keep nothing
                chunk = self._chunk()
                if not chunk:
                    unclosed = self._state == _QUOTED   # a quote at the very end closed it
                    self._reset()
                    raise RecordTooLarge(first, self._line_no + 1, size, unclosed, self._max)
                size += len(chunk)
                self._state, ended = _scan(chunk, self._state)
            self._reset()
            raise RecordTooLarge(first, self._line_no, size, False, self._max)
        if ended:
            self._reset()
        return chunk.decode("utf-8", errors="surrogateescape")

    def skip_record(self) -> Tuple[int, bool]:
        """After a csv.Error: consume what is left of the current record.
        Returns the record's last physical line, and whether the file ended
        inside a quoted field of it."""
        unclosed = False
        while self._size:
            chunk = self._chunk()
            if not chunk:
                unclosed = self._state == _QUOTED
                break
            self._size += len(chunk)
            self._state, ended = _scan(chunk, self._state)
            if ended:
                break
        self._reset()
        return max(self._line_no, self.record_line), unclosed

    def _reset(self):
        self._state, self._size = _START, 0


def csv_header(path: str) -> List[str]:
    """The header row; only it has to be UTF-8 here: a bad byte in a later
    row is that row's error, found by the reader."""
    with FileSystems.open(path, compression_type="uncompressed") as raw:
        try:
            header = next(csv.reader(RecordLines(raw)), None)
        except RecordTooLarge:
            raise SourceError(f"input {path}: its header row is longer than "
                              f"{MAX_CSV_LINE_BYTES} bytes; the first row of a CSV must name "
                              "its columns") from None
        except csv.Error as e:
            raise SourceError(f"input {path}: cannot parse the CSV header row: {e}") from None
    if header and _undecodable_byte(header) is not None:
        raise SourceError(f"input {path} is not UTF-8 text: byte "
                          f"0x{_undecodable_byte(header):02X} in its header row")
    if not header:
        raise SourceError(f"input {path} is empty: a CSV needs a header row naming its columns")
    return header


def column_order(header: Sequence[str], image_column: str) -> List[int]:
    """Positions of the metadata columns in a row: the image column first,
    then the others in their places. By position, not name: a second column
    of one name keeps its own values (the duplicate name is refused before
    any work, see ``projector.column_clash``)."""
    image = header.index(image_column)
    return [image] + [i for i in range(len(header)) if i != image]


def metadata_columns(header: Sequence[str], image_column: str) -> List[str]:
    """The image column first (named as in the input), then the others."""
    return [header[i] for i in column_order(header, image_column)]


def _undecodable_byte(values: Sequence[str]) -> Optional[int]:
    """The first byte that was not UTF-8 (kept as a surrogate by
    surrogateescape) in ``values``, or None when they all decoded."""
    for v in values:
        if v.isascii():
            continue
        try:
            v.encode("utf-8")  # surrogates do not encode: C speed, no loop per char
        except UnicodeEncodeError as e:
            return ord(v[e.start]) - 0xDC00
    return None


def csv_rows(raw):
    """(first line, row or None, error reason or None) for every record of a
    binary CSV stream, the header first; a blank line is an empty row. The
    reader keeps its place whatever a record holds."""
    lines = RecordLines(raw)
    reader = csv.reader(lines)
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except RecordTooLarge as e:
            yield e.line, None, str(e)
            continue
        except csv.Error as e:
            first = lines.record_line
            last, unclosed = lines.skip_record()
            extent = f" (lines {first}-{last} skipped)" if last > first else ""
            if unclosed:
                extent = (f" (lines {first}-{last} skipped: a quoted field opened on line "
                          f"{first} is not closed before the end of the file)")
            yield first, None, f"cannot parse CSV row: {e}{extent}"
            continue
        yield lines.record_line, row, None


def has_rows(path: str) -> bool:
    with FileSystems.open(path, compression_type="uncompressed") as raw:
        rows = csv_rows(raw)
        next(rows, None)  # the header
        # a bad row is the reader's row error; look further
        return any(row and any(v.strip() for v in row) for _, row, _ in rows)


class _ReadCsvFn(beam.DoFn):
    """One CSV file -> ImageRefs. The csv module parses quoted fields with
    commas, quotes and newlines, which a line-based ReadFromText would split.
    Every row that cannot be used (not UTF-8, a field over the csv module's
    limit, a record over MAX_CSV_LINE_BYTES, no image path) becomes one
    ``read`` row naming ``file:line``; the rest of the file goes on from the
    next record."""

    def __init__(self, image_column: str):
        self._image_column = image_column
        self._read = beam.metrics.Metrics.counter(METRICS_NAMESPACE, "read")
        self._bad = beam.metrics.Metrics.counter(METRICS_NAMESPACE, "failed_read")

    def _error(self, path, line_no, reason):
        self._bad.inc()
        return beam.pvalue.TaggedOutput(ERRORS_TAG, ErrorRow(capped(f"{path}:{line_no}"), "read",
                                                             capped(reason)))

    def process(self, path: str):
        base_dir = path.rsplit("/", 1)[0] if "/" in path else "."
        with FileSystems.open(path, compression_type="uncompressed") as raw:
            rows = csv_rows(raw)
            _, header, problem = next(rows, (1, [], None))
            header = header or []
            if problem:
                raise SourceError(f"CSV {path}: cannot read its header row: {problem}")
            if self._image_column not in header:
                raise SourceError(f"CSV {path} has no column {self._image_column!r}; "
                                  f"its columns are: {quoted_names(header)}")
            order = column_order(header, self._image_column)
            for line, row, problem in rows:
                if problem:
                    yield self._error(path, line, problem)
                    continue
                if not row:
                    continue  # csv yields [] for blank lines
                bad = _undecodable_byte(row)
                if bad is not None:
                    yield self._error(path, line, f"row is not UTF-8 text (byte 0x{bad:02X})")
                    continue
                values = [row[i] if i < len(row) else "" for i in order]
                value = values[0].strip()
                if not value:
                    yield self._error(path, line, f"empty {self._image_column!r} value")
                    continue
                self._read.inc()
                yield ImageRef(uid="\x1f".join(row), ref=resolve_ref(value, base_dir),
                               content=None, metadata=tuple(values))


class ReadCsv(beam.PTransform):
    """CSV file(s) with a header row -> (ImageRefs, errors)."""

    def __init__(self, paths: Sequence[str], image_column: str):
        super().__init__()
        self._paths, self._image_column = list(paths), image_column

    def expand(self, pbegin):
        out = (pbegin
               | "CsvFiles" >> beam.Create(self._paths)
               | "ParseCsv" >> beam.ParDo(_ReadCsvFn(self._image_column)).with_outputs(
                   ERRORS_TAG, main="refs"))
        return out.refs, out[ERRORS_TAG]
