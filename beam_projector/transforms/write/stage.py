"""The one ordered stage that writes and publishes the projector logdir.

Everything meets here, sorted by the sample key, so tensor row i, metadata
row i and sprite tile i are the same image on every runner. The stage
decides what is kept and what counts as a failure, joins the column stages'
values, builds the assets and publishes them (``publish``).
"""
from typing import List, Sequence

import apache_beam as beam

from beam_projector.transforms.files import join
from beam_projector.transforms.records import (
    METRICS_NAMESPACE,
    Embedded,
    ErrorRow,
    order_key,
)
from beam_projector.transforms.staging import LocalCopies, delete_staging, staging_dir
from beam_projector.transforms.timing import StageTimer
from beam_projector.transforms.worker import release_free_memory
from beam_projector.transforms.write.assets import build_assets
from beam_projector.transforms.write.config import WriterConfig
from beam_projector.transforms.write.layout import ERRORS_NAME
from beam_projector.transforms.write.publish import publish, publish_errors_only
from beam_projector.transforms.write.views import written_rows

# Errors found while reading the input list (a CSV row without a path) are
# reported, but are not sampled items, so they do not count toward
# --max_error_fraction.
INPUT_STAGE = "read"


EMBED_STAGE = "embed"


class TooManyErrors(RuntimeError):
    """More sampled items failed than --max_error_fraction allows."""




def select_for_publish(embedded: Sequence[Embedded], errors: Sequence[ErrorRow],
                       max_items: int):
    """(kept rows in order, errors that count, errors to report).

    Failures past the last kept key were never needed, so they neither count
    nor appear; input-list errors always appear but never count. The cut is
    the N-th item that decoded (embedded or failed in the model): those are
    the first N that decoded (read and decode failures were refilled from
    the margin), and model failures are not backfilled, so decode failures
    beyond that cut were never needed either.
    """
    kept = sorted(embedded, key=lambda e: order_key(e.item))[:max_items]
    decoded = sorted([e.item.key for e in embedded]
                     + [r.key for r in errors if r.stage == EMBED_STAGE])
    last = decoded[max_items - 1] if len(decoded) >= max_items else None
    counted, reported = [], []
    for e in sorted(errors, key=lambda r: (r.key, r.ref, r.stage, r.reason)):
        if e.stage == INPUT_STAGE and e.key == 0:
            reported.append(e)
        elif last is None or e.key <= last:
            counted.append(e)
            reported.append(e)
    return kept, counted, reported


def join_columns(kept: Sequence[Embedded], tables: Sequence[dict],
                 widths: Sequence[int]) -> List[Embedded]:
    """Append each column stage's values (``tables[i]``: order key -> values)
    to the items' metadata; an item a stage gave no row gets empty values."""
    if not tables:
        return list(kept)
    out = []
    for e in kept:
        key = order_key(e.item)
        extra = tuple(v for table, width in zip(tables, widths)
                      for v in table.get(key, ("",) * width))
        out.append(e._replace(item=e.item._replace(metadata=tuple(e.item.metadata) + extra)))
    return out


