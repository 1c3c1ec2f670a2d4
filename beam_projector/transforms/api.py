"""The public API: write a projector logdir from a PCollection you already have.

    images | ImagesToProjector(output="logs/run1", model="m.keras", layers=["embedding"],
                               columns=["label"], max_items=5000, seed=0)

Each element is ``(image, metadata)``: ``image`` a path/URI (any Beam
filesystem) or the encoded bytes, ``metadata`` a mapping (values taken in
``columns`` order) or a sequence in that order; or an ``ImageRef`` as the
sources below yield. ``ReadImages`` reads the CLI's three input kinds (CSV,
TFRecord, folder). Dead letters travel the Beam way: ``ReadImages`` returns
a ``ReadResult`` with ``.images`` and ``.errors``, ``ImagesToProjector`` a
``ProjectorResult`` with ``.summary`` and ``.errors``; the composite writes
``errors.tsv`` into the logdir itself. ``pipeline/run.py`` (the CLI) applies
exactly this composite.
"""
import hashlib
import json
import uuid
from collections.abc import Mapping
from typing import Any, Callable, NamedTuple, Optional, Sequence, Tuple, Union

import apache_beam as beam

from beam_projector.transforms import checks, sampling, sources, write
from beam_projector.transforms.decode import CheckDecodes
from beam_projector.transforms.inference import EmbedImages, ModelSpec, auto_batch_size
from beam_projector.transforms.items import (DEFAULT_MAX_IMAGE_BYTES, METRICS_NAMESPACE, ErrorRow, ImageRef,
                              TotalChange)
from beam_projector.transforms.projector import tile_size_for
from beam_projector.transforms.staging import StageThumbnails, hold_staging, staging_dir

IMAGES, ERRORS, SUMMARY = "images", "errors", "summary"
MARGIN = "margin"
# Failures of a first attempt at an image, which the margin refills.
REFILLABLE_STAGES = ("read", "decode")


class ReadResult(dict):
    """What ``ReadImages`` returns: ``.images`` (ImageRefs) and ``.errors``
    (``ErrorRow`` dead letters), plus ``.columns`` (the metadata columns).

    ``|`` chains on: ``read | ImagesToProjector(...)`` takes both (the read
    errors land in errors.tsv); any other transform applies to ``.images``.
    """

    def __init__(self, outputs=(), columns: Tuple[str, ...] = ()):
        # Beam copies its inputs with type(result)(dict): keep that signature.
        super().__init__(outputs)
        self.columns = tuple(columns)

    @property
    def images(self):
        return self[IMAGES]

    @property
    def errors(self):
        return self[ERRORS]

    def __or__(self, transform):
        inner = getattr(transform, "transform", transform)   # "label" >> transform
        if isinstance(inner, ImagesToProjector):
            if inner._columns is None:   # the source's columns, unless given
                inner._columns = self.columns
            return transform.__ror__(self)
        return self.images | transform


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


class ReadImages(beam.PTransform):
    """A CSV of image paths, TFRecord files of tf.Example (TFDS shards too), or a
    folder / glob of images -> ``ReadResult``; the kind is detected here, on
    the launcher, and every problem with the input raises ``ValueError`` now.

        read = p | ReadImages("images.csv", image_column="path")
    """

    def __init__(self, input: str = "", image_column: str = "path", image_feature: str = "",
                 metadata_features: Sequence[str] = (), compression: str = "auto",
                 max_record_bytes: int = DEFAULT_MAX_IMAGE_BYTES,
                 spec: Optional[sources.SourceSpec] = None):
        super().__init__()
        self.spec = spec or sources.describe_input(
            input, image_column=image_column, image_feature=image_feature,
            metadata_features=tuple(metadata_features), compression=compression)
        self._max_record_bytes = max_record_bytes

    @property
    def columns(self) -> Tuple[str, ...]:
        return self.spec.columns

    def expand(self, pbegin):
        images, errors = pbegin | "Read" >> sources.ReadImageRefs(
            self.spec, max_record_bytes=self._max_record_bytes)
        return ReadResult({IMAGES: images, ERRORS: errors}, self.spec.columns)


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


class _SplitAtCut(beam.DoFn):
    """The sample -> the planned first N (main) and the margin (``MARGIN``)."""

    def __init__(self, label_of=None):
        self._label_of = label_of

    def process(self, item, cut):
        if sampling.kept_by(item, cut, label_of=self._label_of):
            yield item
        else:
            yield beam.pvalue.TaggedOutput(MARGIN, item)


def _refillable(row: ErrorRow) -> bool:
    return row.stage in REFILLABLE_STAGES


def _error_key(row: ErrorRow) -> int:
    return row.key


def _total_change(_, delta: int) -> TotalChange:
    return TotalChange(delta)


def _cut_count(cut) -> int:
    return cut.count


