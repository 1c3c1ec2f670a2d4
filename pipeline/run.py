"""Entry point: ``python -m pipeline.run`` / ``beam-projector``.

Validates everything on the launcher (``preflight``), composes the graph
(``build``) and runs it on whatever runner the Beam options name.
"""
import logging
import re
import sys
import time
from typing import List, Optional

import apache_beam as beam
from apache_beam.options.pipeline_options import (DirectOptions, PipelineOptions,
                                                  StandardOptions)

from pipeline.config import expand_config
from pipeline.options import ProjectorOptions
from pipeline.preflight import Plan, UsageError, failure_margin, make_plan, neighbor_plan
from pipeline.progress import COUNTERS, LogProgress, read_counters, write_summary
from transforms.decode import DecodeImages
from transforms.inference import EmbedImages
from transforms.items import order_key
from transforms.neighbors import AddNeighborColumns, neighbor_columns
from transforms.sampling import KeepFirstPerLabel, SampleItems
from transforms.sources import ReadImageRefs
from transforms.write import WriteProjectorLogdir, WriterConfig

LOG = logging.getLogger("beam-projector")


def _count(name):
    counter = beam.metrics.Metrics.counter("projector", name)

    def inc(x):
        counter.inc()
        return x
    return inc


def _item_of(decoded):
    return decoded.item


def _nth_key(keys):
    return keys[-1] if keys else None


def _within(decoded, last_key):
    return last_key is not None and order_key(decoded.item) <= last_key


def build(p: beam.Pipeline, po: ProjectorOptions, plan: Plan):
    """The graph: read -> sample -> reshuffle -> decode -> keep N -> embed -> write."""
    refs, read_errors = p | "ReadInput" >> ReadImageRefs(plan.source)
    refs = refs | "ProgressRead" >> LogProgress("read")
    # Each label's quota gets the same kind of failure margin as the total.
    per_label = po.max_per_label
    sample_per_label = (per_label + failure_margin(per_label, po.max_error_fraction)
                        if per_label else None)
    sampled = (refs
               | "Sample" >> SampleItems(plan.sample_size, po.seed,
                                         per_label=sample_per_label, label_index=plan.label_index)
               | "CountSampled" >> beam.Map(_count("sampled"))
               | "Spread" >> beam.Reshuffle())
    decoded, decode_errors = sampled | "Decode" >> DecodeImages(
        plan.model_size, plan.tile, po.resize)
    decoded = decoded | "ProgressDecoded" >> LogProgress("decoded")
    if per_label:
        decoded = decoded | "KeepFirstPerLabel" >> KeepFirstPerLabel(
            per_label, plan.label_index, item_of=_item_of)
    # The sample holds a margin beyond N so that failed images do not shrink
    # the output; keep exactly the first N that decoded, in key order, before
    # paying for inference.
    last_key = (decoded
                | "OrderKeys" >> beam.Map(lambda d: order_key(d.item))
                | "FirstNKeys" >> beam.combiners.Top.Of(po.max_items, reverse=True)
                | "LastKept" >> beam.Map(_nth_key))
    selected = decoded | "KeepFirstN" >> beam.Filter(_within, beam.pvalue.AsSingleton(last_key))
    embedded, embed_errors = selected | "Embed" >> EmbedImages(plan.model, po.batch_size)
    embedded = embedded | "ProgressEmbedded" >> LogProgress("embedded")
    nn = neighbor_plan(po, plan)
    if nn:
        embedded = embedded | "Neighbors" >> AddNeighborColumns(
            nn.k, nn.tensor_index, nn.label_index, 0, nn.threshold)
    errors = (read_errors, decode_errors, embed_errors) | "AllErrors" >> beam.Flatten()
    columns = plan.columns + (neighbor_columns(nn.label_index is not None) if nn else ())
    cfg = WriterConfig(output=po.output, columns=columns, tensor_names=plan.tensor_names,
                       tile=plan.tile, max_items=po.max_items,
                       max_error_fraction=po.max_error_fraction, tensor_format=po.tensor_format,
                       preview=not po.no_preview, standalone=po.standalone,
                       label_column=nn.label_column if nn else "")
    return (embedded, errors) | "WriteLogdir" >> WriteProjectorLogdir(cfg)


def default_local_runner(options: PipelineOptions) -> None:
    """Without --runner, use the FnApiRunner directly: DirectRunner in Beam
    2.77 first tries to download the Prism binary, which fails offline."""
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
    result = p.run()
    result.wait_until_finish()
    counts = read_counters(result)
    summary = {k: counts.get(k, 0) for k in COUNTERS}
    summary["seconds"] = round(time.time() - started, 2)
    if not summary["written"]:
        raise RuntimeError(f"nothing was written to {po.output}; counts: {summary}")
    path = write_summary(po.output, {
        "counters": {k: summary[k] for k in COUNTERS}, "all_counters": counts,
        "options": _options_used(options), "pipeline_seconds": summary["seconds"],
        "wall_seconds": round(time.time() - run_started, 2)})
    LOG.info("run summary written to %s", path)
    return summary


def main(argv: Optional[List[str]] = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("apache_beam", "absl", "tensorflow"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        summary = run(argv if argv is not None else sys.argv[1:])
    except UsageError as e:
        print(f"beam-projector: error: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # noqa: BLE001 - one clear line, the traceback is in the log
        LOG.debug("run failed", exc_info=True)
        msg = str(e).strip().splitlines()
        # Beam re-raises a DoFn's exception with " [while running 'Step']"
        # appended; the step name says nothing the user can act on.
        line = re.sub(r" \[while running '[^']*'\]$", "", msg[-1]) if msg else type(e).__name__
        print(f"beam-projector: failed: {line}", file=sys.stderr)
        return 1
    print("beam-projector: read={read} sampled={sampled} decoded={decoded} embedded={embedded} "
          "written={written} failed={failed} in {seconds}s".format(**summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
