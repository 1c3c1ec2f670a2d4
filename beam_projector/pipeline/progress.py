"""Progress and the run summary.

``LogProgress`` is a pass-through step logged from the workers, so a long
run shows how far each stage has got in the worker logs (Dataflow's Cloud
Logging, Flink TaskManager logs, the console locally). The summary is built
from the Beam counters the transforms keep, read once the job is done.
"""
import json
import logging
import os
import sys
import threading
import time
import uuid
from typing import Optional

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems

from beam_projector.transforms.records import METRICS_NAMESPACE, TotalChange
from beam_projector.transforms.worker import QUIET_ENV, quiet_pillow_warnings

LOG = logging.getLogger("beam-projector")

COUNTERS = ("read", "sampled", "decoded", "failed", "embedded", "written")


# --- progress text (pure) -------------------------------------------------------

def _duration(seconds: float) -> str:
    """Rounded the way a person says it: 8 s, 3 min, 1 h 20 min."""
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{max(1, round(seconds))} s"
    minutes = round(seconds / 60)
    if minutes < 60:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h" + (f" {minutes} min" if minutes else "")


def _rate(count: int, elapsed: float, unit: str) -> str:
    rate = count / elapsed if elapsed > 0 else 0.0
    return f"{rate:,.0f} {unit}/s" if rate >= 10 else f"{rate:.1f} {unit}/s"


def progress_text(stage: str, done: int, total: Optional[int], elapsed: float,
                  whole_job: bool = True, unit: str = "images") -> str:
    """One progress line, e.g. ``embedded 2,000 / 10,000 (20%), 48 images/s,
    about 3 min left``.

    ``elapsed`` is the time since this stage's first element. Without a
    total: ``read 4,000 items, 1,200 items/s``. ``whole_job`` is False when
    this process sees only its share of the stage (several workers): the
    count is then this worker's, the total the job's, and no time left is
    guessed from one worker's share.
    """
    if not total:
        return f"{stage} {done:,} {unit}, {_rate(done, elapsed, unit)}" + (
            "" if whole_job else " on this worker")
    if not whole_job:
        return f"{stage} {done:,} {unit} on this worker (of {total:,} in all), " \
               f"{_rate(done, elapsed, unit)}"
    text = f"{stage} {done:,} / {total:,} ({100 * done // total}%), {_rate(done, elapsed, unit)}"
    if done >= total:
        return text + f", done in {_duration(elapsed)}"
    if done and elapsed > 0:
        text += f", about {_duration((total - done) * elapsed / done)} left"
    return text


