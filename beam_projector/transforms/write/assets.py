"""The data folder's files (tensors, metadata, sprite) and the preview, ready to stream.

Built from the kept rows in output order; the digest names the folder from
what determines its files, before anything is written.
"""
import hashlib
import io
import logging
from typing import BinaryIO, Callable, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np

from beam_projector.transforms import preview, projector
from beam_projector.transforms.png import png_bytes, write_png_strips
from beam_projector.transforms.records import Embedded, ErrorRow, capped
from beam_projector.transforms.write.config import WriterConfig
from beam_projector.transforms.write.layout import (
    BOOKMARKS_NAME,
    METADATA_NAME,
    SPRITE_NAME,
    tensor_file_name,
)

LOG = logging.getLogger(__name__)


def errors_tsv(rows: Sequence[ErrorRow]) -> bytes:
    """errors.tsv: one line per failure, every value capped (``capped``)
    whoever made the row, so no input can make the file huge."""
    lines = ["input\tstage\treason"]
    for r in rows:
        lines.append("\t".join(projector.escape_metadata_value(capped(v))
                               for v in (r.ref, r.stage, r.reason)))
    return ("\n".join(lines) + "\n").encode("utf-8")


class Asset(NamedTuple):
    """One file of the data folder, written by streaming into an open file:
    at 100,000 x 1280 the TSV tensor alone is over a gigabyte of text, so no
    asset is ever held whole as one string."""
    name: str
    write: Callable[[BinaryIO], None]


def asset_bytes(asset: Asset) -> bytes:
    """The bytes ``asset`` writes (for tests and small files)."""
    buf = io.BytesIO()
    asset.write(buf)
    return buf.getvalue()


class Assets(NamedTuple):
    files: List[Asset]               # the data folder's files, in write order
    tensors: List[Tuple[str, Tuple[int, int], str]]
    digest: str
    tile: int
    # (name, shape, .bytes file) for the standalone projector; empty without --standalone
    standalone_tensors: Sequence[Tuple[str, Tuple[int, int], str]] = ()
    preview_png: Optional[bytes] = None
    bookmarks: str = ""              # the bookmarks file in the data folder ("" when none)


# Values of a tensor formatted at once: bounds the text held while writing
# TSV (about 3 MB at 12 characters a value) whatever D is.
TENSOR_CHUNK_VALUES = 1 << 18


