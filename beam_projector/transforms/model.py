"""Load an embedding model once: Keras files and SavedModels, cut, frozen, one batch shape.

Beam's ``TFModelHandlerNumpy`` calls ``tf.keras.models.load_model``, which under
Keras 3 (TF 2.21) cannot load a SavedModel directory, can only return the
model's final output and imports ``tensorflow_hub`` at import time. This
loader takes ``.keras``/``.h5`` files and SavedModels, cuts the network at
one or more named layers in a single model call, traces it for one batch
shape and, when small, freezes it; ``inference`` serves it to RunInference.
"""
import dataclasses
import logging
import os
import re
import shutil
import tempfile
import threading
from typing import List, NamedTuple, Optional, Sequence, Tuple

import numpy as np
from apache_beam.io.filesystems import FileSystems

from beam_projector.transforms.files import is_local, local_path
from beam_projector.transforms.records import capped
from beam_projector.transforms.worker import release_free_memory

PIXEL_SCALES = ("raw", "unit", "symmetric")


# --pool: how an output with spatial axes (batch, H, W, C) becomes one vector
# per image: average or maximum over every axis but the last, or all values.
POOLS = ("avg", "max", "flatten")


# What the model is fed: RGB, or the mean of R, G and B for one channel.
CHANNELS = (1, 3)


KERAS_SUFFIXES = (".keras", ".h5", ".hdf5")


LOG = logging.getLogger(__name__)


# How far a frozen model's output may be from the model's (relative to the
# largest value) before the frozen one is refused: folding a normalisation
# into a convolution moves float32 values by about 1e-7.
FROZEN_RTOL = 1e-4


# Models with more weight bytes than this run unfrozen. TensorFlow holds a
# frozen graph's constants several times over (graph, function library,
# optimised graph, kernels): measured, MobileNetV2 (9 MB of weights cut at
# its pooling layer) holds about 90 MB more frozen and runs 1.3 x faster,
# ResNet50 (94 MB) about 850 MB more, peaks 1.75 GB higher while freezing,
# and runs only 8 % faster (docs/benchmarks-history.md, "Throughput, fifth pass").
FREEZE_MAX_WEIGHT_BYTES = 16 * 1024 * 1024


ACCEPTED = ("a Keras .keras or .h5 file, or a TensorFlow SavedModel directory "
            "(holding saved_model.pb)")


# Images a model call holds when batch_size is 0 (auto). TensorFlow keeps the
# activations of its largest call for the rest of the run (oneDNN's allocator
# pools them): about 17 MB an image for a 224 px MobileNetV2, so the batch is
# sized by pixels. 6 at 224 px: the frozen model (``freeze``) holds about
# 90 MB more than the unfrozen one, and 6 a call instead of 8 gives that
# back at N = 6,000, while the frozen model at 6 still runs faster than the
# unfrozen one at 8 or 32 (docs/benchmarks-history.md, "Throughput, fifth
# pass"; BENCHMARKS.md, "Batch size");
# small inputs (64 px: 32) keep the per-call overhead low.
AUTO_BATCH_PIXELS = 6 * 224 * 224
AUTO_BATCH_MAX = 32
# The batch when the input size cannot be read from the file before loading
# (an unusual Keras config, a model whose input size is only known at run
# time): a model of 224 px at 8 a call holds ~140 MB of activations.
FALLBACK_BATCH = 8


