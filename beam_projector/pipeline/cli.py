"""The command: ``beam-projector`` and ``python -m beam_projector``.

Help, ``--config``, quiet logging, then ``run``; every failure becomes one
line on stderr and an exit code (2: usage, found before any work; 1: the
job failed; 130: interrupted by Ctrl-C).
"""
import logging
import os
import re
import signal
import sys
import threading
from typing import List, Optional

from beam_projector.pipeline.config import expand_config
from beam_projector.pipeline.logs import configure_logging, level_from_argv
from beam_projector.pipeline.options import (
    UsageError,
    format_beam_help,
    format_help,
    help_requested,
)
from beam_projector.transforms.worker import import_tensorflow_quietly

LOG = logging.getLogger("beam-projector")


# All Beam's data plane says when an SDK worker dies mid-bundle (killed, out
# of memory, a crashed native library); the Job API relays it as the error.
_WORKER_LOST = "Channel closed prematurely"


def _explain_failure(line: str) -> str:
    """Name a lost SDK worker plainly; other failure lines pass unchanged."""
    if _WORKER_LOST in line:
        return ("an SDK worker was lost before the job finished (its process died or its "
                f"connection closed: {_WORKER_LOST}); no partial logdir is published, "
                "rerun the job")
    return line


# "ValueError: msg", "transforms.write.TooManyErrors: msg": the line of a
# traceback's text that states the error.
_ERROR_LINE = re.compile(r"^(?:[A-Za-z_]\w*\.)*([A-Z]\w*(?:Error|Errors|Exception|Failure)):\s*(\S.*)$")
# Lines that frame an error without saying what it is.
_FRAMING = re.compile(r"^(Traceback \(most recent call last\):|in user code:|File \".*|\^+|~+)$")


def failure_line(text: str, type_name: str, limit: int = 300) -> str:
    """The one line of a failure's message worth printing.

    Beam re-raises a worker's exception with `` [while running 'Step']``
    appended (often on a line of its own) and sometimes with the worker's
    traceback as text; TensorFlow puts whole tensors in messages. So: drop the
    step names, then prefer the last ``SomeError: message`` line (the root
    cause in a traceback), else the first line that is not traceback framing,
    else the exception's type; printable and at most ``limit`` characters.
    """
    text = re.sub(r"\s*\[while running '[^']*'\]", "", text)
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    errors = [m for m in map(_ERROR_LINE.match, lines) if m]
    if errors:
        line = f"{errors[-1].group(1)}: {errors[-1].group(2)}"
    else:
        line = next((line for line in lines if not _FRAMING.match(line)), type_name)
    line = "".join(c if c.isprintable() else " " for c in line)
    return line if len(line) <= limit else line[:limit - 3] + "..."


def process_age() -> float:
    """Seconds since this process started (Linux: /proc), so the imports
    before ``main`` are counted too; 0 where /proc is missing."""
    try:
        with open("/proc/self/stat") as f:
            start_ticks = int(f.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        return max(0.0, uptime - start_ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return 0.0


# What shells report for a command ended by Ctrl-C: 128 + SIGINT.
EXIT_INTERRUPTED = 128 + signal.SIGINT


class _Interrupts:
    """Ctrl-C for the command: one line and exit 130.

    Remembered (``seen``): Beam re-raises a step's exception with the step's
    name appended, and a KeyboardInterrupt (which has no message) comes out
    of that as a RuntimeError, so the exception alone cannot tell. Installed
    only over Python's default handler (a SIGINT a shell set to be ignored
    stays ignored), and put back on the way out."""

    def __init__(self):
        self.seen = False
        self._previous = None

    def _handler(self, signum, frame):
        self.seen = True
        raise KeyboardInterrupt

    def __enter__(self):
        if (threading.current_thread() is threading.main_thread()
                and signal.getsignal(signal.SIGINT) is signal.default_int_handler):
            self._previous = signal.signal(signal.SIGINT, self._handler)
        return self

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
        return False


def _interrupted_by(e: BaseException) -> bool:
    """A KeyboardInterrupt anywhere in ``e``'s chain of causes."""
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, KeyboardInterrupt):
            return True
        e = e.__cause__ or e.__context__
    return False


def _report_interrupt() -> int:
    LOG.debug("interrupted", exc_info=True)
    print("beam-projector: interrupted; the logdir holds the last projector published whole "
          "(a run publishes all or nothing)", file=sys.stderr)
    return EXIT_INTERRUPTED


def main(argv: Optional[List[str]] = None) -> int:
    """The command; returns its exit code (0, 1 failed, 2 usage, 130 Ctrl-C)."""
    try:
        with _Interrupts() as interrupts:
            return _main(argv, interrupts)
    except KeyboardInterrupt:
        return _report_interrupt()


def _main(argv: Optional[List[str]], interrupts: _Interrupts) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    wanted = help_requested(argv)
    if wanted:
        print(format_beam_help() if wanted == "beam" else format_help(), end="")
        return 0
    try:
        launcher = {"imports": round(process_age(), 2)}
        argv = expand_config(argv)
        # before anything imports TensorFlow (make_plan loads the model)
        level = level_from_argv(argv)
        import_tensorflow_quietly(level)
        configure_logging(level)
        from beam_projector.pipeline.run import run   # Beam's runners
        launcher["tensorflow"] = round(process_age() - launcher["imports"], 2)
        summary = run(argv, launcher)
    except UsageError as e:
        print(f"beam-projector: error: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # noqa: BLE001 - one clear line, the traceback is in the log
        if interrupts.seen or _interrupted_by(e):
            return _report_interrupt()
        LOG.debug("run failed", exc_info=True)
        print(f"beam-projector: failed: "
              f"{_explain_failure(failure_line(str(e), type(e).__name__))}", file=sys.stderr)
        return 1
    tfds = summary.get("tfds")
    source = (f" from TFDS {tfds['name']} {tfds['version']} split {tfds['split']}"
              if tfds else "")
    print("beam-projector: read={read} sampled={sampled} decoded={decoded} embedded={embedded} "
          "written={written} failed={failed} in {seconds}s".format(**summary) + source)
    return 0


def command() -> None:
    """The console script and ``python -m beam_projector``: ``main``, then
    leave at once. Letting the interpreter tear TensorFlow and Beam down
    costs 1.3-1.7 s after every run on a 2-core machine (measured: a
    process that only imports them takes 1.7 s to exit) and does nothing
    this process needs: by then the logdir is published, the staging folder
    removed and, below, the logs and streams flushed."""
    code = main()
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):   # a closed pipe: nothing more to say
            pass
    os._exit(code)


if __name__ == "__main__":
    command()
