"""The one ordered stage that writes and publishes the projector logdir.

Everything meets here, sorted by the sample key, so tensor row i, metadata row
i and sprite tile i are the same image on every runner. Assets are written to
a fresh content-addressed folder (``data-<digest>/``) that nothing references
yet; the config is then replaced in one rename. A run that fails or is killed
before that rename leaves the previous logdir exactly as TensorBoard knew it.
"""
import hashlib
import io
import logging
import posixpath
import re
from typing import BinaryIO, Callable, List, NamedTuple, Optional, Sequence, Tuple

import apache_beam as beam
import numpy as np
from apache_beam.io.filesystems import FileSystems

from transforms import preview, projector, standalone
from transforms.decode import release_free_memory
from transforms.items import Embedded, ErrorRow, order_key

LOG = logging.getLogger(__name__)
CONFIG_NAME = "projector_config.pbtxt"
ERRORS_NAME = "errors.tsv"
DATA_PREFIX = "data-"
METADATA_NAME = "metadata.tsv"
SPRITE_NAME = "sprite.png"
PREVIEW_NAME = "preview.png"
TENSOR_FORMATS = ("tsv", "binary")
# Errors found while reading the input list (a CSV row without a path) are
# reported, but are not sampled items, so they do not count toward
# --max_error_fraction.
INPUT_STAGE = "read"
EMBED_STAGE = "embed"


class TooManyErrors(RuntimeError):
    """More sampled items failed than --max_error_fraction allows."""


class WriterConfig(NamedTuple):
    output: str
    columns: Tuple[str, ...]
    tensor_names: Tuple[str, ...]
    tile: int
    max_items: int
    max_error_fraction: float = 0.1
    tensor_format: str = "tsv"
    preview: bool = True        # preview.png at the root
    standalone: bool = False    # .bytes tensors + projector_config.json + index.html


def join(base: str, *parts: str) -> str:
    return FileSystems.join(base, *parts)


def write_bytes(path: str, data: bytes) -> None:
    with FileSystems.create(path, mime_type="application/octet-stream",
                            compression_type="uncompressed") as f:
        f.write(data)


def write_stream(path: str, write: Callable[[BinaryIO], None]) -> None:
    with FileSystems.create(path, mime_type="application/octet-stream",
                            compression_type="uncompressed") as f:
        write(f)


def read_text(path: str) -> Optional[str]:
    if not FileSystems.exists(path):
        return None
    with FileSystems.open(path, compression_type="uncompressed") as f:
        return f.read().decode("utf-8")


def replace_file(path: str, data: bytes, tag: str) -> None:
    """Write beside ``path`` then rename over it: readers see old or new, never half."""
    tmp = path + f".tmp-{tag}"
    write_bytes(tmp, data)
    if FileSystems.exists(path):
        # LocalFileSystem.rename refuses to overwrite on some platforms; GCS
        # rename is copy+delete either way.
        try:
            FileSystems.rename([tmp], [path])
            return
        except Exception:  # noqa: BLE001
            FileSystems.delete([path])
    FileSystems.rename([tmp], [path])


def errors_tsv(rows: Sequence[ErrorRow]) -> bytes:
    lines = ["input\tstage\treason"]
    for r in rows:
        lines.append("\t".join(projector.escape_metadata_value(v) for v in (r.ref, r.stage, r.reason)))
    return ("\n".join(lines) + "\n").encode("utf-8")


def tensor_file_name(name: str, count: int, fmt: str) -> str:
    ext = "tsv" if fmt == "tsv" else "bytes"
    if count == 1:
        return f"feature_vecs.{ext}"
    return f"feature_vecs-{re.sub(r'[^A-Za-z0-9_.-]+', '_', name)}.{ext}"


def select_for_publish(embedded: Sequence[Embedded], errors: Sequence[ErrorRow],
                       max_items: int):
    """(kept rows in order, errors that count, errors to report).

    Failures past the last kept key were never needed, so they neither count
    nor appear; input-list errors always appear but never count. The cut is
    the N-th item that decoded (embedded or failed in the model): KeepFirstN
    chose those before inference, and model failures are not backfilled, so
    decode failures beyond that cut were never needed either.
    """
    kept = sorted(embedded, key=lambda e: order_key(e.item))[:max_items]
    decoded = sorted([e.item.key for e in embedded]
                     + [r.key for r in errors if r.stage == EMBED_STAGE])
    last = decoded[max_items - 1] if len(decoded) >= max_items else None
    counted, reported = [], []
    for e in sorted(errors, key=lambda r: (r.key, r.ref, r.stage, r.reason)):
        if e.stage == INPUT_STAGE and e.key == 0:
            reported.append(e)
        elif last is None or e.key <= last:
            counted.append(e)
            reported.append(e)
    return kept, counted, reported


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


