"""The one ordered stage that writes and publishes the projector logdir.

Everything meets here, sorted by the sample key, so tensor row i, metadata row
i and sprite tile i are the same image on every runner. Assets are written to
a fresh content-addressed folder (``data-<digest>/``) that nothing references
yet, every extra (errors.tsv, preview, standalone export, run summary) is
staged beside its final name, and the config is renamed in last. A run that
fails or is killed before that rename leaves the previous logdir as
TensorBoard knew it. Only what the manifest (``.beam-projector-manifest.json``)
lists is ever replaced or deleted: see ``publish``.
"""
import collections
import hashlib
import io
import json
import logging
import posixpath
import re
import uuid
from typing import BinaryIO, Callable, List, NamedTuple, Optional, Sequence, Tuple

import apache_beam as beam
import numpy as np
from apache_beam.io.filesystems import FileSystems

from beam_projector.transforms import preview, projector, standalone
from beam_projector.transforms.decode import release_free_memory
from beam_projector.transforms.items import METRICS_NAMESPACE, Embedded, ErrorRow, order_key
from beam_projector.transforms.lock import PublishLock, describe_io_error, is_local
from beam_projector.transforms.staging import LocalCopies, delete_staging, staging_dir, sweep_dead_staging

LOG = logging.getLogger(__name__)
CONFIG_NAME = "projector_config.pbtxt"
ERRORS_NAME = "errors.tsv"
SUSPECTS_NAME = "suspects.tsv"
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
    run_id: str = ""            # names this run in run_summary.json and its temp files
    options_json: str = ""      # the options used, for run_summary.json
    label_column: str = ""      # the column suspects.tsv reads labels from


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


SUSPECT_HEADER = ("kind", "rank", "image", "label", "score", "reason")


