"""The whole job as one composite: images + a model -> a projector logdir.

    images | ImagesToProjector(output="logs/run1", model="m.keras", layers=["embedding"],
                               columns=["label"], max_items=5000, seed=0)

It chains the public stages a user could chain by hand: ``SampleItems``, the
first N images that decode embedded by ``EmbedImages`` (failures refilled
from a margin of the sample), ``NeighborColumns`` and the writer behind
``WriteToProjector``. The CLI applies exactly this, so a library run with
the same choices writes the same logdir.
"""
import dataclasses
import json
import uuid
from collections.abc import Mapping
from typing import Callable, Dict, NamedTuple, Optional, Sequence, Tuple, Union

import apache_beam as beam

from beam_projector.transforms import sampling
from beam_projector.transforms.checks import check_model, check_output
from beam_projector.transforms.elements import (
    ElementError,
    dead_letter,
    fields_of,
    image_source,
    metadata_of,
)
from beam_projector.transforms.first_n import EmbedFirstN
from beam_projector.transforms.inference import DescribeModel
from beam_projector.transforms.layout import DEFAULT_LAYOUT, DEFAULT_SAMPLE, METHODS
from beam_projector.transforms.layout_stage import CLUSTER_COLUMN, LayoutColumns
from beam_projector.transforms.model import ModelInfo, ModelSpec, with_batch_size
from beam_projector.transforms.neighbors import (
    DEFAULT_DUPLICATE_THRESHOLD,
    NeighborColumns,
    neighbor_columns,
)
from beam_projector.transforms.projector import column_clash, tile_size_for
from beam_projector.transforms.records import (
    DEFAULT_MAX_IMAGE_BYTES,
    ERRORS_TAG,
    METRICS_NAMESPACE,
    ImageRef,
)
from beam_projector.transforms.settings import Settings
from beam_projector.transforms.sources.read import ERRORS, IMAGES
from beam_projector.transforms.staging import StageThumbnails, staging_dir
from beam_projector.transforms.suspects import SUSPECT_COLUMN
from beam_projector.transforms.write.config import WriterConfig
from beam_projector.transforms.write.layout import root_files
from beam_projector.transforms.write.stage import WriteProjectorLogdir
from beam_projector.transforms.write.to_projector import SUMMARY, ProjectorResult


class RunContext(NamedTuple):
    """What a launcher (the CLI) adds to a run; a library user leaves it out.

    ``progress``: a ``(stage, total=None) -> PTransform`` factory reporting
    how far a stage has got; ``run_id``: names the run in the logdir's
    manifest and its staging folder (the launcher removes that folder if the
    job fails); ``options``: recorded in run_summary.json."""
    progress: Optional[Callable[..., beam.PTransform]] = None
    run_id: str = ""
    options: Optional[Dict] = None


def to_image_ref(element, columns: Sequence[str], image_field: str = "image",
                 id_fields: Sequence[str] = ("id",)):
    """An element -> ImageRef, or its ErrorRow dead letter (never raises).

    Elements: an ``ImageRef`` (as the sources yield it, unchanged), a dict or
    ``beam.Row`` with ``image_field`` and the fields named in ``columns``, or
    an ``(image, metadata)`` pair whose metadata is a mapping (taken by
    ``columns``) or a sequence in ``columns`` order. ``image``: encoded bytes
    or a path/URI. The sample key hashes a path's own text or the bytes'
    content, so the same images give the same sample wherever they come from.
    """
    if isinstance(element, ImageRef):
        return element
    try:
        if isinstance(element, tuple) and len(element) == 2 and not hasattr(element, "_asdict"):
            image, metadata = element
            if isinstance(metadata, Mapping):
                values = metadata_of(metadata, columns)
            elif isinstance(metadata, (str, bytes)):
                raise ElementError("metadata must be a mapping or a sequence of values, not "
                                   f"one {type(metadata).__name__}")
            else:
                values = tuple("" if v is None else str(v) for v in metadata)
                if len(values) != len(columns):
                    raise ElementError(f"metadata has {len(values)} values for the "
                                       f"{len(columns)} columns {', '.join(map(repr, columns))}")
            ref, content, uid = image_source({image_field: image}, image_field)
        else:
            fields = fields_of(element)
            values = metadata_of(fields, columns)
            ref, content, uid = image_source(fields, image_field)
    except ElementError as e:
        return dead_letter(element, "input", str(e), id_fields)
    return ImageRef(uid=uid, ref=ref, content=content, metadata=values)


