"""A large decoded image converted and resized a strip at a time, bit for bit
as Pillow's whole-image calls would do it. Pure: Pillow and numpy, no Beam.

Converting a whole decoded image at once costs several full-size copies: an
89-megapixel 16-bit PNG went through float64 (+2.2 GB for one 190 KB file),
an RGBA one through four 4-byte-per-pixel images (+1.7 GB), and a decode
thread per core multiplied that. Here only the decoder's own buffer is full
size. The image is cut into strips of about ``STRIP_BYTES``; each strip is
converted to RGB exactly as the whole image would be (every step is per
pixel: 16-bit greys through a lookup table equal to the float formula,
palettes, alpha over white), turned by the EXIF orientation (cut from the
source rows or columns that become it), and fed to ``StripResize``, which
runs the first pass of Pillow's two-pass resize on each strip into a small
intermediate and the second pass on that at the end.

``StripResize`` follows Pillow 13's choice of which pass runs first
(``vertical_first``); it is the one coupling to Pillow's internals, and
tests/transforms/test_images.py compares it with ``Image.resize`` on random
sizes and boxes, so a Pillow upgrade that changes it fails there first.
"""
from typing import Iterator, Optional, Tuple

import numpy as np
from PIL import ExifTags, Image

# One strip, counted at 4 bytes a pixel (its RGB form, as Pillow stores it).
STRIP_BYTES = 4 * 1024 * 1024

SIXTEEN_BIT = ("I;16", "I;16B", "I;16L", "I;16N")
GREY_WIDE = ("I", "F") + SIXTEEN_BIT
ALPHA = ("RGBA", "LA", "PA", "RGBa", "La")
_ONE_BYTE = ("1", "L", "P")

_ORIENTATION = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
                4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE,
                6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
                8: Image.Transpose.ROTATE_90}
_SWAPS_SIDES = (Image.Transpose.TRANSPOSE, Image.Transpose.ROTATE_270,
                Image.Transpose.TRANSVERSE, Image.Transpose.ROTATE_90)

