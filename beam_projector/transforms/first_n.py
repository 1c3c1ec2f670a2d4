"""The sample -> the first N images that decode, embedded (and refills).

The cut is planned before any decode, as if every image decodes; the margin
beyond it is only checked, and the margin images that take the places of
failed ones are embedded in a second pass. ``EmbedFirstN`` is that
orchestration; the cut arithmetic is ``sampling``'s.
"""
from typing import Any, Callable, NamedTuple, Optional

import apache_beam as beam

from beam_projector.transforms import sampling
from beam_projector.transforms.decode import CheckDecodes
from beam_projector.transforms.inference import embed_refs
from beam_projector.transforms.model import ModelSpec
from beam_projector.transforms.records import ErrorRow, TotalChange
from beam_projector.transforms.settings import Settings
from beam_projector.transforms.staging import StageThumbnails

MARGIN = "margin"


# Failures of a first attempt at an image, which the margin refills.
REFILLABLE_STAGES = ("read", "decode")


class _SplitAtCut(beam.DoFn):
    """The sample -> the planned first N (main) and the margin (``MARGIN``)."""

    def __init__(self, label_of=None):
        self._label_of = label_of

    def process(self, item, cut):
        if sampling.kept_by(item, cut, label_of=self._label_of):
            yield item
        else:
            yield beam.pvalue.TaggedOutput(MARGIN, item)


def _refillable(row: ErrorRow) -> bool:
    return row.stage in REFILLABLE_STAGES


def _error_key(row: ErrorRow) -> int:
    return row.key


def _total_change(_, delta: int) -> TotalChange:
    return TotalChange(delta)


def _cut_count(cut) -> int:
    return cut.count


class EmbedResult(NamedTuple):
    embedded: beam.PCollection      # Embedded, the first N that decode
    errors: beam.PCollection        # ErrorRow: read/decode (first N and margin), embed
    planned: beam.PCollection       # one int: how many the plan sends to the model


class EmbedFirstN(beam.PTransform):
    """The sample (N + a margin, keyed) -> the first N that decode, embedded.

    The cut is planned before any decode: the first N in key order (at most
    ``max_per_label`` a label) as if every image decodes. Those are decoded
    once, fused with the model (``EmbedImages``). The margin is only
    checked (``CheckDecodes``, at thumbnail scale); the cut is recomputed
    without the images that failed, and the margin images that fall within
    it take their places, decoded again for the model. That keeps exactly
    the images a check of every image before the cut would keep, with one
    decode for every image but the refills (docs/benchmarks-history.md,
    "Memory and shuffle").
    """

    def __init__(self, spec: ModelSpec, model_size, tile, settings: Settings,
                 label_index: Optional[int] = None, stage_to: Optional[str] = None,
                 progress: Optional[Callable[[beam.PCollection], beam.PTransform]] = None):
        super().__init__()
        self._spec, self._model_size, self._tile = spec, model_size, tile
        self._settings = settings
        self._label_of = sampling.LabelOf(label_index) if settings.max_per_label else None
        self._stage_to, self._progress = stage_to, progress

    def _embed(self, refill=False):
        return embed_refs(self._spec, self._tile, self._model_size, self._settings.resize,
                          self._settings.max_image_bytes, refill=refill)

    def expand(self, sampled):
        label_of = self._label_of
        max_items, per_label = self._settings.max_items, self._settings.max_per_label
        spread = sampled | "Spread" >> beam.Reshuffle()
        # Both cuts are computed from (label, key) pairs: the one made once
        # the failures are known reads them as a side input, rather than
        # reading the sample again in a step the embedding stage would wait on.
        pairs = spread | "LabelAndKey" >> beam.Map(sampling.label_and_key, label_of)
        plan = pairs | "PlanFirstN" >> beam.CombineGlobally(
            sampling.FirstCutFn(max_items, per_label))
        first, margin = spread | "SplitAtN" >> beam.ParDo(
            _SplitAtCut(label_of), beam.pvalue.AsSingleton(plan)).with_outputs(MARGIN, main="first")
        first_pass = first | "Embed" >> self._embed()
        embedded, first_errors = first_pass.embedded, first_pass.errors
        margin_ok, margin_errors = margin | "CheckMargin" >> CheckDecodes(
            self._tile, max_bytes=self._settings.max_image_bytes)
        failed_first = first_errors | "RefillableFailures" >> beam.Filter(_refillable)
        failed_keys = ((failed_first, margin_errors)
                       | "FailedDecodes" >> beam.Flatten()
                       # Any: sample keys are unsigned 64-bit, too large for VarIntCoder
                       | "FailedKeys" >> beam.Map(_error_key).with_output_types(Any)
                       | "AsSet" >> beam.combiners.ToSet())
        final = failed_keys | "FinalFirstN" >> beam.Map(
            sampling.cut_without, beam.pvalue.AsList(pairs), max_items, per_label)
        refills = margin_ok | "Refills" >> beam.Filter(
            sampling.kept_by, beam.pvalue.AsSingleton(final), label_of=label_of)
        refill_pass = refills | "EmbedRefills" >> self._embed(refill=True)
        refilled, refill_errors = refill_pass.embedded, refill_pass.errors
        planned = plan | "CountPlanned" >> beam.Map(_cut_count)
        if self._progress is not None:
            # One count over both branches (a LogProgress shares its count
            # between its applications); a failure refilled from the margin
            # moves the total down, then up again as its refill is chosen.
            watch = self._progress(planned)
            embedded = embedded | "WatchFirst" >> watch
            refilled = refilled | "WatchRefills" >> watch
            (failed_first | "Unplanned" >> beam.Map(_total_change, -1)
             | "WatchUnplanned" >> watch)
            (refills | "Replanned" >> beam.Map(_total_change, 1) | "WatchReplanned" >> watch)
        if self._stage_to:
            # The local runner executes a Flatten by holding all its inputs:
            # staged, each element is its vector and a thumbnail's offset
            # (5.6 kB at 1280-d) instead of the thumbnail too (17.8 kB).
            embedded = embedded | "StageFirst" >> StageThumbnails(self._stage_to)
            refilled = refilled | "StageRefills" >> StageThumbnails(self._stage_to)
        return EmbedResult(
            embedded=(embedded, refilled) | "AllEmbedded" >> beam.Flatten(),
            errors=(first_errors, margin_errors, refill_errors) | "Errors" >> beam.Flatten(),
            planned=planned)
