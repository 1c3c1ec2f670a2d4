"""What a worker process does to itself: quiet libraries, give memory back.

A quiet run (the CLI without -v) sets ``QUIET_ENV`` in the environment, which
the local multi-process runner's workers inherit: their model loader then
imports TensorFlow without its start-up banners, and their decoders hide
Pillow's per-file warnings, as the launcher does (``pipeline.logs``).
TensorFlow's C++ runtime reads ``TF_CPP_MIN_LOG_LEVEL`` once, when it is
first imported, so this must run before anything imports TensorFlow.
"""
import contextlib
import os
import sys
import warnings
from typing import Optional

QUIET_ENV = "BEAM_PROJECTOR_QUIET"
# TF_CPP_MIN_LOG_LEVEL: 0 all, 1 no INFO, 2 no WARNING, 3 no ERROR. The
# start-up banners (oneDNN, cpu_feature_guard, cuInit on a machine without a
# GPU) are INFO to ERROR lines that say nothing about the run.
_TF_CPP_LEVEL = {None: "3", "ERROR": "2", "WARNING": "1", "INFO": "0", "DEBUG": "0"}


def quiet_native_libraries(level: Optional[str]) -> None:
    """Environment for TensorFlow/absl/gRPC C++ logging; a value the user
    exported wins. Must run before TensorFlow is imported."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", _TF_CPP_LEVEL.get(level, "0"))
    if level is None:
        os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
        # inherited by the local multi-process runner's workers, whose model
        # loader then imports TensorFlow quietly too; cluster workers do not
        # inherit it and keep TensorFlow's lines in their logs
        os.environ[QUIET_ENV] = "1"
    else:
        os.environ.pop(QUIET_ENV, None)


@contextlib.contextmanager
def native_stderr_silenced():
    """File descriptor 2 pointed at /dev/null for the block: C++ code that
    logs before honouring TF_CPP_MIN_LOG_LEVEL (TF 2.21's absl banners
    "All log messages before absl::InitializeLog()", oneDNN, cudart_stub,
    printed by each of its shared libraries as they load) cannot be
    reached otherwise. Python exceptions are unaffected."""
    try:
        sys.stderr.flush()
        fd = sys.stderr.fileno()
    except (AttributeError, ValueError, OSError):  # no real stderr (captured): nothing to hide
        yield
        return
    saved = os.dup(fd)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, fd)
        yield
    finally:
        os.dup2(saved, fd)
        os.close(saved)
        os.close(devnull)


def import_tensorflow_quietly(level: Optional[str]) -> None:
    """Import TensorFlow and Keras once, in the entry point, with their
    load-time banners hidden unless ``level`` asks for library output."""
    quiet_native_libraries(level)
    if level is not None:
        return
    with native_stderr_silenced():
        try:
            import keras  # noqa: F401
            import tensorflow  # noqa: F401
        except ImportError:
            pass  # the model loader reports a missing TensorFlow in its own words


def quiet_pillow_warnings() -> None:
    """Hide the warnings Pillow raises about one odd file (truncated EXIF,
    palette transparency, ...): the file's outcome is in errors.tsv or the
    projector either way. A process-wide filter installed once, not
    ``catch_warnings`` (which is not thread-safe)."""
    warnings.filterwarnings("ignore", module=r"PIL(\.|$)")
    try:
        from PIL import Image
        warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
    except ImportError:
        pass


def quiet_if_asked(tensorflow: bool = False) -> None:
    """In a worker process of a quiet run: Pillow's per-file warnings hidden
    and, with ``tensorflow``, TensorFlow imported without its banners, before
    this process decodes anything or loads a model."""
    if os.environ.get(QUIET_ENV):
        quiet_pillow_warnings()
        if tensorflow:
            import_tensorflow_quietly(None)


def quiet_worker_interrupts() -> None:
    """In an SDK worker process of a quiet local run: Ctrl-C ends it
    without a traceback.

    A terminal sends Ctrl-C's SIGINT to its whole foreground process group,
    so each of the multi-process runner's workers (``sdk_worker_main``)
    printed its own KeyboardInterrupt traceback, about 21 lines a worker,
    around the CLI's one line. The launcher cannot keep the signal from
    them (Beam starts them through /bin/sh, which clears an inherited
    signal mask), so a worker whose process has imported this package hands
    an uncaught KeyboardInterrupt to a quiet hook; any other exception is
    printed as before."""
    if not os.environ.get(QUIET_ENV) or not sys.argv or \
            os.path.basename(sys.argv[0]) != "sdk_worker_main.py":
        return
    if getattr(sys.excepthook, "_beam_projector", False):
        return
    previous = sys.excepthook

    def hook(kind, value, tb):
        if not issubclass(kind, KeyboardInterrupt):
            previous(kind, value, tb)
    hook._beam_projector = True
    sys.excepthook = hook


def release_free_memory() -> None:
    """Give memory freed by earlier stages back to the OS (glibc only).

    On the in-process runner every stage runs in one process, and glibc keeps
    freed buffers (decoded photos, activations) in its per-thread arenas, so
    a later stage's peak would stack on an earlier one's leftovers.
    """
    try:
        import ctypes
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to do
        pass
