"""The PNG codec of the sprite and the thumbnails.

Why our own: the sprite is written a row of tiles at a time (Pillow's
encoder wants the whole image), and thumbnails are encoded once and decoded
up to three times, where Pillow tries every filter on every row and
unfilters row by row (docs/benchmarks-history.md, "Throughput, third
pass": 0.54 against 0.83 ms to encode a 100 px photo thumbnail, 0.21
against 0.51 ms to decode it). Up filter +
zlib level 1; ``decode_own_png`` reads back only what ``encode_png`` wrote.
"""
import collections
import io
import os
import struct
import zlib
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterable, Optional, Tuple

import numpy as np
from PIL import Image


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return (struct.pack(">I", len(data)) + kind + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


_COLOR_TYPES = {3: 2, 4: 6}   # channels -> PNG colour type (RGB, RGBA)


_CHANNELS = {color: channels for channels, color in _COLOR_TYPES.items()}


def write_png_rows(f, width: int, height: int, strips: Iterable[np.ndarray],
                   level: int = 1, channels: int = 4) -> None:
    """Stream an 8-bit RGBA (or, ``channels=3``, RGB) PNG to ``f`` from
    horizontal strips.

    Pillow encodes only whole images, so a sprite at the projector's 8192 px
    limit would be held twice (image + encoder); this writes the PNG chunks
    itself (signature, IHDR, IDAT, IEND: the PNG spec's minimum) from strips,
    with the "Up" filter on every row. On photo tiles that costs about two
    thirds of Pillow's encoder (which tries every filter on every row) for
    a file about 8 % larger (docs/benchmarks-history.md, "Throughput, third pass").
    """
    row_bytes = width * channels
    f.write(_PNG_SIGNATURE)
    f.write(_png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8,
                                            _COLOR_TYPES[channels], 0, 0, 0)))
    z = zlib.compressobj(level)
    prev = np.zeros((1, row_bytes), dtype=np.uint8)
    rows_seen = 0
    for strip in strips:
        rows = np.ascontiguousarray(strip, dtype=np.uint8).reshape(len(strip), row_bytes)
        filtered = np.empty((len(rows), row_bytes + 1), dtype=np.uint8)
        filtered[:, 0] = 2                                  # "Up"
        np.subtract(rows[:1], prev, out=filtered[:1, 1:])   # uint8 wraps: mod 256
        np.subtract(rows[1:], rows[:-1], out=filtered[1:, 1:])
        data = z.compress(filtered.tobytes())
        if data:
            f.write(_png_chunk(b"IDAT", data))
        prev = rows[-1:]
        rows_seen += len(rows)
    if rows_seen != height:
        raise ValueError(f"PNG strips gave {rows_seen} rows, expected {height}")
    f.write(_png_chunk(b"IDAT", z.flush()))
    f.write(_png_chunk(b"IEND", b""))


# The zlib header of a deflate stream at the fastest level (RFC 1950:
# CM 8, a 32 KiB window, FLEVEL 0, the check bits).
_ZLIB_HEADER = b"\x78\x01"
_ADLER_BASE = 65521


def adler32_combine(adler1: int, adler2: int, len2: int) -> int:
    """The Adler-32 of A + B from those of A and B (``len2``: B's length):
    zlib's adler32_combine, which Python's zlib does not expose."""
    rem = len2 % _ADLER_BASE
    sum1 = adler1 & 0xFFFF
    sum2 = (rem * sum1) % _ADLER_BASE
    sum1 += (adler2 & 0xFFFF) + _ADLER_BASE - 1
    sum2 += ((adler1 >> 16) & 0xFFFF) + ((adler2 >> 16) & 0xFFFF) + _ADLER_BASE - rem
    sum1 -= _ADLER_BASE if sum1 >= _ADLER_BASE else 0
    sum1 -= _ADLER_BASE if sum1 >= _ADLER_BASE else 0
    sum2 -= (_ADLER_BASE << 1) if sum2 >= (_ADLER_BASE << 1) else 0
    sum2 -= _ADLER_BASE if sum2 >= _ADLER_BASE else 0
    return sum1 | (sum2 << 16)


def _up_filtered(rows: np.ndarray, prev: np.ndarray) -> bytes:
    """Rows with the PNG "Up" filter against the row above (``prev`` for the first)."""
    filtered = np.empty((len(rows), rows.shape[1] + 1), dtype=np.uint8)
    filtered[:, 0] = 2
    np.subtract(rows[:1], prev, out=filtered[:1, 1:])   # uint8 wraps: mod 256
    np.subtract(rows[1:], rows[:-1], out=filtered[1:, 1:])
    return filtered.tobytes()


def _deflate_piece(data: bytes, level: int, last: bool) -> Tuple[bytes, int, int]:
    """One strip as raw deflate blocks that end on a byte boundary (a sync
    flush), so independently compressed strips join into one stream; the
    last strip ends the stream. With its Adler-32 and length."""
    z = zlib.compressobj(level, zlib.DEFLATED, -15)
    out = z.compress(data) + z.flush(zlib.Z_FINISH if last else zlib.Z_SYNC_FLUSH)
    return out, zlib.adler32(data), len(data)


