"""Read and decode each sampled image exactly once.

One Pillow decode yields both the model input and the sprite thumbnail, so a
large JPEG is never read or decoded twice. Everything that can go wrong with
one image becomes a dead-letter row, never an exception that kills the job.
"""
import errno
import io
import os
import stat
import struct
from concurrent.futures import ThreadPoolExecutor
from typing import Optional, Tuple

import apache_beam as beam
import numpy as np
from apache_beam.io.filesystems import FileSystems
from apache_beam.io.localfilesystem import LocalFileSystem
from PIL import Image, ImageFile, ImageOps

from transforms.items import (DEFAULT_MAX_IMAGE_BYTES, DecodedImage, ErrorRow, ImageRef,
                              Thumbnail)
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


def decode_image(data: bytes, model_size: Tuple[int, int], tile: int,
                 resize_mode: str = "pad") -> Tuple[np.ndarray, Thumbnail]:
    """Encoded bytes -> (model input uint8 HxWx3, thumbnail). Raises ImageError.

    Animated images (GIF, WebP, multi-page TIFF) use their first frame; EXIF
    orientation is applied, so the thumbnail is drawn upright.
    """
    if not data:
        raise ImageError("empty file (0 bytes)")
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


# How a local path that is not a regular file is named in its errors.tsv row.
_SPECIAL_FILES = ((stat.S_ISCHR, "character device"), (stat.S_ISBLK, "block device"),
                  (stat.S_ISFIFO, "FIFO"), (stat.S_ISSOCK, "socket"))
_READ_CHUNK = 4 * 1024 * 1024


def _is_local(ref: str) -> bool:
    try:
        return isinstance(FileSystems.get_filesystem(ref), LocalFileSystem)
    except ValueError:   # unknown scheme: FileSystems.open says so below
        return False


def _size_before_open(ref: str) -> Optional[int]:
    """The size the file system reports, checked before anything is opened.

    Local paths are stat'ed (following symlinks): a character device
    (/dev/zero), FIFO (whose open would block), socket or symlink loop is
    refused here without ever being opened. Other file systems report their
    object size when they can; None when unknown.
    """
    if not _is_local(ref):
        try:
            return FileSystems.get_filesystem(ref).metadata(ref).size_in_bytes
        except Exception:  # noqa: BLE001 - unknown: the bounded read still protects
            return None
    try:
        st = os.stat(ref)
    except FileNotFoundError:
        raise ImageError("file not found") from None
    except PermissionError:
        raise ImageError("permission denied") from None
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise ImageError("symlink loop (too many levels of symbolic links)") from None
        raise ImageError(f"cannot read file: {type(e).__name__}: {e}") from None
    if stat.S_ISDIR(st.st_mode):
        raise ImageError("is a directory, not an image file")
    if not stat.S_ISREG(st.st_mode):
        kind = next((name for test, name in _SPECIAL_FILES if test(st.st_mode)), "special file")
        raise ImageError(f"not a regular file ({kind})")
    return st.st_size


def read_bytes(ref: str, max_bytes: int = DEFAULT_MAX_IMAGE_BYTES) -> bytes:
    """The file through FileSystems (gs://, s3://, local), at most ``max_bytes``.

    Raises ImageError with a one-line reason when the file cannot be read, is
    not a regular file, or is larger than ``max_bytes``: by the size the file
    system reports, and in any case the read stops at ``max_bytes`` + 1, so a
    source that lies about its size (or reports 0) cannot grow memory.
    """
    size = _size_before_open(ref)
    if size is not None and size > max_bytes:
        raise ImageError(f"file too large: {size} bytes > {max_bytes}")
    try:
        with FileSystems.open(ref, compression_type="uncompressed") as f:
            chunks, total = [], 0
            want = min(size if size is not None else _READ_CHUNK, max_bytes) + 1
            while total <= max_bytes:
                chunk = f.read(min(want, max_bytes + 1 - total))
                if not chunk:
                    break
                chunks.append(chunk)
                total += len(chunk)
                want = _READ_CHUNK
    except FileNotFoundError:
        raise ImageError("file not found") from None
    except IsADirectoryError:
        raise ImageError("is a directory, not an image file") from None
    except PermissionError:
        raise ImageError("permission denied") from None
    except OSError as e:
        raise ImageError(f"cannot read file: {type(e).__name__}: {e}") from None
    if total > max_bytes:
        raise ImageError(f"file too large: more than {max_bytes} bytes read > {max_bytes} "
                         f"(the file system reported {size if size is not None else 'no size'})")
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _decode_one(item: ImageRef, model_size, tile, resize_mode,
                max_bytes: int = DEFAULT_MAX_IMAGE_BYTES):
    """DecodedImage or ErrorRow for one item; never raises."""
    stage = "read"
    try:
        data = item.content if item.content is not None else read_bytes(item.ref, max_bytes)
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
                 threads: int = 0, max_bytes: int = DEFAULT_MAX_IMAGE_BYTES):
        self._max_bytes = max_bytes
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
            lambda item: _decode_one(item, self._model_size, self._tile, self._resize_mode,
                                     self._max_bytes), batch)
        for result in results:
            if isinstance(result, ErrorRow):
                self._failed.inc()
                yield beam.pvalue.TaggedOutput(ERRORS_TAG, result)
            else:
                self._decoded.inc()
                yield result


class DecodeImages(beam.PTransform):
    """ImageRefs -> (decoded, errors), decoded in small batches on a thread pool."""

    def __init__(self, model_size, tile, resize_mode="pad", threads: int = 0,
                 max_bytes: int = DEFAULT_MAX_IMAGE_BYTES):
        super().__init__()
        self._fn = DecodeImagesFn(model_size, tile, resize_mode, threads, max_bytes)

    def expand(self, items):
        out = (items
               | "Batch" >> beam.BatchElements(min_batch_size=8, max_batch_size=32)
               | "DecodeBatch" >> beam.ParDo(self._fn).with_outputs(ERRORS_TAG, main="decoded"))
        return out.decoded, out[ERRORS_TAG]
