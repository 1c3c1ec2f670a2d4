"""Stage timers: the CPU and wall milliseconds each stage spends, as Beam counters.

Every run records them (``ms_<stage>_cpu``, ``ms_<stage>_wall``, summed over
workers; run_summary.json lists them under ``all_counters``), so a profile
of a real run needs no profiler attached: ``bench/profile_stages.py`` reads
them. A timer costs two clock reads per use.

CPU is thread CPU time (``time.thread_time``) for work done on one thread
(a decode in a pool thread), or process CPU time (``time.process_time``)
for work whose libraries start threads of their own (TensorFlow's and BLAS's
pools: the model, the neighbour search); the stages that use process time
run alone in their process while they do (the fused stage decodes and calls
the model in turns).
"""
import contextlib
import time

import apache_beam as beam

from beam_projector.transforms.records import METRICS_NAMESPACE


class StageTimer:
    """Adds to ``ms_<name>_cpu`` and ``ms_<name>_wall``. Create it where the
    stage is built (in a DoFn's constructor or a function's body), use it
    on the stage's own thread: Beam's metrics do not follow into pools."""

    def __init__(self, name: str, process_cpu: bool = False):
        self._cpu = beam.metrics.Metrics.counter(METRICS_NAMESPACE, f"ms_{name}_cpu")
        self._wall = beam.metrics.Metrics.counter(METRICS_NAMESPACE, f"ms_{name}_wall")
        self._clock = time.process_time if process_cpu else time.thread_time

    @contextlib.contextmanager
    def measure(self):
        cpu, wall = self._clock(), time.perf_counter()
        try:
            yield
        finally:
            self.add(self._clock() - cpu, time.perf_counter() - wall)

    def add(self, cpu_s: float = 0.0, wall_s: float = 0.0) -> None:
        if cpu_s > 0:
            self._cpu.inc(int(round(cpu_s * 1000)))
        if wall_s > 0:
            self._wall.inc(int(round(wall_s * 1000)))


def cpu_counter(name: str):
    """``ms_<name>_cpu`` alone, for CPU measured on pool threads and added
    on the stage's thread."""
    return beam.metrics.Metrics.counter(METRICS_NAMESPACE, f"ms_{name}_cpu")