class _AsImageRefs(beam.DoFn):
    def __init__(self, columns, image_field, id_fields):
        self._columns, self._image_field, self._id_fields = columns, image_field, id_fields
        self._bad = beam.metrics.Metrics.counter(METRICS_NAMESPACE, "failed_read")

    def process(self, element):
        out = to_image_ref(element, self._columns, self._image_field, self._id_fields)
        if isinstance(out, ImageRef):
            yield out
        else:
            self._bad.inc()
            yield beam.pvalue.TaggedOutput(ERRORS_TAG, out)


def _count(name):
    counter = beam.metrics.Metrics.counter(METRICS_NAMESPACE, name)

    def inc(x):
        counter.inc()
        return x
    return inc


def _tile_for(sampled: int, max_items: int, requested: int) -> int:
    return tile_size_for(max(1, min(sampled, max_items)), requested)


def _names(info: ModelInfo) -> Tuple[str, ...]:
    return info.names


def _input_size(info: ModelInfo) -> Tuple[int, int]:
    return info.input_size


def _apply_stage(pcoll, stage, label):
    """A user's stage; one given as "Label" >> transform keeps its label."""
    return pcoll | (stage if hasattr(stage, "transform") else label >> stage)


def _neighbors_tensor(spec: ModelSpec, tensor: Union[str, int, None]) -> int:
    """The index of the embedding the neighbours use: an index as given, a
    name among the layers/outputs listed in the spec, else the first."""
    if tensor is None or isinstance(tensor, int):
        return tensor or 0
    listed = tuple(spec.layers or spec.outputs)
    if tensor not in listed:
        raise ValueError(f"neighbors_tensor {tensor!r} must be one of the layers or outputs "
                         f"listed for the model ({', '.join(listed) or 'none listed'})")
    return listed.index(tensor)


