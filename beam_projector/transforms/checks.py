"""Checks that run once, where the graph is built, never on a worker.

Shared by the CLI's preflight (``pipeline/preflight.py``, which words them
as flags: ``prefix="--"``) and the public composite
(``transforms.api.ImagesToProjector``, keyword names). Each raises
``ValueError`` with one line that says what to fix.
"""
import uuid
from typing import Optional, Sequence, Tuple

from apache_beam.io.filesystems import FileSystems

from beam_projector.transforms import write
from beam_projector.transforms.inference import ModelSpec, shared_embedding_model

MIN_TILE, MAX_TILE = 8, 1024


def check_settings(max_items, tile_size: int = 100, batch_size: int = 0,
                   max_error_fraction: float = 0.1, max_per_label: Optional[int] = None,
                   prefix: str = "") -> None:
    """The numeric settings, in the CLI's order."""
    if max_items is None or max_items < 1:
        raise ValueError(f"{prefix}max_items must be at least 1, got {max_items}")
    if not MIN_TILE <= tile_size <= MAX_TILE:
        raise ValueError(f"{prefix}tile_size must be between {MIN_TILE} and {MAX_TILE} px, "
                         f"got {tile_size}")
    if batch_size < 0:
        raise ValueError(f"{prefix}batch_size must be at least 1 (or 0: sized from the "
                         f"model's input), got {batch_size}")
    if not 0.0 <= max_error_fraction < 1.0:
        raise ValueError(f"{prefix}max_error_fraction must be in [0, 1), got {max_error_fraction}")
    if max_per_label is not None and max_per_label < 1:
        raise ValueError(f"{prefix}max_per_label must be at least 1, got {max_per_label}")


def check_max_image_bytes(max_image_bytes, prefix: str = "") -> None:
    if max_image_bytes is None or max_image_bytes < 1:
        raise ValueError(f"{prefix}max_image_bytes must be at least 1, got {max_image_bytes}")


def check_model(spec: ModelSpec) -> Tuple[Tuple[int, int], Tuple[str, ...]]:
    """Load the model once (kept for this process's workers, see
    ``shared_embedding_model``): its (height, width) input and tensor names.
    Raises ValueError (``ModelError``) naming what to fix."""
    model = shared_embedding_model(spec)
    return tuple(model.input_size[:2]), tuple(model.names)


def check_output(output: str, names: Sequence[str] = write.root_files(True, False),
                 prefix: str = "") -> None:
    """Writable, no glob characters, and none of ``names`` (the root files
    this run writes) is a file beam-projector did not write."""
    globs = write.glob_chars(output)
    if globs:
        # Beam's FileSystems.match/delete would read the path as a pattern and
        # could reach sibling folders: refused rather than escaped, since each
        # filesystem escapes differently (or not at all).
        raise ValueError(f"{prefix}output {output} contains the glob character(s) {globs!r}; "
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
        raise ValueError(f"{prefix}output {output} is not writable: {e}") from None
    try:
        write.check_output_owned(output, names)
    except write.OwnershipError as e:
        raise ValueError(str(e)) from None
