"""One run: options, checks, one composite, the summary.

Parses the options, validates everything on the launcher (``preflight``),
applies the public ``ReadImages`` and ``ImagesToProjector`` (``build``: the
same graph a library user gets), runs it on whatever runner the Beam options
name, and completes the run summary. ``cli`` turns it into a command.
"""
import logging
import time
from typing import List, Optional

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import (
    DirectOptions,
    PipelineOptions,
    StandardOptions,
)

from beam_projector.pipeline.config import expand_config
from beam_projector.pipeline.options import ProjectorOptions
from beam_projector.pipeline.preflight import Plan, make_plan
from beam_projector.pipeline.progress import (
    COUNTERS,
    LogProgress,
    end_live_line,
    large_tsv_hint,
    read_counters,
    summary_bytes,
)
from beam_projector.transforms.composite import ImagesToProjector, RunContext
from beam_projector.transforms.layout import DEFAULT_SAMPLE
from beam_projector.transforms.sources.read import ReadImages
from beam_projector.transforms.staging import delete_staging, staging_dir
from beam_projector.transforms.write.layout import SUMMARY_NAME
from beam_projector.transforms.write.publish import update_summary

LOG = logging.getLogger("beam-projector")


def build(p: beam.Pipeline, po: ProjectorOptions, plan: Plan):
    """The CLI's graph: the public source and composite, as a library user
    applies them, from the checked plan; the CLI adds only its progress
    lines, its run id and the options it records (``RunContext``)."""
    nn, lay = plan.neighbors, plan.layout
    read = p | "ReadInput" >> ReadImages(spec=plan.source,
                                         max_record_bytes=plan.settings.max_image_bytes)
    return read | "Projector" >> ImagesToProjector(
        output=po.output, model=plan.model, columns=plan.source.columns,
        settings=plan.settings, neighbors=nn.k if nn else 0,
        neighbors_tensor=(nn or lay).tensor_index if (nn or lay) else None,
        duplicate_threshold=nn.threshold if nn else 0.0,
        layout=lay.method if lay else "none", layout_dims=lay.dims if lay else 2,
        layout_sample=lay.sample if lay else DEFAULT_SAMPLE,
        run=RunContext(progress=LogProgress, run_id=plan.run_id, options=_options_used(po)))


def default_local_runner(options: PipelineOptions) -> None:
    """Without --runner, use the FnApiRunner directly: DirectRunner in Beam
    2.78 first tries to download the Prism binary, which fails offline."""
    std = options.view_as(StandardOptions)
    if not std.runner:
        std.runner = "FnApiRunner"
        direct = options.view_as(DirectOptions)
        if direct.direct_running_mode is None:
            direct.direct_running_mode = "in_memory"


def _options_used(options: PipelineOptions) -> dict:
    """Every beam-projector option (defaults included) plus every Beam option
    that differs from its default: enough to rerun the job."""
    used = options.view_as(ProjectorOptions).get_all_options(current_only=True)
    used.update(options.get_all_options(drop_default=True))
    return used


class _RelayedTracebacks(logging.Filter):
    """Drop the job service's tracebacks that the PortableRunner relays to
    the root logger (unless it logs DEBUG): the CLI's one failure line says
    what failed, and the job service's own log keeps the traceback."""

    def filter(self, record):
        if not record.pathname.endswith("portable_runner.py"):
            return True
        return ("Traceback (most recent call last)" not in record.getMessage()
                or logging.getLogger().isEnabledFor(logging.DEBUG))


def _hide_relayed_tracebacks() -> None:
    root = logging.getLogger()
    if not any(isinstance(f, _RelayedTracebacks) for f in root.filters):
        root.addFilter(_RelayedTracebacks())


def run(argv: Optional[List[str]] = None, launcher: Optional[dict] = None) -> dict:
    """Run the pipeline; returns the summary counts. Raises UsageError early.

    ``--config FILE`` is expanded into flags first (the command line wins).
    ``launcher``: seconds the command spent before this (``imports``,
    ``tensorflow``), completed here and recorded in run_summary.json.
    """
    launcher = dict(launcher or {})
    run_started = time.time()
    argv = expand_config(argv)
    options = PipelineOptions(argv)
    po = options.view_as(ProjectorOptions)
    plan = make_plan(po)   # detects the input, loads and checks the model, probes the output
    default_local_runner(options)
    started = time.time()
    launcher["checks_and_model"] = round(started - run_started, 2)
    p = beam.Pipeline(options=options)
    build(p, po, plan)
    _hide_relayed_tracebacks()
    launcher["graph"] = round(time.time() - started, 2)
    try:
        result = p.run()
        result.wait_until_finish()
    finally:
        end_live_line()
        # the writer removes it once it has published; this covers a failed job
        delete_staging(staging_dir(po.output, plan.run_id))
    launcher["job"] = round(time.time() - started - launcher["graph"], 2)
    counts = read_counters(result)
    summary = {k: counts.get(k, 0) for k in COUNTERS}
    summary["seconds"] = round(time.time() - started, 2)
    if not summary["written"]:
        raise RuntimeError(f"nothing was written to {po.output}; counts: {summary}")
    # The writer already put a run_summary.json beside the outputs before its
    # config swap; this adds Beam's counters and timings, unless a later run
    # has published over this one meanwhile.
    record = {
        "run_id": plan.run_id, "counters": {k: summary[k] for k in COUNTERS},
        "all_counters": counts, "options": _options_used(options),
        "pipeline_seconds": summary["seconds"],
        "wall_seconds": round(time.time() - run_started, 2),
        "launcher_seconds": launcher}
    if plan.source is not None and plan.source.tfds:
        record["tfds"] = summary["tfds"] = dict(plan.source.tfds)
    # what is left after the job is the summary's own write, done next
    launcher["after_job"] = round(time.time() - started - launcher["graph"] - launcher["job"], 2)
    try:
        if update_summary(po.output, plan.run_id, summary_bytes(record)):
            LOG.debug("run summary written to %s", FileSystems.join(po.output, SUMMARY_NAME))
    except Exception as e:  # noqa: BLE001 - published; the writer's summary stays
        LOG.warning("published, but the full run summary was not written: %s", e)
    hint = large_tsv_hint(po.output, po.tensor_format)
    if hint:
        LOG.warning(hint)
    return summary
