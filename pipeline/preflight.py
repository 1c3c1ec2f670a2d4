"""Checks that run on the launching machine before any work is scheduled.

Each failure is one line that says what to fix, so a typo costs seconds,
not a cluster start-up.
"""
import math
import uuid
from typing import NamedTuple, Optional, Tuple

from apache_beam.io.filesystems import FileSystems

from pipeline.options import MAX_TILE, MIN_TILE
from transforms import projector, sources
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


def failure_margin(max_items: int, max_error_fraction: float) -> int:
    """Extra items to sample so that failures up to the allowed fraction do
    not shrink the output below max_items."""
    return int(math.ceil(max_items * max_error_fraction / max(1e-9, 1 - max_error_fraction))) + 1


def _check_output(output: str) -> None:
    probe = FileSystems.join(output, f".write-probe-{uuid.uuid4().hex}")
    try:
        if "://" not in output:
            FileSystems.mkdirs(output) if not FileSystems.exists(output) else None
        with FileSystems.create(probe) as f:
            f.write(b"ok")
        FileSystems.delete([probe])
    except Exception as e:  # noqa: BLE001
        raise UsageError(f"--output {output} is not writable: {e}") from None


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
                             f"{', '.join(columns)}")
        label_index = columns.index(po.label_column)

    try:
        image_size = po.image_hw
    except ValueError as e:
        raise UsageError(str(e)) from None
    spec = ModelSpec(uri=po.model, layers=po.layers, signature=po.signature,
                     outputs=po.outputs, pixel_scale=po.pixel_scale, image_size=image_size)
    try:
        model = shared_embedding_model(spec)
    except ValueError as e:
        raise UsageError(str(e)) from None
    _check_output(po.output)

    margin = failure_margin(po.max_items, po.max_error_fraction)
    return Plan(
        input_paths=source.paths, columns=columns, model=spec,
        model_size=tuple(model.input_size[:2]), tensor_names=tuple(model.names),
        tile=projector.tile_size_for(po.max_items, po.tile_size),
        sample_size=po.max_items + margin, label_index=label_index, source=source)


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
