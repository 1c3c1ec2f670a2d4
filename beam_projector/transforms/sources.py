"""Sources: turn an input into ``ImageRef`` records.

Three input kinds: a CSV of image paths, TFRecords of ``tf.Example`` (image
bytes or paths inside), and a folder (or glob) of image files.
``describe_input`` runs on the launcher: it detects the kind and reports the
metadata columns up front, so options are validated and the writer knows the
header before any worker runs. ``ReadImageRefs`` is the one PTransform the
pipeline uses; it picks the reader for the kind.
"""
import contextlib
import csv
import gzip
import hashlib
import io
import json
import re
import struct
import zlib
from typing import Dict, Iterator, List, NamedTuple, Optional, Sequence, Tuple

import apache_beam as beam
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from beam_projector.transforms.items import (DEFAULT_MAX_IMAGE_BYTES, ERRORS_TAG, METRICS_NAMESPACE, ErrorRow,
                              ImageRef)


class SourceError(ValueError):
    """The input cannot be read as asked; the message says what to fix."""


def _open_lines(path: str):
    """A CSV's text lines, decoded one by one (see csv_lines); a line too long
    to hold reads as an empty line, so row numbers stay physical lines."""
    with FileSystems.open(path, compression_type="uncompressed") as raw:
        for _, text in csv_lines(raw):
            yield "\n" if text is None else text


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


def resolve_ref(value: str, base_dir: str) -> str:
    """Relative image paths resolve against the CSV's folder; URIs stay as given."""
    if "://" in value or value.startswith("/"):
        return value
    return FileSystems.join(base_dir, value)


def metadata_columns(header: Sequence[str], image_column: str) -> List[str]:
    """The image column first (named as in the input), then the others."""
    return [image_column] + [c for c in header if c != image_column]


# A CSV line longer than this is not a list of image paths: it is skipped as a
# row error without being held whole (a file with no newline at all, a field
# holding a pasted blob). It is read in chunks of this size.
MAX_CSV_LINE_BYTES = 1024 * 1024


def _names(names: Sequence[str]) -> str:
    """Column names for a message, quoted so spaces and empty names show."""
    return ", ".join(repr(n) for n in names)


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
                                  f"its columns are: {_names(header)}")
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


# --- input kinds --------------------------------------------------------------

INPUT_KINDS = ("csv", "tfrecord", "folder")
COMPRESSIONS = ("auto", "none", "gzip")
# What Pillow decodes and image_dataset_from_directory accepts, plus TIFF/WebP.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp", ".tif", ".tiff")
# train.tfrecord, x.tfrecords.gz, TFDS shards (mnist-train.tfrecord-00000-of-00004),
# the Object Detection API's train.record.
_TFRECORD_NAME = re.compile(r"\.(tfrecords?|tfrec|records?)(-\d+-of-\d+)?(\.gz|\.gzip)?$")
_GZIP_MAGIC = b"\x1f\x8b"
# How many records (at most from this many files) the launcher reads to learn
# a TFRecord input's features; how many files it lists to learn a folder's layout.
SCAN_RECORDS, SCAN_FILES, FOLDER_PROBE = 100, 8, 10_000
SOURCE_COLUMN = "source"


class SourceSpec(NamedTuple):
    """What the launcher learned about ``--input``; all a worker needs to read it."""
    kind: str                          # one of INPUT_KINDS
    pattern: str                       # as given (folder: the glob the workers list)
    paths: Tuple[str, ...]             # csv/tfrecord: the matched files
    columns: Tuple[str, ...]           # metadata columns, in order
    image_column: str = "path"         # csv: column holding the image path
    image_feature: str = "image/encoded"   # tfrecord: bytes feature with the image or its path
    features: Tuple[str, ...] = ()     # tfrecord: features that become metadata columns
    compression: str = "none"          # tfrecord: resolved "none" or "gzip" (of the first file)
    auto_compression: bool = False     # tfrecord: --compression auto: resolve it per file
    root: str = ""                     # folder: the directory paths and labels are relative to
    labelled: bool = False             # folder: class sub-folders give a label column
    # tfrecord from a TensorFlow Datasets folder: ClassLabel feature -> class
    # names (written instead of the indices), and (name, version, split) pairs
    label_names: Tuple[Tuple[str, Tuple[str, ...]], ...] = ()
    tfds: Tuple[Tuple[str, str], ...] = ()