def _tile_for(sampled: int, max_items: int, requested: int) -> int:
    return tile_size_for(max(1, min(sampled, max_items)), requested)


def _apply_stage(pcoll, stage, label):
    """A user's stage; one given as "Label" >> transform keeps its label."""
    return pcoll | (stage if hasattr(stage, "transform") else label >> stage)


class EmbedResult(NamedTuple):
    embedded: beam.PCollection      # Embedded, the first N that decode
    errors: beam.PCollection        # ErrorRow: read/decode (first N and margin), embed
    planned: beam.PCollection       # one int: how many the plan sends to the model


class EmbedFirstN(beam.PTransform):
    """The sample (N + a margin, keyed) -> the first N that decode, embedded.

    The cut is planned before any decode: the first N in key order (at most
    ``max_per_label`` a label) as if every image decodes. Those are decoded
    once, fused with the model (``EmbedImages``). The margin is only
    checked (``CheckDecodes``, at thumbnail scale); the cut is recomputed
    without the images that failed, and the margin images that fall within
    it take their places, decoded again for the model. That keeps exactly
    the images a check of every image before the cut would keep, with one
    decode for every image but the refills (BENCHMARKS.md, "Memory and
    shuffle").
    """

    def __init__(self, spec: ModelSpec, model_size, tile, max_items: int,
                 max_per_label: Optional[int] = None, label_index: Optional[int] = None,
                 batch_size: int = 8, resize: str = "pad",
                 max_bytes: int = DEFAULT_MAX_IMAGE_BYTES, stage_to: Optional[str] = None,
                 progress: Optional[Callable[[beam.PCollection], beam.PTransform]] = None):
        super().__init__()
        self._spec, self._model_size, self._tile = spec, model_size, tile
        self._n, self._per_label = max_items, max_per_label
        self._label_of = sampling.LabelOf(label_index) if max_per_label else None
        self._batch_size, self._resize, self._max_bytes = batch_size, resize, max_bytes
        self._stage_to, self._progress = stage_to, progress

    def _embed(self, again=False):
        return EmbedImages(self._spec, self._model_size, self._tile, self._batch_size,
                           self._resize, max_bytes=self._max_bytes, again=again)

    def expand(self, sampled):
        label_of, n, per_label = self._label_of, self._n, self._per_label
        spread = sampled | "Spread" >> beam.Reshuffle()
        # Both cuts are computed from (label, key) pairs: the one made once
        # the failures are known reads them as a side input, rather than
        # reading the sample again in a step the embedding stage would wait on.
        pairs = spread | "LabelAndKey" >> beam.Map(sampling.label_and_key, label_of)
        plan = pairs | "PlanFirstN" >> beam.CombineGlobally(sampling.FirstCutFn(n, per_label))
        first, margin = spread | "SplitAtN" >> beam.ParDo(
            _SplitAtCut(label_of), beam.pvalue.AsSingleton(plan)).with_outputs(MARGIN, main="first")
        embedded, first_errors = first | "Embed" >> self._embed()
        margin_ok, margin_errors = margin | "CheckMargin" >> CheckDecodes(
            self._tile, max_bytes=self._max_bytes)
        failed_first = first_errors | "RefillableFailures" >> beam.Filter(_refillable)
        failed_keys = ((failed_first, margin_errors)
                       | "FailedDecodes" >> beam.Flatten()
                       # Any: sample keys are unsigned 64-bit, too large for VarIntCoder
                       | "FailedKeys" >> beam.Map(_error_key).with_output_types(Any)
                       | "AsSet" >> beam.combiners.ToSet())
        final = failed_keys | "FinalFirstN" >> beam.Map(
            sampling.cut_without, beam.pvalue.AsList(pairs), n, per_label)
        refills = margin_ok | "Refills" >> beam.Filter(
            sampling.kept_by, beam.pvalue.AsSingleton(final), label_of=label_of)
        refilled, refill_errors = refills | "EmbedRefills" >> self._embed(again=True)
        planned = plan | "CountPlanned" >> beam.Map(_cut_count)
        if self._progress is not None:
            # One count over both branches (a LogProgress shares its count
            # between its applications); a failure refilled from the margin
            # moves the total down, then up again as its refill is chosen.
            watch = self._progress(planned)
            embedded = embedded | "WatchFirst" >> watch
            refilled = refilled | "WatchRefills" >> watch
            (failed_first | "Unplanned" >> beam.Map(_total_change, -1)
             | "WatchUnplanned" >> watch)
            (refills | "Replanned" >> beam.Map(_total_change, 1) | "WatchReplanned" >> watch)
        if self._stage_to:
            # The local runner executes a Flatten by holding all its inputs:
            # staged, each element is its vector and a thumbnail's offset
            # (5.6 kB at 1280-d) instead of the thumbnail too (17.8 kB).
            embedded = embedded | "StageFirst" >> StageThumbnails(self._stage_to)
            refilled = refilled | "StageRefills" >> StageThumbnails(self._stage_to)
        return EmbedResult(
            embedded=(embedded, refilled) | "AllEmbedded" >> beam.Flatten(),
            errors=(first_errors, margin_errors, refill_errors) | "Errors" >> beam.Flatten(),
            planned=planned)


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
    (the CLI passes ``pipeline.progress.LogProgress``).
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
                 run_id: str = "", options_json: str = ""):
        super().__init__()
        checks.check_settings(max_items, tile_size, batch_size, max_error_fraction, max_per_label)
        checks.check_max_image_bytes(max_image_bytes)
        if tensor_format not in write.TENSOR_FORMATS:
            raise ValueError(f"tensor_format must be one of {write.TENSOR_FORMATS}, "
                             f"got {tensor_format!r}")
        self.model = model if isinstance(model, ModelSpec) else ModelSpec(
            uri=model, layers=tuple(layers), signature=signature, outputs=tuple(outputs),
            pixel_scale=pixel_scale, image_size=tuple(image_size), pool=pool or "",
            batch_size=batch_size)
        if batch_size and not self.model.batch_size:
            self.model = self.model._replace(batch_size=batch_size)
        self.output = output
        self._columns = None if columns is None else tuple(columns)
        self._max_items, self._seed = max_items, seed
        self._max_per_label, self._label_column = max_per_label, label_column
        self._tile_size, self._batch_size, self._resize = tile_size, batch_size, resize
        self._tensor_format, self._preview, self._standalone = tensor_format, preview, standalone
        self._max_error_fraction, self._max_image_bytes = max_error_fraction, max_image_bytes
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
            {"output": output, "model": self.model._asdict(), "max_items": max_items,
             "seed": seed, "max_per_label": max_per_label, "label_column": label_column,
             "tile_size": tile_size, "batch_size": batch_size, "resize": resize,
             "tensor_format": tensor_format, "preview": preview, "standalone": standalone,
             "max_error_fraction": max_error_fraction, "max_image_bytes": max_image_bytes},
            sort_keys=True, default=str)

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
        label_index = None
        if self._max_per_label is not None:
            if self._label_column not in columns:
                raise ValueError(f"max_per_label needs the label column "
                                 f"{self._label_column!r} among columns {columns!r}")
            label_index = columns.index(self._label_column)
        # Once, here on the launcher: loads and checks the model (kept for
        # in-process workers) and the output folder.
        model_size, tensor_names = checks.check_model(self.model)
        checks.check_output(self.output, write.root_files(self._preview, self._standalone))

        refs = images | "AsImageRefs" >> beam.Map(to_image_ref, columns)
        refs = self._watch("read", refs)
        sizes = sampling.sample_sizes(self._max_items, self._max_error_fraction,
                                      self._max_per_label)
        sampled = (refs
                   | "Sample" >> sampling.SampleItems(
                       sizes.total, self._seed, per_label=sizes.per_label,
                       label_index=label_index)
                   | "CountSampled" >> beam.Map(_count("sampled")))
        # Thumbnails are made at the tile the sprite will have: from the number
        # of items actually sampled (at most N), not the requested N alone.
        tile = (sampled
                | "SampleSize" >> beam.combiners.Count.Globally()
                | "TileSize" >> beam.Map(_tile_for, self._max_items, self._tile_size))
        # the loader's own rule: the model is traced for exactly this batch
        batch_size = self.model.batch_size or auto_batch_size(model_size)
        # Thumbnails go to staging files as they are made (the writer draws
        # the sprite from them); later stages read them back on use.
        folder = staging_dir(self.output, self.run_id)
        hold_staging(folder)   # this launcher holds it while the process lives
        progress = (None if self._progress is None else
                    lambda total: self._progress("embedded", total=total))
        kept = sampled | "EmbedFirstN" >> EmbedFirstN(
            self.model, model_size, tile, self._max_items, self._max_per_label, label_index,
            batch_size, self._resize, self._max_image_bytes, stage_to=folder,
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
        cfg = write.WriterConfig(
            output=self.output,
            columns=tuple(columns) + self._extra_columns + sum(stage_columns, ()),
            tensor_names=tensor_names, tile=self._tile_size, max_items=self._max_items,
            max_error_fraction=self._max_error_fraction, tensor_format=self._tensor_format,
            preview=self._preview, standalone=self._standalone, run_id=self.run_id,
            label_column=self._suspects_label_column, options_json=self._options_json)
        # after_embed stages may have made new thumbnails: staged here too
        staged = embedded | "StageThumbnails" >> StageThumbnails(folder)
        summary = ((staged, errors, *tables)
                   | "WriteLogdir" >> write.WriteProjectorLogdir(
                       cfg, column_widths=[len(c) for c in stage_columns]))
        return ProjectorResult({SUMMARY: summary, ERRORS: errors})
