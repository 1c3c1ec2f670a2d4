"""The whole job as one composite: images + a model -> a projector logdir.

    images | ImagesToProjector(output="logs/run1", model="m.keras", layers=["embedding"],
                               columns=["label"], max_items=5000, seed=0)

Each element is ``(image, metadata)``: ``image`` a path/URI (any Beam
filesystem) or the encoded bytes, ``metadata`` a mapping (values taken in
``columns`` order) or a sequence in that order; or an ``ImageRef`` as the
sources yield. Dead letters travel the Beam way: ``ImagesToProjector``
returns a ``ProjectorResult`` with ``.summary`` and ``.errors`` and writes
``errors.tsv`` into the logdir itself. The CLI applies exactly this.
"""
import dataclasses
import hashlib
import json
import uuid
from collections.abc import Mapping
from typing import Callable, Optional, Sequence, Tuple, Union

import apache_beam as beam

from beam_projector.transforms import sampling
from beam_projector.transforms.checks import check_model, check_output
from beam_projector.transforms.first_n import EmbedFirstN
from beam_projector.transforms.model import ModelSpec
from beam_projector.transforms.projector import tile_size_for
from beam_projector.transforms.records import (
    DEFAULT_MAX_IMAGE_BYTES,
    METRICS_NAMESPACE,
    ImageRef,
)
from beam_projector.transforms.settings import Settings
from beam_projector.transforms.sources.read import ERRORS, IMAGES
from beam_projector.transforms.staging import StageThumbnails, hold_staging, staging_dir
from beam_projector.transforms.write.config import WriterConfig
from beam_projector.transforms.write.layout import root_files
from beam_projector.transforms.write.stage import WriteProjectorLogdir

SUMMARY = "summary"


class ProjectorResult(dict):
    """What ``ImagesToProjector`` returns: ``.summary`` (one dict: written,
    failed, digest, tensors, tile) and ``.errors`` (every dead letter, also
    in errors.tsv)."""

    def __init__(self, outputs=()):
        super().__init__(outputs)

    @property
    def summary(self):
        return self[SUMMARY]

    @property
    def errors(self):
        return self[ERRORS]


def to_image_ref(element, columns: Sequence[str]) -> ImageRef:
    """``(image, metadata)`` (or an ImageRef, unchanged) -> ImageRef.

    The sample key hashes the uid: a path's own text, or the bytes' content,
    so the same images give the same sample wherever they come from.
    """
    if isinstance(element, ImageRef):
        return element
    image, metadata = element
    if isinstance(metadata, Mapping):
        values = tuple(str(metadata.get(c, "")) for c in columns)
    else:
        values = tuple(str(v) for v in metadata)
        if len(values) != len(columns):
            raise ValueError(f"metadata {values!r} has {len(values)} values for "
                             f"{len(columns)} columns {tuple(columns)!r}")
    if isinstance(image, (bytes, bytearray, memoryview)):
        content = bytes(image)
        uid = hashlib.blake2b(content, digest_size=16).hexdigest()
        return ImageRef(uid=uid, ref=f"bytes#{uid[:12]}", content=content, metadata=values)
    if isinstance(image, str):
        return ImageRef(uid=image, ref=image, content=None, metadata=values)
    raise TypeError(f"expected an image path/URI or encoded bytes, got {type(image).__name__}")


def _count(name):
    counter = beam.metrics.Metrics.counter(METRICS_NAMESPACE, name)

    def inc(x):
        counter.inc()
        return x
    return inc


def _tile_for(sampled: int, max_items: int, requested: int) -> int:
    return tile_size_for(max(1, min(sampled, max_items)), requested)


def _apply_stage(pcoll, stage, label):
    """A user's stage; one given as "Label" >> transform keeps its label."""
    return pcoll | (stage if hasattr(stage, "transform") else label >> stage)