def next_report(done: int, total: Optional[int], first: int = 1000) -> int:
    """The count at which the next log line is due after ``done``: every
    10% of a known total, else 1k, 2k, 4k, ..."""
    if total:
        step = max(1, -(-total // 10))
        return min(total, (done // step + 1) * step)
    nxt = first
    while nxt <= done:
        nxt *= 2
    return nxt


# --- the Beam step -----------------------------------------------------------------

_LIVE = {"open": False}


class _LiveLine:
    """One terminal line rewritten in place (carriage return + erase)."""

    def __init__(self, stream):
        self._stream = stream

    def show(self, text: str, final: bool = False):
        self._stream.write("\r\x1b[K" + OUR_PREFIX + text + ("\n" if final else ""))
        self._stream.flush()
        _LIVE["open"] = not final


def end_live_line(stream=None) -> None:
    """Close a live progress line left open, so the next output starts on
    a fresh line."""
    if _LIVE["open"]:
        (stream or sys.stderr).write("\n")
        _LIVE["open"] = False


OUR_PREFIX = "beam-projector: "
_COUNTS_LOCK = threading.Lock()
# Per process and stage: every DoFn instance (one per bundle processor
# thread) adds to the same count, so an in-process run reports the job.
_COUNTS: dict = {}


class _ProgressFn(beam.DoFn):
    """Counts elements and reports at 10% steps of the total (or 1k, 2k,
    4k, ... without one) but at most once per ``min_gap_s`` (a fast stage
    logs only its last line), at least every ``every_s`` seconds, and on
    the last element of a known total; in ``live`` mode (a local run on a
    terminal) it rewrites one line instead."""

    def __init__(self, stage: str, every_s: float = 30.0, first: int = 1000,
                 whole_job: bool = True, live: bool = False, min_gap_s: float = 5.0,
                 key: str = ""):
        self._stage, self._every_s, self._first = stage, every_s, first
        self._min_gap_s = min_gap_s
        self._whole_job, self._live = whole_job, live
        # shared by this DoFn's pickled copies, and by every application of
        # the LogProgress that made it
        self._key = key or f"{stage}-{uuid.uuid4().hex}"

    def setup(self):
        self._line = _LiveLine(sys.stderr) if self._live else None
        if os.environ.get(QUIET_ENV):
            # a local worker process of a quiet run: a progress step may sit
            # in a decode stage (whose DoFns install the filter too), so its
            # setup, before any element of the stage, installs Pillow's filter
            quiet_pillow_warnings()

    def process(self, element, total=None):
        now = time.monotonic()
        change = isinstance(element, TotalChange)
        with _COUNTS_LOCK:
            state = _COUNTS.setdefault(self._key, {"seen": 0, "started": now, "last": now,
                                                   "next": None, "delta": 0, "ended": False})
            if change:
                state["delta"] += element.delta
            else:
                state["seen"] += 1
            seen = state["seen"]
            if total:
                total = max(1, total + state["delta"])
            if state["next"] is None:
                state["next"] = next_report(0, total, self._first)
            since = now - state["last"]
            if change:  # a changed total is news only when it ends the stage
                due = bool(total) and seen >= total and not state["ended"]
            elif self._line:
                due = since >= 0.25 or seen == total
            else:  # a step reached, but not more than one line per min_gap_s
                due = ((seen >= state["next"] and since >= self._min_gap_s)
                       or since >= self._every_s or seen == total)
            if due:
                state["next"] = next_report(seen, total, self._first)
                state["last"] = now
                state["ended"] = bool(total) and seen >= total
        if due:
            text = progress_text(self._stage, seen, total, now - state["started"],
                                 self._whole_job)
            if self._line:
                self._line.show(text, final=bool(total) and seen >= total)
            else:
                LOG.info("progress: %s", text)
        if not change:
            yield element


def _runs_in_this_process(options) -> bool:
    """True when the whole job runs in this Python process (FnApiRunner or
    DirectRunner in memory), so one process-wide count is the job's count."""
    from apache_beam.options.pipeline_options import DirectOptions, StandardOptions
    runner = options.view_as(StandardOptions).runner
    name = runner if isinstance(runner, str) or runner is None else type(runner).__name__
    mode = options.view_as(DirectOptions).direct_running_mode or "in_memory"
    return (name or "FnApiRunner") in ("FnApiRunner", "DirectRunner", "BundleBasedDirectRunner") \
        and mode == "in_memory"


class LogProgress(beam.PTransform):
    """Pass every element through unchanged, reporting the stage's progress.

    Applied to several PCollections (each under its own label), it counts
    them as one stage. A ``TotalChange`` element moves the total instead of
    being counted or passed on.

    ``total``: an optional PCollection of one int (the number of elements
    the stage will see), read as a side input: lines then say done / total,
    rate and time left. On a local in-process run with stderr on a terminal
    the report is one live line; elsewhere (clusters, pipes, CI) log lines,
    which land in the worker logs.
    """

    def __init__(self, stage: str, every_s: float = 30.0, total=None, min_gap_s: float = 5.0):
        super().__init__()
        self._stage, self._every_s, self._total = stage, every_s, total
        self._min_gap_s = min_gap_s
        self._key = f"{stage}-{uuid.uuid4().hex}"

    def expand(self, pcoll):
        whole_job = _runs_in_this_process(pcoll.pipeline.options)
        live = whole_job and _stderr_is_terminal()
        fn = _ProgressFn(self._stage, self._every_s, whole_job=whole_job, live=live,
                         min_gap_s=self._min_gap_s, key=self._key)
        if self._total is None:
            return pcoll | beam.ParDo(fn)
        return pcoll | beam.ParDo(fn, total=beam.pvalue.AsSingleton(self._total))


def _stderr_is_terminal() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


def _value(counter_result):
    # committed is exact where the runner supports it; some portable runners
    # only report attempted values
    value = counter_result.committed
    return counter_result.attempted if value is None else value


def read_counters(result, namespace: str = METRICS_NAMESPACE) -> dict:
    """The job's counters in ``namespace``, summed over steps."""
    out = {}
    for c in result.metrics().query(beam.metrics.MetricsFilter())["counters"]:
        if c.key.metric.namespace == namespace:
            out[c.key.metric.name] = out.get(c.key.metric.name, 0) + (_value(c) or 0)
    return out


def summary_bytes(summary: dict) -> bytes:
    return json.dumps(summary, indent=2, sort_keys=True, default=str).encode("utf-8") + b"\n"


# TensorBoard parses a TSV tensor as text on the first request: 2.1 s for
# 10,000 x 1280 (148 MiB) against 0.08 s for the same binary file (BENCHMARKS.md).
TSV_HINT_BYTES = 100 * 1000 * 1000


def tsv_hint_text(sizes: dict, tensor_format: str, limit: int = TSV_HINT_BYTES) -> Optional[str]:
    """The one-line suggestion for a big TSV tensor (``sizes``: path -> bytes),
    or None."""
    if tensor_format != "tsv" or not sizes:
        return None
    path, size = max(sizes.items(), key=lambda kv: kv[1])
    if size <= limit:
        return None
    return (f"{path.rsplit('/', 1)[-1]} is {size / 1e6:,.0f} MB of text; "
            "--tensor_format binary loads 25x faster in TensorBoard (BENCHMARKS.md)")


def large_tsv_hint(output: str, tensor_format: str) -> Optional[str]:
    """Look at the published tensor TSVs (any Beam filesystem) and return
    ``tsv_hint_text`` for them."""
    if tensor_format != "tsv":
        return None
    try:
        found = FileSystems.match([FileSystems.join(output, "data-*", "feature_vecs*.tsv")])
        sizes = {m.path: m.size_in_bytes for m in found[0].metadata_list}
    except Exception:  # noqa: BLE001 - a hint is never worth failing a finished run
        return None
    return tsv_hint_text(sizes, tensor_format)