def _has_glob(pattern: str) -> bool:
    return any(c in pattern for c in "*?[")


def is_image_path(path: str) -> bool:
    return path.lower().endswith(IMAGE_EXTENSIONS)


def looks_like_image(data: bytes) -> bool:
    """True when ``data`` starts with an image file signature (JPEG, PNG, GIF,
    BMP, TIFF, WebP). A path string never does: it has no NUL or 0xFF bytes."""
    head = bytes(data[:16])
    return (head.startswith((b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF87a", b"GIF89a",
                             b"II*\x00", b"MM\x00*"))
            or (head[:4] == b"RIFF" and head[8:12] == b"WEBP")
            or (head[:2] == b"BM" and len(head) >= 10 and head[6:10] == b"\x00\x00\x00\x00"))


def _path_text(value: bytes) -> Optional[str]:
    """``value`` as a path string, or None when it cannot be one."""
    if len(value) > 4096 or b"\x00" in value:
        return None
    try:
        text = value.decode("utf-8").strip()
    except UnicodeDecodeError:
        return None
    return text or None


def _dirname(path: str) -> str:
    return path.rsplit("/", 1)[0] if "/" in path else "."


def directory_root(pattern: str) -> Optional[str]:
    """``pattern`` without its trailing slash when it names a folder holding
    files (on object stores: a prefix with objects below it), else None."""
    if _has_glob(pattern):
        return None
    base = pattern.rstrip("/")
    try:
        found = FileSystems.match([base + "/**"], limits=[1])[0].metadata_list
    except Exception:  # noqa: BLE001 - not listable as a folder: treat as a file
        return None
    return base if found else None


def _name_kind(path: str) -> Optional[str]:
    name = path.rsplit("/", 1)[-1].lower()
    if name.endswith(IMAGE_EXTENSIONS):
        return "folder"
    if name.endswith(".csv"):
        return "csv"
    if _TFRECORD_NAME.search(name):
        return "tfrecord"
    return None


# --- TFRecord framing -----------------------------------------------------------
# Records are read here rather than with Beam's ReadAllFromTFRecord (see
# ReadTFRecordExamples for why); the framing is 16 bytes of documented format.

def _masked_crc(data: bytes) -> int:
    import google_crc32c  # ships with apache-beam[gcp]; Beam's own TFRecord coder uses it
    crc = google_crc32c.value(bytes(data))
    return ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + 0xA282EAD8) & 0xFFFFFFFF


class TFRecordFramingError(SourceError):
    """The record stream is broken at ``offset`` (bytes from the start of the
    stream, uncompressed for GZIP); framing cannot resync past it."""

    def __init__(self, reason: str, offset: int):
        super().__init__(f"{reason} at byte {offset}")
        self.reason, self.offset = reason, offset


def iter_tfrecords_at(f, max_record_bytes: int = DEFAULT_MAX_IMAGE_BYTES
                      ) -> Iterator[Tuple[int, bytes]]:
    """(offset, record) of an open TFRecord stream, checksums verified.

    The length is checked against its CRC and against ``max_record_bytes``
    before anything is allocated: a flipped bit (or a hostile file) can claim
    2^40 bytes, and ``f.read(2**40)`` is a MemoryError or a worker OOM.
    Raises TFRecordFramingError naming the offset of the bad record.
    """
    offset = 0
    while True:
        header = f.read(12)
        if not header:
            return
        if len(header) < 12:
            raise TFRecordFramingError("truncated TFRecord header", offset)
        length, length_crc = struct.unpack("<QI", header)
        if _masked_crc(header[:8]) != length_crc:
            raise TFRecordFramingError(
                "not a TFRecord file (record length checksum mismatch)", offset)
        if length > max_record_bytes:
            raise TFRecordFramingError(
                f"TFRecord record of {length} bytes exceeds the limit of {max_record_bytes}",
                offset)
        data = f.read(length)
        footer = f.read(4)
        if len(data) < length or len(footer) < 4:
            raise TFRecordFramingError("truncated TFRecord record", offset)
        if _masked_crc(data) != struct.unpack("<I", footer)[0]:
            raise TFRecordFramingError("corrupt TFRecord record (data checksum mismatch)", offset)
        yield offset, data
        offset += 16 + length


