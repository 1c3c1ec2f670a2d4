"""WriteToProjector: rows with vectors computed anywhere -> a projector logdir.

A PyTorch model, an endpoint, a vector database export: any PCollection of
dicts or ``beam.Row``s with a ``vector`` (and optionally an ``image`` for the
sprite tile) becomes the same logdir the CLI writes, through the same
single ordered writer (atomic publish, ownership, standalone export,
preview). Malformed rows are dead letters, never a failed job.
"""
import hashlib
import json
import uuid
from collections import Counter
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Optional, Sequence

import apache_beam as beam
import numpy as np

from beam_projector.transforms.elements import (
    ElementError,
    dead_letter,
    fields_of,
    image_source,
    metadata_of,
    vectors_of,
)
from beam_projector.transforms.images import ImageError, read_bytes, thumbnail_image
from beam_projector.transforms.projector import column_clash, tile_size_for
from beam_projector.transforms.records import (
    DEFAULT_MAX_IMAGE_BYTES,
    ERRORS_TAG,
    METRICS_NAMESPACE,
    Embedded,
    ErrorRow,
    ImageRef,
    StagedThumbnail,
    Thumbnail,
)
from beam_projector.transforms.sampling import sample_key
from beam_projector.transforms.settings import Settings
from beam_projector.transforms.staging import StageThumbnails, staging_dir
from beam_projector.transforms.worker import quiet_if_asked
from beam_projector.transforms.write.config import WriterConfig
from beam_projector.transforms.write.stage import WriteProjectorLogdir

# max_items when every row is written (TensorBoard itself loads at most
# 100,000 points: see the README's Limits).
ALL_ROWS = 2 ** 31 - 1
SUMMARY, ERRORS = "summary", "errors"


class ProjectorResult(dict):
    """What ``WriteToProjector`` and ``ImagesToProjector`` return: ``.summary``
    (one dict: written, failed, digest, tensors, tile) and ``.errors`` (every
    dead letter, also in the logdir's errors.tsv)."""

    def __init__(self, outputs=()):
        super().__init__(outputs)

    @property
    def summary(self):
        return self[SUMMARY]

    @property
    def errors(self):
        return self[ERRORS]


def row_identity(fields: Mapping, id_fields: Sequence[str], image_uid: Optional[str],
                 metadata: Sequence[str], vectors) -> str:
    """What orders a row: its id fields' values, else its image (path text or
    bytes digest), else its metadata and vector bytes. Pure, so the order is
    the same on every runner."""
    named = [f"{k}={fields[k]}" for k in id_fields if k in fields and fields[k] is not None]
    if named:
        return "\x1f".join(named)
    if image_uid is not None:
        return image_uid
    h = hashlib.blake2b(digest_size=16)
    h.update("\x1f".join(metadata).encode("utf-8"))
    for v in vectors:
        h.update(np.ascontiguousarray(v, dtype="<f4").tobytes())
    return h.hexdigest()


class _ToRecords(beam.DoFn):
    """A user's row -> Embedded (the writer's record), or its dead letter."""

    def __init__(self, columns, vector_field, image_field, id_fields, tensor_names, seed):
        self._columns, self._vector_field = tuple(columns), vector_field
        self._image_field, self._id_fields = image_field, tuple(id_fields)
        self._names, self._seed = tuple(tensor_names or ()), seed
        self._bad = beam.metrics.Metrics.counter(METRICS_NAMESPACE, "failed_read")

    def process(self, element):
        try:
            fields = fields_of(element)
            metadata = metadata_of(fields, self._columns)
            names, vectors = vectors_of(fields, self._vector_field, self._names)
            ref, content, uid = "", None, None
            if fields.get(self._image_field) is not None:
                ref, content, uid = image_source(fields, self._image_field)
            thumbnail = fields.get("thumbnail")
            if not isinstance(thumbnail, (Thumbnail, StagedThumbnail)):
                thumbnail = None
        except ElementError as e:
            self._bad.inc()
            yield beam.pvalue.TaggedOutput(ERRORS_TAG, dead_letter(
                element, "input", str(e), self._id_fields))
            return
        identity = row_identity(fields, self._id_fields, uid, metadata, vectors)
        # ref: the image ("" when the row has none, so no thumbnail is made)
        item = ImageRef(uid=identity, ref=ref, content=content,
                        metadata=metadata, key=sample_key(identity, self._seed))
        yield (names, Embedded(item, thumbnail, vectors))


