"""Checks that run on the launching machine before any work is scheduled.

Each failure is one line that says what to fix, so a typo costs seconds,
not a cluster start-up.
"""
import math
import os
import re
import uuid
from typing import NamedTuple, Optional, Tuple

from apache_beam.io.filesystem import FileSystem
from apache_beam.io.filesystems import FileSystems

from pipeline.options import MAX_TILE, MIN_TILE
from transforms import projector, sources, write
from transforms.inference import ModelSpec, shared_embedding_model


class UsageError(ValueError):
    """A problem with the options or inputs, found before any work."""


class Plan(NamedTuple):
    input_paths: Tuple[str, ...]
    columns: Tuple[str, ...]
    model: ModelSpec
    model_size: Tuple[int, int]        # (height, width) the model takes
    tensor_names: Tuple[str, ...]
    tile: int                          # thumbnail/tile side, already shrunk for max_items
    sample_size: int                   # max_items plus a margin for failures
    label_index: Optional[int]
    source: Optional[sources.SourceSpec] = None   # the input's kind and how to read it
    run_id: str = ""                   # names this run in the logdir's manifest


def failure_margin(max_items: int, max_error_fraction: float) -> int:
    """Extra items to sample so that failures up to the allowed fraction do
    not shrink the output below max_items."""
    return int(math.ceil(max_items * max_error_fraction / max(1e-9, 1 - max_error_fraction))) + 1


def _check_output(output: str, names=write.root_files(True, False)) -> None:
    """Writable, no glob characters, and none of ``names`` (the root files
    this run writes) is a file beam-projector did not write."""
    globs = write.glob_chars(output)
    if globs:
        # Beam's FileSystems.match/delete would read the path as a pattern and
        # could reach sibling folders: refused rather than escaped, since each
        # filesystem escapes differently (or not at all).
        raise UsageError(f"--output {output} contains the glob character(s) {globs!r}; "
                         "Beam's file systems treat them as patterns, so choose a name "
                         "without * ? [")
    probe = FileSystems.join(output, f".write-probe-{uuid.uuid4().hex}")
    try:
        if "://" not in output:
            FileSystems.mkdirs(output) if not FileSystems.exists(output) else None
        with FileSystems.create(probe) as f:
            f.write(b"ok")
        FileSystems.delete([probe])
    except Exception as e:  # noqa: BLE001
        raise UsageError(f"--output {output} is not writable: {e}") from None
    try:
        write.check_output_owned(output, names)
    except write.OwnershipError as e:
        raise UsageError(str(e)) from None


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
    if "://" not in glob and "://" not in output:
        glob, output = os.path.abspath(glob), os.path.abspath(output)
    pattern = re.compile(FileSystem.translate_pattern(glob))
    ours = [FileSystems.join(output, write.PREVIEW_NAME),
            FileSystems.join(output, write.DATA_PREFIX + "0" * 16, write.SPRITE_NAME)]
    for path in ours:
        if pattern.match(path):
            raise UsageError(f"--input {source.pattern} matches {path}, a file this run "
                             "writes; a later run would embed its own output: write the "
                             "logdir where the input pattern does not reach")


def make_plan(po) -> Plan:
    """Validate ``ProjectorOptions`` and resolve everything the graph needs."""
    for flag in ("input", "model", "output"):
        if not getattr(po, flag):
            raise UsageError(f"--{flag} is required")
    if po.max_items is None or po.max_items < 1:
        raise UsageError(f"--max_items must be at least 1, got {po.max_items}")
    if not MIN_TILE <= po.tile_size <= MAX_TILE:
        raise UsageError(f"--tile_size must be between {MIN_TILE} and {MAX_TILE} px, got {po.tile_size}")
    if po.batch_size < 1:
        raise UsageError(f"--batch_size must be at least 1, got {po.batch_size}")
    if not 0.0 <= po.max_error_fraction < 1.0:
        raise UsageError(f"--max_error_fraction must be in [0, 1), got {po.max_error_fraction}")

    if po.max_per_label is not None and po.max_per_label < 1:
        raise UsageError(f"--max_per_label must be at least 1, got {po.max_per_label}")

    try:
        source = sources.describe_input(
            po.input, image_column=po.image_column, image_feature=po.image_feature,
            metadata_features=po.metadata_feature_list, compression=po.compression)
    except sources.SourceError as e:
        raise UsageError(str(e)) from None
    columns = source.columns
    label_index = None
    if po.max_per_label is not None:
        if po.label_column not in columns:
            raise UsageError(f"--max_per_label needs the label column {po.label_column!r} "
                             f"(set --label_column); the {source.kind} input's columns are: "
                             f"{', '.join(repr(c) for c in columns)}")
        label_index = columns.index(po.label_column)

    try:
        image_size = po.image_hw
    except ValueError as e:
        raise UsageError(str(e)) from None
    spec = ModelSpec(uri=po.model, layers=po.layers, signature=po.signature,
                     outputs=po.outputs, pixel_scale=po.pixel_scale, image_size=image_size,
                     pool=po.pool or "")
    try:
        model = shared_embedding_model(spec)
    except ValueError as e:
        raise UsageError(str(e)) from None
    if po.max_image_bytes is None or po.max_image_bytes < 1:
        raise UsageError(f"--max_image_bytes must be at least 1, got {po.max_image_bytes}")
    _check_not_inside_input(po.output, source)
    _check_output(po.output, write.root_files(not po.no_preview, po.standalone,
                                              suspects=bool(po.neighbors)))

    margin = failure_margin(po.max_items, po.max_error_fraction)
    return Plan(
        input_paths=source.paths, columns=columns, model=spec,
        model_size=tuple(model.input_size[:2]), tensor_names=tuple(model.names),
        tile=projector.tile_size_for(po.max_items, po.tile_size),
        sample_size=po.max_items + margin, label_index=label_index, source=source,
        run_id=uuid.uuid4().hex)


class NeighborPlan(NamedTuple):
    k: int
    tensor_index: int
    label_index: Optional[int]    # None: no label column, no agreement columns
    label_column: str
    threshold: float


def neighbor_plan(po, plan: Plan) -> Optional[NeighborPlan]:
    """--neighbors/--neighbors_tensor/--duplicate_threshold resolved against
    the plan; None when --neighbors is 0. Raises UsageError."""
    if po.neighbors is None or po.neighbors < 0:
        raise UsageError(f"--neighbors must be 0 (off) or more, got {po.neighbors}")
    if not po.neighbors:
        return None
    if not po.duplicate_threshold >= 0:
        raise UsageError(f"--duplicate_threshold must be 0 or more, got {po.duplicate_threshold}")
    name = po.neighbors_tensor or plan.tensor_names[0]
    if name not in plan.tensor_names:
        raise UsageError(f"--neighbors_tensor {name!r} is not one of the model's embeddings: "
                         f"{', '.join(plan.tensor_names)}")
    label = po.label_column if po.label_column in plan.columns[1:] else ""
    return NeighborPlan(po.neighbors, plan.tensor_names.index(name),
                        plan.columns.index(label) if label else None, label,
                        po.duplicate_threshold)