# Rows of a tensor formatted at once: bounds the text held while writing TSV.
TENSOR_CHUNK_ROWS = 2048
# preview.png draws at most this many points (the first in key order: a
# uniform sample of the sample), so its layout loop and PCA stay bounded at
# any N; beyond a few thousand, thumbnails shrink to a few pixels anyway.
PREVIEW_MAX_POINTS = 10_000


def _tensor_writer(matrix: np.ndarray, fmt: str) -> Callable[[BinaryIO], None]:
    def write(f):
        for i in range(0, len(matrix), TENSOR_CHUNK_ROWS):
            chunk = matrix[i:i + TENSOR_CHUNK_ROWS]
            f.write(projector.tensor_binary(chunk) if fmt == "binary"
                    else projector.tensor_tsv(chunk))
    return write


def _bytes_writer(data: bytes) -> Callable[[BinaryIO], None]:
    return lambda f: f.write(data)


def _binary_is_readable(matrix: np.ndarray) -> bool:
    """``projector.binary_tensor_is_readable`` on the file's first line only,
    found chunk by chunk instead of formatting the whole file."""
    line = b""
    for i in range(0, len(matrix), TENSOR_CHUNK_ROWS):
        chunk = projector.tensor_binary(matrix[i:i + TENSOR_CHUNK_ROWS])
        head, newline, _ = chunk.partition(b"\n")
        line += head
        if newline:
            break
    return projector.binary_tensor_is_readable(line)


def sprite_tile(thumbnails: Sequence, requested: int) -> int:
    """The sprite's tile: what ``requested`` allows for this many images
    within 8192 px, and no larger than the thumbnails that were made (they
    were cut before the final count was known, for at most N items)."""
    largest = max(max(t.width, t.height) for t in thumbnails)
    return max(1, min(projector.tile_size_for(len(thumbnails), requested), largest))