def auto_batch_size(input_size) -> int:
    """Images per model call for a (height, width) input, when not given."""
    h, w = input_size[:2]
    return max(1, min(AUTO_BATCH_MAX, AUTO_BATCH_PIXELS // max(1, h * w)))


class ModelError(ValueError):
    """The model cannot serve embeddings as asked; the message says what to fix."""


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """Everything a worker needs to load the same model the launcher checked.

    Checked when made: a ``ValueError`` whose message starts with the field's
    name (the CLI words it as a flag)."""
    uri: str
    layers: Tuple[str, ...] = ()          # Keras layer names; () = model output
    signature: str = "serving_default"    # SavedModel only
    outputs: Tuple[str, ...] = ()         # SavedModel output keys; () = the only/first one
    pixel_scale: str = "raw"
    image_size: Tuple[int, ...] = ()      # (height, width) for models that accept any size
    pool: str = ""                        # "", or one of POOLS for feature-map outputs
    batch_size: int = 0                   # rows of every model call; 0: auto_batch_size

    def __post_init__(self):
        for name in ("layers", "outputs", "image_size"):   # lists from callers, hashable here
            object.__setattr__(self, name, tuple(getattr(self, name) or ()))
        object.__setattr__(self, "pool", self.pool or "")
        if self.batch_size is None or self.batch_size < 0:
            raise ValueError(f"batch_size must be at least 1 (or 0: sized from the model's "
                             f"input), got {self.batch_size}")
        if self.pixel_scale not in PIXEL_SCALES:
            raise ValueError(f"pixel_scale must be one of {', '.join(PIXEL_SCALES)}, "
                             f"got {self.pixel_scale!r}")
        if self.pool and self.pool not in POOLS:
            raise ValueError(f"pool must be one of {', '.join(POOLS)}, got {self.pool!r}")

    def replace(self, **changes) -> "ModelSpec":
        return dataclasses.replace(self, **changes)


def resolve_input_shape(shape, image_size, what: str) -> Tuple[int, int, int]:
    """A fixed (height, width, channels); ``image_size`` fills the height and
    width a model leaves open (common for SavedModels exported from TF Hub)."""
    if len(shape) != 3:
        raise ModelError(f"{what} has shape {shape}; expected a (height, width, channels) image")
    h, w, c = shape
    if image_size:
        ih, iw = image_size
        if (h is not None and h != ih) or (w is not None and w != iw):
            raise ModelError(f"{what} takes {h}x{w} images; --image_size {ih}x{iw} does not match")
        h, w = ih, iw
    if h is None or w is None:
        raise ModelError(f"{what} accepts any image size ({h}x{w}); "
                         "set --image_size HEIGHTxWIDTH to the size it was trained on")
    if c is not None and c not in CHANNELS:
        raise ModelError(f"{what} takes {c}-channel images; beam-projector feeds RGB "
                         "(3 channels) or grayscale (1): wrap the model so that it takes one "
                         "of those")
    return int(h), int(w), int(c) if c is not None else 3


def _shape_text(shape) -> str:
    return "(" + ", ".join("batch" if i == 0 else str(d) for i, d in enumerate(shape)) + ")"


def embedding_width(name: str, shape, pool: str = "") -> Optional[int]:
    """D of an output of static ``shape`` (batch first) once ``pool`` is applied;
    None when unknown. Raises ModelError for a feature map without --pool
    (flattening it silently gives 10^4 to 10^6 dimensions: gigabytes at the
    default N, and a projector of pixel positions) and for fewer than 2
    dimensions (the projector's PCA and t-SNE need 2)."""
    if shape is None or (hasattr(shape, "rank") and shape.rank is None):
        return None
    shape = tuple(None if d is None else int(d) for d in shape)
    if len(shape) > 2:
        if not pool:
            raise ModelError(f"embedding {name!r} has shape {_shape_text(shape)}, a feature map, "
                             "not one vector per image (batch, D): set --pool avg, max or "
                             "flatten to reduce it, or pick a later layer")
        if pool == "flatten":
            rest = shape[1:]
            width = None if None in rest else int(np.prod(rest))
        else:
            width = shape[-1]
    else:
        width = shape[1] if len(shape) == 2 else 1
    if width is not None and width < 2:
        raise ModelError(f"embedding {name!r} has shape {_shape_text(shape)}: {width} dimension; "
                         "the projector needs at least 2 (PCA, t-SNE and UMAP place points "
                         "in 2-D or 3-D), so pick a wider layer")
    return width


def pool_features(arr: np.ndarray, pool: str = "") -> np.ndarray:
    """A (B, ...) output -> (B, D) float32: (B, D) as is, (B,) as one column,
    feature maps reduced by ``pool`` (flattened when none: only outputs of
    unknown rank get here without one, embedding_width refused the others)."""
    arr = np.asarray(arr, dtype=np.float32)
    if arr.ndim <= 2:
        return arr.reshape(arr.shape[0], -1)
    axes = tuple(range(1, arr.ndim - 1))
    if pool == "avg":
        return arr.mean(axis=axes)
    if pool == "max":
        return arr.max(axis=axes)
    return arr.reshape(arr.shape[0], -1)


def scale_pixels(batch: np.ndarray, pixel_scale: str) -> np.ndarray:
    """uint8 pixels -> float32 in the range the model was trained on."""
    x = batch.astype(np.float32)
    if pixel_scale == "raw":
        return x
    if pixel_scale == "unit":
        return x / 255.0
    if pixel_scale == "symmetric":
        return x / 127.5 - 1.0
    raise ValueError(f"unknown pixel scale {pixel_scale!r}; expected one of {PIXEL_SCALES}")


def localize(uri: str) -> str:
    """Copy a remote model (file or SavedModel folder) to a local temp path.

    Keras and ``tf.saved_model.load`` read only local files reliably; going
    through FileSystems keeps gs:// and any registered scheme working.
    """
    if is_local(uri):
        return local_path(uri)
    dest_root = tempfile.mkdtemp(prefix="beam-projector-model-")
    base = uri.rstrip("/").rsplit("/", 1)[-1]
    if uri.endswith(KERAS_SUFFIXES):
        dest = os.path.join(dest_root, base)
        with FileSystems.open(uri, compression_type="uncompressed") as src, open(dest, "wb") as out:
            shutil.copyfileobj(src, out)
        return dest
    prefix = uri.rstrip("/") + "/"
    matches = FileSystems.match([prefix + "**"])[0].metadata_list
    if not matches:
        raise ModelError(f"model {uri} not found; expected {ACCEPTED}")
    dest = os.path.join(dest_root, base)
    for m in matches:
        rel = m.path[len(prefix):]
        target = os.path.join(dest, rel)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        with FileSystems.open(m.path, compression_type="uncompressed") as src, open(target, "wb") as out:
            shutil.copyfileobj(src, out)
    return dest


class EmbeddingModel:
    """A loaded model that maps uint8 images to embedding matrices.

    Every call of the model function gets exactly ``batch_size`` rows: the
    function is traced for that one shape, and ``embed`` cuts any number of
    images into such calls, zero-padding the last one. CPU kernels round
    differently for different batch shapes (a Dense layer's vectors move by
    ~1e-7 between batch 1 and 7 here), so an image's vector would otherwise
    depend on which others shared its bundle, and differ between runners.
    At one shape it is bitwise the same whatever its position or companions;
    a fixed shape also lets the graph optimiser specialise (BENCHMARKS.md).
    """

    def __init__(self, fn, input_size: Tuple[int, int, int], names: List[str],
                 pixel_scale: str, layer_names: Sequence[str] = (), pool: str = "",
                 frozen: bool = False, batch_size: int = 1):
        self._fn = fn                     # (batch_size, H, W, C) array -> list of outputs
        self.frozen = frozen              # variables baked in as constants (see ``freeze``)
        self.pool = pool                  # how feature-map outputs become vectors
        self.input_size = input_size      # (height, width, channels)
        self.names = names                # one tensor name per embedding
        self.pixel_scale = pixel_scale
        self.layer_names = list(layer_names)
        self.batch_size = batch_size      # rows of every model call

    def embed(self, pixels: np.ndarray) -> List[np.ndarray]:
        """(B, H, W, 3) uint8, any B -> one float32 (B, D_i) matrix per embedding."""
        pixels = np.asarray(pixels)
        b = self.batch_size
        parts = []
        for start in range(0, max(len(pixels), 1), b):
            chunk = pixels[start:start + b]
            rows = len(chunk)
            if rows < b:
                chunk = np.concatenate(
                    [chunk, np.zeros((b - rows,) + chunk.shape[1:], chunk.dtype)])
            x = scale_pixels(chunk, self.pixel_scale)
            if self.input_size[2] == 1:
                x = x.mean(axis=-1, keepdims=True)
            parts.append([pool_features(out, self.pool)[:rows] for out in self._fn(x)])
        if len(parts) == 1:
            return parts[0]
        return [np.concatenate(mats) for mats in zip(*parts)]


_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


def keras_file_problem(path: str) -> Optional[str]:
    """Why the local file at ``path`` cannot be a Keras model, or None.

    Keras answers a corrupt or truncated ``.keras`` file with "File not found",
    which sends the user looking for a file that is right there. A ``.keras``
    file is a zip archive; an ``.h5`` file starts with the HDF5 signature (at
    0, or after a user block of 512, 1024, 2048... bytes)."""
    if path.endswith(".keras"):
        import zipfile
        if not zipfile.is_zipfile(path):
            return ("the file is not a zip archive, so not a .keras model "
                    "(corrupt, truncated, or another format)")
        return None
    with open(path, "rb") as f:
        head = f.read(8)
        offsets = [0] + [512 << i for i in range(8)]
        for offset in offsets:
            f.seek(offset)
            if f.read(8) == _HDF5_SIGNATURE:
                return None
    if head.startswith(b"PK"):
        return "the file is a zip archive (a .keras model?), not HDF5: name it .keras"
    return "the file has no HDF5 signature, so not an .h5 model (corrupt, truncated, or another format)"


# Keras nests one "could not be deserialized ... config={...}" dump per level
# of the model (2 KB for a Lambda inside a Functional); the cause is the
# innermost "Exception encountered:" message.
_MISSING_OBJECT = re.compile(r"Could not locate (function|class) '([^']+)'")
_LAMBDA_LAYER = re.compile(r"'class_name': 'Lambda', 'config': \{'name': '([^']+)'")
_CONFIG_DUMP = re.compile(r"\s*(?:config=|Full object config:)")


def keras_load_reason(e: BaseException) -> str:
    """Why Keras could not load a model file, in one bounded line: the
    innermost cause without the config dumps, and for a function or class
    the file names but this process lacks (a Lambda over a def, an
    unregistered custom layer) what to do about it."""
    text = str(e)
    missing = _MISSING_OBJECT.search(text)
    if missing:
        kind, name = missing.groups()
        lam = _LAMBDA_LAYER.search(text) if kind == "function" else None
        what = (f"its Lambda layer {lam.group(1)!r} calls the Python function {name!r}"
                if lam else f"it uses the Python {kind} {name!r}")
        return capped(f"{what}, which a .keras file stores by name only, so only a process "
                      "that defines it (registered with "
                      "@keras.saving.register_keras_serializable()) can load the model; rebuild "
                      "it without that (e.g. keras.layers.Rescaling instead of a Lambda that "
                      "scales) and save it again", 500)
    inner = _CONFIG_DUMP.split(text.rsplit("Exception encountered: ", 1)[-1], maxsplit=1)[0]
    return capped(f"{type(e).__name__}: {' '.join(inner.split())}") + f"; expected {ACCEPTED}"


def _keras_model(path: str, spec: ModelSpec) -> EmbeddingModel:
    import keras
    import tensorflow as tf

    problem = keras_file_problem(path)
    if problem:
        raise ModelError(f"cannot load model {spec.uri}: {problem}; expected {ACCEPTED}")
    try:
        model = keras.saving.load_model(path, compile=False)
    except Exception as e:  # noqa: BLE001 - report any load failure the same way
        raise ModelError(f"cannot load model {spec.uri}: {keras_load_reason(e)}") from None
    if len(model.inputs) != 1:
        raise ModelError(f"model {spec.uri} takes {len(model.inputs)} inputs "
                         f"({', '.join(repr(i.name) for i in model.inputs)}); an image "
                         "embedding model takes one image")
    layer_names = [layer.name for layer in model.layers]
    if spec.layers:
        unknown = [n for n in spec.layers if n not in layer_names]
        if unknown:
            raise ModelError(f"unknown embedding layer {', '.join(unknown)}; "
                             f"the model's layers are: {', '.join(layer_names)}")
        outputs = [model.get_layer(n).output for n in spec.layers]
        names = list(spec.layers)
    else:
        outputs = list(model.outputs)
        names = [model.layers[-1].name] if len(outputs) == 1 else [o.name for o in outputs]
    for name, out in zip(names, outputs):
        embedding_width(name, tuple(out.shape), spec.pool)
    sub = keras.Model(model.inputs, outputs)
    shape = resolve_input_shape(tuple(model.inputs[0].shape[1:]), spec.image_size,
                                f"model input {model.inputs[0].shape}")

    batch = spec.batch_size or auto_batch_size(shape)

    # A traced function avoids Keras' per-call Python dispatch; traced for
    # one batch shape (see EmbeddingModel).
    @tf.function(input_signature=[tf.TensorSpec((batch,) + shape, tf.float32)])
    def call(x):
        out = sub(x, training=False)
        return out if isinstance(out, (list, tuple)) else [out]

    concrete = call.get_concrete_function()
    frozen = freeze(concrete, (batch,) + shape, tf.float32, spec.uri)
    if frozen is not None:
        del call, concrete, sub, model   # the frozen graph holds its own copy of the weights
        release_free_memory()
        run = positional(frozen)
    else:
        run = concrete
    return EmbeddingModel(lambda x: [o.numpy() for o in run(tf.constant(x))],
                          shape, names, spec.pixel_scale, layer_names, spec.pool,
                          frozen=frozen is not None, batch_size=batch)


def freeze(concrete, batch_shape, dtype, uri: str = ""):
    """``concrete`` (a ConcreteFunction of one image batch of ``batch_shape``,
    returning a list) with its variables baked in as constants, or None when
    its weights are large (``FREEZE_MAX_WEIGHT_BYTES``), it cannot be frozen
    (say, a lookup table) or the frozen function does not give the same
    vectors. Both take the batch by position and return a flat list.

    Why: TensorFlow's graph optimiser only folds what it knows is constant.
    Frozen, each batch normalisation folds into the convolution before it,
    and convolution, bias and activation run as one oneDNN kernel; read
    from variables they stay separate passes over the activations. On
    MobileNetV2 at 6 images a call that is about 1.37 x the images a second,
    vectors within 3e-7 (relative) of the unfrozen model's (docs/benchmarks-history.md,
    "Throughput, fifth pass"). TensorFlow 2 exposes the converter only under
    ``tensorflow.python`` (its TFLite converter uses the same function).

    One probe batch goes through both functions: it checks the frozen one
    and makes TensorFlow optimise it now, so that the optimiser's scratch
    memory is freed (``release_free_memory``) before the model's peak.
    """
    import tensorflow as tf
    try:
        weight_bytes = sum(int(np.prod(v.shape)) * v.dtype.size for v in concrete.variables)
        if weight_bytes > FREEZE_MAX_WEIGHT_BYTES:
            LOG.info("model %s runs unfrozen: %d MB of weights (frozen: several copies)",
                     uri, weight_bytes >> 20)
            return None
        from tensorflow.python.framework.convert_to_constants import (
            convert_variables_to_constants_v2,
        )
        frozen = convert_variables_to_constants_v2(concrete)
        probe = np.random.default_rng(0).integers(0, 256, tuple(batch_shape))
        probe = tf.constant(probe.astype(tf.as_dtype(dtype).as_numpy_dtype))
        want = tf.nest.flatten(concrete(probe))
        got = frozen(probe)
        if len(got) != len(want):
            raise ValueError(f"{len(got)} outputs instead of {len(want)}")
        for g, w in zip(got, want):
            g, w = np.asarray(g, np.float64), np.asarray(w, np.float64)
            if g.shape != w.shape or not np.allclose(g, w, rtol=FROZEN_RTOL,
                                                     atol=FROZEN_RTOL * np.abs(w).max()):
                raise ValueError("its outputs differ from the model's")
        return frozen
    except Exception as e:  # noqa: BLE001 - any failure: run the model as loaded
        LOG.info("model %s runs unfrozen (%s: %s)", uri, type(e).__name__, e)
        return None
    finally:
        release_free_memory()


def positional(frozen):
    """``frozen(batch)`` without TensorFlow's failed bind on every call.

    A frozen function (the converter's WrappedFunction) declares no
    positional parameters, so a call by position first fails to bind,
    formats the whole input batch into a TypeError it then swallows, and
    only then takes the flat path: 2.5 ms of a 37 ms call on MobileNetV2 at
    6 images. Calling the flat path directly gives the same bits (tested);
    TensorFlow has no public name for it, so where it is missing this is
    the public call.
    """
    flat = getattr(frozen, "_call_flat", None)
    captured = getattr(frozen, "captured_inputs", None)
    if flat is None or captured is None:
        return frozen
    return lambda tensor: flat([tensor], captured)


def _saved_model(path: str, spec: ModelSpec) -> EmbeddingModel:
    import tensorflow as tf

    try:
        loaded = tf.saved_model.load(path)
    except Exception as e:  # noqa: BLE001
        raise ModelError(f"cannot load SavedModel {spec.uri}: {type(e).__name__}: {e}; "
                         f"expected {ACCEPTED}") from None
    if spec.signature not in loaded.signatures:
        raise ModelError(f"SavedModel {spec.uri} has no signature {spec.signature!r}; "
                         f"it has: {', '.join(loaded.signatures) or 'none'}")
    fn = loaded.signatures[spec.signature]
    _, kwargs = fn.structured_input_signature
    if len(kwargs) != 1:
        raise ModelError(f"signature {spec.signature!r} takes {len(kwargs)} inputs "
                         f"({', '.join(kwargs)}); an image model takes one")
    input_name, input_spec = next(iter(kwargs.items()))
    shape = resolve_input_shape(tuple(input_spec.shape[1:]), spec.image_size,
                                f"SavedModel input {input_name} {input_spec.shape}")
    out_keys = sorted(fn.structured_outputs)
    wanted = list(spec.outputs or spec.layers) or out_keys[:1]
    unknown = [k for k in wanted if k not in out_keys]
    if unknown:
        raise ModelError(f"unknown embedding output {', '.join(unknown)}; signature "
                         f"{spec.signature!r} outputs: {', '.join(out_keys)}")

    for k in wanted:
        embedding_width(k, getattr(fn.structured_outputs[k], "shape", None), spec.pool)

    batch = spec.batch_size or auto_batch_size(shape)

    # The signature takes any batch; this traces it for one batch shape (see
    # EmbeddingModel) and returns the wanted outputs as a list, in order.
    @tf.function(input_signature=[tf.TensorSpec((batch,) + shape, input_spec.dtype)])
    def call(x):
        out = fn(**{input_name: x})
        return [out[k] for k in wanted]

    concrete = call.get_concrete_function()
    frozen = freeze(concrete, (batch,) + shape, input_spec.dtype, spec.uri)
    if frozen is not None:
        del call, concrete, loaded, fn
        release_free_memory()
        run = positional(frozen)
    else:
        run = concrete
    model = EmbeddingModel(
        lambda x: [o.numpy() for o in run(tf.constant(x, dtype=input_spec.dtype))],
        shape, wanted, spec.pixel_scale, out_keys, spec.pool, frozen=frozen is not None,
        batch_size=batch)
    if frozen is None:
        model._keepalive = loaded  # the signature needs its object graph alive
    return model


class ModelInfo(NamedTuple):
    """What the graph needs to know of a loaded model, learnt at run time."""
    input_size: Tuple[int, int]     # (height, width) images are resized to
    names: Tuple[str, ...]          # one tensor name per embedding
    batch_size: int                 # rows of every model call


def describe_model(spec: "ModelSpec") -> ModelInfo:
    """Load ``spec`` (once per process, ``shared_embedding_model``) and say
    what the graph needs of it. Raises ModelError naming what to fix."""
    model = shared_embedding_model(spec)
    return ModelInfo(tuple(model.input_size[:2]), tuple(model.names), model.batch_size)


def _keras_config_input_size(config: dict) -> Optional[Tuple[int, int]]:
    """(height, width) of the first InputLayer of a Keras 3 model config."""
    layers = (config.get("config") or {}).get("layers") or []
    for layer in layers:
        shape = (layer.get("config") or {}).get("batch_shape")
        if layer.get("class_name") == "InputLayer" and shape and len(shape) == 4:
            return shape[1], shape[2]
    build = (config.get("build_config") or {}).get("input_shape")   # a Sequential model
    return (build[1], build[2]) if build and len(build) == 4 else None


def _varint(data: bytes, i: int) -> Tuple[int, int]:
    shift = value = 0
    while True:
        byte = data[i]
        i += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, i
        shift += 7


def _saved_model_input_size(data: bytes, signature: str) -> Optional[Tuple[int, int]]:
    """(height, width) of a signature's one input, read from saved_model.pb.

    Why by hand: the SavedModel message is two fields (a version and the
    MetaGraphDefs); TensorBoard ships the MetaGraphDef proto, but not the
    SavedModel one, and TensorFlow's import alone costs seconds."""
    from tensorboard.compat.proto import meta_graph_pb2

    i = 0
    while i < len(data):
        tag, i = _varint(data, i)
        field, wire = tag >> 3, tag & 7
        if wire == 0:
            _, i = _varint(data, i)
            continue
        if wire != 2:
            return None
        length, i = _varint(data, i)
        if field == 2:
            graph = meta_graph_pb2.MetaGraphDef.FromString(data[i:i + length])
            inputs = graph.signature_def[signature].inputs if signature in graph.signature_def else {}
            if len(inputs) == 1:
                dims = [d.size for d in next(iter(inputs.values())).tensor_shape.dim]
                if len(dims) == 4:
                    return dims[1], dims[2]
        i += length
    return None


def peek_input_size(spec: "ModelSpec") -> Optional[Tuple[int, int]]:
    """The model's (height, width) read from its files without loading it, or
    None when they do not say (then the model says so when it loads).

    Lets a graph be built without the model: the batch size RunInference
    batches to must be known then, and it depends on the input size
    (``auto_batch_size``). A .keras file is a zip holding config.json; an
    .h5 file keeps the same JSON in an attribute; a SavedModel's signature
    is in saved_model.pb."""
    import json

    uri = spec.uri.rstrip("/")
    size = None
    try:
        if uri.endswith(".keras"):
            import zipfile
            with FileSystems.open(uri, compression_type="uncompressed") as f:
                with zipfile.ZipFile(f) as z:
                    size = _keras_config_input_size(json.loads(z.read("config.json")))
        elif uri.endswith(KERAS_SUFFIXES):
            import h5py
            with FileSystems.open(uri, compression_type="uncompressed") as f:
                with h5py.File(f, "r") as h5:
                    raw = h5.attrs.get("model_config")
                    size = _keras_config_input_size(json.loads(raw)) if raw else None
        else:
            with FileSystems.open(uri + "/saved_model.pb",
                                  compression_type="uncompressed") as f:
                size = _saved_model_input_size(f.read(), spec.signature)
    except Exception:  # noqa: BLE001 - unreadable here: the load will say why
        return None
    if spec.image_size:
        return tuple(spec.image_size)
    if size is None or None in size or min(s for s in size) < 1:
        return None
    return int(size[0]), int(size[1])


def with_batch_size(spec: "ModelSpec") -> "ModelSpec":
    """``spec`` with a concrete ``batch_size``: as given, else sized from the
    input size its files state (``peek_input_size``), else FALLBACK_BATCH.
    The workers trace exactly that batch, which RunInference batches to."""
    if spec.batch_size:
        return spec
    size = peek_input_size(spec)
    return spec.replace(batch_size=auto_batch_size(size) if size else FALLBACK_BATCH)


def load_embedding_model(spec: ModelSpec) -> EmbeddingModel:
    """Load ``spec.uri`` (local or any FileSystems scheme) for embedding."""
    uri = spec.uri
    if uri.rstrip("/").endswith(KERAS_SUFFIXES):
        if not FileSystems.exists(uri):
            raise ModelError(f"model file {uri} does not exist; expected {ACCEPTED}")
        return _keras_model(localize(uri), spec)
    if FileSystems.exists(uri.rstrip("/") + "/saved_model.pb"):
        return _saved_model(localize(uri.rstrip("/")), spec)
    if not FileSystems.exists(uri):
        raise ModelError(f"model {uri} does not exist; expected {ACCEPTED}")
    raise ModelError(f"cannot load model {uri}: not a .keras/.h5 file and no "
                     f"saved_model.pb inside; expected {ACCEPTED}")


# Kept on purpose, beside RunInference's own ``Shared`` (which already holds
# one model per worker process): the launcher loads the model once to check
# it (``transforms.checks.check_model``), outside any Beam transform, so
# Beam's sharing cannot hand that load to the workers. With the in-process
# runner (the default local run) the workers are this same process, and this
# cache lets them reuse the launcher's load. Measured (2 cores, MobileNetV2
# 224x224 .keras cut at its pooled layer): a second load takes 3.1 s, the
# cached one 0.2 ms; the tiny test CNN: 0.11 s. On remote workers it holds
# the one model that process loaded, nothing more.
_LOADED = {}


_LOADED_LOCK = threading.Lock()


def _fingerprint(uri: str):
    """(size, mtime) of the model file, or of saved_model.pb for a folder."""
    probe = uri if uri.rstrip("/").endswith(KERAS_SUFFIXES) else uri.rstrip("/") + "/saved_model.pb"
    try:
        meta = FileSystems.match([probe])[0].metadata_list[0]
        return meta.size_in_bytes, getattr(meta, "last_updated_in_seconds", None)
    except Exception:  # noqa: BLE001 - unknown: never reuse
        return None


def shared_embedding_model(spec: ModelSpec) -> EmbeddingModel:
    """``load_embedding_model`` once per process and model file version.

    The launcher loads the model to check it; with the in-process runner the
    worker is the same process, so it reuses that load instead of paying for
    a second one (seconds for an ImageNet-sized model). The key is the spec
    with its batch size resolved as the workers resolve it, so a launcher's
    ``batch_size=0`` and the worker's concrete size share one load.
    """
    spec = with_batch_size(spec)
    key = (spec, _fingerprint(spec.uri))
    if key[1] is None:
        return load_embedding_model(spec)
    with _LOADED_LOCK:
        if key not in _LOADED:
            _LOADED.clear()  # hold at most one model: they can be large
            _LOADED[key] = load_embedding_model(spec)
        return _LOADED[key]
