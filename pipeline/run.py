"""Entry point: ``python -m pipeline.run`` / ``beam-projector``.

Validates everything on the launcher (``preflight``), composes the graph
(``build``) and runs it on whatever runner the Beam options name.
"""
import logging
import sys
import time
from typing import List, Optional

import apache_beam as beam
from apache_beam.options.pipeline_options import (DirectOptions, PipelineOptions,
                                                  StandardOptions)

from pipeline.options import ProjectorOptions
from pipeline.preflight import Plan, UsageError, make_plan
from transforms.decode import DecodeImages
from transforms.inference import EmbedImages
from transforms.items import order_key
from transforms.sampling import SampleItems
from transforms.sources import ReadCsv
from transforms.write import WriteProjectorLogdir, WriterConfig

LOG = logging.getLogger("beam-projector")


def _count(name):
    counter = beam.metrics.Metrics.counter("projector", name)

    def inc(x):
        counter.inc()
        return x
    return inc


def _nth_key(keys):
    return keys[-1] if keys else None


def _within(decoded, last_key):
    return last_key is not None and order_key(decoded.item) <= last_key


def build(p: beam.Pipeline, po: ProjectorOptions, plan: Plan):
    """The graph: read -> sample -> reshuffle -> decode -> keep N -> embed -> write."""
    refs, read_errors = p | "ReadInput" >> ReadCsv(plan.input_paths, po.image_column)
    sampled = (refs
               | "Sample" >> SampleItems(plan.sample_size, po.seed)
               | "CountSampled" >> beam.Map(_count("sampled"))
               | "Spread" >> beam.Reshuffle())
    decoded, decode_errors = sampled | "Decode" >> DecodeImages(
        plan.model_size, plan.tile, po.resize)
    # The sample holds a margin beyond N so that failed images do not shrink
    # the output; keep exactly the first N that decoded, in key order, before
    # paying for inference.
    last_key = (decoded
                | "OrderKeys" >> beam.Map(lambda d: order_key(d.item))
                | "FirstNKeys" >> beam.combiners.Top.Of(po.max_items, reverse=True)
                | "LastKept" >> beam.Map(_nth_key))
    selected = decoded | "KeepFirstN" >> beam.Filter(_within, beam.pvalue.AsSingleton(last_key))
    embedded, embed_errors = selected | "Embed" >> EmbedImages(plan.model, po.batch_size)
    errors = (read_errors, decode_errors, embed_errors) | "AllErrors" >> beam.Flatten()
    cfg = WriterConfig(output=po.output, columns=plan.columns, tensor_names=plan.tensor_names,
                       tile=plan.tile, max_items=po.max_items,
                       max_error_fraction=po.max_error_fraction, tensor_format=po.tensor_format)
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


def _metrics(result) -> dict:
    out = {}
    for c in result.metrics().query()["counters"]:
        if c.key.metric.namespace == "projector":
            out[c.key.metric.name] = out.get(c.key.metric.name, 0) + c.committed
    return out


def run(argv: Optional[List[str]] = None) -> dict:
    """Run the pipeline; returns the summary counts. Raises UsageError early."""
    options = PipelineOptions(argv)
    po = options.view_as(ProjectorOptions)
    plan = make_plan(po)
    default_local_runner(options)
    started = time.time()
    p = beam.Pipeline(options=options)
    build(p, po, plan)
    result = p.run()
    result.wait_until_finish()
    counts = _metrics(result)
    summary = {k: counts.get(k, 0) for k in ("read", "sampled", "decoded", "embedded", "written")}
    summary["failed"] = counts.get("failed", 0)
    summary["seconds"] = round(time.time() - started, 2)
    if not summary["written"]:
        raise RuntimeError(f"nothing was written to {po.output}; counts: {summary}")
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
        print(f"beam-projector: failed: {msg[-1] if msg else type(e).__name__}", file=sys.stderr)
        return 1
    print("beam-projector: read={read} sampled={sampled} embedded={embedded} "
          "written={written} failed={failed} in {seconds}s".format(**summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
