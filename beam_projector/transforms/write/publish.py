"""Publish a logdir as one transaction: data folder, extras, then the config swap.

Assets are written to a fresh content-addressed folder (``data-<digest>/``)
that nothing references yet, every extra (errors.tsv, preview, standalone
export, run summary) is staged beside its final name, and the config is
renamed in last. A run that fails or is killed before that rename leaves
the previous logdir as TensorBoard knew it. Only what the manifest lists is
ever replaced or deleted.
"""
import json
import logging
import posixpath
import uuid
from typing import BinaryIO, Callable, List, Optional, Sequence, Tuple

from apache_beam.io.filesystems import FileSystems

from beam_projector.transforms import projector, standalone
from beam_projector.transforms.files import (
    describe_io_error,
    is_local,
    join,
    read_text,
    replace_file,
    write_bytes,
    write_stream,
)
from beam_projector.transforms.records import ErrorRow
from beam_projector.transforms.staging import staging_dir, sweep_dead_staging
from beam_projector.transforms.write.assets import Assets, errors_tsv
from beam_projector.transforms.write.config import WriterConfig
from beam_projector.transforms.write.layout import (
    CONFIG_NAME,
    DATA_PREFIX,
    ERRORS_NAME,
    EVENTS_NAME,
    MANIFEST_NAME,
    METADATA_NAME,
    PREVIEW_NAME,
    ROOT_FILES,
    SPRITE_NAME,
    SUMMARY_NAME,
    SUSPECTS_NAME,
    TEMP_TAG,
    glob_chars,
)
from beam_projector.transforms.write.lock import PublishLock
from beam_projector.transforms.write.ownership import (
    OwnershipError,
    foreign_files,
    foreign_message,
    read_manifest,
    referenced_data_dir,
)

LOG = logging.getLogger(__name__)


class PublishError(RuntimeError):
    """Writing the logdir failed; the message names the path and what was undone."""




def _write_manifest(out: str, files, data, pending, tag: str) -> None:
    # No run id or time: the same run gives the same logdir byte for byte.
    body = {"tool": "beam-projector", "version": 1,
            "comment": "what beam-projector wrote here; it deletes or replaces only these",
            "files": sorted(set(files)), "data": sorted(set(data)),
            "pending": sorted(set(pending))}
    _replace(join(out, MANIFEST_NAME), (json.dumps(body, indent=2) + "\n").encode(), tag)


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


def _sprite_path(folder: str, assets: Assets) -> Optional[str]:
    """The sprite's path in the config; None when no row has a picture."""
    return posixpath.join(folder, SPRITE_NAME) if assets.tile else None


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
            posixpath.join(folder, METADATA_NAME), _sprite_path(folder, assets),
            assets.tile,
        posixpath.join(folder, assets.bookmarks) if assets.bookmarks else None).encode("utf-8")
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
        posixpath.join(folder, METADATA_NAME), _sprite_path(folder, assets), assets.tile,
        posixpath.join(folder, assets.bookmarks) if assets.bookmarks else None)
    payloads = _root_payloads(assets, cfg, folder, config, reported_errors, suspects)
    names = [n for n, _ in payloads]
    tag = cfg.run_id if TEMP_TAG.match(cfg.run_id or "") else uuid.uuid4().hex
    with PublishLock(out) as lock:
        manifest = read_manifest(out)
        foreign = foreign_files(out, names, manifest)
        owned_data = set(manifest["data"])
        live = (referenced_data_dir(read_text(join(out, CONFIG_NAME)))
                if CONFIG_NAME in manifest["files"] else None)
        reuse = live == folder and folder in owned_data and _folder_exists(out, folder)
        if folder not in owned_data and _folder_exists(out, folder):
            foreign.append(folder + "/")
        if foreign:
            raise OwnershipError(foreign_message(out, foreign, manifest))
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
    tag = cfg.run_id if TEMP_TAG.match(cfg.run_id or "") else uuid.uuid4().hex
    with PublishLock(out):
        manifest = read_manifest(out)
        foreign = foreign_files(out, [ERRORS_NAME], manifest)
        if foreign:
            raise OwnershipError(foreign_message(out, foreign, manifest))
        if ERRORS_NAME not in manifest["files"]:
            _write_manifest(out, set(manifest["files"]) | {ERRORS_NAME}, manifest["data"],
                            manifest["pending"], tag)
        _replace(join(out, ERRORS_NAME), errors_tsv(rows), tag)


def update_summary(out: str, run_id: str, data: bytes) -> bool:
    """Add the launcher's full summary (``data``, a JSON object) to
    run_summary.json, only while the logdir still shows this run (a later
    run may have published since). The writer's keys (``data_folder``) stay;
    a key both have takes the launcher's value."""
    with PublishLock(out):
        if not run_id or SUMMARY_NAME not in read_manifest(out)["files"]:
            return False
        path = join(out, SUMMARY_NAME)
        try:
            current = json.loads(read_text(path) or "{}")
        except ValueError:
            return False
        if not isinstance(current, dict) or current.get("run_id") != run_id:
            return False
        merged = {**current, **json.loads(data)}
        body = json.dumps(merged, indent=2, sort_keys=True, default=str).encode("utf-8") + b"\n"
        _replace(path, body, run_id if TEMP_TAG.match(run_id) else "summary")
        return True


def _projector_bundle() -> bytes:
    """TensorBoard's projector bundle from the installed package: the same
    code as the standalone projector, so the export needs no download."""
    import importlib.resources

    return (importlib.resources.files(standalone.BUNDLE_PACKAGE)
            .joinpath(standalone.BUNDLE_NAME).read_bytes())
