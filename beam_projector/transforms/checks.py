"""Checks that touch the model or the output, run once on the launcher.

Shared by the CLI's preflight and the composite. Each raises ``ValueError``
with one line that says what to fix, starting with the setting's name (the
CLI words it as its flag).
"""
import os
import re
import time
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


PROBE_PREFIX = ".write-probe-"
_PROBE_NAME = re.compile(r"^" + re.escape(PROBE_PREFIX) + r"[0-9a-f]{32}$")
# A probe lives for milliseconds; one this old was left by a killed run, or
# by a version that left it when the disk was full.
STALE_PROBE_SECONDS = 3600


def sweep_stale_probes(output: str) -> None:
    """Delete write probes earlier runs left in a local ``output`` folder:
    this tool's exact name pattern only, and only stale ones, so a
    concurrent run's probe is never touched."""
    if "://" in output:
        return
    try:
        names = os.listdir(output)
    except OSError:
        return
    now = time.time()
    for name in names:
        if _PROBE_NAME.match(name):
            path = os.path.join(output, name)
            try:
                if now - os.lstat(path).st_mtime > STALE_PROBE_SECONDS:
                    os.unlink(path)
            except OSError:
                pass


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
    probe = FileSystems.join(output, f"{PROBE_PREFIX}{uuid.uuid4().hex}")
    try:
        if "://" not in output:
            FileSystems.mkdirs(output) if not FileSystems.exists(output) else None
        try:
            with FileSystems.create(probe) as f:
                f.write(b"ok")
        finally:
            # a full disk lets create() make the file and fails the write:
            # the probe goes either way
            try:
                FileSystems.delete([probe])
            except Exception:  # noqa: BLE001 - never created, or already gone
                pass
    except Exception as e:  # noqa: BLE001
        raise ValueError(f"output {output} is not writable: {e}") from None
    sweep_stale_probes(output)
    try:
        check_output_owned(output, names)
    except OwnershipError as e:
        raise ValueError(str(e)) from None