class _WriteLogdirFn(beam.DoFn):
    def __init__(self, cfg: WriterConfig, column_widths: Sequence[int] = ()):
        self._cfg = cfg
        self._widths = tuple(column_widths)

    def process(self, keyed, names=None):
        release_free_memory()
        _, tagged = keyed
        embedded, errors = [], []
        tables = [{} for _ in self._widths]
        for tag, v in tagged:
            if tag == "ok":
                embedded.append(v)
            elif tag == "err":
                errors.append(v)
            else:
                key, values = v
                tables[tag][key] = tuple(values)
        cfg = self._cfg if names is None else self._cfg._replace(tensor_names=tuple(names))
        kept, counted, reported = select_for_publish(embedded, errors, cfg.settings.max_items)
        del embedded
        kept = join_columns(kept, tables, self._widths)
        del tables
        staged = staging_dir(cfg.output, cfg.run_id)
        examined = len(kept) + len(counted)
        if not kept or (examined and len(counted) / examined > cfg.settings.max_error_fraction):
            publish_errors_only(cfg, reported)
            delete_staging(staged)   # a retry would fail the same way
            if not kept:
                raise TooManyErrors(
                    f"no image could be embedded ({len(reported)} errors); "
                    f"see {join(cfg.output, ERRORS_NAME)}")
            raise TooManyErrors(
                f"{len(counted)} of {examined} sampled items failed "
                f"({len(counted) / examined:.1%} > --max_error_fraction "
                f"{cfg.settings.max_error_fraction:.1%}); nothing published, "
                f"see {join(cfg.output, ERRORS_NAME)}")
        # Other failures keep the staging folder: a retried bundle needs it.
        with LocalCopies([e.thumbnail for e in kept]) as thumbnails:
            kept = [e._replace(thumbnail=t) for e, t in zip(kept, thumbnails)]
            del thumbnails
            # Needs every row at once: the layout's coordinates leave the
            # metadata for bookmarks.json, suspects.tsv is ranked, and the
            # suspect column is added with its exemplar rows first, so the
            # rows are written in `written.kept` order (write/views.py).
            with StageTimer("writer_assets", process_cpu=True).measure():
                written = written_rows(kept, cfg)
                kept, suspect_counts = written.kept, written.counts
                assets = build_assets(kept, cfg._replace(columns=written.columns),
                                      written.coordinates, written.bookmarks)
            release_free_memory()   # the preview's canvas and the matrix building's temporaries
            # the tensor text and the sprite's PNG are made as they are written
            with StageTimer("writer_publish", process_cpu=True).measure():
                publish(assets, cfg, reported, written.suspects)
        delete_staging(staged)
        for name, value in suspect_counts.items():
            beam.metrics.Metrics.counter(METRICS_NAMESPACE, name).inc(value)
        written = beam.metrics.Metrics.counter(METRICS_NAMESPACE, "written")
        written.inc(len(kept))
        beam.metrics.Metrics.counter(METRICS_NAMESPACE, "failed").inc(len(reported))
        yield {"written": len(kept), "failed": len(reported), "digest": assets.digest,
               "tensors": [(n, list(s)) for n, s, _ in assets.tensors], "tile": assets.tile}


class WriteProjectorLogdir(beam.PTransform):
    """(embedded, errors, *column tables) -> one summary dict, after
    publishing the logdir.

    Each column table is a PCollection of (order key, values) pairs, joined
    onto the items' metadata in this one stage (``column_widths``: how many
    values each table gives), so the items do not wait for the stages that
    compute them. ``names``: a PCollection of the tensor names, when only the
    running pipeline knows them (the model's own, learnt on a worker);
    otherwise ``cfg.tensor_names``.
    """

    def __init__(self, cfg: WriterConfig, column_widths: Sequence[int] = (), names=None):
        super().__init__()
        self._cfg = cfg
        self._widths = tuple(column_widths)
        self._names = names

    def expand(self, pcolls):
        embedded, errors, *tables = pcolls
        if len(tables) != len(self._widths):
            raise ValueError(f"{len(tables)} column tables for {len(self._widths)} widths")
        ok = embedded | "TagOk" >> beam.Map(lambda e: (None, ("ok", e)))
        bad = errors | "TagErr" >> beam.Map(lambda e: (None, ("err", e)))
        tagged = [table | f"TagColumns{i}" >> beam.Map(lambda kv, i=i: (None, (i, kv)))
                  for i, table in enumerate(tables)]
        return ((ok, bad, *tagged)
                | "Together" >> beam.Flatten()
                | "OneStage" >> beam.GroupByKey()
                | "Write" >> beam.ParDo(_WriteLogdirFn(self._cfg, self._widths), *(
                    [beam.pvalue.AsSingleton(self._names)] if self._names is not None else [])))