def iter_tfrecords(f, max_record_bytes: int = DEFAULT_MAX_IMAGE_BYTES) -> Iterator[bytes]:
    """Records of an open TFRecord stream, checksums and length bound verified."""
    for _, record in iter_tfrecords_at(f, max_record_bytes):
        yield record


def _compression_type(compression: str) -> str:
    return CompressionTypes.GZIP if compression == "gzip" else CompressionTypes.UNCOMPRESSED


def _head(path: str, n: int) -> bytes:
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
        return f.read(n)


def resolve_compression(path: str, requested: str = "auto") -> str:
    """``none`` or ``gzip`` for a TFRecord file: as requested, else from the
    extension, else from the gzip magic bytes (TFDS-style GZIP shards often
    keep a plain .tfrecord name)."""
    if requested not in COMPRESSIONS:
        raise SourceError(f"--compression must be one of {', '.join(COMPRESSIONS)}, "
                          f"got {requested!r}")
    if requested != "auto":
        return requested
    if path.lower().endswith((".gz", ".gzip")):
        return "gzip"
    return "gzip" if _head(path, 2) == _GZIP_MAGIC else "none"


def _is_tfrecord(path: str) -> bool:
    try:
        with FileSystems.open(path, compression_type=_compression_type(
                resolve_compression(path))) as f:
            next(iter_tfrecords(f), None)
        return True
    except Exception:  # noqa: BLE001 - anything unreadable as TFRecord is not one
        return False


def detect_kind(paths: Sequence[str]) -> str:
    """The input kind of the matched files: by name, else by content."""
    kinds = {_name_kind(p) for p in paths}
    if kinds & {"csv", "tfrecord"} == {"csv", "tfrecord"}:
        raise SourceError("input matches both CSV and TFRecord files; give one kind per run")
    if "folder" in kinds and not kinds & {"csv", "tfrecord"}:
        return "folder"
    for kind in ("tfrecord", "csv"):
        if kind in kinds:
            return kind
    return "tfrecord" if _is_tfrecord(paths[0]) else "csv"


# --- tf.Example values -------------------------------------------------------------

def _parse_example(record: bytes):
    from tensorflow.core.example import example_pb2  # lazy: TF is heavy to import
    return example_pb2.Example.FromString(record)


def _values(feature) -> list:
    kind = feature.WhichOneof("kind") if feature is not None else None
    return list(getattr(feature, kind).value) if kind else []


def _text(value) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, float):
        return f"{value:.7g}"  # float32 precision, without 0.10000000149
    return str(value)


def feature_text(feature) -> str:
    """A metadata value: bytes as UTF-8, int64 and float as numbers, lists
    comma-joined, a missing feature empty."""
    return ",".join(_text(v) for v in _values(feature))


def _is_scalar_text(feature) -> bool:
    values = _values(feature)
    if len(values) > 1:
        return False
    if values and isinstance(values[0], bytes):
        try:
            values[0].decode("utf-8")
        except UnicodeDecodeError:
            return False
        return not looks_like_image(values[0])
    return True


