"""Checks on the launching machine before any work is scheduled.

Turns the options into the run's plan: the input's kind and columns, the
model (loaded once, kept for in-process workers), the settings, the
neighbour stage's choices. Each failure is one line that says what to fix
(``UsageError``), so a typo costs seconds, not a cluster start-up.
"""
import os
import re
import uuid
from typing import NamedTuple, Optional, Tuple

from apache_beam.io.filesystem import FileSystem
from apache_beam.io.filesystems import FileSystems

from beam_projector.pipeline.options import UsageError
from beam_projector.transforms.checks import check_model, check_output
from beam_projector.transforms.layout_stage import CLUSTER_COLUMN
from beam_projector.transforms.model import ModelSpec
from beam_projector.transforms.neighbors import neighbor_columns
from beam_projector.transforms.projector import column_clash
from beam_projector.transforms.settings import Settings
from beam_projector.transforms.sources.detect import describe_input
from beam_projector.transforms.sources.spec import SourceError, SourceSpec
from beam_projector.transforms.suspects import SUSPECT_COLUMN
from beam_projector.transforms.write.layout import (
    DATA_PREFIX,
    PREVIEW_NAME,
    SPRITE_NAME,
    root_files,
)


class NeighborPlan(NamedTuple):
    """What ``NeighborColumns`` is given: --neighbors and its companions."""
    k: int
    tensor_index: int
    label_index: Optional[int]    # None: no label column, no agreement columns
    label_column: str
    threshold: float


class LayoutPlan(NamedTuple):
    """What ``LayoutColumns`` is given: --layout and its companions."""
    method: str
    tensor_index: int             # the --neighbors_tensor embedding (default: the first)
    label_index: Optional[int]    # clusters are named after this column; None: unnamed
    dims: int
    sample: int
    seed: int


class Plan(NamedTuple):
    """What the launcher resolved before any work: all ``run.build`` reads."""
    source: SourceSpec
    model: ModelSpec
    settings: Settings
    tensor_names: Tuple[str, ...]
    neighbors: Optional[NeighborPlan]   # None: --neighbors 0
    run_id: str                         # names this run in the logdir's manifest
    layout: Optional[LayoutPlan] = None  # None: --layout none


def _as_flag(e: ValueError) -> UsageError:
    """A library message that starts with a setting's name, worded as its flag."""
    text = str(e)
    return UsageError(text if text.startswith("--") else "--" + text)


def glob_folder(pattern: str) -> str:
    """The fixed folder a glob lists: 'F/*.jpg' -> 'F', 'a/b*/c' -> 'a',
    '*.jpg' -> '.'."""
    head = re.split(r"[*?\[]", pattern, maxsplit=1)[0]
    return (head.rsplit("/", 1)[0] or "/") if "/" in head else "."


def _check_not_inside_input(output: str, source) -> None:
    """A folder input must not hold the logdir: a second run would embed its
    own preview and sprites. Refused when the input folder contains --output,
    or the input glob matches a file the tool writes there."""
    if source is None or source.kind != "folder":
        return
    out = output.rstrip("/")
    if source.root:
        root = source.root.rstrip("/")
        if "://" not in out:
            out, root = os.path.realpath(out), os.path.realpath(root)
        if out == root or out.startswith(root + "/"):
            raise UsageError(f"--output {output} is inside the input folder {source.root}; "
                             "a later run would read its own preview and sprites as input "
                             "images: write the logdir outside the input folder")
        return
    glob = source.pattern
    folder = glob_folder(glob)
    if "://" not in out and "://" not in folder:
        same = os.path.realpath(out) == os.path.realpath(folder)
    else:
        same = out == folder.rstrip("/")
    if same:
        # the glob may not match the logdir's pictures, but a later run over
        # the folder would read them (a sub-folder stays allowed: see
        # ReadImageFolder, which skips a logdir's own pictures)
        raise UsageError(f"--output {output} is the folder of --input {source.pattern}: the "
                         "logdir's preview.png and data-*/sprite.png would sit among the input "
                         "images, and a later run over that folder would embed them; write "
                         "the logdir to another folder (a sub-folder is fine)")
    if "://" not in glob and "://" not in output:
        glob, output = os.path.abspath(glob), os.path.abspath(output)
    pattern = re.compile(FileSystem.translate_pattern(glob))
    ours = [FileSystems.join(output, PREVIEW_NAME),
            FileSystems.join(output, DATA_PREFIX + "0" * 16, SPRITE_NAME)]
    for path in ours:
        if pattern.match(path):
            raise UsageError(f"--input {source.pattern} matches {path}, a file this run "
                             "writes; a later run would embed its own output: write the "
                             "logdir where the input pattern does not reach")


