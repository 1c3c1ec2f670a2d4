"""Embedding as a Beam stage: decode once, then RunInference with a shared model.

``EmbedImages`` takes this project's own models (a Keras file or SavedModel,
through ``EmbeddingModelHandler``) or any Beam ``ModelHandler`` whose
examples are decoded images (H x W x C uint8 numpy arrays). Each image is
decoded once (``decode.DecodeForModelFn``), fused with the model call, so
its pixels live only until its batch's model call; RunInference shares one
model per worker process and batches.
"""
from collections.abc import Mapping
from typing import Any, Optional, Sequence, Tuple, Union

import apache_beam as beam
import numpy as np
from apache_beam.ml.inference.base import (
    KeyedModelHandler,
    ModelHandler,
    PredictionResult,
    RunInference,
)

from beam_projector.transforms.decode import DecodeForModelFn, as_side_input
from beam_projector.transforms.elements import (
    ElementError,
    FieldImages,
    RefImages,
    as_dict,
    fields_of,
    vector_of,
)
from beam_projector.transforms.images import RESIZE_MODES
from beam_projector.transforms.model import (
    EmbeddingModel,
    ModelInfo,
    ModelSpec,
    describe_model,
    shared_embedding_model,
    with_batch_size,
)
from beam_projector.transforms.records import (
    DEFAULT_MAX_IMAGE_BYTES,
    ERRORS_TAG,
    METRICS_NAMESPACE,
    Embedded,
)
from beam_projector.transforms.timing import StageTimer
from beam_projector.transforms.worker import quiet_if_asked

# Images decoded for the model per turn of the thread pool, whatever the
# batch: the pixels of a block are kB to MB, the activations of a batch are
# what costs memory. At batch 8, 1,500 photos took 37.2 s with blocks of 8
# and 34.5 s with blocks of 32 (docs/benchmarks-history.md, "Throughput of
# the final code").
DECODE_BLOCK = 32
EMBEDDED, ERRORS = "embedded", "errors"


class EmbeddingModelHandler(ModelHandler):
    """uint8 images (H, W, C) -> ``PredictionResult``s whose ``inference``
    maps each embedding tensor's name to the image's vector; one model per
    worker process, batches of exactly the model's traced batch size."""

    def __init__(self, spec: ModelSpec):
        spec = with_batch_size(spec)   # reads the model's config, never loads it
        super().__init__(min_batch_size=spec.batch_size, max_batch_size=spec.batch_size)
        self.spec = spec

    def load_model(self) -> EmbeddingModel:
        quiet_if_asked(tensorflow=True)   # a local worker process of a quiet run
        return shared_embedding_model(self.spec)

    def _timer(self) -> StageTimer:
        # process CPU: TensorFlow runs the call on its own thread pool, and
        # nothing else of the fused stage runs during it (decode takes turns)
        timer = getattr(self, "_model_timer", None)
        if timer is None:
            timer = self._model_timer = StageTimer("model", process_cpu=True)
        return timer

    def run_inference(self, batch, model: EmbeddingModel, inference_args=None):
        # ``embed`` runs the model at its one batch shape, padding a short
        # batch, so a vector does not depend on how bundles were split; the
        # counter says what that costs (rows computed and thrown away).
        padding = -len(batch) % model.batch_size
        if padding:
            beam.metrics.Metrics.counter(METRICS_NAMESPACE, "padding_rows").inc(padding)
        with self._timer().measure():
            mats = model.embed(np.stack(batch))
        return [PredictionResult(x, {name: m[i] for name, m in zip(model.names, mats)})
                for i, x in enumerate(batch)]

    def get_num_bytes(self, batch) -> int:
        return sum(np.asarray(x).nbytes for x in batch)

    def get_metrics_namespace(self) -> str:
        return METRICS_NAMESPACE


class DescribeModel(beam.PTransform):
    """PBegin -> one ``ModelInfo``: the model's input size and tensor names,
    learnt when the pipeline runs (the model is loaded on a worker, where
    RunInference then reuses it), so building the graph loads nothing."""

    def __init__(self, spec: ModelSpec):
        super().__init__()
        self._spec = spec

    def expand(self, pbegin):
        return (pbegin
                | "Spec" >> beam.Create([self._spec])
                | "Load" >> beam.Map(_describe))


def _describe(spec: ModelSpec) -> ModelInfo:
    quiet_if_asked(tensorflow=True)
    return describe_model(spec)