def _scan_examples(paths: Sequence[str], requested: str):
    """The first SCAN_RECORDS tf.Examples of the input (from SCAN_FILES files at
    most); with ``requested`` auto, each file's compression is its own."""
    examples, bad = [], 0
    for path in list(paths)[:SCAN_FILES]:
        compression = resolve_compression(path, requested)
        try:
            with FileSystems.open(path, compression_type=_compression_type(compression)) as f:
                for record in iter_tfrecords(f):
                    try:
                        examples.append(_parse_example(record))
                    except Exception:  # noqa: BLE001 - one bad record is a dead letter later
                        bad += 1
                    if len(examples) + bad >= SCAN_RECORDS:
                        break
        except SourceError as e:
            raise SourceError(f"TFRecord {path}: {e} (--compression {compression})") from None
        except Exception as e:  # noqa: BLE001 - DecodeError, OSError from gzip, ...
            raise SourceError(f"TFRecord {path} cannot be read "
                              f"(--compression {compression}): {type(e).__name__}: {e}") from None
        if len(examples) + bad >= SCAN_RECORDS:
            break
    if bad and not examples:
        raise SourceError(f"TFRecord input {paths[0]}: none of the first {bad} records is a "
                          "tf.Example")
    return examples


# --- TensorFlow Datasets folders ----------------------------------------------------
# TFDS writes its shards beside dataset_info.json (name, version, splits),
# features.json (the FeaturesDict, as JSON) and NAME.labels.txt per
# ClassLabel feature. Reading those three JSON/text files is all it takes to
# know the image feature and the class names: tensorflow-datasets itself is
# not needed at run time.

TFDS_INFO, TFDS_FEATURES = "dataset_info.json", "features.json"
_TFDS_IMAGE = "image_feature.Image"
_TFDS_CLASS_LABEL = "class_label_feature.ClassLabel"
_TFDS_DICT = "features_dict.FeaturesDict"


def tfds_features(features_json: dict) -> Tuple[List[str], List[Tuple[str, str]]]:
    """From features.json: the tf.Example keys of the Image features, and
    (key, labels file name) of the ClassLabel features, in declaration order.

    Nested FeaturesDicts flatten to ``parent/child`` keys; their labels file
    is ``parent-child.labels.txt`` (TFDS's ``convert_feature_name_to_filename``).
    Sequences hold lists, never a metadata scalar, so they are not entered.
    """
    images, labels = [], []

    def walk(node: dict, key: str, filename: str):
        cls = node.get("pythonClassName", "")
        if cls.endswith(_TFDS_DICT) or "featuresDict" in node:
            for name, child in node.get("featuresDict", {}).get("features", {}).items():
                walk(child, f"{key}/{name}" if key else name,
                     f"{filename.replace('/', '-')}-{name.replace('/', '.')}" if filename
                     else name.replace("/", "."))
        elif cls.endswith(_TFDS_IMAGE):
            images.append(key)
        elif cls.endswith(_TFDS_CLASS_LABEL):
            labels.append((key, filename + ".labels.txt"))

    walk(features_json, "", "")
    return images, labels


def tfds_splits(info: dict, paths: Sequence[str]) -> List[str]:
    """The splits the shard names belong to (``NAME-SPLIT.tfrecord-00000-of-00004``)."""
    name = info.get("name", "")
    fmt = info.get("fileFormat", "tfrecord")
    found = []
    for split in (s.get("name", "") for s in info.get("splits", [])):
        prefix = f"{name}-{split}.{fmt}"
        if split and any(p.rsplit("/", 1)[-1].startswith(prefix) for p in paths):
            found.append(split)
    return found


def _read_json(path: str) -> Optional[dict]:
    try:
        with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
            data = json.loads(f.read().decode("utf-8"))
    except Exception:  # noqa: BLE001 - missing or unreadable: not a TFDS folder
        return None
    return data if isinstance(data, dict) else None


def _read_lines(path: str) -> Optional[Tuple[str, ...]]:
    try:
        with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
            return tuple(line.strip() for line in f.read().decode("utf-8").splitlines()
                         if line.strip())
    except Exception:  # noqa: BLE001 - no labels file: the indices stay
        return None