def _chunk_rows(matrix: np.ndarray) -> int:
    return max(1, TENSOR_CHUNK_VALUES // max(1, matrix.shape[1]))


# preview.png draws at most this many points (the first in key order: a
# uniform sample of the sample), so its layout loop and PCA stay bounded at
# any N; beyond a few thousand, thumbnails shrink to a few pixels anyway.
PREVIEW_MAX_POINTS = 10_000


def _tensor_writer(matrix: np.ndarray, fmt: str) -> Callable[[BinaryIO], None]:
    def write(f):
        rows = _chunk_rows(matrix)
        for i in range(0, len(matrix), rows):
            chunk = matrix[i:i + rows]
            f.write(projector.tensor_binary(chunk) if fmt == "binary"
                    else projector.tensor_tsv(chunk))
    return write


def _bytes_writer(data: bytes) -> Callable[[BinaryIO], None]:
    return lambda f: f.write(data)


def _binary_is_readable(matrix: np.ndarray) -> bool:
    """``projector.binary_tensor_is_readable`` on the file's first line only,
    found chunk by chunk instead of formatting the whole file."""
    line = b""
    rows = _chunk_rows(matrix)
    for i in range(0, len(matrix), rows):
        chunk = projector.tensor_binary(matrix[i:i + rows])
        head, newline, _ = chunk.partition(b"\n")
        line += head
        if newline:
            break
    return projector.binary_tensor_is_readable(line)


def sprite_tile(thumbnails: Sequence, requested: int) -> int:
    """The sprite's tile: what ``requested`` allows for this many images
    within 8192 px, and no larger than the thumbnails that were made (they
    were cut before the final count was known, for at most N items); 0 when
    no row has a picture (vectors written without images: no sprite)."""
    sides = [max(t.width, t.height) for t in thumbnails if t is not None]
    if not sides:
        return 0
    return max(1, min(projector.tile_size_for(len(thumbnails), requested), max(sides)))


def build_assets(kept: Sequence[Embedded], cfg: WriterConfig,
                 layout: Optional[np.ndarray] = None,
                 bookmarks: Optional[bytes] = None) -> Assets:
    """Everything the data folder holds, ready to stream, and its digest.

    ``layout`` (N x 2 or 3 positions) places the preview's thumbnails instead
    of a PCA; ``bookmarks`` is bookmarks.json's content.

    Memory beyond the kept rows: one float32 matrix per tensor and the
    metadata text; the tensor text and the sprite (one row of tiles at a
    time) are made as they are written. The digest hashes what determines the
    files (matrices, metadata, sprite pixels, formats), not the file bytes,
    so the folder name is known before anything is written.
    """
    n = len(kept)
    h = hashlib.sha256()
    files: List[Asset] = []
    tensors, standalone_tensors, matrices = [], [], []
    for t, name in enumerate(cfg.tensor_names):
        matrix = np.empty((n, len(kept[0].vectors[t])), dtype=np.float32)
        for i, e in enumerate(kept):
            matrix[i] = e.vectors[t]
        fmt = cfg.settings.tensor_format
        if fmt == "binary" and not _binary_is_readable(matrix):
            LOG.warning("tensor %s would be misread as text by TensorBoard; writing TSV", name)
            fmt = "tsv"
        fname = tensor_file_name(name, len(cfg.tensor_names), fmt)
        files.append(Asset(fname, _tensor_writer(matrix, fmt)))
        h.update(f"{fname}\0{fmt}\0{matrix.shape}\0".encode())
        h.update(memoryview(matrix).cast("B"))   # no copy of a matrix that may be GBs
        tensors.append((name, matrix.shape, fname))
        matrices.append(matrix)
        if cfg.settings.standalone:
            # the standalone projector reads float32 only from a .bytes path
            bname = tensor_file_name(name, len(cfg.tensor_names), "binary")
            if bname != fname:
                files.append(Asset(bname, _tensor_writer(matrix, "binary")))
                h.update(f"{bname}\0".encode())
            standalone_tensors.append((name, matrix.shape, bname))
    meta = projector.metadata_tsv(cfg.columns, [e.item.metadata for e in kept]).encode("utf-8")
    files.append(Asset(METADATA_NAME, _bytes_writer(meta)))
    h.update(METADATA_NAME.encode() + b"\0" + hashlib.sha256(meta).digest())
    thumbnails = [e.thumbnail for e in kept]
    tile = sprite_tile(thumbnails, cfg.settings.tile_size)
    png = None
    if tile:
        side = projector.tiles_per_side(n) * tile
        files.append(Asset(SPRITE_NAME, lambda f: write_png_strips(
            f, side, side, lambda row: projector.sprite_strip(thumbnails, tile, row),
            projector.tiles_per_side(n))))
        # the sprite is a pure function of the thumbnails (lossless PNGs) and the tile
        h.update(f"{SPRITE_NAME}\0{tile}\0{n}\0".encode())
        for th in thumbnails:
            h.update(th.digest() if th is not None else b"no picture")
    if bookmarks is not None:
        files.append(Asset(BOOKMARKS_NAME, _bytes_writer(bookmarks)))
        h.update(BOOKMARKS_NAME.encode() + b"\0" + hashlib.sha256(bookmarks).digest())
    # The preview is a view of these assets, not one TensorBoard reads: it
    # stays out of the digest and goes to the root (see publish).
    if tile and cfg.settings.preview:
        m = min(n, PREVIEW_MAX_POINTS)
        coords = None if layout is None else np.asarray(layout)[:m, :2]
        png = png_bytes(preview.render_preview(thumbnails[:m], matrices[0][:m], tile,
                                               coords=coords))
    return Assets(files, tensors, h.hexdigest()[:16], tile, standalone_tensors, png,
                  BOOKMARKS_NAME if bookmarks is not None else "")
