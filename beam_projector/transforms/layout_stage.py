"""``LayoutColumns``: the offline layout of every written point, as a column stage.

The Beam shape (the pure steps are in ``layout``):

    embedded | first S in output order (Top) | fit       -> one small model
    embedded | pack the vector | batches | place (model as a side input)
             -> (order key, (cluster, umap-0, umap-1[, umap-2]))

The fit runs once, on one worker (in a child process: ``layout_child``), on
a deterministic sample (the first S items in output order, as the neighbour
stage's PCA sample); the model (a few MB) is broadcast, and the other rows
are placed in parallel, in any batches: a row's position does not depend on
its companions. The writer
joins the values by key like any column stage's: ``cluster`` goes to
metadata.tsv, the coordinates (``layout_columns``) to the bookmarks.
"""
import resource
import time
from typing import Optional

import apache_beam as beam
import numpy as np

from beam_projector.transforms import layout
from beam_projector.transforms.layout_child import fit_in_child
from beam_projector.transforms.neighbors import pack_vector, unpack_vector
from beam_projector.transforms.records import order_key
from beam_projector.transforms.timing import StageTimer

CLUSTER_COLUMN = "cluster"
# Rows placed per call: enough to keep the BLAS products busy, small enough
# that a batch (float64 copies included) stays a few tens of MB.
MIN_BATCH, MAX_BATCH = 256, 4096


def _sample_entry(e, t, label_index):
    # a copy: the vector may be a row of its whole batch's output
    label = e.item.metadata[label_index] if label_index is not None else None
    return order_key(e.item), np.array(e.vectors[t], dtype=np.float32, copy=True), label


class _FitFn(beam.DoFn):
    """The fit, in a child process (``layout_child``), under its stage timer:
    the child's CPU (this process only waits) and the wall time."""

    def __init__(self, dims, seed, method):
        self._args = (dims, seed, method)
        self._timer = StageTimer("layout_fit")

    def process(self, sample):
        before, started = _children_cpu(), time.perf_counter()
        model = fit_in_child(sample, *self._args)
        self._timer.add(_children_cpu() - before, time.perf_counter() - started)
        yield model


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _slim(e, t):
    """What a row needs while it waits for the model: its key and its vector,
    packed as the neighbour stage packs it (float16 behind a scale above 128
    dimensions: half the bytes, far below what PCA-50 discards)."""
    return order_key(e.item), pack_vector(e.vectors[t])


class _PlaceFn(beam.DoFn):
    def __init__(self):
        self._timer = StageTimer("layout_place", process_cpu=True)

    def setup(self):
        self._counter = beam.metrics.Metrics.counter("projector", "layout_placed")

    def process(self, batch, model):
        keys = [k for k, _ in batch]
        with self._timer.measure():
            vectors = np.stack([unpack_vector(v) for _, v in batch])
            values = list(layout.layout_values(model, keys, vectors))
        yield from values
        self._counter.inc(len(batch))


class LayoutColumns(beam.PTransform):
    """PCollection[Embedded] -> PCollection[(order key, values)], one per item.

    The values are ``columns``: the cluster name, then the coordinates
    (``layout_columns``: the projector's point keys, ``umap-0`` ...), as the
    JSON numbers the bookmarks carry. ``tensor_index`` picks the embedding,
    ``label_index`` the metadata column clusters are named after (None: no
    names). Give it to ``ImagesToProjector(column_stages=[...])``.
    """

    def __init__(self, method: str = layout.DEFAULT_METHOD, tensor_index: int = 0,
                 label_index: Optional[int] = None, dims: int = 2,
                 sample: int = layout.DEFAULT_SAMPLE, seed: int = 0):
        super().__init__()
        if method not in layout.METHODS[1:]:
            raise ValueError(f"layout must be one of {', '.join(layout.METHODS[1:])}, "
                             f"got {method!r}")
        if dims not in (2, 3):
            raise ValueError(f"layout_dims must be 2 or 3, got {dims}")
        if sample < 1:
            raise ValueError(f"layout_sample must be at least 1, got {sample}")
        self._method, self._t, self._label = method, tensor_index, label_index
        self._dims, self._sample, self._seed = dims, sample, seed
        self.layout_columns = layout.projection_keys(dims, method)
        self.columns = (CLUSTER_COLUMN,) + self.layout_columns

    def expand(self, embedded):
        t = self._t
        model = (embedded
                 | "SampleKeyed" >> beam.Map(_sample_entry, t, self._label)
                 | "FirstInOrder" >> beam.combiners.Top.Of(self._sample, key=lambda r: r[0],
                                                           reverse=True)
                 | "Fit" >> beam.ParDo(_FitFn(self._dims, self._seed, self._method)))
        return (embedded
                | "Slim" >> beam.Map(_slim, t)
                | "Batch" >> beam.BatchElements(min_batch_size=MIN_BATCH,
                                                max_batch_size=MAX_BATCH)
                | "Place" >> beam.ParDo(_PlaceFn(), beam.pvalue.AsSingleton(model)))