class TfdsFolder(NamedTuple):
    name: str
    version: str
    splits: Tuple[str, ...]
    image_features: Tuple[str, ...]
    label_names: Tuple[Tuple[str, Tuple[str, ...]], ...]


def read_tfds_folder(paths: Sequence[str]) -> Optional[TfdsFolder]:
    """What the TFDS files beside the first shard say, or None when there
    are none (any other TFRecords)."""
    folder = _dirname(paths[0])
    info = _read_json(FileSystems.join(folder, TFDS_INFO))
    if info is None or "name" not in info:
        return None
    images, labels = tfds_features(_read_json(FileSystems.join(folder, TFDS_FEATURES)) or {})
    names = []
    for key, filename in labels:
        found = _read_lines(FileSystems.join(folder, filename))
        if found:
            names.append((key, found))
    return TfdsFolder(name=str(info["name"]), version=str(info.get("version", "")),
                      splits=tuple(tfds_splits(info, paths)), image_features=tuple(images),
                      label_names=tuple(names))


def class_name_text(feature, names: Sequence[str]) -> str:
    """A ClassLabel value as its class name (an index out of range stays a number)."""
    return ",".join(names[v] if isinstance(v, int) and 0 <= v < len(names) else _text(v)
                    for v in _values(feature))


def _describe_tfrecord(paths, image_feature, metadata_features, compression) -> SourceSpec:
    tfds = read_tfds_folder(paths)
    if not image_feature:
        image_feature = (("image" if "image" in tfds.image_features else tfds.image_features[0])
                         if tfds and tfds.image_features else "image/encoded")
    requested, compression = compression, resolve_compression(paths[0], compression)
    examples = _scan_examples(paths, requested)
    if not examples:
        raise SourceError(f"TFRecord input {paths[0]} has no records")
    seen: Dict[str, bool] = {}
    for ex in examples:
        for name, feature in ex.features.feature.items():
            seen[name] = seen.get(name, True) and _is_scalar_text(feature)
    if image_feature not in seen:
        raise SourceError(f"TFRecord {paths[0]} has no feature {image_feature!r} in its first "
                          f"{len(examples)} records (set --image_feature); its features are: "
                          f"{_names(sorted(seen))}")
    if metadata_features:
        unknown = [n for n in metadata_features if n not in seen]
        if unknown:
            raise SourceError(f"--metadata_features {', '.join(unknown)} not found in the first "
                              f"{len(examples)} records; the features are: "
                              f"{_names(sorted(seen))}")
        features = tuple(metadata_features)
    else:
        features = tuple(sorted(n for n, scalar in seen.items() if scalar and n != image_feature))
    if SOURCE_COLUMN in features:
        raise SourceError(f"feature {SOURCE_COLUMN!r} clashes with the input's first metadata "
                          "column (where each image came from); list the features to keep "
                          "with --metadata_features")
    label_names, about = (), ()
    if tfds:
        label_names = tuple((k, v) for k, v in tfds.label_names if k in features)
        about = (("name", tfds.name), ("version", tfds.version),
                 ("split", ",".join(tfds.splits)))
    return SourceSpec(kind="tfrecord", pattern="", paths=tuple(paths),
                      columns=(SOURCE_COLUMN,) + features, image_feature=image_feature,
                      features=features, compression=compression,
                      label_names=label_names, tfds=about,
                      auto_compression=requested == "auto")


def _first_row_exists(path: str) -> bool:
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


def _describe_csv(pattern, paths, image_column) -> SourceSpec:
    header = csv_header(paths[0])
    if image_column not in header:
        raise SourceError(f"CSV {paths[0]} has no column {image_column!r} "
                          f"(set --image_column); its columns are: {_names(header)}")
    if not any(_first_row_exists(p) for p in paths):
        raise SourceError(f"input {pattern} has a header but no rows")
    return SourceSpec(kind="csv", pattern=pattern, paths=tuple(paths),
                      columns=tuple(metadata_columns(header, image_column)),
                      image_column=image_column)