class ImagesToProjector(beam.PTransform):
    """Images + a model -> a TensorBoard Embedding Projector logdir at ``output``.

        images | ImagesToProjector(output="logs/run1", model="m.keras",
                                   layers=["embedding"], columns=["label"])

    The graph: sample (seeded bottom-k, N + a failure margin) -> reshuffle ->
    split at the first N (and at most ``max_per_label`` per label) -> decode
    once + embed those; check that the margin decodes, and embed the margin
    images that take the places of failed ones -> ``after_embed`` stages, if
    any -> neighbour columns -> one ordered write of tensor, metadata,
    sprite, config, errors.tsv and suspects.tsv.

    Args:
      output: the logdir (local path or any Beam filesystem URI).
      model: a Keras ``.keras``/``.h5`` file or SavedModel directory (path
        or URI), cut at ``layers`` (Keras) or ``outputs`` (SavedModel); or a
        ``ModelSpec``. ``signature``, ``pixel_scale``, ``image_size``,
        ``pool``, ``batch_size``: as the CLI's options.
      columns: the metadata columns, in order (a ``ReadResult`` gives its
        own). Elements: dicts or ``beam.Row``s with ``image_field`` and these
        fields, ``(image, metadata)`` pairs, or ``ImageRef``s.
      max_items, seed, max_per_label, label_column, tile_size, resize,
      tensor_format, preview, standalone, max_error_fraction,
      max_image_bytes: as the CLI's options (checked once, here: a
        ``ValueError`` names the setting); or ``settings``, a ``Settings``.
      neighbors, neighbors_tensor, duplicate_threshold: the neighbour
        columns and suspects.tsv, as the CLI's (``neighbors=0``: none).
      layout, layout_dims, layout_sample: the full-data layout of the
        ``neighbors_tensor`` embedding, its ``cluster`` column and the
        projector's Bookmarks views, as the CLI's (``layout="none"``: none).
      image_field, id_fields: where a dict's image is; which fields name an
        element in its dead letter.
      errors: extra dead-letter PCollections (``ErrorRow``) for errors.tsv.
      after_embed: transforms of ``Embedded`` elements applied before the
        write, with ``extra_columns`` naming the metadata they append.
      column_stages: transforms of ``Embedded`` elements into (order key,
        values) pairs with a ``columns`` attribute (as ``NeighborColumns``);
        the writer joins them by key.
      validate: load the model and probe the output now, when the graph is
        built (as the CLI does before any work); by default nothing is
        loaded, read or written until the pipeline runs.
      run: a ``RunContext``, for a launcher (the CLI).

    Returns a ``ProjectorResult`` (``.summary``, ``.errors``).
    """

    def __init__(self, output: str, model: Union[str, ModelSpec], layers: Sequence[str] = (),
                 columns: Optional[Sequence[str]] = None, max_items: int = 1500, seed: int = 0,
                 max_per_label: Optional[int] = None, label_column: str = "label",
                 tile_size: int = 100, batch_size: int = 0, resize: str = "pad",
                 pixel_scale: str = "raw", image_size: Tuple[int, ...] = (),
                 signature: str = "serving_default", outputs: Sequence[str] = (),
                 pool: str = "", tensor_format: str = "tsv", preview: bool = True,
                 standalone: bool = False, max_error_fraction: float = 0.1,
                 max_image_bytes: int = DEFAULT_MAX_IMAGE_BYTES, *,
                 neighbors: int = 10, neighbors_tensor: Union[str, int, None] = None,
                 duplicate_threshold: float = DEFAULT_DUPLICATE_THRESHOLD,
                 layout: str = DEFAULT_LAYOUT, layout_dims: int = 2,
                 layout_sample: int = DEFAULT_SAMPLE,
                 image_field: str = "image", id_fields: Sequence[str] = ("id",),
                 errors: Sequence = (), after_embed: Sequence[beam.PTransform] = (),
                 extra_columns: Sequence[str] = (),
                 column_stages: Sequence[beam.PTransform] = (),
                 settings: Optional[Settings] = None, validate: bool = False,
                 run: Optional[RunContext] = None):
        super().__init__()
        # checked once, when made: a ValueError naming the setting
        self.settings = settings or Settings(
            max_items=max_items, seed=seed, max_per_label=max_per_label,
            label_column=label_column, tile_size=tile_size, resize=resize,
            tensor_format=tensor_format, preview=preview, standalone=standalone,
            max_error_fraction=max_error_fraction, max_image_bytes=max_image_bytes)
        spec = model if isinstance(model, ModelSpec) else ModelSpec(
            uri=model, layers=tuple(layers), signature=signature, outputs=tuple(outputs),
            pixel_scale=pixel_scale, image_size=tuple(image_size), pool=pool or "",
            batch_size=batch_size)
        if batch_size and not spec.batch_size:
            spec = spec.replace(batch_size=batch_size)
        self.model = spec
        self.output = output
        if isinstance(columns, str):
            raise ValueError(f"columns must be a list of names, got the str {columns!r}")
        self._columns = None if columns is None else tuple(columns)
        if neighbors is None or neighbors < 0:
            raise ValueError(f"neighbors must be 0 (off) or more, got {neighbors}")
        if not duplicate_threshold >= 0:
            raise ValueError(f"duplicate_threshold must be 0 or more, got {duplicate_threshold}")
        self._neighbors = (neighbors, _neighbors_tensor(spec, neighbors_tensor),
                           duplicate_threshold)
        if layout not in METHODS:
            raise ValueError(f"layout must be one of {', '.join(METHODS)}, got {layout!r}")
        self._layout = (layout, layout_dims, layout_sample)
        self._layout_stage(("",))   # checks layout_dims and layout_sample now
        self._image_field, self._id_fields = image_field, tuple(id_fields)
        self._errors = tuple(errors)
        self._after_embed = tuple(after_embed)
        self._extra_columns = tuple(extra_columns)
        self._column_stages = tuple(column_stages)
        for stage in self._column_stages:
            if not hasattr(getattr(stage, "transform", stage), "columns"):
                raise ValueError(f"column stage {stage!r} has no columns attribute naming "
                                 "the values it gives")
        self._validate = validate
        if self._columns is not None:
            self._check_columns(self._columns)
        run = run or RunContext()
        self._progress = run.progress
        self.run_id = run.run_id or uuid.uuid4().hex
        self._options_json = json.dumps(
            run.options if run.options is not None else
            {"output": output, "model": dataclasses.asdict(self.model),
             **dataclasses.asdict(self.settings),
             "neighbors": neighbors, "duplicate_threshold": duplicate_threshold,
             "layout": layout, "layout_dims": layout_dims, "layout_sample": layout_sample},
            sort_keys=True, default=str)

    def accept_read_result(self, columns: Sequence[str]) -> None:
        """Applied to a ``ReadResult``: its columns, unless ``columns`` was given."""
        if self._columns is None:
            self._columns = tuple(columns)

    def _watch(self, stage, pcoll, total=None):
        if self._progress is None:
            return pcoll
        label = "Progress" + stage.capitalize()
        return pcoll | label >> self._progress(stage, total=total)

    def _neighbor_stage(self, columns):
        k, tensor_index, threshold = self._neighbors
        if not k:
            return None, ""
        label = self.settings.label_column if self.settings.label_column in columns[1:] else ""
        stage = NeighborColumns(k, tensor_index, columns.index(label) if label else None, 0,
                                threshold)
        return "Neighbors" >> stage, label

    def _layout_stage(self, columns) -> Optional[LayoutColumns]:
        method, dims, sample = self._layout
        if method == "none":
            return None
        label = self.settings.label_column if self.settings.label_column in columns[1:] else ""
        return LayoutColumns(method, self._neighbors[1], columns.index(label) if label else None,
                             dims, sample, self.settings.seed)

    def _check_columns(self, columns) -> None:
        """Every metadata column name unique, as metadata.tsv writes it: the
        projector keys values by name, so a user's column named like one the
        neighbour or layout stage adds (``nn_distance``, ``cluster``) would
        silently vanish."""
        own = tuple(columns) + self._extra_columns
        by_neighbors = by_layout = ()
        if self._neighbors[0]:
            has_label = self.settings.label_column in tuple(columns)[1:]
            by_neighbors = neighbor_columns(has_label) + (SUSPECT_COLUMN,)
        if self._layout_stage(columns) is not None:
            by_layout = (CLUSTER_COLUMN,)
        staged = sum((tuple(getattr(stage, "transform", stage).columns)
                      for stage in self._column_stages), ())
        clash = (column_clash(own, by_neighbors, "neighbors", "neighbors=0")
                 or column_clash(own, by_layout, "layout", 'layout="none"')
                 or column_clash(own + by_neighbors + by_layout + staged))
        if clash:
            raise ValueError(clash)

    def expand(self, pvalueish):
        if isinstance(pvalueish, Mapping):
            images, upstream = pvalueish[IMAGES], (pvalueish[ERRORS],)
        else:
            images, upstream = pvalueish, ()
        p = images.pipeline
        columns = self._columns
        if columns is None:
            raise ValueError("ImagesToProjector needs columns=[...]: the metadata column "
                             "names, in the order of each element's values")
        self._check_columns(columns)
        settings = self.settings
        label_index = None
        if settings.max_per_label is not None:
            if settings.label_column not in columns:
                raise ValueError(f"max_per_label needs the label column "
                                 f"{settings.label_column!r} among columns {columns!r}")
            label_index = columns.index(settings.label_column)
        if self._validate:
            # what the CLI's preflight checks: the model loads (kept for
            # in-process workers) and the output is writable and ours
            check_model(self.model)
            check_output(self.output, root_files(settings.preview, settings.standalone))
        # the batch is sized from the model's own config file; the model is
        # loaded when the pipeline runs, where RunInference reuses it
        spec = with_batch_size(self.model)
        info = p | "DescribeModel" >> DescribeModel(spec)

        converted = images | "AsImageRefs" >> beam.ParDo(_AsImageRefs(
            columns, self._image_field, self._id_fields)).with_outputs(ERRORS_TAG, main="refs")
        refs = self._watch("read", converted.refs)
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
        progress = (None if self._progress is None else
                    lambda total: self._progress("embedded", total=total))
        kept = sampled | "EmbedFirstN" >> EmbedFirstN(
            spec, info | "InputSize" >> beam.Map(_input_size), tile, settings, label_index,
            stage_to=folder, progress=progress)
        embedded = kept.embedded
        for i, stage in enumerate(self._after_embed):
            embedded = _apply_stage(embedded, stage, f"AfterEmbed{i}")
        column_stages = list(self._column_stages)
        neighbors, suspects_label = self._neighbor_stage(columns)
        if neighbors is not None:
            column_stages.insert(0, neighbors)
        layout = self._layout_stage(columns)
        layout_columns = layout.layout_columns if layout is not None else ()
        if layout is not None:
            column_stages.append("Layout" >> layout)
        tables = [_apply_stage(embedded, stage, f"Columns{i}")
                  for i, stage in enumerate(column_stages)]
        stage_columns = [tuple(getattr(stage, "transform", stage).columns)
                         for stage in column_stages]
        errors = ((*upstream, *self._errors, converted[ERRORS_TAG], kept.errors)
                  | "AllErrors" >> beam.Flatten(pipeline=p))
        cfg = WriterConfig(
            output=self.output,
            columns=tuple(columns) + self._extra_columns + sum(stage_columns, ()),
            tensor_names=(), settings=settings, run_id=self.run_id,
            label_column=suspects_label, options_json=self._options_json,
            # the layout's coordinates go to bookmarks.json, not metadata.tsv
            layout_columns=layout_columns)
        # after_embed stages may have made new thumbnails: staged here too
        staged = embedded | "StageThumbnails" >> StageThumbnails(folder)
        summary = ((staged, errors, *tables)
                   | "WriteLogdir" >> WriteProjectorLogdir(
                       cfg, column_widths=[len(c) for c in stage_columns],
                       names=info | "TensorNames" >> beam.Map(_names)))
        return ProjectorResult({SUMMARY: summary, ERRORS: errors})
