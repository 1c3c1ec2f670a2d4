"""Decode the sampled images on a worker's cores: the Beam side of ``images``.

Each image the job uses is decoded once, by ``DecodeForModelFn``, fused with
the model call: one decode gives the model input and the sprite thumbnail,
and model-sized pixel arrays never sit in a materialised PCollection, so
memory stays flat in N and only small elements cross stage boundaries. The
sample's margin (the images beyond N, used only to refill failures) is
checked by ``CheckDecodes``, at thumbnail scale; a refill is then decoded
again for the model (BENCHMARKS.md). A failing image becomes a dead-letter
row, never an exception that kills the job.
"""
import collections
import os
import time
from concurrent.futures import ThreadPoolExecutor

import apache_beam as beam
from apache_beam.utils.windowed_value import WindowedValue

from beam_projector.transforms.elements import ElementError
from beam_projector.transforms.images import (
    ImageError,
    check_decodes,
    decode_image,
    read_bytes,
)
from beam_projector.transforms.records import (
    DEFAULT_MAX_IMAGE_BYTES,
    ERRORS_TAG,
    METRICS_NAMESPACE,
    ErrorRow,
    ImageRef,
    capped,
)
from beam_projector.transforms.timing import StageTimer, cpu_counter
from beam_projector.transforms.worker import quiet_if_asked, release_free_memory


def _check_one(item: ImageRef, tile: int, max_bytes: int = DEFAULT_MAX_IMAGE_BYTES):
    """(the ImageRef if it reads and decodes, else its ErrorRow; its thread
    CPU seconds); never raises."""
    started, stage = time.thread_time(), "read"
    try:
        data = item.content if item.content is not None else read_bytes(item.ref, max_bytes)
        stage = "decode"
        check_decodes(data, tile)
    except Exception as e:  # noqa: BLE001 - any failure is this image's, not the job's
        return ErrorRow(item.ref, stage, _reason(e), item.key), time.thread_time() - started
    return item, time.thread_time() - started


def _reason(e: Exception) -> str:
    """The errors.tsv reason of one image's failure: one bounded line (an
    OSError may quote a path of any length)."""
    return capped(str(e) if isinstance(e, (ImageError, ElementError))
                  else f"{type(e).__name__}: {e}")


class CheckDecodesFn(beam.DoFn):
    """A batch of ImageRefs -> each one that decodes, or its ErrorRow on ``errors``.

    Pillow releases the GIL while it reads and decodes, so a small thread
    pool decodes on every core even inside one SDK worker process (the
    in-process runner has just one). Counters are bumped on the DoFn's own
    thread: Beam's metrics context does not follow into pool threads.
    """

    def __init__(self, threads: int = 0, max_bytes: int = DEFAULT_MAX_IMAGE_BYTES):
        self._max_bytes = max_bytes
        self._threads = threads
        self._decoded = beam.metrics.Metrics.counter(METRICS_NAMESPACE, "decoded")
        self._failed = beam.metrics.Metrics.counter(METRICS_NAMESPACE, "failed_decode")
        self._cpu = cpu_counter("check")
        self._pool = None

    def setup(self):
        quiet_if_asked()
        self._pool = ThreadPoolExecutor(self._threads or os.cpu_count() or 1,
                                        thread_name_prefix="check-decodes")

    def teardown(self):
        if self._pool is not None:
            self._pool.shutdown(wait=False)

    def process(self, batch, tile):
        results = list(self._pool.map(lambda item: _check_one(item, tile, self._max_bytes),
                                      batch))
        self._cpu.inc(int(round(1000 * sum(cpu for _, cpu in results))))   # ms, per batch
        for result, _ in results:
            if isinstance(result, ErrorRow):
                self._failed.inc()
                yield beam.pvalue.TaggedOutput(ERRORS_TAG, result)
            else:
                self._decoded.inc()
                yield result


class CheckDecodes(beam.PTransform):
    """ImageRefs -> (the ones that decode, errors): the check made on the
    sample's margin, so a failure among the first N can be refilled from it.
    JPEGs decode at thumbnail scale (DCT scaling), a fraction of the model's
    decode. ``tile`` is an int or a PCollection holding one int.
    """

    def __init__(self, tile, threads: int = 0, max_bytes: int = DEFAULT_MAX_IMAGE_BYTES):
        super().__init__()
        self._tile = tile
        self._fn = CheckDecodesFn(threads, max_bytes)

    def expand(self, items):
        tile = as_side_input(self._tile)
        out = (items
               | "Batch" >> beam.BatchElements(min_batch_size=8, max_batch_size=32)
               | "Check" >> beam.ParDo(self._fn, tile).with_outputs(ERRORS_TAG, main="ok"))
        return out.ok, out[ERRORS_TAG]


def as_side_input(value):
    """A value as is; a PCollection of one value as a singleton side input."""
    return beam.pvalue.AsSingleton(value) if isinstance(value, beam.pvalue.PCollection) else value