def _relative(path: str, root: str) -> str:
    return path[len(root):].lstrip("/") if root and path.startswith(root) else path


def _describe_folder(pattern: str, root: str, listed: Sequence[str]) -> SourceSpec:
    images = [p for p in listed if is_image_path(p)]
    if not images:
        raise SourceError(f"input {pattern} holds no image files "
                          f"({', '.join(IMAGE_EXTENSIONS)})")
    labelled = bool(root) and any("/" in _relative(p, root) for p in images)
    return SourceSpec(kind="folder", pattern=root + "/**" if root else pattern, paths=(),
                      columns=("path", "label") if labelled else ("path",),
                      root=root, labelled=labelled)


def describe_input(pattern: str, image_column: str = "path",
                   image_feature: str = "", metadata_features: Sequence[str] = (),
                   compression: str = "auto") -> SourceSpec:
    """Detect the kind of ``--input`` and learn its columns. Raises SourceError.

    ``image_feature`` empty: the TFDS dataset's image feature for shards of
    a TensorFlow Datasets folder, else ``image/encoded``.
    """
    if compression not in COMPRESSIONS:
        raise SourceError(f"--compression must be one of {', '.join(COMPRESSIONS)}, "
                          f"got {compression!r}")
    root = directory_root(pattern)
    if root is not None:
        # A bounded listing: enough to see the layout without walking a bucket
        # of millions of objects on the launcher; the workers list it all.
        listed = [m.path for m in FileSystems.match([root + "/**"], limits=[FOLDER_PROBE])[0]
                  .metadata_list]
        if any(p.rsplit("/", 1)[-1] == TFDS_INFO for p in listed):
            raise SourceError(f"input {pattern} is a TensorFlow Datasets folder: give the "
                              f"shards of a split, e.g. '{root}/*-train.tfrecord-*'")
        return _describe_folder(pattern, root, listed)
    paths = expand_input(pattern)
    kind = detect_kind(paths)
    if kind == "folder":
        return _describe_folder(pattern, "", paths)
    if kind == "tfrecord":
        return _describe_tfrecord(paths, image_feature, tuple(metadata_features), compression)
    return _describe_csv(pattern, paths, image_column)


# --- readers -------------------------------------------------------------------------

class _ExampleToRefFn(beam.DoFn):
    """(file, serialized tf.Example) -> ImageRef, or an ErrorRow for that record.

    Why not tfx-bsl's ``TFExampleRecord`` (TFXIO): its Beam source is
    ``ReadFromTFRecord`` per pattern with the compression taken from the file
    name only (no way to read a GZIP shard named .tfrecord) and without the
    file name; its decoder turns batches of records into Arrow columns, where
    one record that is not a tf.Example, or a feature whose type changes,
    fails the batch and so the job. We need the opposite shape: one Python
    row per record (image bytes, metadata strings), one dead-letter row per
    bad record, and the raw record for a stable uid. So the records come from
    our own checksummed reader (``_ReadTFRecordFileFn``) and each is parsed
    with the tf.Example proto.
    """

    def __init__(self, image_feature: str, features: Sequence[str], label_names=()):
        self._image_feature = image_feature
        self._features = tuple(features)
        self._label_names = dict(label_names)
        self._read = beam.metrics.Metrics.counter(METRICS_NAMESPACE, "read")
        self._bad = beam.metrics.Metrics.counter(METRICS_NAMESPACE, "failed_read")

    def _error(self, where: str, reason: str):
        self._bad.inc()
        return beam.pvalue.TaggedOutput(ERRORS_TAG, ErrorRow(where, "read", reason))

    def process(self, element):
        filename, record = element
        # Content hash: stable across runs, runners, file splits and copies of
        # the data to another bucket, so the same seed gives the same sample.
        uid = hashlib.blake2b(record, digest_size=16).hexdigest()
        where = f"{filename}#{uid[:12]}"
        try:
            feats = _parse_example(record).features.feature
        except Exception as e:  # noqa: BLE001 - DecodeError and friends
            yield self._error(where, f"record is not a tf.Example: {type(e).__name__}: {e}")
            return
        image = feats.get(self._image_feature)
        kind = image.WhichOneof("kind") if image is not None else None
        if kind != "bytes_list" or not image.bytes_list.value:
            name = self._image_feature
            if image is None:
                reason = f"record has no {name!r} feature"
            elif kind and kind != "bytes_list":
                reason = f"feature {name!r} holds {kind} values, not bytes"
            else:
                reason = f"feature {name!r} is empty"
            yield self._error(where, reason + "; expected encoded image bytes or an image path")
            return
        value = image.bytes_list.value[0]
        path = None if looks_like_image(value) else _path_text(value)
        if path is None:  # image bytes (or junk the decoder will report)
            ref, content, source = where, value, where
        else:
            ref, content, source = resolve_ref(path, _dirname(filename)), None, path
        self._read.inc()
        yield ImageRef(uid=uid, ref=ref, content=content,
                       metadata=(source,) + tuple(self._metadata_text(n, feats.get(n))
                                                 for n in self._features))

    def _metadata_text(self, name, feature) -> str:
        names = self._label_names.get(name)
        return class_name_text(feature, names) if names else feature_text(feature)


