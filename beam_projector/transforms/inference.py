"""Embedding inference as a Beam stage: a ModelHandler of our own for RunInference.

``EmbeddingModelHandler`` serves ``model.load_embedding_model`` to
RunInference, which shares one model per worker process and batches;
``EmbedImages`` fuses the decode with it, so each image is decoded once and
its pixels live only until its batch's model call.
"""
from typing import Tuple

import apache_beam as beam
import numpy as np
from apache_beam.ml.inference.base import KeyedModelHandler, ModelHandler, RunInference

from beam_projector.transforms.decode import DecodeForModelFn, as_side_input
from beam_projector.transforms.model import (
    EmbeddingModel,
    ModelSpec,
    shared_embedding_model,
)
from beam_projector.transforms.records import (
    DEFAULT_MAX_IMAGE_BYTES,
    ERRORS_TAG,
    METRICS_NAMESPACE,
    Embedded,
    ErrorRow,
)
from beam_projector.transforms.worker import quiet_if_asked


class EmbeddingModelHandler(ModelHandler):
    """uint8 image arrays -> tuples of embedding vectors, batched and shared."""

    def __init__(self, spec: ModelSpec, batch_size: int = 32):
        super().__init__(min_batch_size=batch_size, max_batch_size=batch_size)
        self._spec = spec
        self._batch_size = batch_size

    def load_model(self) -> EmbeddingModel:
        quiet_if_asked(tensorflow=True)   # a local worker process of a quiet run
        return shared_embedding_model(self._spec)

    def run_inference(self, batch, model: EmbeddingModel, inference_args=None):
        # ``embed`` runs the model at its one batch shape, padding a short
        # batch, so a vector does not depend on how bundles were split; the
        # counter says what that costs (rows computed and thrown away).
        padding = -len(batch) % model.batch_size
        if padding:
            beam.metrics.Metrics.counter(METRICS_NAMESPACE, "padding_rows").inc(padding)
        mats = model.embed(np.stack(batch))
        return [tuple(m[i] for m in mats) for i in range(len(batch))]

    def get_num_bytes(self, batch) -> int:
        return sum(np.asarray(x).nbytes for x in batch)

    def get_metrics_namespace(self) -> str:
        return METRICS_NAMESPACE


def _to_embedded(keyed, counter_ok, counter_bad):
    (item, thumb), vectors = keyed
    bad = [i for i, v in enumerate(vectors) if not np.all(np.isfinite(v))]
    if bad:
        counter_bad.inc()
        yield beam.pvalue.TaggedOutput(
            ERRORS_TAG, ErrorRow(item.ref, "embed", "model output is not finite (NaN or Inf)", item.key))
        return
    counter_ok.inc()
    yield Embedded(item, thumb, tuple(np.asarray(v, dtype=np.float32) for v in vectors))


# Images decoded for the model per turn of the thread pool, whatever the
# batch: the pixels of a block are kB to MB, the activations of a batch are
# what costs memory. At batch 8, 1,500 photos took 37.2 s with blocks of 8
# and 34.5 s with blocks of 32 (docs/benchmarks-history.md, "Throughput of the final code").
DECODE_BLOCK = 32


class EmbedImages(beam.PTransform):
    """ImageRefs -> Embedded (+ ``errors``), in one fused stage.

    Each image is decoded once (``DecodeForModelFn``, a block at a time on a
    thread pool), giving its model input and its sprite thumbnail, and fed
    straight to RunInference, so a model-sized pixel array lives only from
    its decode to its batch's model call: memory is bounded by the batch
    and the read-ahead, not by N. The (item, thumbnail) pair rides through
    RunInference as the key, so the writer needs no join. ``tile`` is an int
    or a PCollection holding one; ``refill``: the images are refills (margin
    images already checked by ``CheckDecodes``), so a failure now is the
    embedding stage's, not a read or decode failure to refill.
    """

    def __init__(self, spec: ModelSpec, model_size: Tuple[int, int], tile, batch_size: int = 32,
                 resize_mode: str = "pad", max_bytes: int = DEFAULT_MAX_IMAGE_BYTES,
                 refill: bool = False):
        super().__init__()
        self._handler = KeyedModelHandler(EmbeddingModelHandler(spec, batch_size))
        self._tile = tile
        self._decode = DecodeForModelFn(model_size, resize_mode,
                                        block=max(batch_size, DECODE_BLOCK), max_bytes=max_bytes,
                                        refill=refill)

    def expand(self, items):
        ok = beam.metrics.Metrics.counter(METRICS_NAMESPACE, "embedded")
        bad = beam.metrics.Metrics.counter(METRICS_NAMESPACE, "failed_embed")
        decoded = items | "DecodeForModel" >> beam.ParDo(
            self._decode, as_side_input(self._tile)).with_outputs(
            ERRORS_TAG, main="pixels")
        out = (
            decoded.pixels
            | "RunInference" >> RunInference(self._handler)
            | "CheckFinite" >> beam.FlatMap(_to_embedded, ok, bad).with_outputs(ERRORS_TAG, main="embedded"))
        errors = (decoded[ERRORS_TAG], out[ERRORS_TAG]) | "EmbedErrors" >> beam.Flatten()
        return out.embedded, errors
