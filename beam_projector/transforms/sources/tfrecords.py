"""TFRecord files of tf.Example -> ImageRefs; a broken file is one dead letter."""
import contextlib
import gzip
import hashlib
import zlib
from typing import Optional, Sequence

import apache_beam as beam
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from beam_projector.transforms.records import (
    DEFAULT_MAX_IMAGE_BYTES,
    ERRORS_TAG,
    METRICS_NAMESPACE,
    ErrorRow,
    ImageRef,
)
from beam_projector.transforms.sources.spec import (
    SourceError,
    SourceSpec,
    looks_like_image,
    parent_dir,
    resolve_ref,
)
from beam_projector.transforms.sources.tfrecord_framing import (
    TFRecordFramingError,
    compression_type,
    iter_tfrecords,
    iter_tfrecords_at,
    resolve_compression,
)

# How many records (at most from this many files) the launcher reads to learn
# a TFRecord input's features.
SCAN_RECORDS, SCAN_FILES = 100, 8


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


def is_scalar_text(feature) -> bool:
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


def _path_text(value: bytes) -> Optional[str]:
    """``value`` as a path string, or None when it cannot be one."""
    if len(value) > 4096 or b"\x00" in value:
        return None
    try:
        text = value.decode("utf-8").strip()
    except UnicodeDecodeError:
        return None
    return text or None


def scan_examples(paths: Sequence[str], requested: str):
    """The first SCAN_RECORDS tf.Examples of the input (from SCAN_FILES files at
    most); with ``requested`` auto, each file's compression is its own."""
    examples, bad = [], 0
    for path in list(paths)[:SCAN_FILES]:
        compression = resolve_compression(path, requested)
        try:
            with FileSystems.open(path, compression_type=compression_type(compression)) as f:
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


def class_name_text(feature, names: Sequence[str]) -> str:
    """A ClassLabel value as its class name (an index out of range stays a number)."""
    return ",".join(names[v] if isinstance(v, int) and 0 <= v < len(names) else _text(v)
                    for v in _values(feature))


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
            ref, content, source = resolve_ref(path, parent_dir(filename)), None, path
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