class _ReadTFRecordFileFn(beam.DoFn):
    """One TFRecord file -> (file, record) per record; a broken stream ends
    that file with one ``read`` row naming the file and the byte offset.

    Why not Beam's ``ReadAllFromTFRecord``: it raises on the first bad
    record (a flipped checksum, a truncated tail, a truncated GZIP member, a
    length of 2^40 that it tries to allocate), and the exception kills the
    job after every other file was read. Here each file is its own unit: a
    bad stream stops at its last good record (the framing has no sync marker
    to resume from) and the rest of the input goes on. What is lost is
    splitting inside one file: a file is read by one worker, so the shards of
    a dataset (TFDS, tf.data writers: tens to thousands) are the unit of
    parallelism; a single huge file reads serially.
    """

    def __init__(self, compression: str, max_record_bytes: int = DEFAULT_MAX_IMAGE_BYTES,
                 auto: bool = False):
        self._compression = compression
        self._auto = auto   # resolve per file: a glob may mix plain and GZIP shards
        self._max_record_bytes = max_record_bytes
        self._bad = beam.metrics.Metrics.counter(METRICS_NAMESPACE, "failed_read")

    def process(self, path: str):
        offset = count = 0
        compression = self._compression
        try:
            if self._auto:
                compression = resolve_compression(path, "auto")
            with contextlib.ExitStack() as stack:
                f = stack.enter_context(FileSystems.open(
                    path, compression_type=CompressionTypes.UNCOMPRESSED))
                if compression == "gzip":
                    # Python's gzip, not Beam's decompressing reader: that one
                    # ends quietly at a truncation, losing the tail unnoticed;
                    # this raises EOFError there and checks the member's CRC.
                    f = stack.enter_context(gzip.GzipFile(fileobj=f, mode="rb"))
                for offset, record in iter_tfrecords_at(f, self._max_record_bytes):
                    count += 1
                    yield path, record
                    offset += 16 + len(record)
            return
        except TFRecordFramingError as e:
            reason, offset = e.reason, e.offset
        except EOFError:
            reason = "truncated GZIP stream (it ends before its end-of-stream marker)"
        except (gzip.BadGzipFile, zlib.error) as e:
            reason = f"corrupt GZIP stream: {str(e)[:200]}"
        except Exception as e:  # noqa: BLE001 - OSError and the like of a broken stream
            text = str(e).strip().splitlines()
            reason = f"cannot read TFRecord stream: {type(e).__name__}" + (
                f": {text[0][:200]}" if text else "")
        where = "of the uncompressed stream " if compression == "gzip" else ""
        self._bad.inc()
        yield beam.pvalue.TaggedOutput(ERRORS_TAG, ErrorRow(
            path, "read", f"{reason} at byte {offset} {where}after {count} good records; "
            "the rest of this file is skipped"))


