"""Pure functions for TensorBoard's Embedding Projector file formats.

No Beam here: these encode the projector's rules (see DESIGN.md) so they can
be unit-tested directly and reused by any writer.
"""
import io
import math
import struct
import zlib
from typing import Iterable, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image

# The projector frontend refuses sprites larger than this on either side.
MAX_SPRITE_SIDE = 8192
# Shown instead of an empty metadata value: a blank line is skipped by the
# projector, which would shift every later row by one.
EMPTY_PLACEHOLDER = "<empty>"


# --- sprite geometry -------------------------------------------------------

def tiles_per_side(n: int) -> int:
    """The projector's shader needs a square grid of ceil(sqrt(n)) tiles."""
    if n < 1:
        raise ValueError(f"a sprite needs at least one image, got n={n}")
    side = math.isqrt(n)
    return side if side * side == n else side + 1


def tile_size_for(n: int, requested: int, max_side: int = MAX_SPRITE_SIDE) -> int:
    """Largest tile <= ``requested`` that keeps the sprite within ``max_side``."""
    return max(1, min(int(requested), max_side // tiles_per_side(n)))


def sprite_geometry(n: int, requested_tile: int,
                    max_side: int = MAX_SPRITE_SIDE) -> Tuple[int, int, int]:
    """(tiles a side, tile px, sprite side px) for ``n`` images."""
    per_side = tiles_per_side(n)
    tile = tile_size_for(n, requested_tile, max_side)
    return per_side, tile, per_side * tile


def tile_origin(index: int, per_side: int, tile: int) -> Tuple[int, int]:
    """Top-left pixel of tile ``index``: row-major from the top-left."""
    row, col = divmod(index, per_side)
    return col * tile, row * tile


def fit_within(width: int, height: int, box: int) -> Tuple[int, int]:
    """Size that fits a ``box`` square keeping the aspect ratio (>= 1 px)."""
    scale = box / max(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def _paste_tile(canvas: Image.Image, th, tile: int, x0: int, y0: int) -> None:
    im = th.image()
    if max(th.width, th.height) > tile:
        im = im.resize(fit_within(th.width, th.height, tile), Image.BILINEAR)
    canvas.paste(im, (x0 + (tile - im.width) // 2, y0 + (tile - im.height) // 2))


def assemble_sprite(thumbnails: Sequence, tile: int) -> Image.Image:
    """Paste thumbnails (``Thumbnail`` tuples) into a square RGBA sprite.

    Each thumbnail is centred in its tile; the padding stays fully
    transparent, which the projector's shader discards.
    """
    per_side = tiles_per_side(len(thumbnails))
    sprite = Image.new("RGBA", (per_side * tile, per_side * tile), (0, 0, 0, 0))
    for i, th in enumerate(thumbnails):
        _paste_tile(sprite, th, tile, *tile_origin(i, per_side, tile))
    return sprite


def sprite_rows(thumbnails: Sequence, tile: int) -> Iterable[np.ndarray]:
    """The sprite of ``assemble_sprite``, one row of tiles at a time, as
    (tile, side, 4) uint8 arrays: a 8192 px sprite is 256 MiB as one image."""
    per_side = tiles_per_side(len(thumbnails))
    for row in range(per_side):
        strip = Image.new("RGBA", (per_side * tile, tile), (0, 0, 0, 0))
        for col in range(per_side):
            i = row * per_side + col
            if i < len(thumbnails):
                _paste_tile(strip, thumbnails[i], tile, col * tile, 0)
        yield np.asarray(strip)


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
    a file about 8 % larger (BENCHMARKS.md, "Throughput, third pass").
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


# --- metadata TSV -----------------------------------------------------------

def escape_metadata_value(value) -> str:
    """The projector has no quoting: tabs and line breaks must not appear."""
    text = "" if value is None else str(value)
    text = text.replace("\r\n", " ").replace("\t", " ").replace("\r", " ").replace("\n", " ")
    return text if text.strip() else EMPTY_PLACEHOLDER


def metadata_tsv(columns: Sequence[str], rows: Iterable[Sequence]) -> str:
    """Metadata text: a header row exactly when there are two or more columns."""
    if not columns:
        raise ValueError("metadata needs at least one column")
    lines = []
    if len(columns) > 1:
        lines.append("\t".join(escape_metadata_value(c) for c in columns))
    for row in rows:
        if len(row) != len(columns):
            raise ValueError(f"metadata row has {len(row)} values for {len(columns)} columns")
        lines.append("\t".join(escape_metadata_value(v) for v in row))
    return "\n".join(lines) + "\n"


# --- tensors ----------------------------------------------------------------

def tensor_tsv(matrix: np.ndarray) -> bytes:
    """Tab-separated float rows, no header and no empty field."""
    m = np.asarray(matrix, dtype=np.float32)
    if m.ndim != 2 or m.shape[1] == 0:
        raise ValueError(f"tensor must be 2-D with at least one column, got {m.shape}")
    # '%.9g' round-trips float32 exactly. The same text np.savetxt writes,
    # built without its StringIO (4 bytes a character, then copied out):
    # writing 6,000 x 1280 in the writer's chunks grew the process by 92 MB
    # that way and by 7 MB this way, and Python floats format faster than
    # numpy scalars (BENCHMARKS.md, "Throughput, third pass").
    row = "\t".join(["%.9g"] * m.shape[1]) + "\n"
    return "".join([row % tuple(values) for values in m.tolist()]).encode("ascii")


def tensor_binary(matrix: np.ndarray) -> bytes:
    """Raw little-endian float32, row-major: what the plugin reads by shape."""
    return np.ascontiguousarray(matrix, dtype="<f4").tobytes()


def binary_tensor_is_readable(data: bytes) -> bool:
    """Whether TensorBoard will take ``data`` for binary, not text.

    The plugin first parses the file as TSV and only falls back to binary on a
    UnicodeDecodeError of the first line it reads; a first line that happens
    to be valid UTF-8 (all-zero vectors, say) ends in an HTTP 500 instead.
    """
    first_line = data.split(b"\n", 1)[0]
    try:
        first_line.decode("utf-8")
    except UnicodeDecodeError:
        return True
    return False


# --- config -----------------------------------------------------------------

def projector_config_text(tensors: Sequence[Tuple[str, Tuple[int, int], str]],
                          metadata_path: str, sprite_path: Optional[str],
                          tile: int) -> str:
    """projector_config.pbtxt via tensorboard's own proto (never by hand).

    ``tensors`` is a list of (tensor_name, (N, D), relative tensor_path).
    """
    from google.protobuf import text_format
    from tensorboard.plugins.projector.projector_config_pb2 import ProjectorConfig

    config = ProjectorConfig()
    for name, shape, path in tensors:
        emb = config.embeddings.add()
        emb.tensor_name = name
        emb.tensor_shape.extend([int(shape[0]), int(shape[1])])
        emb.tensor_path = path
        emb.metadata_path = metadata_path
        if sprite_path:
            emb.sprite.image_path = sprite_path
            emb.sprite.single_image_dim.extend([tile, tile])
    return text_format.MessageToString(config)


def parse_projector_config(text: str):
    """A ``projector_config.pbtxt``'s text -> TensorBoard's ``ProjectorConfig``
    proto (text_format, as TensorBoard itself reads it). Raises
    ``google.protobuf.text_format.ParseError`` on text that is not one."""
    from google.protobuf import text_format
    from tensorboard.plugins.projector.projector_config_pb2 import ProjectorConfig

    return text_format.Parse(text, ProjectorConfig())
