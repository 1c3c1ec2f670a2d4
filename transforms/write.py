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
import hashlib
import json
import logging
import posixpath
import re
import uuid
from typing import List, NamedTuple, Optional, Sequence, Tuple

import apache_beam as beam
import numpy as np
from apache_beam.io.filesystems import FileSystems

from transforms import preview, projector, standalone
from transforms.items import Embedded, ErrorRow, order_key
from transforms.lock import PublishLock, is_local

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
    run_id: str = ""            # names this run in run_summary.json and its temp files
    options_json: str = ""      # the options used, for run_summary.json


def join(base: str, *parts: str) -> str:
    return FileSystems.join(base, *parts)


def write_bytes(path: str, data: bytes) -> None:
    with FileSystems.create(path, mime_type="application/octet-stream",
                            compression_type="uncompressed") as f:
        f.write(data)


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


class Assets(NamedTuple):
    files: List[Tuple[str, bytes]]   # (name inside the data folder, bytes)
    tensors: List[Tuple[str, Tuple[int, int], str]]
    digest: str
    tile: int
    # (name, shape, .bytes file) for the standalone projector; empty without --standalone
    standalone_tensors: Sequence[Tuple[str, Tuple[int, int], str]] = ()
    preview_png: Optional[bytes] = None


def build_assets(kept: Sequence[Embedded], cfg: WriterConfig) -> Assets:
    n = len(kept)
    files = []
    tensors = []
    standalone_tensors = []
    matrices = []
    for t, name in enumerate(cfg.tensor_names):
        matrix = np.stack([e.vectors[t] for e in kept]).astype(np.float32)
        fmt = cfg.tensor_format
        data = projector.tensor_binary(matrix) if fmt == "binary" else None
        if data is not None and not projector.binary_tensor_is_readable(data):
            LOG.warning("tensor %s would be misread as text by TensorBoard; writing TSV", name)
            fmt, data = "tsv", None
        if data is None:
            data = projector.tensor_tsv(matrix)
        fname = tensor_file_name(name, len(cfg.tensor_names), fmt)
        files.append((fname, data))
        tensors.append((name, matrix.shape, fname))
        matrices.append(matrix)
        if cfg.standalone:
            # the standalone projector reads float32 only from a .bytes path
            bname = tensor_file_name(name, len(cfg.tensor_names), "binary")
            if bname != fname:
                files.append((bname, projector.tensor_binary(matrix)))
            standalone_tensors.append((name, matrix.shape, bname))
    meta = projector.metadata_tsv(cfg.columns, [e.item.metadata for e in kept]).encode("utf-8")
    files.append((METADATA_NAME, meta))
    _, tile, _ = projector.sprite_geometry(n, cfg.tile)
    sprite = projector.png_bytes(projector.assemble_sprite([e.thumbnail for e in kept], tile))
    files.append((SPRITE_NAME, sprite))
    h = hashlib.sha256()
    for fname, data in files:
        h.update(fname.encode() + b"\0" + hashlib.sha256(data).digest())
    # The preview is a view of these assets, not one TensorBoard reads: it
    # stays out of the digest and goes to the root (see publish).
    png = None
    if cfg.preview:
        png = preview.png_bytes(preview.render_preview(
            [e.thumbnail for e in kept], matrices[0], tile))
    return Assets(files, tensors, h.hexdigest()[:16], tile, standalone_tensors, png)


def _referenced_data_dir(config_text: Optional[str]) -> Optional[str]:
    if not config_text:
        return None
    m = re.search(r'metadata_path: "(data-[0-9a-f]+)/', config_text)
    return m.group(1) if m else None


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
ROOT_FILES = (EVENTS_NAME, ERRORS_NAME, standalone.BUNDLE_NAME, standalone.INDEX_NAME, PREVIEW_NAME,
              SUMMARY_NAME, standalone.STANDALONE_CONFIG_NAME, CONFIG_NAME)
# Beam's FileSystems.match and LocalFileSystem.delete read these as a pattern.
GLOB_CHARS = "*?["
_DATA_FOLDER = re.compile(r"^data-[0-9a-f]{16}$")
_TAG = re.compile(r"^[0-9a-zA-Z]{1,64}$")