def _check_column_names(po, columns) -> None:
    """Refuse, before any work, metadata columns of one name: the input's
    own duplicates, or an input column named like one --neighbors adds
    (nn_distance, duplicate, suspect, ...) or --layout adds (cluster). The
    projector keys a row's values by column name, so one of the two would
    silently vanish."""
    by_neighbors = by_layout = ()
    if po.neighbors and po.neighbors > 0:
        by_neighbors = neighbor_columns(po.label_column in columns[1:]) + (SUSPECT_COLUMN,)
    if po.layout != "none":
        by_layout = (CLUSTER_COLUMN,)
    clash = (column_clash(columns, by_neighbors, "--neighbors", "--neighbors 0")
             or column_clash(columns, by_layout, "--layout", "--layout none"))
    if clash:
        raise UsageError(clash)


def make_plan(po) -> Plan:
    """Validate ``ProjectorOptions`` and resolve everything the graph needs."""
    for flag in ("input", "model", "output"):
        if not getattr(po, flag):
            raise UsageError(f"--{flag} is required")
    try:
        settings = Settings(
            max_items=po.max_items, seed=po.seed, max_per_label=po.max_per_label,
            label_column=po.label_column, tile_size=po.tile_size, resize=po.resize,
            tensor_format=po.tensor_format, preview=not po.no_preview,
            standalone=po.standalone, max_error_fraction=po.max_error_fraction,
            max_image_bytes=po.max_image_bytes)
        spec = ModelSpec(uri=po.model, layers=po.layers, signature=po.signature,
                         outputs=po.outputs, pixel_scale=po.pixel_scale,
                         image_size=po.image_hw, pool=po.pool or "", batch_size=po.batch_size)
    except ValueError as e:
        raise _as_flag(e) from None
    try:
        source = describe_input(
            po.input, image_column=po.image_column, image_feature=po.image_feature,
            metadata_features=po.metadata_feature_list, compression=po.compression)
    except SourceError as e:
        raise UsageError(str(e)) from None
    _check_column_names(po, source.columns)
    if po.max_per_label is not None and po.label_column not in source.columns:
        raise UsageError(f"--max_per_label needs the label column {po.label_column!r} "
                         f"(set --label_column); the {source.kind} input's columns are: "
                         f"{', '.join(repr(c) for c in source.columns)}")
    try:
        _, tensor_names, _ = check_model(spec)
    except ValueError as e:
        raise UsageError(str(e)) from None
    neighbors = neighbor_plan(po, tensor_names, source.columns)
    layout = layout_plan(po, tensor_names, source.columns)
    _check_not_inside_input(po.output, source)
    try:
        check_output(po.output, root_files(settings.preview, settings.standalone,
                                           suspects=neighbors is not None))
    except ValueError as e:
        raise _as_flag(e) from None
    return Plan(source=source, model=spec, settings=settings, tensor_names=tensor_names,
                neighbors=neighbors, run_id=uuid.uuid4().hex, layout=layout)


def neighbor_plan(po, tensor_names, columns) -> Optional[NeighborPlan]:
    """--neighbors/--neighbors_tensor/--duplicate_threshold resolved against
    the model's tensors and the input's columns; None when --neighbors is 0.
    Raises UsageError."""
    if po.neighbors is None or po.neighbors < 0:
        raise UsageError(f"--neighbors must be 0 (off) or more, got {po.neighbors}")
    if not po.neighbors:
        return None
    if not po.duplicate_threshold >= 0:
        raise UsageError(f"--duplicate_threshold must be 0 or more, got {po.duplicate_threshold}")
    tensor_index, label = _tensor_and_label(po, tensor_names, columns)
    return NeighborPlan(po.neighbors, tensor_index, columns.index(label) if label else None,
                        label, po.duplicate_threshold)


def _tensor_and_label(po, tensor_names, columns) -> Tuple[int, str]:
    """The --neighbors_tensor's index (default: the first embedding) and the
    label column when the input has it (else ""). Raises UsageError."""
    name = po.neighbors_tensor or tensor_names[0]
    if name not in tensor_names:
        raise UsageError(f"--neighbors_tensor {name!r} is not one of the model's embeddings: "
                         f"{', '.join(tensor_names)}")
    return tensor_names.index(name), po.label_column if po.label_column in columns[1:] else ""


def layout_plan(po, tensor_names, columns) -> Optional[LayoutPlan]:
    """--layout/--layout_dims/--layout_sample resolved; None for --layout none.
    The layout is of the tensor the neighbours use (--neighbors_tensor), so
    the views' points and the suspect ranks come from one embedding.
    Raises UsageError."""
    if po.layout == "none":
        return None
    if po.layout_sample is None or po.layout_sample < 1:
        raise UsageError(f"--layout_sample must be at least 1, got {po.layout_sample}")
    tensor_index, label = _tensor_and_label(po, tensor_names, columns)
    return LayoutPlan(po.layout, tensor_index, columns.index(label) if label else None,
                      po.layout_dims, po.layout_sample, po.seed)