def suspects_tsv(columns: Sequence[str], rows: Sequence[Sequence[str]],
                 label_column: str = "") -> Tuple[Optional[bytes], dict]:
    """suspects.tsv from the kept rows' neighbour columns, and its counts.

    Top-down: likely mislabelled items (their neighbours' majority label is
    another; lowest agreement first, then nearest), the most isolated items
    (largest K-th neighbour distance), then duplicate groups (the first item
    in output order, then its copies). None when the columns are absent.
    """
    col = {c: i for i, c in enumerate(columns)}
    if "nn_distance" not in col or "duplicate_of" not in col:
        return None, {}
    out = ["\t".join(SUSPECT_HEADER)]

    def emit(kind, rank, row, score, reason):
        label = row[col[label_column]] if label_column in col else ""
        out.append("\t".join(projector.escape_metadata_value(v) for v in
                             (kind, rank, row[0], label, score, reason)))

    counts = {"suspects_mislabelled": 0, "suspects_isolated": 0,
              "duplicate_groups": 0, "duplicates": 0}
    if label_column in col and "nn_label_agreement" in col:
        lab, agr, maj = col[label_column], col["nn_label_agreement"], col["nn_majority_label"]
        dist = col["nn_distance"]
        flagged = [i for i, r in enumerate(rows) if r[agr] and r[maj] != r[lab]]
        flagged.sort(key=lambda i: (float(rows[i][agr]), float(rows[i][dist]), i))
        for rank, i in enumerate(flagged, 1):
            r = rows[i]
            emit("mislabelled", rank, r, r[agr],
                 f"label {r[lab]!r} is carried by {float(r[agr]):.0%} of its nearest "
                 f"neighbours; most of them are {r[maj]!r}")
        counts["suspects_mislabelled"] = len(flagged)
    dist = col["nn_distance"]
    scored = [i for i, r in enumerate(rows) if r[dist]]
    isolated = sorted(scored, key=lambda i: (-float(rows[i][dist]), i))
    isolated = isolated[:max(10, -(-len(scored) // 100))]
    for rank, i in enumerate(isolated, 1):
        r = rows[i]
        emit("isolated", rank, r, r[dist],
             f"K-th nearest neighbour at cosine distance {r[dist]} "
             f"(rank {rank} of {len(scored)} by isolation)")
    counts["suspects_isolated"] = len(isolated)
    # duplicate groups: union of the duplicate_of links, in output order
    first_row = {}
    for i, r in enumerate(rows):
        first_row.setdefault(r[0], i)
    parent = list(range(len(rows)))

    def root(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, r in enumerate(rows):
        j = first_row.get(r[col["duplicate_of"]])
        if r[col["duplicate_of"]] and j is not None:
            a, b = root(i), root(j)
            parent[max(a, b)] = min(a, b)
    groups = collections.defaultdict(list)
    for i in range(len(rows)):
        groups[root(i)].append(i)
    groups = [g for _, g in sorted(groups.items()) if len(g) > 1]
    for rank, members in enumerate(groups, 1):
        first = rows[members[0]]
        emit("duplicate", rank, first, len(members),
             f"first of {len(members)} near-identical pictures")
        for i in members[1:]:
            emit("duplicate", rank, rows[i], len(members), f"same picture as {first[0]}")
    counts["duplicate_groups"] = len(groups)
    counts["duplicates"] = sum(len(g) - 1 for g in groups)
    return ("\n".join(out) + "\n").encode("utf-8"), counts


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
    the N-th item that decoded (embedded or failed in the model): those are
    the first N that decoded (read and decode failures were refilled from
    the margin), and model failures are not backfilled, so decode failures
    beyond that cut were never needed either.
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
        h.update(f"{fname}\0{fmt}\0{matrix.shape}\0".encode())
        h.update(memoryview(matrix).cast("B"))   # no copy of a matrix that may be GBs
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
        h.update(th.digest())
    # The preview is a view of these assets, not one TensorBoard reads: it
    # stays out of the digest and goes to the root (see publish).
    png = None
    if cfg.preview:
        m = min(n, PREVIEW_MAX_POINTS)
        png = projector.png_bytes(preview.render_preview(thumbnails[:m], matrices[0][:m], tile))
    return Assets(files, tensors, h.hexdigest()[:16], tile, standalone_tensors, png)


def _referenced_data_dir(config_text: Optional[str]) -> Optional[str]:
    """The ``data-<digest>`` folder a config's first embedding reads its
    metadata from, read through the proto; None when there is none."""
    if not config_text:
        return None
    try:
        config = projector.parse_projector_config(config_text)
    except Exception:  # noqa: BLE001 - text_format.ParseError: not one of our configs
        return None
    for embedding in config.embeddings[:1]:
        folder = embedding.metadata_path.split("/", 1)[0]
        if "/" in embedding.metadata_path and _DATA_FOLDER.match(folder):
            return folder
    return None


# --- what the tool owns in a logdir, and the publish step ------------------------------

MANIFEST_NAME = ".beam-projector-manifest.json"
SUMMARY_NAME = "run_summary.json"
# A one-event TensorBoard event file: it makes the logdir a *run*, so a
# projector written to a sub-folder of a training logdir shows up as its own
# run there (TensorBoard lists only folders holding event files, besides the
# root). Fixed wall time: the file is the same on every run.
EVENTS_NAME = "events.out.tfevents.0.beam-projector"
# Every root file a run may write, in the order a publish renames them into
# place: the extras first, the TensorBoard config last, since the config swap
# is what makes a run visible.
ROOT_FILES = (EVENTS_NAME, ERRORS_NAME, SUSPECTS_NAME, standalone.BUNDLE_NAME, standalone.INDEX_NAME, PREVIEW_NAME,
              SUMMARY_NAME, standalone.STANDALONE_CONFIG_NAME, CONFIG_NAME)
# Beam's FileSystems.match and LocalFileSystem.delete read these as a pattern.
GLOB_CHARS = "*?["
_DATA_FOLDER = re.compile(r"^data-[0-9a-f]{16}$")
_TAG = re.compile(r"^[0-9a-zA-Z]{1,64}$")


class OwnershipError(ValueError):
    """The logdir holds a file beam-projector did not write where a run would write."""


class PublishError(RuntimeError):
    """Writing the logdir failed; the message names the path and what was undone."""


def root_files(preview_png: bool, standalone_export: bool,
               suspects: bool = False) -> Tuple[str, ...]:
    """The root files one run writes, in publish order."""
    names = {EVENTS_NAME, ERRORS_NAME, SUMMARY_NAME, CONFIG_NAME}
    if suspects:
        names.add(SUSPECTS_NAME)
    if preview_png:
        names.add(PREVIEW_NAME)
    if standalone_export:
        names |= {standalone.BUNDLE_NAME, standalone.INDEX_NAME,
                  standalone.STANDALONE_CONFIG_NAME}
    return tuple(n for n in ROOT_FILES if n in names)


def glob_chars(path: str) -> str:
    """The glob characters in ``path`` (empty when none)."""
    return "".join(c for c in GLOB_CHARS if c in path)


def read_manifest(out: str) -> dict:
    """The logdir's manifest: {"files", "data", "pending", "exists"}.

    Only names the tool itself could have written survive validation (known
    root files, ``data-<16 hex>`` folders, alphanumeric temp tags), so an
    edited manifest can never make a run delete anything else.
    """
    path = join(out, MANIFEST_NAME)
    try:
        text = read_text(path)
    except Exception as e:  # noqa: BLE001
        raise OwnershipError(f"cannot read {path}: {e}") from None
    if text is None:
        return {"files": [], "data": [], "pending": [], "exists": False}
    try:
        raw = json.loads(text)
        files, data = list(raw["files"]), list(raw["data"])
        pending = list(raw.get("pending", []))
    except (ValueError, KeyError, TypeError):
        raise OwnershipError(f"{path} is not a beam-projector manifest; move it away or "
                             "write to another --output") from None
    return {"files": sorted({f for f in files if f in ROOT_FILES}),
            "data": sorted({d for d in data if isinstance(d, str) and _DATA_FOLDER.match(d)}),
            "pending": sorted({t for t in pending if isinstance(t, str) and _TAG.match(t)}),
            "exists": True}


def _write_manifest(out: str, files, data, pending, tag: str) -> None:
    # No run id or time: the same run gives the same logdir byte for byte.
    body = {"tool": "beam-projector", "version": 1,
            "comment": "what beam-projector wrote here; it deletes or replaces only these",
            "files": sorted(set(files)), "data": sorted(set(data)),
            "pending": sorted(set(pending))}
    _replace(join(out, MANIFEST_NAME), (json.dumps(body, indent=2) + "\n").encode(), tag)


def foreign_files(out: str, names: Sequence[str], manifest: dict) -> List[str]:
    """Those of ``names`` present in ``out`` that the manifest does not list."""
    owned = set(manifest["files"])
    return [n for n in names if n not in owned and FileSystems.exists(join(out, n))]


def _foreign_message(out: str, foreign: Sequence[str], manifest: dict) -> str:
    msg = (f"--output {out} already holds {', '.join(foreign)}, which beam-projector did "
           f"not write and never replaces; write to a sub-folder instead, e.g. --output "
           f"{join(out, 'projector')} (TensorBoard shows it as its own run)")
    if CONFIG_NAME in foreign and not manifest["exists"]:
        try:
            legacy = _referenced_data_dir(read_text(join(out, CONFIG_NAME)))
        except Exception:  # noqa: BLE001 - the hint is optional
            legacy = None
        if legacy and _DATA_FOLDER.match(legacy):
            msg += (f"; if an earlier beam-projector version wrote it, delete {CONFIG_NAME} "
                    f"and {legacy}/ to let this version take the folder over")
    return msg


def check_output_owned(out: str, names: Sequence[str]) -> None:
    """Raise OwnershipError when a root file this run would write exists and
    beam-projector did not write it (preflight: before any work)."""
    manifest = read_manifest(out)
    foreign = foreign_files(out, names, manifest)
    if foreign:
        raise OwnershipError(_foreign_message(out, foreign, manifest))


def _cannot_write(path: str, e: Exception) -> PublishError:
    """The one line a failed write of ``path`` reports, whatever raised."""
    return PublishError(f"cannot write {path}: {describe_io_error(e)}")


def _write(path: str, data: bytes) -> None:
    try:
        write_bytes(path, data)
    except Exception as e:  # noqa: BLE001 - name the path, whatever the filesystem raised
        raise _cannot_write(path, e) from e


def _write_stream(path: str, write: Callable[[BinaryIO], None]) -> None:
    try:
        write_stream(path, write)
    except Exception as e:  # noqa: BLE001 - name the path, whatever the filesystem raised
        raise _cannot_write(path, e) from e


def _replace(path: str, data: bytes, tag: str) -> None:
    try:
        replace_file(path, data, tag)
    except Exception as e:  # noqa: BLE001
        _try_delete([path + f".tmp-{tag}"])
        raise _cannot_write(path, e) from e


def _delete(paths: Sequence[str]) -> None:
    """Delete exact paths the tool built itself; never a pattern (LocalFileSystem
    and object stores match each path as a glob, so none may hold one)."""
    for p in paths:
        assert not glob_chars(p), p
    if paths:
        FileSystems.delete(list(paths))


def _folder_path(out: str, folder: str) -> str:
    # deleting a local folder path removes it recursively; object stores
    # delete a prefix given with a trailing "/"
    path = join(out, folder)
    return path if is_local(out) else path + "/"


def _folder_exists(out: str, folder: str) -> bool:
    path = join(out, folder)
    if is_local(out):
        return FileSystems.exists(path)
    try:
        return bool(FileSystems.match([path + "/**"], limits=[1])[0].metadata_list)
    except Exception:  # noqa: BLE001 - nothing listed under the prefix
        return False


def _try_delete(paths: Sequence[str]) -> List[str]:
    """Delete what exists of ``paths``; returns those that could not be deleted."""
    failed = []
    for p in paths:
        try:
            if (_folder_exists(*p.rstrip("/").rsplit("/", 1)) if p.endswith("/")
                    else FileSystems.exists(p)):
                _delete([p])
        except Exception:  # noqa: BLE001 - kept in the manifest, swept next time
            LOG.warning("could not delete %s; the next run retries", p, exc_info=True)
            failed.append(p)
    return failed


def _temp_paths(out: str, tag: str) -> List[str]:
    return [join(out, name + f".tmp-{tag}") for name in ROOT_FILES + (MANIFEST_NAME,)]


def _root_payloads(assets: Assets, cfg: WriterConfig, folder: str, config: str,
                   reported_errors: Sequence[ErrorRow],
                   suspects: Optional[bytes] = None) -> List[Tuple[str, bytes]]:
    """Every root file this run writes, in publish order (the config last)."""
    out = {EVENTS_NAME: events_file(), ERRORS_NAME: errors_tsv(reported_errors),
           CONFIG_NAME: config.encode("utf-8"),
           SUMMARY_NAME: _writer_summary(assets, cfg, reported_errors)}
    if suspects is not None:
        out[SUSPECTS_NAME] = suspects
    if assets.preview_png is not None:
        out[PREVIEW_NAME] = assets.preview_png
    if assets.standalone_tensors:
        out[standalone.BUNDLE_NAME] = _projector_bundle()
        out[standalone.INDEX_NAME] = standalone.index_html().encode("utf-8")
        out[standalone.STANDALONE_CONFIG_NAME] = standalone.config_json(
            [(name, shape, posixpath.join(folder, path))
             for name, shape, path in assets.standalone_tensors],
            posixpath.join(folder, METADATA_NAME), posixpath.join(folder, SPRITE_NAME),
            assets.tile).encode("utf-8")
    return [(name, out[name]) for name in ROOT_FILES if name in out]


def events_file() -> bytes:
    """A TFRecord holding one ``Event`` (the file version), as TensorBoard writes."""
    import struct

    from tensorboard.compat.proto.event_pb2 import Event
    from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import masked_crc32c

    data = Event(wall_time=0.0, file_version="brain.Event:2").SerializeToString()
    header = struct.pack("<Q", len(data))
    return (header + struct.pack("<I", masked_crc32c(header)) + data
            + struct.pack("<I", masked_crc32c(data)))


def _writer_summary(assets: Assets, cfg: WriterConfig, reported_errors) -> bytes:
    """run_summary.json as the writer knows it; the launcher adds Beam's
    counters and timings after the job (``update_summary``)."""
    summary = {"run_id": cfg.run_id, "data_folder": DATA_PREFIX + assets.digest,
               "counters": {"written": int(assets.tensors[0][1][0]) if assets.tensors else 0,
                            "failed": len(reported_errors)},
               "options": json.loads(cfg.options_json) if cfg.options_json else {}}
    return json.dumps(summary, indent=2, sort_keys=True, default=str).encode("utf-8") + b"\n"


def publish(assets: Assets, cfg: WriterConfig, reported_errors: Sequence[ErrorRow],
            suspects: Optional[bytes] = None) -> str:
    """Write the data folder and every extra, then swap the config in. Returns the config text.

    Under the logdir's publish lock (transforms/lock.py) no other run is
    between these steps, so every data folder and temp file the manifest
    lists, other than the live one, was left by a run that died or was
    superseded: the sweep removes exactly those, never a folder or file the
    manifest does not list. The manifest claims this run's folder and files
    before any of them appear, so a kill at any point leaves nothing the next
    run would mistake for a user's file.
    """
    out = cfg.output
    folder = DATA_PREFIX + assets.digest
    config = projector.projector_config_text(
        [(name, shape, posixpath.join(folder, path)) for name, shape, path in assets.tensors],
        posixpath.join(folder, METADATA_NAME), posixpath.join(folder, SPRITE_NAME), assets.tile)
    payloads = _root_payloads(assets, cfg, folder, config, reported_errors, suspects)
    names = [n for n, _ in payloads]
    tag = cfg.run_id if _TAG.match(cfg.run_id or "") else uuid.uuid4().hex
    with PublishLock(out) as lock:
        manifest = read_manifest(out)
        foreign = foreign_files(out, names, manifest)
        owned_data = set(manifest["data"])
        live = (_referenced_data_dir(read_text(join(out, CONFIG_NAME)))
                if CONFIG_NAME in manifest["files"] else None)
        reuse = live == folder and folder in owned_data and _folder_exists(out, folder)
        if folder not in owned_data and _folder_exists(out, folder):
            foreign.append(folder + "/")
        if foreign:
            raise OwnershipError(_foreign_message(out, foreign, manifest))
        renamed = False
        temps = []
        try:
            # claim everything before it appears
            _write_manifest(out, set(manifest["files"]) | set(names), owned_data | {folder},
                            set(manifest["pending"]) | {tag}, tag)
            if not reuse:
                if _folder_exists(out, folder):   # ours, from a run that died: maybe partial
                    _delete([_folder_path(out, folder)])
                for asset in assets.files:
                    _write_stream(join(out, folder, asset.name), asset.write)
                    lock.renew()
            for name, data in payloads:
                tmp = join(out, name + f".tmp-{tag}")
                temps.append(tmp)
                try:
                    write_bytes(tmp, data)
                except Exception as e:  # noqa: BLE001 - name the file, not its temp
                    raise _cannot_write(join(out, name), e) from e
            # extras an earlier run wrote and this one does not: gone before the swap
            gone = [n for n in manifest["files"] if n not in names]
            undeleted = {n for n in gone if _try_delete([join(out, n)])}
            for name in names:
                try:
                    FileSystems.rename([join(out, name + f".tmp-{tag}")], [join(out, name)])
                except Exception as e:  # noqa: BLE001
                    raise _cannot_write(join(out, name), e) from e
                renamed = True
        except Exception as e:
            _try_delete(temps)
            undone = ""
            if not reuse and not renamed:
                undone = f"; removed its partial {folder}/" if not _try_delete(
                    [_folder_path(out, folder)]) else ""
                try:   # give back the claim
                    _write_manifest(out, manifest["files"], manifest["data"],
                                    manifest["pending"], tag)
                except Exception:  # noqa: BLE001 - the claim is swept by the next run
                    pass
            what = ("; the previous projector is still live, beside this attempt's extras"
                    if renamed else "; nothing published, the previous projector is unchanged")
            raise PublishError(f"{e if isinstance(e, PublishError) else describe_io_error(e)}"
                               f"{what}{undone}") from e
        # the sweep: what died or was superseded, as the manifest lists it,
        # and the staging folders of killed runs (transforms/staging.py)
        sweep_dead_staging(out, keep=posixpath.basename(staging_dir(out, cfg.run_id)))
        kept = {folder}
        for d in sorted(owned_data - {folder}):
            if _try_delete([_folder_path(out, d)]):
                kept.add(d)
        kept_tags = {t for t in manifest["pending"]
                     if t != tag and _try_delete(_temp_paths(out, t))}
        try:
            _write_manifest(out, set(names) | undeleted, kept, kept_tags, tag)
        except PublishError as e:   # published; the claim written above still holds
            LOG.warning("published, but %s; the next run tidies up", e)
    return config


def publish_errors_only(cfg: WriterConfig, rows: Sequence[ErrorRow]) -> None:
    """errors.tsv for a run that publishes nothing (too many failures)."""
    out = cfg.output
    tag = cfg.run_id if _TAG.match(cfg.run_id or "") else uuid.uuid4().hex
    with PublishLock(out):
        manifest = read_manifest(out)
        foreign = foreign_files(out, [ERRORS_NAME], manifest)
        if foreign:
            raise OwnershipError(_foreign_message(out, foreign, manifest))
        if ERRORS_NAME not in manifest["files"]:
            _write_manifest(out, set(manifest["files"]) | {ERRORS_NAME}, manifest["data"],
                            manifest["pending"], tag)
        _replace(join(out, ERRORS_NAME), errors_tsv(rows), tag)


def update_summary(out: str, run_id: str, data: bytes) -> bool:
    """Replace run_summary.json with the launcher's full summary, only while
    the logdir still shows this run (a later run may have published since)."""
    with PublishLock(out):
        if not run_id or SUMMARY_NAME not in read_manifest(out)["files"]:
            return False
        path = join(out, SUMMARY_NAME)
        try:
            current = json.loads(read_text(path) or "{}").get("run_id")
        except (ValueError, AttributeError):
            return False
        if current != run_id:
            return False
        _replace(path, data, run_id if _TAG.match(run_id) else "summary")
        return True


def _projector_bundle() -> bytes:
    """TensorBoard's projector bundle from the installed package: the same
    code as the standalone projector, so the export needs no download."""
    import importlib.resources

    return (importlib.resources.files(standalone.BUNDLE_PACKAGE)
            .joinpath(standalone.BUNDLE_NAME).read_bytes())


def join_columns(kept: Sequence[Embedded], tables: Sequence[dict],
                 widths: Sequence[int]) -> List[Embedded]:
    """Append each column stage's values (``tables[i]``: order key -> values)
    to the items' metadata; an item a stage gave no row gets empty values."""
    if not tables:
        return list(kept)
    out = []
    for e in kept:
        key = order_key(e.item)
        extra = tuple(v for table, width in zip(tables, widths)
                      for v in table.get(key, ("",) * width))
        out.append(e._replace(item=e.item._replace(metadata=tuple(e.item.metadata) + extra)))
    return out


class _WriteLogdirFn(beam.DoFn):
    def __init__(self, cfg: WriterConfig, column_widths: Sequence[int] = ()):
        self._cfg = cfg
        self._widths = tuple(column_widths)

    def process(self, keyed):
        release_free_memory()
        _, tagged = keyed
        embedded, errors = [], []
        tables = [{} for _ in self._widths]
        for tag, v in tagged:
            if tag == "ok":
                embedded.append(v)
            elif tag == "err":
                errors.append(v)
            else:
                key, values = v
                tables[tag][key] = tuple(values)
        cfg = self._cfg
        kept, counted, reported = select_for_publish(embedded, errors, cfg.max_items)
        del embedded
        kept = join_columns(kept, tables, self._widths)
        del tables
        staged = staging_dir(cfg.output, cfg.run_id)
        examined = len(kept) + len(counted)
        if not kept or (examined and len(counted) / examined > cfg.max_error_fraction):
            publish_errors_only(cfg, reported)
            delete_staging(staged)   # a retry would fail the same way
            if not kept:
                raise TooManyErrors(
                    f"no image could be embedded ({len(reported)} errors); "
                    f"see {join(cfg.output, ERRORS_NAME)}")
            raise TooManyErrors(
                f"{len(counted)} of {examined} sampled items failed "
                f"({len(counted) / examined:.1%} > --max_error_fraction "
                f"{cfg.max_error_fraction:.1%}); nothing published, "
                f"see {join(cfg.output, ERRORS_NAME)}")
        # Other failures keep the staging folder: a retried bundle needs it.
        with LocalCopies([e.thumbnail for e in kept]) as thumbnails:
            kept = [e._replace(thumbnail=t) for e, t in zip(kept, thumbnails)]
            del thumbnails
            assets = build_assets(kept, cfg)
            suspects, suspect_counts = suspects_tsv(
                cfg.columns, [e.item.metadata for e in kept], cfg.label_column)
            release_free_memory()   # the preview's canvas and the matrix building's temporaries
            publish(assets, cfg, reported, suspects)
        delete_staging(staged)
        for name, value in suspect_counts.items():
            beam.metrics.Metrics.counter(METRICS_NAMESPACE, name).inc(value)
        written = beam.metrics.Metrics.counter(METRICS_NAMESPACE, "written")
        written.inc(len(kept))
        beam.metrics.Metrics.counter(METRICS_NAMESPACE, "failed").inc(len(reported))
        yield {"written": len(kept), "failed": len(reported), "digest": assets.digest,
               "tensors": [(n, list(s)) for n, s, _ in assets.tensors], "tile": assets.tile}


class WriteProjectorLogdir(beam.PTransform):
    """(embedded, errors, *column tables) -> one summary dict, after
    publishing the logdir.

    Each column table is a PCollection of (order key, values) pairs, joined
    onto the items' metadata in this one stage (``column_widths``: how many
    values each table gives), so the items do not wait for the stages that
    compute them.
    """

    def __init__(self, cfg: WriterConfig, column_widths: Sequence[int] = ()):
        super().__init__()
        self._cfg = cfg
        self._widths = tuple(column_widths)

    def expand(self, pcolls):
        embedded, errors, *tables = pcolls
        if len(tables) != len(self._widths):
            raise ValueError(f"{len(tables)} column tables for {len(self._widths)} widths")
        ok = embedded | "TagOk" >> beam.Map(lambda e: (None, ("ok", e)))
        bad = errors | "TagErr" >> beam.Map(lambda e: (None, ("err", e)))
        tagged = [table | f"TagColumns{i}" >> beam.Map(lambda kv, i=i: (None, (i, kv)))
                  for i, table in enumerate(tables)]
        return ((ok, bad, *tagged)
                | "Together" >> beam.Flatten()
                | "OneStage" >> beam.GroupByKey()
                | "Write" >> beam.ParDo(_WriteLogdirFn(self._cfg, self._widths)))