def _shape(named) -> tuple:
    names, e = named
    return names, tuple(len(v) for v in e.vectors)


class _MostCommon(beam.CombineFn):
    """The most common value (ties: the smallest), so every runner agrees."""

    def create_accumulator(self):
        return Counter()

    def add_input(self, acc, value):
        acc[value] += 1
        return acc

    def merge_accumulators(self, accs):
        out = Counter()
        for acc in accs:
            out.update(acc)
        return out

    def extract_output(self, acc):
        if not acc:
            return None
        return min(acc, key=lambda v: (-acc[v], repr(v)))


class _CheckShape(beam.DoFn):
    """Rows whose tensors or dimensions differ from most rows' -> dead letters."""

    def __init__(self, id_fields):
        self._id_fields = tuple(id_fields)

    def process(self, named, shape):
        names, e = named
        got = _shape(named)
        if got == shape:
            yield e
            return
        if names != shape[0]:
            reason = f"tensors {', '.join(names)}; most rows have {', '.join(shape[0])}"
        else:
            reason = (f"vector of {', '.join(map(str, got[1]))} dimensions; most rows have "
                      f"{', '.join(map(str, shape[1]))}")
        yield beam.pvalue.TaggedOutput(ERRORS_TAG, _row_error(e.item, "input", reason))


def _tensor_names(shape) -> tuple:
    return tuple(shape[0]) if shape else ()


def _row_error(item: ImageRef, stage: str, reason: str) -> ErrorRow:
    """A converted row's dead letter, named by its image or its identity."""
    return ErrorRow(item.ref or item.uid, stage, reason, item.key)


def _thumbnail_one(e: Embedded, tile: int, max_bytes: int):
    """The row with its sprite thumbnail made from its image (a row without
    an image keeps none), or an ErrorRow when the image does not decode."""
    item = e.item
    if e.thumbnail is not None or (item.content is None and not item.ref):
        return e._replace(item=item._replace(content=None))
    stage = "read"
    try:
        data = item.content if item.content is not None else read_bytes(item.ref, max_bytes)
        stage = "decode"
        thumb = thumbnail_image(data, tile)
    except Exception as err:  # noqa: BLE001 - this row's failure, not the job's
        reason = str(err) if isinstance(err, ImageError) else f"{type(err).__name__}: {err}"
        return _row_error(item, stage, reason)
    return e._replace(thumbnail=thumb, item=item._replace(content=None))


class _Thumbnails(beam.DoFn):
    """Rows -> the same with thumbnails from their images, a batch at a time
    on a thread pool (Pillow releases the GIL)."""

    def __init__(self, max_bytes: int):
        self._max_bytes = max_bytes
        self._pool = None

    def setup(self):
        import os
        quiet_if_asked()
        self._pool = ThreadPoolExecutor(os.cpu_count() or 1, thread_name_prefix="thumbnails")

    def teardown(self):
        if self._pool is not None:
            self._pool.shutdown(wait=False)

    def process(self, batch, tile):
        for out in self._pool.map(lambda e: _thumbnail_one(e, tile, self._max_bytes), batch):
            if isinstance(out, Embedded):
                yield out
            else:
                yield beam.pvalue.TaggedOutput(ERRORS_TAG, out)


def _tile_for(count: int, requested: int) -> int:
    return tile_size_for(max(1, count), requested)