def _input_size(info: ModelInfo) -> Tuple[int, int]:
    return info.input_size


def vectors_from(inference: Any) -> Tuple[Tuple[str, ...], Tuple[np.ndarray, ...]]:
    """(names, vectors) of one ``PredictionResult.inference``: a mapping of
    tensor name to vector, or one vector (any array-like, a (1, D) row too).
    Raises ElementError for anything that is not one finite vector each."""
    if isinstance(inference, Mapping):
        names = tuple(inference)
        return names, tuple(vector_of(inference[n], f"model output {n!r}") for n in names)
    return ("vector",), (vector_of(inference, "model output"),)


class _ToOutput(beam.DoFn):
    """((element, thumbnail), PredictionResult) -> the stage's output, or a
    dead letter naming the element. For the pipeline's ImageRefs
    (``RefImages``) an ``Embedded``; for a user's element its fields as a
    dict with ``vector_field`` (one tensor: its vector; several: a dict of
    them) and ``thumbnail``."""

    def __init__(self, images, vector_field: str = "vector"):
        self._images, self._vector_field = images, vector_field
        self._ok = beam.metrics.Metrics.counter(METRICS_NAMESPACE, "embedded")
        self._bad = beam.metrics.Metrics.counter(METRICS_NAMESPACE, "failed_embed")

    def process(self, keyed):
        (element, thumb), result = keyed
        try:
            names, vectors = vectors_from(result.inference)
        except ElementError as e:
            self._bad.inc()
            yield beam.pvalue.TaggedOutput(ERRORS_TAG, self._images.error(element, "embed", str(e)))
            return
        self._ok.inc()
        if isinstance(self._images, RefImages):
            yield Embedded(element, thumb, vectors)
            return
        row = as_dict(fields_of(element))
        row[self._vector_field] = vectors[0] if len(vectors) == 1 else dict(zip(names, vectors))
        row["thumbnail"] = thumb
        yield row


class EmbedResult(dict):
    """What ``EmbedImages`` returns: ``.embedded`` and ``.errors`` (``ErrorRow``
    dead letters). ``|`` applies a transform to ``.embedded``, except one that
    takes both (``WriteToProjector``: the errors land in errors.tsv)."""

    def __init__(self, outputs=()):
        # Beam copies its inputs with type(result)(dict): keep that signature.
        super().__init__(outputs)

    @property
    def embedded(self):
        return self[EMBEDDED]

    @property
    def errors(self):
        return self[ERRORS]

    def __or__(self, transform):
        inner = getattr(transform, "transform", transform)   # "label" >> transform
        if getattr(inner, "takes_dead_letters", False):
            return transform.__ror__(self)
        return self.embedded | transform


