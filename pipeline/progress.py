"""Progress and the run summary.

``LogProgress`` is a pass-through step logged from the workers, so a long
run shows how far each stage has got in the worker logs (Dataflow's Cloud
Logging, Flink TaskManager logs, the console locally). The summary is built
from the Beam counters the transforms keep, read once the job is done.
"""
import json
import logging
import time

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems

from transforms.write import SUMMARY_NAME  # one name for the writer and the launcher

LOG = logging.getLogger("beam-projector")

COUNTERS = ("read", "sampled", "decoded", "failed", "embedded", "written")


class _ProgressFn(beam.DoFn):
    """Counts elements per worker and logs at 1k, 2k, 4k, ... and at least
    every ``every_s`` seconds while elements keep coming."""

    def __init__(self, stage: str, every_s: float = 30.0, first: int = 1000):
        self._stage, self._every_s, self._first = stage, every_s, first

    def setup(self):
        self._seen, self._next = 0, self._first
        self._started = self._last = time.monotonic()

    def process(self, element):
        self._seen += 1
        now = time.monotonic()
        if self._seen >= self._next or now - self._last >= self._every_s:
            self._next = max(self._next, self._seen) * 2
            self._last = now
            LOG.info("progress: %s %d items on this worker (%.0fs)",
                     self._stage, self._seen, now - self._started)
        yield element


class LogProgress(beam.PTransform):
    """Pass every element through unchanged, logging the stage's progress."""

    def __init__(self, stage: str, every_s: float = 30.0):
        super().__init__()
        self._stage, self._every_s = stage, every_s

    def expand(self, pcoll):
        return pcoll | beam.ParDo(_ProgressFn(self._stage, self._every_s))


def _value(counter_result):
    # committed is exact where the runner supports it; some portable runners
    # only report attempted values
    value = counter_result.committed
    return counter_result.attempted if value is None else value


def read_counters(result, namespace: str = "projector") -> dict:
    """The job's counters in ``namespace``, summed over steps."""
    out = {}
    for c in result.metrics().query(beam.metrics.MetricsFilter())["counters"]:
        if c.key.metric.namespace == namespace:
            out[c.key.metric.name] = out.get(c.key.metric.name, 0) + (_value(c) or 0)
    return out


def summary_bytes(summary: dict) -> bytes:
    return json.dumps(summary, indent=2, sort_keys=True, default=str).encode("utf-8") + b"\n"


def write_summary(output: str, summary: dict) -> str:
    """Write ``run_summary.json`` into the logdir (any Beam filesystem)."""
    path = FileSystems.join(output, SUMMARY_NAME)
    data = summary_bytes(summary)
    with FileSystems.create(path, mime_type="application/json") as f:
        f.write(data)
    return path