def write_png_strips(f, width: int, height: int, make_strip: Callable[[int], np.ndarray],
                     count: int, level: int = 1, channels: int = 4, threads: int = 0) -> None:
    """``write_png_rows`` for large images, on every core: strip ``i`` is made
    by ``make_strip(i)`` and compressed on a thread pool (zlib and Pillow
    release the GIL), a few strips ahead of the one being written.

    Why not one zlib stream: one compressor is one core, and the sprite is
    the writer's largest file (55 x 55 tiles of 100 px: 121 MB of pixels).
    The strips are compressed apart and joined as pigz does (each ends with
    a sync flush; the Adler-32s are combined), so the pixels and filters are
    exactly ``write_png_rows``'s and the bytes do not depend on the thread
    count."""
    threads = threads or os.cpu_count() or 1
    ahead = 2 * threads
    row_bytes = width * channels
    f.write(_PNG_SIGNATURE)
    f.write(_png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8,
                                            _COLOR_TYPES[channels], 0, 0, 0)))
    adler, rows_seen, first = 1, 0, True
    prev = np.zeros((1, row_bytes), dtype=np.uint8)
    with ThreadPoolExecutor(threads, thread_name_prefix="png-strips") as pool:
        made = collections.deque(pool.submit(make_strip, i) for i in range(min(ahead, count)))
        packed = collections.deque()
        for i in range(count):
            strip = made.popleft().result()
            if i + ahead < count:
                made.append(pool.submit(make_strip, i + ahead))
            rows = np.ascontiguousarray(strip, dtype=np.uint8).reshape(len(strip), row_bytes)
            packed.append(pool.submit(_deflate_piece, _up_filtered(rows, prev), level,
                                      i == count - 1))
            prev = rows[-1:].copy()
            rows_seen += len(rows)
            while packed and (len(packed) > ahead or i == count - 1):
                data, piece_adler, length = packed.popleft().result()
                adler = adler32_combine(adler, piece_adler, length)
                f.write(_png_chunk(b"IDAT", (_ZLIB_HEADER if first else b"") + data))
                first = False
    if rows_seen != height:
        raise ValueError(f"PNG strips gave {rows_seen} rows, expected {height}")
    f.write(_png_chunk(b"IDAT", struct.pack(">I", adler)))
    f.write(_png_chunk(b"IEND", b""))


def encode_png(pixels: np.ndarray, level: int = 1) -> bytes:
    """(height, width, 3 or 4) uint8 -> PNG bytes, as ``write_png_rows``."""
    height, width, channels = pixels.shape
    buf = io.BytesIO()
    write_png_rows(buf, width, height, [pixels], level, channels)
    return buf.getvalue()


def decode_own_png(data: bytes) -> Optional[np.ndarray]:
    """The pixels of a PNG as ``write_png_rows`` writes them, or None for
    any other PNG (the caller then asks Pillow).

    Why not Pillow: thumbnails are decoded up to three times per image
    (neighbour signatures, preview, sprite) on the writer's single core, and
    with every row "Up"-filtered the whole unfiltering is one cumulative sum
    down the rows, about 2.5 x faster than Pillow's row-by-row decoder.
    Chunk CRCs are not checked: these are the job's own bytes, and damage
    to the image data still fails zlib's own checksum or the length check,
    which hands the bytes to Pillow (and its CRC check) instead.
    """
    if data[:8] != _PNG_SIGNATURE or data[12:16] != b"IHDR":
        return None
    width, height, depth, color, _, _, interlace = struct.unpack(">IIBBBBB", data[16:29])
    channels = _CHANNELS.get(color)
    if depth != 8 or channels is None or interlace or not width or not height:
        return None
    idat, pos = [], 33
    while pos + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        if kind == b"IDAT":
            idat.append(data[pos + 8:pos + 8 + length])
        elif kind == b"IEND":
            break
        pos += 12 + length
    try:
        raw = zlib.decompress(b"".join(idat))
    except zlib.error:
        return None
    row_bytes = width * channels + 1
    if len(raw) != height * row_bytes:
        return None
    rows = np.frombuffer(raw, dtype=np.uint8).reshape(height, row_bytes)
    if not (rows[:, 0] == 2).all():
        return None
    return np.cumsum(rows[:, 1:], axis=0, dtype=np.uint8).reshape(height, width, channels)


def png_bytes(image: Image.Image, strip_rows: int = 256) -> bytes:
    """An RGB or RGBA image -> PNG bytes at zlib level 1, with the sprite's
    encoder, a strip of rows at a time (no second copy of a large image).
    Level 1: these are mostly photo content, where higher levels cost
    several times the time for a few percent of size."""
    if image.mode not in ("RGB", "RGBA"):
        image = image.convert("RGBA" if "A" in image.getbands() else "RGB")
    width, height = image.size
    strips = (np.asarray(image.crop((0, y, width, min(height, y + strip_rows))))
              for y in range(0, height, strip_rows))
    buf = io.BytesIO()
    write_png_rows(buf, width, height, strips, channels=len(image.getbands()))
    return buf.getvalue()
