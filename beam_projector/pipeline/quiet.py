"""Quiet by default: the user sees our progress, warnings and summary only.

TensorFlow's C++ runtime reads ``TF_CPP_MIN_LOG_LEVEL`` once, when it is
first imported, so ``quiet_native_libraries`` must run in the entry point
before anything imports TensorFlow; the Python side (logging levels,
Pillow's warnings) is set up in ``configure_logging`` once the options are
known. ``--log_level`` / ``-v`` bring the libraries' own output back.
"""
import contextlib
import logging
import os
import sys
import warnings
from typing import Optional, Sequence

OUR_LOGGER = "beam-projector"
QUIET_ENV = "BEAM_PROJECTOR_QUIET"
# TF_CPP_MIN_LOG_LEVEL: 0 all, 1 no INFO, 2 no WARNING, 3 no ERROR. The
# start-up banners (oneDNN, cpu_feature_guard, cuInit on a machine without a
# GPU) are INFO to ERROR lines that say nothing about the run.
_TF_CPP_LEVEL = {None: "3", "ERROR": "2", "WARNING": "1", "INFO": "0", "DEBUG": "0"}


def level_from_argv(argv: Sequence[str]) -> Optional[str]:
    """``--log_level`` / ``-v`` read straight from argv, before any option
    parsing (parsing imports the transforms, which may import TensorFlow)."""
    level, verbose = None, 0
    argv = list(argv)
    for i, arg in enumerate(argv):
        if arg == "--":
            break
        if arg == "--log_level" and i + 1 < len(argv):
            level = argv[i + 1].upper()
        elif arg.startswith("--log_level="):
            level = arg.split("=", 1)[1].upper()
        elif arg in ("-v", "--verbose"):
            verbose += 1
        elif arg.startswith("-v") and set(arg[1:]) == {"v"}:
            verbose += len(arg) - 1
    if level:
        return level
    return ("DEBUG" if verbose > 1 else "INFO") if verbose else None


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
            import tensorflow  # noqa: F401
            import keras  # noqa: F401
        except ImportError:
            pass  # the model loader reports a missing TensorFlow in its own words


class _Formatter(logging.Formatter):
    """Our records as ``beam-projector: ...``; the libraries' with their level
    and logger name, so they are easy to tell apart."""

    def format(self, record):
        if record.name == OUR_LOGGER or record.name.startswith(OUR_LOGGER + "."):
            prefix = "" if record.levelno < logging.WARNING else record.levelname.lower() + ": "
            text = f"{OUR_LOGGER}: {prefix}{record.getMessage()}"
            if record.exc_info:
                text += "\n" + self.formatException(record.exc_info)
            return text
        return f"{record.levelname} {record.name}: {record.getMessage()}" + (
            "\n" + self.formatException(record.exc_info) if record.exc_info else "")


def configure_logging(level: Optional[str], stream=None) -> None:
    """Our logger at INFO, every other logger (Beam, TensorFlow, absl, Keras,
    Pillow, the root logger Beam's RunInference warns on) at ``level``, or
    ERROR when quiet; Pillow's per-image warnings hidden unless verbose (the
    image still becomes an embedded row or an errors.tsv row)."""
    root = logging.getLogger()
    for h in list(root.handlers):
        if getattr(h, "_beam_projector", False):
            root.removeHandler(h)
    handler = logging.StreamHandler(stream or sys.stderr)
    handler._beam_projector = True
    handler.setFormatter(_Formatter())
    root.addHandler(handler)
    lib_level = getattr(logging, level) if level else logging.ERROR
    root.setLevel(lib_level)
    for name in ("apache_beam", "absl", "tensorflow", "keras", "PIL", "h5py"):
        logging.getLogger(name).setLevel(lib_level)
    ours = logging.getLogger(OUR_LOGGER)
    ours.setLevel(min(logging.INFO, lib_level))
    if level is None:
        quiet_pillow_warnings()
        try:  # absl's handler prints "WARNING: All log messages before absl::..." otherwise
            from absl import logging as absl_logging
            absl_logging.set_verbosity(absl_logging.ERROR)
        except ImportError:
            pass
    else:
        logging.captureWarnings(True)


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
