"""Sources: turn an input (CSV of image paths) into ``ImageRef`` records.

Each source also reports its metadata columns up front (``columns``), so the
launcher can validate options and the writer knows the header before any
worker runs.
"""
import csv
import io
from typing import List, Sequence

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems

from transforms.items import ErrorRow, ImageRef

ERRORS_TAG = "errors"


class SourceError(ValueError):
    """The input cannot be read as asked; the message says what to fix."""


def _open_text(path: str):
    raw = FileSystems.open(path, compression_type="uncompressed")
    # utf-8-sig: spreadsheets often save a BOM that would otherwise end up
    # inside the first column's name.
    return io.TextIOWrapper(raw, encoding="utf-8-sig", newline="")


def expand_input(pattern: str) -> List[str]:
    """Files matching ``pattern`` (a path or glob), sorted for determinism."""
    try:
        result = FileSystems.match([pattern])[0]
    except Exception as e:  # noqa: BLE001 - BeamIOError and scheme errors alike
        raise SourceError(f"input {pattern} cannot be listed: {e}") from None
    paths = sorted(m.path for m in result.metadata_list if not m.path.endswith("/"))
    if not paths:
        raise SourceError(f"input {pattern} does not exist (no file matches)")
    return paths


def csv_header(path: str) -> List[str]:
    try:
        with _open_text(path) as f:
            header = next(csv.reader(f), None)
    except UnicodeDecodeError as e:
        raise SourceError(f"input {path} is not UTF-8 text: {e}") from None
    if not header:
        raise SourceError(f"input {path} is empty: a CSV needs a header row naming its columns")
    return header


def resolve_ref(value: str, base_dir: str) -> str:
    """Relative image paths resolve against the CSV's folder; URIs stay as given."""
    if "://" in value or value.startswith("/"):
        return value
    return FileSystems.join(base_dir, value)


def metadata_columns(header: Sequence[str], image_column: str) -> List[str]:
    """The image column first (named as in the input), then the others."""
    return [image_column] + [c for c in header if c != image_column]


class _ReadCsvFn(beam.DoFn):
    """One CSV file -> ImageRefs. The csv module parses quoted fields with
    commas, quotes and newlines, which a line-based ReadFromText would split."""

    def __init__(self, image_column: str):
        self._image_column = image_column
        self._read = beam.metrics.Metrics.counter("projector", "read")
        self._bad = beam.metrics.Metrics.counter("projector", "failed_read")

    def process(self, path: str):
        base_dir = path.rsplit("/", 1)[0] if "/" in path else "."
        with _open_text(path) as f:
            reader = csv.reader(f)
            header = next(reader, None) or []
            if self._image_column not in header:
                raise SourceError(f"CSV {path} has no column {self._image_column!r}; "
                                  f"its columns are: {', '.join(header)}")
            order = [header.index(c) for c in metadata_columns(header, self._image_column)]
            for line_no, row in enumerate(reader, start=2):
                if not row:
                    continue  # csv yields [] for blank lines
                values = [row[i] if i < len(row) else "" for i in order]
                value = values[0].strip()
                if not value:
                    self._bad.inc()
                    yield beam.pvalue.TaggedOutput(ERRORS_TAG, ErrorRow(
                        f"{path}:{line_no}", "read", f"empty {self._image_column!r} value"))
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