class ReadTFRecordExamples(beam.PTransform):
    """TFRecord files of tf.Example -> (ImageRefs, errors)."""

    def __init__(self, spec: SourceSpec, max_record_bytes: int = DEFAULT_MAX_IMAGE_BYTES):
        super().__init__()
        self._spec = spec
        self._max_record_bytes = max_record_bytes

    def expand(self, pbegin):
        spec = self._spec
        records = (pbegin
                   | "TFRecordFiles" >> beam.Create(list(spec.paths))
                   # one file per element: spread the files over the workers
                   | "SpreadFiles" >> beam.Reshuffle()
                   | "ReadRecords" >> beam.ParDo(_ReadTFRecordFileFn(
                       spec.compression, self._max_record_bytes,
                       spec.auto_compression)).with_outputs(
                           ERRORS_TAG, main="records"))
        out = (records.records
               | "ParseExamples" >> beam.ParDo(_ExampleToRefFn(
                   spec.image_feature, spec.features, spec.label_names)).with_outputs(
                       ERRORS_TAG, main="refs"))
        errors = (records[ERRORS_TAG], out[ERRORS_TAG]) | "TFRecordErrors" >> beam.Flatten()
        return out.refs, errors


class _FileToRefFn(beam.DoFn):
    """A listed file -> ImageRef; files without an image extension are
    skipped (and counted), as image_dataset_from_directory does."""

    def __init__(self, root: str, labelled: bool):
        self._root, self._labelled = root, labelled
        self._read = beam.metrics.Metrics.counter(METRICS_NAMESPACE, "read")
        self._skipped = beam.metrics.Metrics.counter(METRICS_NAMESPACE, "skipped_non_image")

    def process(self, metadata):
        path = metadata.path
        if not is_image_path(path):
            self._skipped.inc()
            return
        rel = _relative(path, self._root)
        values = (rel,)
        if self._labelled:
            values += (rel.split("/", 1)[0] if "/" in rel else "",)
        self._read.inc()
        # The path relative to the folder: the same sample wherever the folder lives.
        yield ImageRef(uid=rel, ref=path, content=None, metadata=values)


class ReadImageFolder(beam.PTransform):
    """A folder (class sub-folders give ``label``) or a glob of image files ->
    (ImageRefs, errors). Listing happens on the workers (``MatchAll``), so a
    bucket of millions of images never passes through the launcher."""

    def __init__(self, spec: SourceSpec):
        super().__init__()
        self._spec = spec

    def expand(self, pbegin):
        from apache_beam.io import fileio
        spec = self._spec
        refs = (pbegin
                | "Pattern" >> beam.Create([spec.pattern])
                | "ListFiles" >> fileio.MatchAll()
                | "ImageFiles" >> beam.ParDo(_FileToRefFn(spec.root, spec.labelled)))
        # Listing has no per-item failure; unreadable images fail at decode.
        errors = pbegin | "NoListErrors" >> beam.Create([])
        return refs, errors


class ReadImageRefs(beam.PTransform):
    """Any input kind -> (ImageRefs, errors): the reader ``spec.kind`` names."""

    def __init__(self, spec: SourceSpec, max_record_bytes: int = DEFAULT_MAX_IMAGE_BYTES):
        super().__init__()
        self._spec = spec
        self._max_record_bytes = max_record_bytes

    def expand(self, pbegin):
        spec = self._spec
        if spec.kind == "csv":
            return pbegin | "Csv" >> ReadCsv(spec.paths, spec.image_column)
        if spec.kind == "tfrecord":
            return pbegin | "TFRecord" >> ReadTFRecordExamples(spec, self._max_record_bytes)
        if spec.kind == "folder":
            return pbegin | "Folder" >> ReadImageFolder(spec)
        raise ValueError(f"unknown input kind {spec.kind!r}; expected one of {INPUT_KINDS}")
