"""CSV files of image paths -> ImageRefs, read in bounded lines.

The csv module parses quoted fields with commas, quotes and newlines, which a
line-based ReadFromText would split; every row that cannot be used becomes a
``read`` dead letter naming ``file:line``.
"""
import csv
from typing import List, Optional, Sequence

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems

from beam_projector.transforms.records import (
    ERRORS_TAG,
    METRICS_NAMESPACE,
    ErrorRow,
    ImageRef,
)
from beam_projector.transforms.sources.spec import (
    SourceError,
    quoted_names,
    resolve_ref,
)

# A CSV line longer than this is not a list of image paths: it is skipped as a
# row error without being held whole (a file with no newline at all, a field
# holding a pasted blob). It is read in chunks of this size.
MAX_CSV_LINE_BYTES = 1024 * 1024


def _open_lines(path: str):
    """A CSV's text lines, decoded one by one (see csv_lines); a line too long
    to hold reads as an empty line, so row numbers stay physical lines."""
    with FileSystems.open(path, compression_type="uncompressed") as raw:
        for _, text in csv_lines(raw):
            yield "\n" if text is None else text


def csv_header(path: str) -> List[str]:
    """The header row; only it has to be UTF-8 here: a bad byte in a later
    row is that row's error, found by the reader."""
    lines = _open_lines(path)
    try:
        header = next(csv.reader(lines), None)
    except csv.Error as e:
        raise SourceError(f"input {path}: cannot parse the CSV header row: {e}") from None
    finally:
        lines.close()
    if header and _undecodable_byte(header) is not None:
        raise SourceError(f"input {path} is not UTF-8 text: byte "
                          f"0x{_undecodable_byte(header):02X} in its header row")
    if not header:
        raise SourceError(f"input {path} is empty: a CSV needs a header row naming its columns")
    return header


def metadata_columns(header: Sequence[str], image_column: str) -> List[str]:
    """The image column first (named as in the input), then the others."""
    return [image_column] + [c for c in header if c != image_column]


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


def csv_lines(raw, max_line_bytes: int = MAX_CSV_LINE_BYTES):
    """Lines of a binary stream, decoded one by one: (line number, text or an
    error reason). Bytes that are not UTF-8 survive as surrogates (so one bad
    row is that row's error, not the file's), and a line longer than
    ``max_line_bytes`` is skipped in bounded chunks."""
    line_no = 0
    while True:
        line = raw.readline(max_line_bytes + 1)
        if not line:
            return
        line_no += 1
        if line_no == 1 and line.startswith(b"\xef\xbb\xbf"):
            line = line[3:]  # a spreadsheet's BOM, else it joins the first column's name
        if len(line) > max_line_bytes and not line.endswith(b"\n"):
            while line and not line.endswith(b"\n"):
                line = raw.readline(max_line_bytes + 1)
            yield line_no, None
            continue
        yield line_no, line.decode("utf-8", errors="surrogateescape")


def has_rows(path: str) -> bool:
    lines = _open_lines(path)
    reader = csv.reader(lines)
    try:
        next(reader, None)
        while True:
            try:
                row = next(reader)
            except csv.Error:
                continue   # a bad row is the reader's row error; look further
            if row and any(v.strip() for v in row):
                return True
    except StopIteration:
        return False
    finally:
        lines.close()


class _ReadCsvFn(beam.DoFn):
    """One CSV file -> ImageRefs. The csv module parses quoted fields with
    commas, quotes and newlines, which a line-based ReadFromText would split.
    Every row that cannot be used (not UTF-8, a field over the csv module's
    limit, a line over MAX_CSV_LINE_BYTES, no image path) becomes a ``read``
    row naming ``file:line``; the rest of the file goes on."""

    def __init__(self, image_column: str):
        self._image_column = image_column
        self._read = beam.metrics.Metrics.counter(METRICS_NAMESPACE, "read")
        self._bad = beam.metrics.Metrics.counter(METRICS_NAMESPACE, "failed_read")

    def _error(self, path, line_no, reason):
        self._bad.inc()
        return beam.pvalue.TaggedOutput(ERRORS_TAG, ErrorRow(f"{path}:{line_no}", "read", reason))

    def process(self, path: str):
        base_dir = path.rsplit("/", 1)[0] if "/" in path else "."
        with FileSystems.open(path, compression_type="uncompressed") as raw:
            too_long = []       # line numbers csv_lines skipped
            current = [0]       # physical line the csv reader last consumed

            def lines():
                for line_no, text in csv_lines(raw):
                    current[0] = line_no
                    if text is None:
                        too_long.append(line_no)
                        text = "\n"  # an empty row keeps the reader in step
                    yield text

            reader = csv.reader(lines())
            header = next(reader, None) or []
            if self._image_column not in header:
                raise SourceError(f"CSV {path} has no column {self._image_column!r}; "
                                  f"its columns are: {quoted_names(header)}")
            order = [header.index(c) for c in metadata_columns(header, self._image_column)]
            while True:
                start = current[0] + 1
                try:
                    row = next(reader)
                except StopIteration:
                    return
                except csv.Error as e:
                    yield self._error(path, start, f"cannot parse CSV row: {e}")
                    continue
                if too_long and too_long[-1] >= start:
                    line_no = min(n for n in too_long if n >= start)
                    too_long.clear()
                    yield self._error(path, line_no,
                                      f"line longer than {MAX_CSV_LINE_BYTES} bytes; skipped")
                    continue
                if not row:
                    continue  # csv yields [] for blank lines
                bad = _undecodable_byte(row)
                if bad is not None:
                    yield self._error(path, start, f"row is not UTF-8 text (byte 0x{bad:02X})")
                    continue
                values = [row[i] if i < len(row) else "" for i in order]
                value = values[0].strip()
                if not value:
                    yield self._error(path, start, f"empty {self._image_column!r} value")
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
