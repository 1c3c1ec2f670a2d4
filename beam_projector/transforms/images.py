"""Read and decode one image: the pure part, no Beam.

One decode gives both the model input and the sprite thumbnail
(``decode_image``); the margin's check decodes at thumbnail scale
(``check_decodes``). Everything that can go wrong with one image raises
``ImageError`` whose message is the errors.tsv reason; reads stop at a byte
bound whatever the file system reports.
"""
import collections
import contextlib
import errno
import io
import os
import re
import stat
import struct
import threading
import time
from typing import Optional, Tuple

import numpy as np
from apache_beam.io.filesystems import FileSystems
from PIL import Image, ImageOps

from beam_projector.transforms.files import is_local
from beam_projector.transforms.projector import fit_within
from beam_projector.transforms.records import DEFAULT_MAX_IMAGE_BYTES, Thumbnail
from beam_projector.transforms.strips import (
    StripResize,
    bytes_per_pixel,
    display_size,
    display_strips,
    orientation,
    resize_in_strips,
    strip_rows,
)
from beam_projector.transforms.worker import release_free_memory

RESIZE_MODES = ("pad", "crop", "stretch")


class ImageError(ValueError):
    """One image cannot be used; the message is the dead-letter reason."""


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


def model_target(full: Tuple[int, int], size: Tuple[int, int], mode: str = "pad"):
    """What ``resize_for_model`` does to an image of ``full`` (width,
    height), for ``StripResize``: (resize size, source box or None, paste
    offset on the black canvas or None)."""
    width, height = full
    out_h, out_w = size
    if mode == "stretch":
        return (out_w, out_h), None, None
    if mode == "crop":   # ImageOps.fit's box: no bleed, centred
        if width / height == out_w / out_h:
            crop_w, crop_h = width, height
        elif width / height >= out_w / out_h:
            crop_w, crop_h = out_w / out_h * height, height
        else:
            crop_w, crop_h = width, width / (out_w / out_h)
        left, top = (width - crop_w) * 0.5, (height - crop_h) * 0.5
        return (out_w, out_h), (left, top, left + crop_w, top + crop_h), None
    if mode == "pad":
        scale = min(out_w / width, out_h / height)
        w = max(1, min(out_w, round(width * scale)))
        h = max(1, min(out_h, round(height * scale)))
        return (w, h), None, ((out_w - w) // 2, (out_h - h) // 2)
    raise ValueError(f"unknown resize mode {mode!r}; expected one of {RESIZE_MODES}")


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
        here = [w for w in why if w.startswith("unsupported here: ")]
        if here:
            raise ImageError(_printable(here[0])) from None
        if why:
            raise ImageError(_printable("unsupported or corrupt image: " + "; ".join(why))) from None
        raise ImageError("not an image Pillow can identify") from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        raise ImageError(_printable(missing_decoder_reason("image", e)
                                    or f"corrupt or truncated image: {e}")) from None
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
        if isinstance(matched, str):   # a str is "plugin missing": say so
            out.append(missing_decoder_reason(fmt, ValueError(matched)) or f"{fmt}: {matched}")
            continue
        if not matched:
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


# --- "unsupported here": the file may be fine, this machine lacks a decoder ---------
# Pillow hands some formats to an outside program (EPS/PS: Ghostscript) or an
# optional library compiled in or not (JPEG 2000: OpenJPEG, AVIF: libavif,
# WebP: libwebp, ...), and some plugins are stubs that need a handler the
# application registers (WMF/EMF off Windows, GRIB, BUFR, HDF5, FITS).
_PILLOW_CODEC_LIBS = {"jpeg2k": "OpenJPEG", "jpeg": "libjpeg", "zip": "zlib", "webp": "libwebp",
                      "avif": "libavif", "libtiff": "libtiff", "group4": "libtiff",
                      "tiff_ccitt": "libtiff", "tiff_lzw": "libtiff"}


_MISSING_CODEC = re.compile(r"decoder (\S+) not available")


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


def missing_decoder_reason(fmt: str, error: BaseException) -> Optional[str]:
    """``unsupported here: ...`` naming what this machine lacks to decode a
    ``fmt`` file, or None when ``error`` is not about a missing decoder."""
    text = str(error)
    if "Ghostscript" in text:
        return (f"unsupported here: {fmt} needs Ghostscript (the gs program), "
                "which is not installed on this machine")
    m = _MISSING_CODEC.search(text)
    if m:
        lib = _PILLOW_CODEC_LIBS.get(m.group(1))
        return (f"unsupported here: {fmt} needs Pillow's {m.group(1)} decoder"
                + (f" ({lib})" if lib else "") + ", which this Pillow build lacks")
    if "cannot find loader for this" in text:
        return (f"unsupported here: {fmt} needs a decoder plugin registered with Pillow, "
                "which this machine lacks")
    if "support not installed" in text:
        return f"unsupported here: {text.rsplit('because ', 1)[-1]} in this Pillow build"
    return None


# --- the decode budget -----------------------------------------------------------
# Decodes whose estimated peak is under this never wait: photos, scans of a
# few megapixels. Larger ones take turns for DECODE_BUDGET_BYTES of a
# process's memory, however many decode threads it runs (one per core).
SMALL_DECODE_BYTES = 64 * 1024 * 1024
# Every image under Pillow's pixel limit (89.5 MP) fits: the largest peak,
# 4 bytes a pixel at the limit, is about 450 MiB.
DECODE_BUDGET_BYTES = 1024 * 1024 * 1024


class DecodeBudget:
    """Bytes of decoded pixels one process may hold at once, handed out first
    come first served: a decode thread per core meeting as many 89-megapixel
    PNGs decodes them a few at a time instead of all at once (16 at once took
    35 GB and killed the worker). A condition variable, not a semaphore:
    reservations differ in size."""

    def __init__(self, total: int = DECODE_BUDGET_BYTES):
        self.total = total
        self._used = 0
        self._queue = collections.deque()
        self._cond = threading.Condition()

    @contextlib.contextmanager
    def reserve(self, need: int):
        """Hold ``need`` bytes for the block, waiting for them in turn."""
        ticket = object()
        with self._cond:
            self._queue.append(ticket)
            while self._queue[0] is not ticket or (self._used and self._used + need > self.total):
                self._cond.wait()
            self._queue.popleft()
            self._used += need
            self._cond.notify_all()
        try:
            yield
        finally:
            # glibc keeps a thread's freed buffers in its own arena (its
            # mmap threshold rises to 32 MiB after the first large free), so
            # threads taking turns would each keep one decode's worth
            # resident (measured: 16 threads under 512 MiB still held 2.6 GB)
            release_free_memory()
            with self._cond:
                self._used -= need
                self._cond.notify_all()


# One per process, shared by every decode thread of every stage.
PROCESS_DECODE_BUDGET = DecodeBudget()


def decode_peak_bytes(width: int, height: int, mode: str) -> int:
    """About the most one decode of a ``width`` x ``height`` ``mode`` image
    holds at once: the decoder's full-size buffer, one strip in its
    conversion's forms, and the two resize intermediates (at most 1,024
    pixels by the long side each)."""
    rows = strip_rows(width)
    return (width * height * bytes_per_pixel(mode) + rows * width * (bytes_per_pixel(mode) + 16)
            + 2 * 1024 * max(width, height) * 4)


def _corrupt(fmt: str, e: BaseException) -> ImageError:
    return ImageError(_printable(missing_decoder_reason(fmt, e)
                                 or f"corrupt or truncated {fmt} data: {e}"))


def _with_decoded(data: bytes, need: int, long_side_only: bool,
                  budget: Optional[DecodeBudget], work):
    """``work(img)`` on the decoded image (its decoder's buffer), with the
    image's share of the decode budget held meanwhile; the buffer is freed
    before the share is handed back. Raises ImageError.

    ``need`` is the side in px the caller will resize to: JPEGs decode with
    DCT scaling at the smallest power-of-two reduction that still covers it
    (``long_side_only``: only the long side must cover it, as when fitting
    inside a box), several times less work for photos far larger than that.
    Animated images (GIF, WebP, multi-page TIFF) use their first frame. An
    image whose decode alone needs more than the whole budget is refused.
    """
    budget = PROCESS_DECODE_BUDGET if budget is None else budget
    if not data:
        raise ImageError("empty file (0 bytes)")
    check_structure(data)
    img = _open(data)
    fmt = img.format or "image"
    try:
        if img.format == "JPEG" and img.width and img.height:
            if long_side_only:
                long_side = max(img.width, img.height)
                need_wh = (-(-need * img.width // long_side), -(-need * img.height // long_side))
            else:
                need_wh = (need, need)
            img.draft("RGB", need_wh)
    except (OSError, SyntaxError, ValueError, EOFError, struct.error, IndexError) as e:
        raise _corrupt(fmt, e) from None
    peak = decode_peak_bytes(img.width, img.height, img.mode)
    if peak > budget.total:
        raise ImageError(f"decoded image too large: {img.width}x{img.height} {img.mode} needs "
                         f"about {peak / 2 ** 20:.0f} MiB to decode, more than the decode "
                         f"budget of {budget.total / 2 ** 20:.0f} MiB per worker process")
    with (budget.reserve(peak) if peak >= SMALL_DECODE_BYTES else contextlib.nullcontext()):
        try:
            try:
                img.load()
            except Image.DecompressionBombError as e:
                raise ImageError(f"decompression bomb: {e}") from None
            except (OSError, SyntaxError, ValueError, EOFError, struct.error, IndexError) as e:
                raise _corrupt(fmt, e) from None
            return work(img)
        finally:
            img.close()   # the decoder's buffer, even if a traceback still holds the image


def _decode(data: bytes, need: int, long_side_only: bool, targets,
            budget: Optional[DecodeBudget] = None, resize_seconds: Optional[list] = None):
    """One decode, resized to each target: ``targets(width, height)`` gives
    the (size, box) resizes of the upright image. Returns the resized RGB
    images. Raises ImageError.

    EXIF orientation is applied. An image of one strip is converted whole
    (as it always was); a larger one a strip at a time (``strips``), so
    beyond the decoder's buffer one decode holds a few MiB whatever its
    size, with the same bytes out. ``resize_seconds``: each target's resize
    in thread CPU seconds is appended to it, for an image converted whole
    (in strips the resizes interleave, and count as the decode's).
    """
    def work(img):
        mode = img.mode
        method = orientation(img)
        full = display_size(img.size, method)
        if full[0] < 1 or full[1] < 1:
            raise ImageError(f"image has no pixels ({full[0]}x{full[1]})")
        try:
            if full[1] <= strip_rows(full[0]):
                rgb = next(display_strips(img, method))[1]
                resized = []
                for size, box in targets(*full):
                    started = time.thread_time()
                    resized.append(rgb.resize(size, Image.BILINEAR, box=box)
                                   if size != rgb.size or box is not None else rgb)
                    if resize_seconds is not None:
                        resize_seconds.append(time.thread_time() - started)
                return resized
            resizes = [StripResize(full, size, box) for size, box in targets(*full)]
            resize_in_strips(img, method, resizes)
            return resizes
        except (OSError, ValueError) as e:
            raise ImageError(_printable(f"unsupported image mode {mode}: {e}")) from None

    out = _with_decoded(data, need, long_side_only, budget, work)
    return [r.result() if isinstance(r, StripResize) else r for r in out]


def thumbnail_of(rgb: Image.Image, tile: int) -> Thumbnail:
    """The sprite thumbnail of a decoded image: fits a ``tile`` square, aspect kept."""
    return Thumbnail.from_image(rgb.resize(fit_within(rgb.width, rgb.height, tile), Image.BILINEAR))


def decode_image(data: bytes, model_size: Tuple[int, int], tile: int,
                 resize_mode: str = "pad", budget: Optional[DecodeBudget] = None,
                 spent: Optional[list] = None) -> Tuple[np.ndarray, Thumbnail]:
    """(model input, thumbnail) of one image from one decode, exactly as the
    pipeline makes them (``DecodeForModelFn``). Raises ImageError.

    JPEGs decode at the smallest DCT scale that covers both the model's
    side and the tile, so the thumbnail costs a resize, not a second decode.
    ``spent``: a list the thumbnail's thread CPU seconds are appended to
    (its resize, for an image converted whole, and its copy out).
    """
    if resize_mode not in RESIZE_MODES:
        raise ValueError(f"unknown resize mode {resize_mode!r}; expected one of {RESIZE_MODES}")
    placed = {}
    resize_seconds = []

    def targets(width, height):
        size, box, offset = model_target((width, height), model_size, resize_mode)
        placed["offset"] = offset
        return [(size, box), (fit_within(width, height, tile), None)]

    model, thumb = _decode(data, max(max(model_size), tile), resize_mode == "pad", targets,
                           budget, resize_seconds)
    if placed["offset"] is not None:   # pad: centred on black, as resize_with_pad
        canvas = Image.new("RGB", (model_size[1], model_size[0]), (0, 0, 0))
        canvas.paste(model, placed["offset"])
        model = canvas
    started = time.thread_time()
    thumbnail = Thumbnail.from_image(thumb)
    if spent is not None:
        spent.append(time.thread_time() - started + sum(resize_seconds[1:]))
    return np.asarray(model, dtype=np.uint8), thumbnail


def thumbnail_image(data: bytes, tile: int, budget: Optional[DecodeBudget] = None) -> Thumbnail:
    """The sprite thumbnail of encoded image bytes, decoded at thumbnail
    scale (JPEG DCT scaling): for rows whose vectors came from elsewhere.
    Raises ImageError."""
    (thumb,) = _decode(data, tile, True,
                       lambda width, height: [(fit_within(width, height, tile), None)], budget)
    return Thumbnail.from_image(thumb)


def check_decodes(data: bytes, tile: int, budget: Optional[DecodeBudget] = None) -> None:
    """Raise ImageError unless ``data`` decodes. JPEGs decode at thumbnail
    scale: the check for the margin, whose images are only used if others
    fail (and are then decoded again, as every used image is, by
    ``decode_image``). The decode is complete; of the conversion, whose
    every step is per pixel, one strip is enough to show the mode converts."""
    def work(img):
        mode = img.mode
        if img.width < 1 or img.height < 1:
            raise ImageError(f"image has no pixels ({img.width}x{img.height})")
        try:
            next(display_strips(img, None))
        except (OSError, ValueError) as e:
            raise ImageError(_printable(f"unsupported image mode {mode}: {e}")) from None

    _with_decoded(data, tile, True, budget, work)


# How a local path that is not a regular file is named in its errors.tsv row.
_SPECIAL_FILES = ((stat.S_ISCHR, "character device"), (stat.S_ISBLK, "block device"),
                  (stat.S_ISFIFO, "FIFO"), (stat.S_ISSOCK, "socket"))


_READ_CHUNK = 4 * 1024 * 1024


def _size_before_open(ref: str) -> Optional[int]:
    """The size the file system reports, checked before anything is opened.

    Local paths are stat'ed (following symlinks): a character device
    (/dev/zero), FIFO (whose open would block), socket or symlink loop is
    refused here without ever being opened. Other file systems report their
    object size when they can; None when unknown.
    """
    if not is_local(ref):
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