class WriteToProjector(beam.PTransform):
    """Rows with vectors computed anywhere -> a projector logdir at ``output``.

        rows | WriteToProjector("logs/run1", columns=["label"])

    Args:
      output: the logdir (local path or any Beam filesystem URI).
      columns: the metadata fields written to metadata.tsv, in this order.
        A row that lacks one is a dead letter.
      tensor_names: with one vector per row, its tensor's name (default: the
        vector field's name); with a mapping of vectors, the tensors to write
        and their order (default: the mapping's keys, sorted).
      vector_field: a 1-D array-like, or a mapping of tensor name to one.
      image_field: optional encoded image bytes or a path/URI, decoded to the
        row's sprite tile (a row without one has an empty tile; without any,
        no sprite). A ``thumbnail`` field (what ``EmbedImages`` adds) is used
        as it is.
      id_fields: the fields that identify a row: its dead letter names it by
        them, and the write order hashes them.
      max_items: write only the first this many rows in the write order
        (default: every row; TensorBoard loads at most 100,000).
      tile_size, tensor_format, preview, standalone, max_error_fraction,
      max_image_bytes: as the CLI's options (``Settings``).

    Rows are written sorted by a seeded 64-bit hash of their identity (the
    ``id_fields`` values, else the image, else the metadata and vector), the
    order the CLI writes its sample in: the same on every runner, and
    spread, not grouped by label. Every row has to have the same tensors and
    dimensions as most rows; the others are dead letters. Returns a
    ``ProjectorResult`` (``.summary``, ``.errors``); applied to an
    ``EmbedResult`` it takes its errors too. Nothing is read or written
    when the graph is built.
    """

    takes_dead_letters = True

    def __init__(self, output: str, columns: Sequence[str] = (), *,
                 tensor_names: Optional[Sequence[str]] = None, vector_field: str = "vector",
                 image_field: str = "image", id_fields: Sequence[str] = ("id",),
                 max_items: Optional[int] = None, tile_size: int = 100,
                 tensor_format: str = "tsv", preview: bool = True, standalone: bool = False,
                 max_error_fraction: float = 0.1,
                 max_image_bytes: int = DEFAULT_MAX_IMAGE_BYTES, seed: int = 0):
        super().__init__()
        if isinstance(columns, str):
            raise ValueError(f"columns must be a list of field names, got the str {columns!r}")
        self.settings = Settings(
            max_items=ALL_ROWS if max_items is None else max_items, seed=seed,
            tile_size=tile_size, tensor_format=tensor_format, preview=preview,
            standalone=standalone, max_error_fraction=max_error_fraction,
            max_image_bytes=max_image_bytes)
        self.output = output
        self._columns = tuple(columns)
        clash = column_clash(self._columns)   # the projector keys values by name
        if clash:
            raise ValueError(clash)
        self._tensor_names = tuple(tensor_names or ())
        self._vector_field, self._image_field = vector_field, image_field
        self._id_fields = tuple(id_fields)
        self.run_id = uuid.uuid4().hex

    def expand(self, rows):
        upstream = ()
        if isinstance(rows, Mapping):   # an EmbedResult: its rows and its dead letters
            rows, upstream = rows["embedded"], (rows["errors"],)
        s = self.settings
        records = rows | "ToRecords" >> beam.ParDo(_ToRecords(
            self._columns, self._vector_field, self._image_field, self._id_fields,
            self._tensor_names, s.seed)).with_outputs(ERRORS_TAG, main="ok")
        shape = (records.ok | "Shapes" >> beam.Map(_shape)
                 | "MostCommonShape" >> beam.CombineGlobally(_MostCommon()))
        checked = records.ok | "CheckShape" >> beam.ParDo(
            _CheckShape(self._id_fields), beam.pvalue.AsSingleton(shape)).with_outputs(
            ERRORS_TAG, main="ok")
        tile = (checked.ok | "Count" >> beam.combiners.Count.Globally()
                | "Tile" >> beam.Map(_tile_for, s.tile_size))
        pictured = (checked.ok
                    | "Batch" >> beam.BatchElements(min_batch_size=8, max_batch_size=32)
                    | "Thumbnails" >> beam.ParDo(_Thumbnails(s.max_image_bytes),
                                                 beam.pvalue.AsSingleton(tile)).with_outputs(
                        ERRORS_TAG, main="ok"))
        staged = pictured.ok | "Stage" >> StageThumbnails(staging_dir(self.output, self.run_id))
        errors = ((*upstream, records[ERRORS_TAG], checked[ERRORS_TAG], pictured[ERRORS_TAG])
                  | "AllErrors" >> beam.Flatten())
        cfg = WriterConfig(output=self.output, columns=self._columns, tensor_names=(),
                           settings=s, run_id=self.run_id,
                           options_json=json.dumps({"output": self.output,
                                                    "columns": list(self._columns)}))
        names = shape | "TensorNames" >> beam.Map(_tensor_names)
        summary = (staged, errors) | "WriteLogdir" >> WriteProjectorLogdir(cfg, names=names)
        return ProjectorResult({SUMMARY: summary, ERRORS: errors})