class ImagesToProjector(beam.PTransform):
    """Images + a model -> a TensorBoard Embedding Projector logdir at ``output``.

        images | ImagesToProjector(output="logs/run1", model="m.keras",
                                   layers=["embedding"], columns=["label"])

    The graph: sample (seeded bottom-k, N + a failure margin) -> reshuffle ->
    split at the first N (and at most ``max_per_label`` per label) -> decode
    once + embed those; check that the margin decodes, and embed the margin
    images that take the places of failed ones -> ``after_embed`` stages, if
    any -> one ordered write of tensor, metadata, sprite, config and
    errors.tsv.

    ``model``: a Keras ``.keras``/``.h5`` file or SavedModel directory (path
    or URI), cut at ``layers`` (Keras) or ``outputs`` (SavedModel); or a
    ``ModelSpec``. The model is loaded and checked once, when the graph is
    built, and every setting then too: a ``ValueError`` says what to fix.
    ``errors``: extra dead-letter PCollections (``ErrorRow``) for
    errors.tsv. ``after_embed``: transforms of ``Embedded`` elements applied
    before the write (e.g. one appending metadata values), with
    ``extra_columns`` naming the columns they append. ``column_stages``:
    transforms of ``Embedded`` elements into (order key, values) pairs, each
    with a ``columns`` attribute naming its values (``NeighborColumns``); the
    writer joins them by key, so the items never wait for them (the CLI adds
    the neighbour columns this way; ``suspects_label_column`` then names the
    label column suspects.tsv reads). ``progress``: a
    ``(stage, total=None) -> PTransform`` factory for progress reporting
    (the CLI passes ``pipeline.progress.LogProgress``). ``settings``: a
    ``Settings`` made elsewhere (the CLI's), instead of the keywords it holds.
    """

    def __init__(self, output: str, model: Union[str, ModelSpec], layers: Sequence[str] = (),
                 columns: Optional[Sequence[str]] = None, max_items: int = 1500, seed: int = 0,
                 max_per_label: Optional[int] = None, label_column: str = "label",
                 tile_size: int = 100, batch_size: int = 0, resize: str = "pad",
                 pixel_scale: str = "raw", image_size: Tuple[int, ...] = (),
                 signature: str = "serving_default", outputs: Sequence[str] = (),
                 pool: str = "", tensor_format: str = "tsv", preview: bool = True,
                 standalone: bool = False, max_error_fraction: float = 0.1,
                 max_image_bytes: int = DEFAULT_MAX_IMAGE_BYTES, errors: Sequence = (),
                 after_embed: Sequence[beam.PTransform] = (),
                 extra_columns: Sequence[str] = (),
                 column_stages: Sequence[beam.PTransform] = (),
                 suspects_label_column: str = "",
                 progress: Optional[Callable[..., beam.PTransform]] = None,
                 run_id: str = "", options_json: str = "",
                 settings: Optional[Settings] = None):
        super().__init__()
        # checked once, when made: a ValueError naming the setting
        self.settings = settings or Settings(
            max_items=max_items, seed=seed, max_per_label=max_per_label,
            label_column=label_column, tile_size=tile_size, resize=resize,
            tensor_format=tensor_format, preview=preview, standalone=standalone,
            max_error_fraction=max_error_fraction, max_image_bytes=max_image_bytes)
        self.model = model if isinstance(model, ModelSpec) else ModelSpec(
            uri=model, layers=tuple(layers), signature=signature, outputs=tuple(outputs),
            pixel_scale=pixel_scale, image_size=tuple(image_size), pool=pool or "",
            batch_size=batch_size)
        if batch_size and not self.model.batch_size:
            self.model = self.model.replace(batch_size=batch_size)
        self.output = output
        self._columns = None if columns is None else tuple(columns)
        self._errors = tuple(errors)
        self._after_embed = tuple(after_embed)
        self._extra_columns = tuple(extra_columns)
        self._column_stages = tuple(column_stages)
        for stage in self._column_stages:
            if not hasattr(getattr(stage, "transform", stage), "columns"):
                raise ValueError(f"column stage {stage!r} has no columns attribute naming "
                                 "the values it gives")
        self._suspects_label_column = suspects_label_column
        self._progress = progress
        self.run_id = run_id or uuid.uuid4().hex
        self._options_json = options_json or json.dumps(
            {"output": output, "model": dataclasses.asdict(self.model),
             **dataclasses.asdict(self.settings)}, sort_keys=True, default=str)

    def accept_read_result(self, columns: Sequence[str]) -> None:
        """Applied to a ``ReadResult``: its columns, unless ``columns`` was given."""
        if self._columns is None:
            self._columns = tuple(columns)

    def _watch(self, stage, pcoll, total=None):
        if self._progress is None:
            return pcoll
        label = "Progress" + stage.capitalize()
        return pcoll | label >> self._progress(stage, total=total)

    def expand(self, pvalueish):
        p = pvalueish.pipeline if isinstance(pvalueish, beam.pvalue.PValue) else None
        if isinstance(pvalueish, Mapping):
            images, upstream = pvalueish[IMAGES], (pvalueish[ERRORS],)
            columns = self._columns
            p = images.pipeline
        else:
            images, upstream, columns = pvalueish, (), self._columns
        if columns is None:
            raise ValueError("ImagesToProjector needs columns=[...]: the metadata column "
                             "names, in the order of each element's values")
        settings = self.settings
        label_index = None
        if settings.max_per_label is not None:
            if settings.label_column not in columns:
                raise ValueError(f"max_per_label needs the label column "
                                 f"{settings.label_column!r} among columns {columns!r}")
            label_index = columns.index(settings.label_column)
        # Once, here on the launcher: loads and checks the model (kept for
        # in-process workers) and the output folder.
        model_size, tensor_names, batch_size = check_model(self.model)
        check_output(self.output, root_files(settings.preview, settings.standalone))

        refs = images | "AsImageRefs" >> beam.Map(to_image_ref, columns)
        refs = self._watch("read", refs)
        sizes = settings.sample_sizes
        sampled = (refs
                   | "Sample" >> sampling.SampleItems(
                       sizes.total, settings.seed, per_label=sizes.per_label,
                       label_index=label_index)
                   | "CountSampled" >> beam.Map(_count("sampled")))
        # Thumbnails are made at the tile the sprite will have: from the number
        # of items actually sampled (at most N), not the requested N alone.
        tile = (sampled
                | "SampleSize" >> beam.combiners.Count.Globally()
                | "TileSize" >> beam.Map(_tile_for, settings.max_items, settings.tile_size))
        # Thumbnails go to staging files as they are made (the writer draws
        # the sprite from them); later stages read them back on use.
        folder = staging_dir(self.output, self.run_id)
        hold_staging(folder)   # this launcher holds it while the process lives
        progress = (None if self._progress is None else
                    lambda total: self._progress("embedded", total=total))
        kept = sampled | "EmbedFirstN" >> EmbedFirstN(
            self.model, model_size, tile, settings, label_index, batch_size, stage_to=folder,
            progress=progress)
        embedded = kept.embedded
        for i, stage in enumerate(self._after_embed):
            embedded = _apply_stage(embedded, stage, f"AfterEmbed{i}")
        tables = [_apply_stage(embedded, stage, f"Columns{i}")
                  for i, stage in enumerate(self._column_stages)]
        stage_columns = [tuple(getattr(stage, "transform", stage).columns)
                         for stage in self._column_stages]
        errors = ((*upstream, *self._errors, kept.errors)
                  | "AllErrors" >> beam.Flatten(pipeline=p))
        cfg = WriterConfig(
            output=self.output,
            columns=tuple(columns) + self._extra_columns + sum(stage_columns, ()),
            tensor_names=tensor_names, settings=settings, run_id=self.run_id,
            label_column=self._suspects_label_column, options_json=self._options_json,
            # a stage's layout_columns (LayoutColumns) go to bookmarks.json, not metadata
            layout_columns=sum((tuple(getattr(getattr(s, "transform", s), "layout_columns", ()))
                                for s in self._column_stages), ()))
        # after_embed stages may have made new thumbnails: staged here too
        staged = embedded | "StageThumbnails" >> StageThumbnails(folder)
        summary = ((staged, errors, *tables)
                   | "WriteLogdir" >> WriteProjectorLogdir(
                       cfg, column_widths=[len(c) for c in stage_columns]))
        return ProjectorResult({SUMMARY: summary, ERRORS: errors})