class EmbedImages(beam.PTransform):
    """Images -> their embeddings, one decode each, batched through RunInference.

        embedded = images | EmbedImages("model.keras", layers=["embedding"])
        embedded = images | EmbedImages(my_handler, image_size=(224, 224))

    Args:
      model: a Keras ``.keras``/``.h5`` file or a SavedModel directory (path
        or any Beam filesystem URI), cut at ``layers`` (Keras) or
        ``outputs`` (SavedModel); or a ``ModelSpec``; or any Beam
        ``ModelHandler`` whose examples are decoded images, H x W x 3 uint8
        numpy arrays (then ``image_size`` is required, and preprocessing
        beyond the resize is the handler's).
      image_size: (height, width) images are resized to; default: the
        model's own input size (this project's models only).
      layers, outputs, signature, pixel_scale, pool, batch_size: how this
        project's models are cut and fed (see ``ModelSpec``).
      resize: ``pad``, ``crop`` or ``stretch`` to the model input.
      tile_size: the sprite thumbnail's side, an int or a PCollection of one.
      image_field: the field holding encoded image bytes or a path/URI.
      vector_field: the field the embedding is written to: one tensor's
        1-D float32 vector, or a dict of tensor name to vector.
      id_fields: the fields that name an element in its dead letter.
      max_image_bytes: no image read goes past this many bytes + 1.

    Elements are dicts or ``beam.Row``s (the output: dicts with every field
    of the input, ``vector_field`` and ``thumbnail``, a small PNG the writer
    uses for the sprite); the pipeline's own ``ImageRef``s give
    ``Embedded`` records. Returns an ``EmbedResult`` (``.embedded``,
    ``.errors``); after ``with_exception_handling()`` a ``(embedded,
    errors)`` pair, as Beam's RunInference returns. Nothing is loaded or
    read when the graph is built but the model's small config file (for
    its input size); a model that cannot load fails the job when it runs.
    """

    def __init__(self, model: Union[str, ModelSpec, ModelHandler],
                 image_size: Optional[Sequence[int]] = None, *,
                 layers: Sequence[str] = (), outputs: Sequence[str] = (),
                 signature: str = "serving_default", pixel_scale: str = "raw", pool: str = "",
                 batch_size: int = 0, resize: str = "pad", tile_size=100,
                 image_field: str = "image", vector_field: str = "vector",
                 id_fields: Sequence[str] = ("id",),
                 max_image_bytes: int = DEFAULT_MAX_IMAGE_BYTES):
        super().__init__()
        if resize not in RESIZE_MODES:
            raise ValueError(f"resize must be one of {', '.join(RESIZE_MODES)}, got {resize!r}")
        if image_size is not None and (len(tuple(image_size)) != 2 or min(image_size) < 1):
            raise ValueError(f"image_size must be (height, width), got {image_size!r}")
        if isinstance(model, ModelHandler):
            if image_size is None:
                raise ValueError("a ModelHandler of your own needs image_size=(height, width): "
                                 "the size images are decoded and resized to")
            self._handler, self._spec = model, None
        else:
            spec = model if isinstance(model, ModelSpec) else ModelSpec(
                uri=model, layers=tuple(layers), signature=signature, outputs=tuple(outputs),
                pixel_scale=pixel_scale, image_size=tuple(image_size or ()), pool=pool,
                batch_size=batch_size)
            self._handler, self._spec = None, spec
        self._image_size = tuple(image_size) if image_size is not None else None
        self._resize, self._tile = resize, tile_size
        self._images = FieldImages(image_field, id_fields)
        self._vector_field = vector_field
        self._max_image_bytes = max_image_bytes
        self._refill = False
        self._pair = False
        self._model_size = None

    def with_exception_handling(self) -> "EmbedImages":
        """Return ``(embedded, errors)`` from the application, as Beam's
        ``RunInference(...).with_exception_handling()`` does. Failures are
        dead letters either way; the job never dies on one element."""
        self._pair = True
        return self

    def _for_refs(self, model_size=None, refill: bool = False) -> "EmbedImages":
        """The pipeline's own use (``first_n``): ImageRefs in, Embedded out.
        ``model_size``: (height, width) or a PCollection of it, learnt once
        for both passes; ``refill``: the images are refills, already
        checked, so a failure now is the embedding stage's."""
        self._images, self._refill = RefImages(), refill
        self._model_size = model_size
        return self

    def expand(self, elements):
        if self._handler is None:
            handler = EmbeddingModelHandler(self._spec)
            batch = handler.spec.batch_size
            if self._model_size is not None:
                model_size = self._model_size
            elif self._image_size is not None:
                model_size = self._image_size
            else:
                info = elements.pipeline | "DescribeModel" >> DescribeModel(handler.spec)
                model_size = info | "InputSize" >> beam.Map(_input_size)
        else:
            handler, model_size = self._handler, self._image_size
            batch = handler.batch_elements_kwargs().get("max_batch_size") or 0
        decode = DecodeForModelFn(self._images, self._resize,
                                  block=max(batch, DECODE_BLOCK),
                                  max_bytes=self._max_image_bytes, refill=self._refill)
        decoded = elements | "DecodeForModel" >> beam.ParDo(
            decode, as_side_input(self._tile), as_side_input(model_size)).with_outputs(
            ERRORS_TAG, main="pixels")
        to_output = _ToOutput(self._images, self._vector_field)
        out = (decoded.pixels
               | "RunInference" >> RunInference(KeyedModelHandler(handler))
               | "ToOutput" >> beam.ParDo(to_output).with_outputs(ERRORS_TAG, main="embedded"))
        errors = (decoded[ERRORS_TAG], out[ERRORS_TAG]) | "EmbedErrors" >> beam.Flatten()
        if self._pair:
            return out.embedded, errors
        return EmbedResult({EMBEDDED: out.embedded, ERRORS: errors})


def embed_refs(spec: ModelSpec, tile, model_size, resize: str, max_image_bytes: int,
               refill: bool = False) -> EmbedImages:
    """``EmbedImages`` for the pipeline's ImageRefs (``first_n``)."""
    return EmbedImages(spec, resize=resize, tile_size=tile,
                       max_image_bytes=max_image_bytes)._for_refs(model_size, refill)


