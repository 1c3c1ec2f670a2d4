"""Checks that touch the model or the output, run once on the launcher.

Shared by the CLI's preflight and the composite. Each raises ``ValueError``
with one line that says what to fix, starting with the setting's name (the
CLI words it as its flag).
"""
import uuid
from typing import Sequence, Tuple

from apache_beam.io.filesystems import FileSystems

from beam_projector.transforms.model import ModelSpec, shared_embedding_model
from beam_projector.transforms.write.layout import glob_chars, root_files
from beam_projector.transforms.write.ownership import OwnershipError, check_output_owned


def check_model(spec: ModelSpec) -> Tuple[Tuple[int, int], Tuple[str, ...], int]:
    """Load the model once (kept for this process's workers, see
    ``shared_embedding_model``): its (height, width) input, tensor names and
    the batch it runs. Raises ValueError (``ModelError``) naming what to fix."""
    model = shared_embedding_model(spec)
    return tuple(model.input_size[:2]), tuple(model.names), model.batch_size


def check_output(output: str, names: Sequence[str] = root_files(True, False)) -> None:
    """Writable, no glob characters, and none of ``names`` (the root files
    this run writes) is a file beam-projector did not write."""
    globs = glob_chars(output)
    if globs:
        # Beam's FileSystems.match/delete would read the path as a pattern and
        # could reach sibling folders: refused rather than escaped, since each
        # filesystem escapes differently (or not at all).
        raise ValueError(f"output {output} contains the glob character(s) {globs!r}; "
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
        raise ValueError(f"output {output} is not writable: {e}") from None
    try:
        check_output_owned(output, names)
    except OwnershipError as e:
        raise ValueError(str(e)) from None
