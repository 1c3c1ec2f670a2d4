"""Quiet by default: the user sees our progress, warnings and summary only.

TensorFlow's C++ runtime reads ``TF_CPP_MIN_LOG_LEVEL`` once, when it is
first imported, so the entry point imports TensorFlow quietly
(``transforms.worker.import_tensorflow_quietly``) before anything else does;
the Python side (logging levels, Pillow's warnings) is set up in
``configure_logging`` once the options are known. ``--log_level`` / ``-v``
bring the libraries' own output back.
"""
import logging
import sys
import threading
from typing import Optional, Sequence

from beam_projector.transforms.worker import quiet_pillow_warnings

OUR_LOGGER = "beam-projector"
_DEFAULT_EXCEPTHOOK = threading.excepthook


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


TRACEBACK_TEXT = "Traceback (most recent call last)"


def _ours(record: logging.LogRecord) -> bool:
    return record.name == OUR_LOGGER or record.name.startswith(OUR_LOGGER + ".")


class HideLibraryTracebacks(logging.Filter):
    """A quiet run's handler drops the libraries' records that carry a
    traceback: Beam logs every exception a step raises, with its traceback,
    before re-raising it (``DoFnRunner._reraise_augmented``), and its job
    service relays a worker's as text; the CLI's own one line says what
    failed. ``-v`` keeps them."""

    def filter(self, record):
        if _ours(record):
            return True
        return not (record.exc_info or TRACEBACK_TEXT in record.getMessage())


def _thread_error_to_debug(args) -> None:
    """A quiet run's ``threading.excepthook``: an exception that ends a
    library's thread (Beam's gRPC readers when a job stops) goes to the
    debug log instead of a traceback on stderr."""
    if args.exc_type is SystemExit:
        return
    logging.getLogger(OUR_LOGGER).debug(
        "thread %s ended with %s", getattr(args.thread, "name", "?"), args.exc_type.__name__,
        exc_info=(args.exc_type, args.exc_value, args.exc_traceback))


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
    if level is None:
        handler.addFilter(HideLibraryTracebacks())
    root.addHandler(handler)
    lib_level = getattr(logging, level) if level else logging.ERROR
    root.setLevel(lib_level)
    for name in ("apache_beam", "absl", "tensorflow", "keras", "PIL", "h5py"):
        logging.getLogger(name).setLevel(lib_level)
    ours = logging.getLogger(OUR_LOGGER)
    ours.setLevel(min(logging.INFO, lib_level))
    if level is None:
        quiet_pillow_warnings()
        threading.excepthook = _thread_error_to_debug
        try:  # absl's handler prints "WARNING: All log messages before absl::..." otherwise
            from absl import logging as absl_logging
            absl_logging.set_verbosity(absl_logging.ERROR)
        except ImportError:
            pass
    else:
        threading.excepthook = _DEFAULT_EXCEPTHOOK
        logging.captureWarnings(True)
