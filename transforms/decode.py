"""Read and decode each sampled image exactly once.

One Pillow decode yields both the model input and the sprite thumbnail, so a
large JPEG is never read or decoded twice. Everything that can go wrong with
one image becomes a dead-letter row, never an exception that kills the job.
"""
import io
import os
import struct
from concurrent.futures import ThreadPoolExecutor
from typing import Tuple

import apache_beam as beam
import numpy as np
from apache_beam.io.filesystems import FileSystems
from PIL import Image, ImageFile, ImageOps

from transforms.items import DecodedImage, ErrorRow, ImageRef, Thumbnail
from transforms.projector import fit_within

ERRORS_TAG = "errors"
RESIZE_MODES = ("pad", "crop", "stretch")
# Pillow's own guard (about 179M pixels raises) stays on; we turn its warning
# band (Image.MAX_IMAGE_PIXELS, 89M, to 179M) into an error too (see _open):
# such an image is almost always a bomb or a scan that would stall a worker,
# and a thumbnail gains nothing from it. MAX_IMAGE_PIXELS keeps its default.
ImageFile.LOAD_TRUNCATED_IMAGES = False


class ImageError(ValueError):
    """One image cannot be used; the message is the dead-letter reason."""


def _to_rgb(img: Image.Image) -> Image.Image:
    """Any Pillow mode to 8-bit RGB; transparency composited over white."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.nan_to_num(np.asarray(img, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
        hi = 65535.0 if img.mode.startswith("I;16") or arr.max(initial=0) > 255 else 255.0
        arr = np.clip(arr / hi * 255.0 + 0.5, 0, 255).astype(np.uint8)
        img = Image.fromarray(arr)  # 2-D uint8 -> mode L
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB") if img.mode != "RGB" else img


def resize_for_model(img: Image.Image, size: Tuple[int, int], mode: str = "pad") -> np.ndarray:
    """RGB image -> uint8 array of ``size`` (height, width).

    ``pad`` matches ``tf.image.resize_with_pad`` (fit, centre, black border);
    ``crop`` fills then centre-crops; ``stretch`` ignores the aspect ratio.
    """
    height, width = size
    if mode == "stretch":
        out = img.resize((width, height), Image.BILINEAR)
    elif mode == "crop":
        out = ImageOps.fit(img, (width, height), Image.BILINEAR)
    elif mode == "pad":
        scale = min(width / img.width, height / img.height)
        w = max(1, min(width, round(img.width * scale)))
        h = max(1, min(height, round(img.height * scale)))
        out = Image.new("RGB", (width, height), (0, 0, 0))
        out.paste(img.resize((w, h), Image.BILINEAR), ((width - w) // 2, (height - h) // 2))
    else:
        raise ValueError(f"unknown resize mode {mode!r}; expected one of {RESIZE_MODES}")
    return np.asarray(out, dtype=np.uint8)


def _open(data: bytes) -> Image.Image:
    """Identify the image; Pillow's exceptions mapped to one-line reasons.

    No ``warnings.catch_warnings`` here: it swaps process-global state and
    Beam runs bundles on several threads, so the outcome would depend on
    timing. The pixel limit is checked explicitly instead.
    """
    try:
        img = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as e:
        raise ImageError(f"decompression bomb: {e}") from None
    except Image.UnidentifiedImageError:
        why = _signature_failures(data)
        if why:
            raise ImageError(_printable("unsupported or corrupt image: " + "; ".join(why))) from None
        raise ImageError("not an image Pillow can identify") from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        raise ImageError(_printable(f"corrupt or truncated image: {e}")) from None
    pixels = img.width * img.height
    if Image.MAX_IMAGE_PIXELS and pixels > Image.MAX_IMAGE_PIXELS:
        raise ImageError(f"decompression bomb: {img.width}x{img.height} = {pixels} pixels "
                         f"exceeds Pillow's limit of {Image.MAX_IMAGE_PIXELS}")
    return img


def _signature_failures(data: bytes) -> list:
    """Why each format whose signature matches ``data`` refused it.

    Pillow's ``Image.open`` only says "cannot identify image file"; its own
    per-format diagnostics (``WARN_POSSIBLE_FORMATS``) arrive as warnings,
    which cannot be captured thread-safely. Formats without a signature
    check are skipped: they are tried on every file and only add noise.
    """
    Image.init()
    prefix = data[:16]
    out = []
    for fmt in Image.ID:
        factory, accept = Image.OPEN[fmt]
        matched = accept(prefix) if accept is not None else False
        if not matched or isinstance(matched, str):   # a str is "plugin missing"
            continue
        try:
            factory(io.BytesIO(data), "")
        except Exception as e:  # noqa: BLE001 - collecting the reason is the point
            out.append(f"{fmt}: {e}")
    return out


def _printable(text: str, limit: int = 300) -> str:
    """Reasons go into a TSV and a log line: no control bytes, bounded length."""
    text = "".join(c if c.isprintable() else "?" for c in text)
    return text if len(text) <= limit else text[:limit - 3] + "..."


# Pillow joins a GIF's extension data blocks (comments above all) one by one
# before the first frame, in time quadratic in their count: 100,000 one-byte
# blocks (200 KB) take about a second, 2 million (4 MB) minutes. A real GIF
# has a handful (an XMP packet: about one per 100 bytes of XMP).
MAX_GIF_EXTENSION_BLOCKS = 16_384


def check_structure(data: bytes) -> None:
    """Refuse (ImageError) a file whose structure would make Pillow's parser
    spend unbounded CPU before any pixel: one file must not stall a worker
    (a decode thread cannot be interrupted, so the limit is structural, not a
    timer). Cheap: walks only the blocks before the first GIF frame, and at
    most MAX_GIF_EXTENSION_BLOCKS of them."""
    if data[:6] not in (b"GIF87a", b"GIF89a") or len(data) < 13:
        return
    flags = data[10]
    pos = 13 + (3 * 2 ** ((flags & 7) + 1) if flags & 0x80 else 0)
    blocks, end = 0, len(data)
    while pos < end and data[pos] == 0x21:    # an extension; 0x2C is the first frame
        pos += 2                              # introducer and label
        while pos < end:
            size = data[pos]
            pos += 1 + size
            if not size:
                break
            blocks += 1
            if blocks > MAX_GIF_EXTENSION_BLOCKS:
                raise ImageError(f"GIF has more than {MAX_GIF_EXTENSION_BLOCKS} extension "
                                 "data blocks (comments) before its first frame; refused "
                                 "because parsing them would stall a worker")


def decode_image(data: bytes, model_size: Tuple[int, int], tile: int,
                 resize_mode: str = "pad") -> Tuple[np.ndarray, Thumbnail]:
    """Encoded bytes -> (model input uint8 HxWx3, thumbnail). Raises ImageError.

    Animated images (GIF, WebP, multi-page TIFF) use their first frame; EXIF
    orientation is applied, so the thumbnail is drawn upright.
    """
    if not data:
        raise ImageError("empty file (0 bytes)")
    check_structure(data)
    img = _open(data)
    fmt = img.format or "image"
    try:
        # JPEG DCT scaling: decode at the smallest power-of-two reduction
        # that still covers what we need; several times less work for
        # photos far larger than the model input.
        need = max(max(model_size), tile)
        if img.format == "JPEG" and img.width and img.height:
            if resize_mode == "pad":
                # fitting needs only the long side to cover ``need``
                long_side = max(img.width, img.height)
                need_wh = (-(-need * img.width // long_side), -(-need * img.height // long_side))
            else:
                need_wh = (need, need)
            img.draft("RGB", need_wh)
        img.load()
    except Image.DecompressionBombError as e:
        raise ImageError(f"decompression bomb: {e}") from None
    except (OSError, SyntaxError, ValueError, EOFError, struct.error, IndexError) as e:
        raise ImageError(_printable(f"corrupt or truncated {fmt} data: {e}")) from None
    mode = img.mode
    try:
        img = ImageOps.exif_transpose(img)
    except Exception:  # noqa: BLE001 - a broken EXIF block: keep the pixels as stored
        pass
    try:
        rgb = _to_rgb(img)
    except (OSError, ValueError) as e:
        raise ImageError(_printable(f"unsupported image mode {mode}: {e}")) from None
    if rgb.width < 1 or rgb.height < 1:
        raise ImageError(f"image has no pixels ({rgb.width}x{rgb.height})")
    pixels = resize_for_model(rgb, model_size, resize_mode)
    thumb = rgb.resize(fit_within(rgb.width, rgb.height, tile), Image.BILINEAR)
    return pixels, Thumbnail(thumb.width, thumb.height, thumb.tobytes())


def read_bytes(ref: str) -> bytes:
    """Whole file through FileSystems, so gs://, s3:// and local all work.
    Raises ImageError with a one-line reason when the file cannot be read."""
    try:
        with FileSystems.open(ref, compression_type="uncompressed") as f:
            return f.read()
    except FileNotFoundError:
        raise ImageError("file not found") from None
    except IsADirectoryError:
        raise ImageError("is a directory, not an image file") from None
    except PermissionError:
        raise ImageError("permission denied") from None
    except OSError as e:
        raise ImageError(f"cannot read file: {type(e).__name__}: {e}") from None


def _decode_one(item: ImageRef, model_size, tile, resize_mode):
    """DecodedImage or ErrorRow for one item; never raises."""
    stage = "read"
    try:
        data = item.content if item.content is not None else read_bytes(item.ref)
        stage = "decode"
        pixels, thumb = decode_image(data, model_size, tile, resize_mode)
    except Exception as e:  # noqa: BLE001 - any failure is this image's, not the job's
        reason = str(e) if isinstance(e, ImageError) else f"{type(e).__name__}: {e}"
        return ErrorRow(item.ref, stage, reason, item.key)
    return DecodedImage(item._replace(content=None), pixels, thumb)


class DecodeImagesFn(beam.DoFn):
    """A batch of ImageRefs -> DecodedImage each, or ErrorRow on ``errors``.

    Pillow releases the GIL while it reads, decodes and resizes, so a small
    thread pool decodes on every core even inside one SDK worker process
    (the in-process runner has just one). Counters are bumped on the DoFn's
    own thread: Beam's metrics context does not follow into pool threads.
    """

    def __init__(self, model_size: Tuple[int, int], tile: int, resize_mode: str = "pad",
                 threads: int = 0):
        self._model_size = tuple(model_size)
        self._tile = tile
        self._resize_mode = resize_mode
        self._threads = threads
        self._decoded = beam.metrics.Metrics.counter("projector", "decoded")
        self._failed = beam.metrics.Metrics.counter("projector", "failed_decode")
        self._pool = None

    def setup(self):
        self._pool = ThreadPoolExecutor(self._threads or os.cpu_count() or 1,
                                        thread_name_prefix="decode")

    def teardown(self):
        if self._pool is not None:
            self._pool.shutdown(wait=False)

    def process(self, batch):
        results = self._pool.map(
            lambda item: _decode_one(item, self._model_size, self._tile, self._resize_mode), batch)
        for result in results:
            if isinstance(result, ErrorRow):
                self._failed.inc()
                yield beam.pvalue.TaggedOutput(ERRORS_TAG, result)
            else:
                self._decoded.inc()
                yield result


class DecodeImages(beam.PTransform):
    """ImageRefs -> (decoded, errors), decoded in small batches on a thread pool."""

    def __init__(self, model_size, tile, resize_mode="pad", threads: int = 0):
        super().__init__()
        self._fn = DecodeImagesFn(model_size, tile, resize_mode, threads)

    def expand(self, items):
        out = (items
               | "Batch" >> beam.BatchElements(min_batch_size=8, max_batch_size=32)
               | "DecodeBatch" >> beam.ParDo(self._fn).with_outputs(ERRORS_TAG, main="decoded"))
        return out.decoded, out[ERRORS_TAG]
