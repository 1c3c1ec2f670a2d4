"""Checks that run on the launching machine before any work is scheduled.

Each failure is one line that says what to fix, so a typo costs seconds,
not a cluster start-up.
"""
import os
import re
import uuid
from typing import NamedTuple, Optional, Tuple

from apache_beam.io.filesystem import FileSystem
from apache_beam.io.filesystems import FileSystems

from beam_projector.transforms import checks, projector, sources, write
from beam_projector.transforms.inference import ModelSpec
from beam_projector.transforms.sampling import failure_margin, sample_sizes  # noqa: F401 - failure_margin: re-exported


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


def _check_output(output: str, names=write.root_files(True, False)) -> None:
    try:
        checks.check_output(output, names, prefix="--")
    except ValueError as e:
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
    try:
        checks.check_settings(po.max_items, po.tile_size, po.batch_size,
                              po.max_error_fraction, po.max_per_label, prefix="--")
    except ValueError as e:
        raise UsageError(str(e)) from None

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
                     pool=po.pool or "", batch_size=po.batch_size)
    try:
        model_size, tensor_names = checks.check_model(spec)
        checks.check_max_image_bytes(po.max_image_bytes, prefix="--")
    except ValueError as e:
        raise UsageError(str(e)) from None
    _check_not_inside_input(po.output, source)
    _check_output(po.output, write.root_files(not po.no_preview, po.standalone,
                                              suspects=bool(po.neighbors)))

    return Plan(
        input_paths=source.paths, columns=columns, model=spec,
        model_size=model_size, tensor_names=tensor_names,
        tile=projector.tile_size_for(po.max_items, po.tile_size),
        sample_size=sample_sizes(po.max_items, po.max_error_fraction).total,
        label_index=label_index, source=source,
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