def _decode_one(element, images, model_size, tile: int, resize_mode, refill: bool = False,
                max_bytes: int = DEFAULT_MAX_IMAGE_BYTES):
    """(element, (thumbnail, pixels) or ErrorRow, (CPU seconds, of which the
    thumbnail's)); never raises. ``images`` (``elements.RefImages`` or
    ``FieldImages``) says where the element's image is and how a failure is
    reported."""
    started, spent = time.thread_time(), []
    stage = "input"
    try:
        ref, content = images.source(element)
        stage = "read"
        data = content if content is not None else read_bytes(ref, max_bytes)
        stage = "decode"
        pixels, thumb = decode_image(data, model_size, tile, resize_mode, spent=spent)
        result = (thumb, pixels)
    except Exception as e:  # noqa: BLE001
        if refill:
            # The image decoded in CheckDecodes moments ago: the file changed
            # or vanished since. It was chosen for the model already, so it
            # is a failure of the embedding stage (counted, not refilled).
            result = images.error(element, "embed", "reading it again for the model "
                                  "failed: " + _reason(e))
        else:
            result = images.error(element, stage, _reason(e))
    return element, result, (time.thread_time() - started, sum(spent))


class DecodeForModelFn(beam.DoFn):
    """Element -> ((element, thumbnail), model input pixels), a block at a time.

    One decode gives the model input and the sprite thumbnail. Elements are
    decoded ``block`` at a time on a thread pool (Pillow releases the GIL,
    so every core decodes), then handed downstream, where the fused
    RunInference step calls the model on this thread. Decoding and the model
    take turns rather than overlap: on a machine the model already fills,
    decode threads running beside TensorFlow's stall its parallel ops
    (measured: about 30 % slower on MobileNetV2 with 2 cores). The pixels in
    flight are bounded by the block plus one batch, whatever N is; results
    come out in input order. A read or decode failure goes to ``errors``
    with stage read/decode (the caller refills it from the margin); with
    ``refill`` (margin images already checked, taking failed ones' places)
    as an embed failure. ``images`` reads an element's image
    (``elements.RefImages`` for ImageRefs, ``FieldImages`` for a user's
    dicts); the model's (height, width) and the tile come as arguments of
    ``process``, so either may be a side input known only at run time.
    """

    def __init__(self, images, resize_mode: str = "pad", block: int = 32, threads: int = 0,
                 max_bytes: int = DEFAULT_MAX_IMAGE_BYTES, refill: bool = False):
        self._images = images
        self._max_bytes = max_bytes
        self._resize_mode = resize_mode
        self._block = max(1, block)
        self._threads = threads
        self._refill = refill
        if refill:
            self._decoded = None
            self._failed = beam.metrics.Metrics.counter(METRICS_NAMESPACE, "failed_embed")
        else:
            self._decoded = beam.metrics.Metrics.counter(METRICS_NAMESPACE, "decoded")
            self._failed = beam.metrics.Metrics.counter(METRICS_NAMESPACE, "failed_decode")
        self._pool = None
        self._pending = None
        self._tile = None
        self._model_size = None
        self._timer = StageTimer("decode")
        self._thumbnail_cpu = cpu_counter("thumbnail")

    def setup(self):
        quiet_if_asked()
        release_free_memory()   # what earlier stages freed, before the model's peak
        self._pool = ThreadPoolExecutor(self._threads or os.cpu_count() or 1,
                                        thread_name_prefix="model-decode")

    def teardown(self):
        if self._pool is not None:
            self._pool.shutdown(wait=False)

    def start_bundle(self):
        self._pending = collections.deque()

    def process(self, element, tile, model_size, window=beam.DoFn.WindowParam,
                timestamp=beam.DoFn.TimestampParam):
        self._tile, self._model_size = tile, tuple(model_size)
        self._pending.append((element, window, timestamp))
        if len(self._pending) >= self._block:
            yield from self._flush(windowed=False)

    def finish_bundle(self):
        yield from self._flush(windowed=True)

    def _flush(self, windowed):
        block, self._pending = list(self._pending), collections.deque()
        futures = [self._pool.submit(_decode_one, element, self._images, self._model_size,
                                     self._tile, self._resize_mode, self._refill,
                                     self._max_bytes)
                   for element, _, _ in block]
        # The whole block is decoded before the first image goes on: emitting
        # as each future lands would let the fused model call run while the
        # pool still decodes the rest of the block, and that overlap is what
        # stalls TensorFlow (a batch smaller than the block hit it every turn).
        waited = time.perf_counter()
        done = [future.result() for future in futures]
        # the wall time this stage waited on the pool; the CPU the pool spent
        self._timer.add(sum(cpu for _, _, (cpu, _) in done), time.perf_counter() - waited)
        self._thumbnail_cpu.inc(int(round(1000 * sum(t for _, _, (_, t) in done))))
        for (element, result, _), (_, window, timestamp) in zip(done, block):
            yield from self._emit(element, result, window, timestamp, windowed)

    def _emit(self, element, result, window, timestamp, windowed):
        if isinstance(result, ErrorRow):
            self._failed.inc()
            value, tag = result, ERRORS_TAG
        else:
            if self._decoded is not None:
                self._decoded.inc()
            thumb, pixels = result
            value, tag = ((element, thumb), pixels), None
        if windowed:  # finish_bundle has no current element: say where it goes
            value = WindowedValue(value, timestamp, [window])
        yield beam.pvalue.TaggedOutput(tag, value) if tag else value
