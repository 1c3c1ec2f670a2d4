"""Entry point: ``python -m pipeline.run`` / ``beam-projector``.

Options, checks, one composite: parses the options, validates everything on
the launcher (``preflight``), applies the public ``ReadImages`` and
``ImagesToProjector`` (``build``: the same graph a library user gets) and
runs it on whatever runner the Beam options name.
"""
import json
import logging
import re
import sys
import time
from typing import List, Optional

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import (DirectOptions, PipelineOptions,
                                                  StandardOptions)

from pipeline.config import expand_config
from pipeline.options import ProjectorOptions, format_beam_help, format_help, help_requested
from pipeline.preflight import Plan, UsageError, make_plan, neighbor_plan
from pipeline.progress import (COUNTERS, LogProgress, end_live_line, large_tsv_hint,
                               read_counters, summary_bytes)
from pipeline.quiet import configure_logging, import_tensorflow_quietly, level_from_argv
from transforms.api import ImagesToProjector, ReadImages
from transforms.neighbors import NeighborColumns
from transforms.staging import delete_staging, staging_dir
from transforms.write import SUMMARY_NAME, update_summary

LOG = logging.getLogger("beam-projector")


def build(p: beam.Pipeline, po: ProjectorOptions, plan: Plan):
    """The CLI's graph: the public source and composite, as a library user
    applies them (``transforms.api``), from the options and the checked plan."""
    nn = neighbor_plan(po, plan)
    column_stages = [("Neighbors" >> NeighborColumns(
        nn.k, nn.tensor_index, nn.label_index, 0, nn.threshold))] if nn else []
    read = p | "ReadInput" >> ReadImages(spec=plan.source, max_record_bytes=po.max_image_bytes)
    return read | "Projector" >> ImagesToProjector(
        output=po.output, model=plan.model, columns=plan.columns, max_items=po.max_items,
        seed=po.seed, max_per_label=po.max_per_label, label_column=po.label_column,
        tile_size=po.tile_size, batch_size=po.batch_size, resize=po.resize,
        tensor_format=po.tensor_format, preview=not po.no_preview, standalone=po.standalone,
        max_error_fraction=po.max_error_fraction, max_image_bytes=po.max_image_bytes,
        progress=LogProgress, run_id=plan.run_id,
        column_stages=column_stages,
        suspects_label_column=nn.label_column if nn else "",
        options_json=json.dumps(_options_used(po), sort_keys=True, default=str))


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


def run(argv: Optional[List[str]] = None) -> dict:
    """Run the pipeline; returns the summary counts. Raises UsageError early.

    ``--config FILE`` is expanded into flags first (the command line wins).
    """
    run_started = time.time()
    argv = expand_config(argv)
    options = PipelineOptions(argv)
    po = options.view_as(ProjectorOptions)
    plan = make_plan(po)
    default_local_runner(options)
    started = time.time()
    p = beam.Pipeline(options=options)
    build(p, po, plan)
    _hide_relayed_tracebacks()
    try:
        result = p.run()
        result.wait_until_finish()
    finally:
        end_live_line()
        # the writer removes it once it has published; this covers a failed job
        delete_staging(staging_dir(po.output, plan.run_id))
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
        "wall_seconds": round(time.time() - run_started, 2)}
    if plan.source is not None and plan.source.tfds:
        record["tfds"] = summary["tfds"] = dict(plan.source.tfds)
    try:
        if update_summary(po.output, plan.run_id, summary_bytes(record)):
            LOG.debug("run summary written to %s", FileSystems.join(po.output, SUMMARY_NAME))
    except Exception as e:  # noqa: BLE001 - published; the writer's summary stays
        LOG.warning("published, but the full run summary was not written: %s", e)
    hint = large_tsv_hint(po.output, po.tensor_format)
    if hint:
        LOG.warning(hint)
    return summary


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


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    wanted = help_requested(argv)
    if wanted:
        print(format_beam_help() if wanted == "beam" else format_help(), end="")
        return 0
    try:
        argv = expand_config(argv)
        # before anything imports TensorFlow (make_plan loads the model)
        level = level_from_argv(argv)
        import_tensorflow_quietly(level)
        configure_logging(level)
        summary = run(argv)
    except UsageError as e:
        print(f"beam-projector: error: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # noqa: BLE001 - one clear line, the traceback is in the log
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


if __name__ == "__main__":
    sys.exit(main())