class OwnershipError(ValueError):
    """The logdir holds a file beam-projector did not write where a run would write."""


class PublishError(RuntimeError):
    """Writing the logdir failed; the message names the path and what was undone."""


def root_files(preview_png: bool, standalone_export: bool) -> Tuple[str, ...]:
    """The root files one run writes, in publish order."""
    names = {EVENTS_NAME, ERRORS_NAME, SUMMARY_NAME, CONFIG_NAME}
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


def _describe(e: Exception) -> str:
    """An OSError (also when Beam wraps it in BeamIOError) as '[Errno N] text'."""
    inner = getattr(e, "exception_details", None)
    if isinstance(inner, dict) and inner:
        e = next(iter(inner.values()))
    while isinstance(e, OSError) and e.errno is None and e.args and isinstance(e.args[0], OSError):
        e = e.args[0]   # LocalFileSystem wraps an OSError in IOError(err)
    if isinstance(e, OSError) and e.errno is not None:
        return f"[Errno {e.errno}] {e.strerror}"
    return f"{type(e).__name__}: {e}"


def _write(path: str, data: bytes) -> None:
    try:
        write_bytes(path, data)
    except Exception as e:  # noqa: BLE001 - name the path, whatever the filesystem raised
        raise PublishError(f"cannot write {path}: {_describe(e)}") from e


def _replace(path: str, data: bytes, tag: str) -> None:
    try:
        replace_file(path, data, tag)
    except Exception as e:  # noqa: BLE001
        _try_delete([path + f".tmp-{tag}"])
        raise PublishError(f"cannot write {path}: {_describe(e)}") from e


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
                   reported_errors: Sequence[ErrorRow]) -> List[Tuple[str, bytes]]:
    """Every root file this run writes, in publish order (the config last)."""
    out = {EVENTS_NAME: events_file(), ERRORS_NAME: errors_tsv(reported_errors),
           CONFIG_NAME: config.encode("utf-8"),
           SUMMARY_NAME: _writer_summary(assets, cfg, reported_errors)}
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


def publish(assets: Assets, cfg: WriterConfig, reported_errors: Sequence[ErrorRow]) -> str:
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
    payloads = _root_payloads(assets, cfg, folder, config, reported_errors)
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
                for fname, data in assets.files:
                    _write(join(out, folder, fname), data)
                    lock.renew()
            for name, data in payloads:
                tmp = join(out, name + f".tmp-{tag}")
                temps.append(tmp)
                try:
                    write_bytes(tmp, data)
                except Exception as e:  # noqa: BLE001 - name the file, not its temp
                    raise PublishError(f"cannot write {join(out, name)}: {_describe(e)}") from e
            # extras an earlier run wrote and this one does not: gone before the swap
            gone = [n for n in manifest["files"] if n not in names]
            undeleted = {n for n in gone if _try_delete([join(out, n)])}
            for name in names:
                try:
                    FileSystems.rename([join(out, name + f".tmp-{tag}")], [join(out, name)])
                except Exception as e:  # noqa: BLE001
                    raise PublishError(f"cannot write {join(out, name)}: {_describe(e)}") from e
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
            raise PublishError(f"{e if isinstance(e, PublishError) else _describe(e)}"
                               f"{what}{undone}") from e
        # the sweep: what died or was superseded, as the manifest lists it
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


class _WriteLogdirFn(beam.DoFn):
    def __init__(self, cfg: WriterConfig):
        self._cfg = cfg

    def process(self, keyed):
        _, tagged = keyed
        embedded = [v for tag, v in tagged if tag == "ok"]
        errors = [v for tag, v in tagged if tag == "err"]
        cfg = self._cfg
        kept, counted, reported = select_for_publish(embedded, errors, cfg.max_items)
        examined = len(kept) + len(counted)
        if not kept or (examined and len(counted) / examined > cfg.max_error_fraction):
            publish_errors_only(cfg, reported)
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