def build_assets(kept: Sequence[Embedded], cfg: WriterConfig) -> Assets:
    """Everything the data folder holds, ready to stream, and its digest.

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
        fmt = cfg.tensor_format
        if fmt == "binary" and not _binary_is_readable(matrix):
            LOG.warning("tensor %s would be misread as text by TensorBoard; writing TSV", name)
            fmt = "tsv"
        fname = tensor_file_name(name, len(cfg.tensor_names), fmt)
        files.append(Asset(fname, _tensor_writer(matrix, fmt)))
        h.update(f"{fname}\0{fmt}\0{matrix.shape}\0".encode() + matrix.tobytes())
        tensors.append((name, matrix.shape, fname))
        matrices.append(matrix)
        if cfg.standalone:
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
    tile = sprite_tile(thumbnails, cfg.tile)
    side = projector.tiles_per_side(n) * tile
    files.append(Asset(SPRITE_NAME, lambda f: projector.write_png_rows(
        f, side, side, projector.sprite_rows(thumbnails, tile))))
    # the sprite is a pure function of the thumbnails (lossless PNGs) and the tile
    h.update(f"{SPRITE_NAME}\0{tile}\0{n}\0".encode())
    for th in thumbnails:
        h.update(hashlib.sha256(th.png).digest())
    # The preview is a view of these assets, not one TensorBoard reads: it
    # stays out of the digest and goes to the root (see publish).
    png = None
    if cfg.preview:
        m = min(n, PREVIEW_MAX_POINTS)
        png = preview.png_bytes(preview.render_preview(thumbnails[:m], matrices[0][:m], tile))
    return Assets(files, tensors, h.hexdigest()[:16], tile, standalone_tensors, png)


def _referenced_data_dir(config_text: Optional[str]) -> Optional[str]:
    if not config_text:
        return None
    m = re.search(r'metadata_path: "(data-[0-9a-f]+)/', config_text)
    return m.group(1) if m else None


def publish(assets: Assets, cfg: WriterConfig, reported_errors: Sequence[ErrorRow]) -> str:
    """Write the data folder, then swap the config in. Returns the config text."""
    out = cfg.output
    folder = DATA_PREFIX + assets.digest
    config_path = join(out, CONFIG_NAME)
    current = _referenced_data_dir(read_text(config_path))
    if current != folder:
        target = join(out, folder)
        if FileSystems.exists(target):  # an orphan of a killed run: maybe partial
            FileSystems.delete([target])
        for asset in assets.files:
            write_stream(join(target, asset.name), asset.write)
    config = projector.projector_config_text(
        [(name, shape, posixpath.join(folder, path)) for name, shape, path in assets.tensors],
        posixpath.join(folder, METADATA_NAME), posixpath.join(folder, SPRITE_NAME), assets.tile)
    replace_file(config_path, config.encode("utf-8"), assets.digest)
    _publish_extras(assets, out, folder)
    replace_file(join(out, ERRORS_NAME), errors_tsv(reported_errors), assets.digest)
    _remove_stale(out, keep=folder)
    return config


def _publish_extras(assets: Assets, out: str, folder: str) -> None:
    """preview.png and the standalone export, right after the config swap.

    preview.png sits at the root only, where a bucket listing or an Airflow
    artifact shows it; nothing references it, so it needs no content-addressed
    copy, and writing it after the swap means it never shows data the config
    does not point at yet. A file this run does not produce is removed, so a
    stale preview or a standalone config naming a deleted folder never lingers.
    """
    preview_path = join(out, PREVIEW_NAME)
    if assets.preview_png is not None:
        replace_file(preview_path, assets.preview_png, assets.digest)
    elif FileSystems.exists(preview_path):
        FileSystems.delete([preview_path])
    json_path = join(out, standalone.STANDALONE_CONFIG_NAME)
    index_path = join(out, standalone.INDEX_NAME)
    bundle_path = join(out, standalone.BUNDLE_NAME)
    if assets.standalone_tensors:
        text = standalone.config_json(
            [(name, shape, posixpath.join(folder, path))
             for name, shape, path in assets.standalone_tensors],
            posixpath.join(folder, METADATA_NAME), posixpath.join(folder, SPRITE_NAME), assets.tile)
        replace_file(bundle_path, _projector_bundle(), assets.digest)
        replace_file(index_path, standalone.index_html().encode("utf-8"), assets.digest)
        replace_file(json_path, text.encode("utf-8"), assets.digest)
        return
    stale = [json_path, bundle_path]
    try:
        if standalone.INDEX_MARKER in (read_text(index_path) or ""):
            stale.append(index_path)
    except UnicodeDecodeError:  # not a page this writer produced
        pass
    stale = [p for p in stale if FileSystems.exists(p)]
    if stale:
        FileSystems.delete(stale)


def _projector_bundle() -> bytes:
    """TensorBoard's projector bundle from the installed package: the same
    code as the standalone projector, so the export needs no download."""
    import importlib.resources

    return (importlib.resources.files(standalone.BUNDLE_PACKAGE)
            .joinpath(standalone.BUNDLE_NAME).read_bytes())


def _remove_stale(out: str, keep: str) -> None:
    """Drop data folders no config points at any more, and leftover temp files."""
    # FileSystems.match lists files, never folders, so a folder is found by
    # the files inside it ("data-**" matches at any depth, locally and in
    # object stores). Deleting a local folder path removes it recursively;
    # object stores delete a prefix given with a trailing "/".
    try:
        matches = FileSystems.match([join(out, DATA_PREFIX + "**"), join(out, "*.tmp-*")])
    except Exception:  # noqa: BLE001 - nothing to clean
        return
    stale = set()
    for m in matches:
        for meta in m.metadata_list:
            rel = meta.path[len(out):].lstrip("/")
            top, sep, _ = rel.partition("/")
            if top != keep:
                remote_folder = sep and "://" in out
                stale.add(join(out, top) + ("/" if remote_folder else ""))
    if stale:
        FileSystems.delete(sorted(stale))


class _WriteLogdirFn(beam.DoFn):
    def __init__(self, cfg: WriterConfig):
        self._cfg = cfg

    def process(self, keyed):
        release_free_memory()
        _, tagged = keyed
        embedded = [v for tag, v in tagged if tag == "ok"]
        errors = [v for tag, v in tagged if tag == "err"]
        cfg = self._cfg
        kept, counted, reported = select_for_publish(embedded, errors, cfg.max_items)
        examined = len(kept) + len(counted)
        if not kept or (examined and len(counted) / examined > cfg.max_error_fraction):
            replace_file(join(cfg.output, ERRORS_NAME), errors_tsv(reported), "failed")
            if not kept:
                raise TooManyErrors(
                    f"no image could be embedded ({len(reported)} errors); "
                    f"see {join(cfg.output, ERRORS_NAME)}")
            raise TooManyErrors(
                f"{len(counted)} of {examined} sampled items failed "
                f"({len(counted) / examined:.1%} > --max_error_fraction "
                f"{cfg.max_error_fraction:.1%}); nothing published, "
                f"see {join(cfg.output, ERRORS_NAME)}")
        assets = build_assets(kept, cfg)
        publish(assets, cfg, reported)
        written = beam.metrics.Metrics.counter("projector", "written")
        written.inc(len(kept))
        beam.metrics.Metrics.counter("projector", "failed").inc(len(reported))
        yield {"written": len(kept), "failed": len(reported), "digest": assets.digest,
               "tensors": [(n, list(s)) for n, s, _ in assets.tensors], "tile": assets.tile}


class WriteProjectorLogdir(beam.PTransform):
    """(embedded, errors) -> one summary dict, after publishing the logdir."""

    def __init__(self, cfg: WriterConfig):
        super().__init__()
        self._cfg = cfg

    def expand(self, pcolls):
        embedded, errors = pcolls
        ok = embedded | "TagOk" >> beam.Map(lambda e: (None, ("ok", e)))
        bad = errors | "TagErr" >> beam.Map(lambda e: (None, ("err", e)))
        return ((ok, bad)
                | "Together" >> beam.Flatten()
                | "OneStage" >> beam.GroupByKey()
                | "Write" >> beam.ParDo(_WriteLogdirFn(self._cfg)))