# 16-bit grey -> 8 bits: (v + 128) // 257 equals round(v / 65535 * 255) in
# float64 for every v (65535 = 255 * 257, and v / 257 + 0.5 is never within
# float error of an integer), without a float64 copy of the image.
LUT_16_TO_8 = ((np.arange(65536, dtype=np.uint32) + 128) // 257).astype(np.uint8)


def bytes_per_pixel(mode: str) -> int:
    """How Pillow stores a decoded pixel: 1 byte for 1/L/P, 2 for 16-bit
    greys, 4 for every other mode (RGB and LA too)."""
    return 1 if mode in _ONE_BYTE else 2 if mode in SIXTEEN_BIT else 4


def strip_rows(width: int) -> int:
    """Rows of a strip ``width`` pixels wide."""
    return max(1, STRIP_BYTES // max(1, width * 4))


def orientation(img: Image.Image) -> Optional[Image.Transpose]:
    """The transpose ``ImageOps.exif_transpose`` would apply, or None (no
    tag, or a broken EXIF block: the pixels as stored, as before)."""
    try:
        return _ORIENTATION.get(img.getexif().get(ExifTags.Base.Orientation, 1))
    except Exception:  # noqa: BLE001 - a broken EXIF block: keep the pixels as stored
        return None


def display_size(size: Tuple[int, int], method) -> Tuple[int, int]:
    """(width, height) once turned by ``method``."""
    return (size[1], size[0]) if method in _SWAPS_SIDES else tuple(size)


def grey_high(img: Image.Image) -> float:
    """The scale a wide grey image is brought to 8 bits from: 65535 when its
    largest value (NaN and infinities as 0, as ``to_rgb`` counts them) is
    over 255, else 255; taken in a pass of strips, without a float copy."""
    if img.mode in SIXTEEN_BIT:
        return 65535.0
    if img.mode == "I":
        top = float(max(img.getextrema()[1], 0))
    else:
        top, rows = 0.0, strip_rows(img.width)
        for y in range(0, img.height, rows):
            a = np.asarray(img.crop((0, y, img.width, min(img.height, y + rows))),
                           dtype=np.float64)
            top = max(top, float(np.nan_to_num(a, nan=0.0, posinf=0.0, neginf=0.0)
                                 .max(initial=0)))
    return 65535.0 if top > 255 else 255.0


def to_rgb(img: Image.Image, grey_hi: Optional[float] = None) -> Image.Image:
    """Any Pillow mode to 8-bit RGB, transparency composited over white.
    Every step is per pixel, so a strip converts exactly as the whole image
    would, given the whole image's ``grey_hi`` (``grey_high``)."""
    if img.mode in GREY_WIDE:
        hi = grey_high(img) if grey_hi is None else grey_hi
        if img.mode in SIXTEEN_BIT:
            img = Image.fromarray(LUT_16_TO_8[np.asarray(img)])
        elif img.mode == "I":
            a = np.asarray(img).astype(np.int64)
            a = (a + 128) // 257 if hi > 255 else a
            img = Image.fromarray(np.clip(a, 0, 255).astype(np.uint8))
        else:
            a = np.nan_to_num(np.asarray(img, dtype=np.float64), nan=0.0, posinf=0.0,
                              neginf=0.0)
            img = Image.fromarray(np.clip(a / hi * 255.0 + 0.5, 0, 255).astype(np.uint8))
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ALPHA:
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB") if img.mode != "RGB" else img


def _source_box(box, method, width: int, height: int):
    """The rectangle of the stored image that ``img.transpose(method)``
    moves to the displayed rectangle ``box`` (x0, y0, x1, y1)."""
    x0, y0, x1, y1 = box
    t = Image.Transpose
    return {None: (x0, y0, x1, y1),
            t.FLIP_LEFT_RIGHT: (width - x1, y0, width - x0, y1),
            t.FLIP_TOP_BOTTOM: (x0, height - y1, x1, height - y0),
            t.ROTATE_180: (width - x1, height - y1, width - x0, height - y0),
            t.TRANSPOSE: (y0, x0, y1, x1),
            t.ROTATE_270: (y0, height - x1, y1, height - x0),
            t.TRANSVERSE: (width - y1, height - x1, width - y0, height - x0),
            t.ROTATE_90: (width - y1, x0, width - y0, x1)}[method]


def display_strips(img: Image.Image, method, by_columns: bool = False,
                   grey_hi: Optional[float] = None) -> Iterator[Tuple[int, Image.Image]]:
    """(offset, RGB strip) covering the displayed image (``img`` turned by
    ``method``) in row strips, or column strips with ``by_columns``: each
    cut from the stored rectangle that becomes it, converted, turned."""
    width, height = img.size
    dw, dh = display_size(img.size, method)
    if grey_hi is None and img.mode in GREY_WIDE:
        grey_hi = grey_high(img)
    extent = dw if by_columns else dh
    step = strip_rows(dh) if by_columns else strip_rows(dw)
    for a in range(0, extent, step):
        b = min(extent, a + step)
        box = (a, 0, b, dh) if by_columns else (0, a, dw, b)
        rgb = to_rgb(img.crop(_source_box(box, method, width, height)), grey_hi)
        yield a, (rgb.transpose(method) if method is not None else rgb)


def vertical_first(full: Tuple[int, int], size: Tuple[int, int]) -> bool:
    """Pillow 13's pass order (libImaging/Resample.c, ImagingResampleInner):
    the vertical pass runs first when the height shrinks by more than twice
    what the width shrinks by."""
    (w, h), (xsize, ysize) = full, size
    return h - ysize > 0 and h - ysize > (w - xsize) * 2


class StripResize:
    """``img.resize(size, BILINEAR, box)`` of an RGB image given a strip at a
    time, bit-identical to Pillow's one call.

    Pillow resamples in two separable passes whose coefficients depend only
    on the full size, the box and the output size, rounding to 8 bits in
    between. So the first pass runs on each strip (row strips when it is the
    horizontal one, column strips when it is the vertical one: ``by_columns``
    says which the caller must feed) into an intermediate one output side
    by one full side, and the second pass runs on that in ``result``.
    """

    def __init__(self, full: Tuple[int, int], size: Tuple[int, int], box=None):
        self.width, self.height = full
        self.size = tuple(size)
        self.box = tuple(box) if box else (0, 0, self.width, self.height)
        self.by_columns = vertical_first(full, self.size)
        xsize, ysize = self.size
        self._horizontal = xsize != self.width or self.box[0] != 0 or self.box[2] != self.width
        self._vertical = ysize != self.height or self.box[1] != 0 or self.box[3] != self.height
        if self.by_columns:
            self._temp = Image.new("RGB", (self.width, ysize if self._vertical else self.height))
        else:
            self._temp = Image.new("RGB", (xsize if self._horizontal else self.width, self.height))

    def feed(self, offset: int, strip: Image.Image) -> None:
        """The strip starting at row (or column) ``offset`` of the image."""
        if self.by_columns:
            if self._vertical:
                strip = strip.resize((strip.width, self.size[1]), Image.BILINEAR,
                                     box=(0, self.box[1], strip.width, self.box[3]))
            self._temp.paste(strip, (offset, 0))
        else:
            if self._horizontal:
                strip = strip.resize((self.size[0], strip.height), Image.BILINEAR,
                                     box=(self.box[0], 0, self.box[2], strip.height))
            self._temp.paste(strip, (0, offset))

    def result(self) -> Image.Image:
        temp = self._temp
        if self.by_columns:
            if not self._horizontal:
                return temp
            return temp.resize(self.size, Image.BILINEAR,
                               box=(self.box[0], 0, self.box[2], temp.height))
        if not self._vertical:
            return temp
        return temp.resize(self.size, Image.BILINEAR,
                           box=(0, self.box[1], temp.width, self.box[3]))


def resize_in_strips(img: Image.Image, method, targets) -> None:
    """Feed the displayed image (``img`` turned by ``method``, converted to
    RGB) to every ``StripResize`` in ``targets``: one sweep of strips per
    pass order in use, each strip converted once per sweep."""
    grey_hi = grey_high(img) if img.mode in GREY_WIDE else None
    for by_columns in (False, True):
        group = [t for t in targets if t.by_columns == by_columns]
        if not group:
            continue
        for offset, strip in display_strips(img, method, by_columns, grey_hi):
            for target in group:
                target.feed(offset, strip)
