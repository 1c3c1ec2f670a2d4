"""Pure rules of TensorBoard's Embedding Projector file formats.

No Beam here: the sprite's geometry (square grid, 8192 px), the metadata
TSV (header only with two or more columns, no tabs or line breaks inside a
value, no empty value), the tensor TSV and binary files, and the config
through tensorboard's own proto, so each rule is unit-tested directly.
docs/output.md lists the rules and why.
"""
import math
from typing import Iterable, Optional, Sequence, Tuple

import numpy as np
from PIL import Image

# The projector frontend refuses sprites larger than this on either side.
MAX_SPRITE_SIDE = 8192


# "Color by" lists a text column only when it has at most this many distinct
# values (and draws a numeric one as a gradient only when it has more).
MAX_COLOR_VALUES = 50


# Shown instead of an empty metadata value: a blank line is skipped by the
# projector, which would shift every later row by one.
EMPTY_PLACEHOLDER = "<empty>"


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


def sprite_strip(thumbnails: Sequence, tile: int, row: int) -> np.ndarray:
    """Row ``row`` of tiles of the sprite of ``assemble_sprite``, as a (tile,
    side, 4) uint8 array: a 8192 px sprite is 256 MiB as one image."""
    per_side = tiles_per_side(len(thumbnails))
    strip = Image.new("RGBA", (per_side * tile, tile), (0, 0, 0, 0))
    for col in range(per_side):
        i = row * per_side + col
        if i < len(thumbnails) and thumbnails[i] is not None:   # None: no picture
            _paste_tile(strip, thumbnails[i], tile, col * tile, 0)
    return np.asarray(strip)


def sprite_rows(thumbnails: Sequence, tile: int) -> Iterable[np.ndarray]:
    """Every ``sprite_strip``, top to bottom."""
    for row in range(tiles_per_side(len(thumbnails))):
        yield sprite_strip(thumbnails, tile, row)


def escape_metadata_value(value) -> str:
    """The projector has no quoting: tabs and line breaks must not appear."""
    text = "" if value is None else str(value)
    text = text.replace("\r\n", " ").replace("\t", " ").replace("\r", " ").replace("\n", " ")
    return text if text.strip() else EMPTY_PLACEHOLDER


def column_clash(columns: Sequence[str], added: Sequence[str] = (),
                 added_by: str = "neighbors", turn_off: str = "neighbors=0") -> Optional[str]:
    """None when every metadata column name is unique as metadata.tsv writes
    it (``escape_metadata_value``), else one line naming the clash and the
    way out. The projector keys a row's values by column name, so of two
    columns of one name one silently vanishes. ``added`` are the columns a
    stage appends to the input's (``added_by`` names the setting that adds
    them, ``turn_off`` how to do without them)."""
    written = [escape_metadata_value(c) for c in columns]
    seen = set(written)
    twice = sorted({n for n in written if written.count(n) > 1}, key=written.index)
    clash = [n for n in dict.fromkeys(escape_metadata_value(c) for c in added) if n in seen]
    parts = []
    if twice:
        where = "; ".join(f"{n!r} is column "
                          + " and ".join(str(i + 1) for i, w in enumerate(written) if w == n)
                          for n in twice)
        parts.append(f"the input has columns of the same name ({where}), and the projector "
                     "keeps only one of them: rename them in the input")
    if clash:
        parts.append(f"the input's column{'s' if len(clash) > 1 else ''} "
                     f"{', '.join(repr(n) for n in clash)} would be written twice: "
                     f"{added_by} adds {'columns' if len(clash) > 1 else 'a column'} of that "
                     f"name; rename {'them' if len(clash) > 1 else 'it'} in the input, or run "
                     f"with {turn_off}")
    return "; ".join(parts) or None


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


def tensor_tsv(matrix: np.ndarray) -> bytes:
    """Tab-separated float rows, no header and no empty field."""
    m = np.asarray(matrix, dtype=np.float32)
    if m.ndim != 2 or m.shape[1] == 0:
        raise ValueError(f"tensor must be 2-D with at least one column, got {m.shape}")
    # '%.9g' round-trips float32 exactly. The same text np.savetxt writes,
    # built without its StringIO (4 bytes a character, then copied out):
    # writing 6,000 x 1280 in the writer's chunks grew the process by 92 MB
    # that way and by 7 MB this way, and Python floats format faster than
    # numpy scalars (docs/benchmarks-history.md, "Throughput, third pass").
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


def projector_config_text(tensors: Sequence[Tuple[str, Tuple[int, int], str]],
                          metadata_path: str, sprite_path: Optional[str],
                          tile: int, bookmarks_path: Optional[str] = None) -> str:
    """projector_config.pbtxt via tensorboard's own proto (never by hand).

    ``tensors`` is a list of (tensor_name, (N, D), relative tensor_path);
    ``bookmarks_path``, when given, is every tensor's saved views. Set only
    when the file is written: the projector fetches it on selecting the
    tensor, and an error there silently leaves the panel empty.
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
        if bookmarks_path:
            emb.bookmarks_path = bookmarks_path
    return text_format.MessageToString(config)


def parse_projector_config(text: str):
    """A ``projector_config.pbtxt``'s text -> TensorBoard's ``ProjectorConfig``
    proto (text_format, as TensorBoard itself reads it). Raises
    ``google.protobuf.text_format.ParseError`` on text that is not one."""
    from google.protobuf import text_format
    from tensorboard.plugins.projector.projector_config_pb2 import ProjectorConfig

    return text_format.Parse(text, ProjectorConfig())
