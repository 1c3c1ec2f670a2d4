"""Thumbnails that skip the writer's group: staged in files, read back by tile row.

The writer is one stage that holds everything it is given, and a runner
holds a group's elements at least twice on the way in (encoded, then
decoded): at 100 px tiles the PNG thumbnails are two thirds of what reaches
it. So right after the model, each bundle appends its items' thumbnails to
one staging file under the output folder and sends on a ``StagedThumbnail``
(file, offset, length, sha256); later stages (the neighbour columns' picture
signatures) read a thumbnail back on use, and the writer reads a tile row's
thumbnails when it draws that row. The staging folder is the run's own
(``.beam-projector-staging-<run id>``) and is deleted once the writer has
published (or the CLI's run has failed). On a local filesystem the launcher
holds a shared ``flock`` for the run on a file in the system's temp folder
named after the staging folder (not in the logdir: a run killed before it
staged anything leaves the logdir untouched), which the kernel drops when
the process dies. A publish sweeps the staging folders whose lock it can
take (killed runs' from this host), and those with no lock on this host once
they are a day old (a run from another host over a shared filesystem is
left alone until then).

Files come and go through Beam's ``FileSystems``; the writer first copies
remote staging files to local disk (one sequential read each), since a
sprite reads them in key order, not file order.
"""
import fcntl
import hashlib
import logging
import os
import shutil
import tempfile
import threading
import time
import uuid
from typing import Dict, List, Sequence

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems

from beam_projector.transforms.files import describe_io_error, is_local
from beam_projector.transforms.records import StagedThumbnail, Thumbnail
from beam_projector.transforms.timing import StageTimer

LOG = logging.getLogger(__name__)

STAGING_PREFIX = ".beam-projector-staging-"
_SUFFIX = ".thumbs"
# a staging folder with no lock file on this host is swept after this long
FOREIGN_STAGING_AGE_S = 24 * 3600
# folder -> the open file whose shared lock says the run is alive
_HELD: Dict[str, object] = {}


class StagingError(OSError):
    """A thumbnail could not be staged (e.g. the output's disk is full)."""


def _failed(path: str, e: Exception) -> StagingError:
    return StagingError(f"cannot write {path}: {describe_io_error(e)}; nothing published, "
                        "the previous projector is unchanged")


def staging_dir(output: str, run_id: str) -> str:
    return FileSystems.join(output, STAGING_PREFIX + run_id)


# A remote staging file is read a window at a time: stages after the model
# read thumbnails one by one, mostly in the order a bundle wrote them, so a
# thread's next read is usually inside the window it fetched last (one
# request per REMOTE_WINDOW bytes, not one per thumbnail).
REMOTE_WINDOW = 4 * 1024 * 1024
_WINDOW = threading.local()


def read_range(path: str, offset: int, length: int) -> bytes:
    if is_local(path):
        with open(path, "rb") as f:
            f.seek(offset)
            return f.read(length)
    window = getattr(_WINDOW, "last", None)
    if not (window and window[0] == path and window[1] <= offset
            and offset + length <= window[1] + len(window[2])):
        with FileSystems.open(path, compression_type="uncompressed") as f:
            f.seek(offset)
            window = (path, offset, f.read(max(length, REMOTE_WINDOW)))
        _WINDOW.last = window
    start = offset - window[1]
    return window[2][start:start + length]


class _StagedImage:
    """A staged thumbnail that reads its PNG on use, with a ``Thumbnail``'s
    interface (``png``, ``image()``, ``digest()``)."""

    def __init__(self, staged: StagedThumbnail):
        self._staged = staged
        self.width, self.height = staged.width, staged.height

    @property
    def png(self) -> bytes:
        s = self._staged
        return read_range(s.path, s.offset, s.length)

    def image(self):
        return Thumbnail(self.width, self.height, self.png).image()

    def digest(self) -> bytes:
        return self._staged.sha256


def readable(thumbnail):
    """A thumbnail whose pixels can be read: a ``Thumbnail`` as it is, a
    ``StagedThumbnail`` as an object that reads its staging file on use."""
    return _StagedImage(thumbnail) if isinstance(thumbnail, StagedThumbnail) else thumbnail


class _StageThumbnailsFn(beam.DoFn):
    """Embedded -> the same, its thumbnail appended to this bundle's staging file."""

    def __init__(self, folder: str):
        self._folder = folder

    def start_bundle(self):
        self._file, self._path, self._offset = None, None, 0
        self._timer = StageTimer("staging")

    def process(self, e):
        th = e.thumbnail
        if th is None or isinstance(th, StagedThumbnail):   # no picture, or staged already
            yield e
            return
        if self._file is None:
            # this worker process holds the folder while it lives (a publish
            # sweeps only folders no live process holds, see hold_staging),
            # from its first thumbnail: a run that fails before staging
            # anything leaves nothing behind
            hold_staging(self._folder)
            # a retried bundle writes a new file; the failed attempt's is
            # swept with the folder
            self._path = FileSystems.join(self._folder, uuid.uuid4().hex[:16] + _SUFFIX)
            self._offset = 0
            try:
                self._file = FileSystems.create(self._path,
                                                mime_type="application/octet-stream",
                                                compression_type="uncompressed")
            except Exception as e:  # noqa: BLE001 - one clear line naming the file
                raise _failed(self._path, e) from e
        data = th.png
        try:
            with self._timer.measure():
                self._file.write(data)
        except OSError as e:
            raise _failed(self._path, e) from e
        staged = StagedThumbnail(th.width, th.height, self._path, self._offset, len(data),
                                 hashlib.sha256(data).digest())
        self._offset += len(data)
        yield e._replace(thumbnail=staged)

    def finish_bundle(self):
        if self._file is not None:
            f, self._file = self._file, None
            try:
                f.close()
            except OSError as e:
                raise _failed(self._path, e) from e


class StageThumbnails(beam.PTransform):
    """PCollection[Embedded] -> the same with ``StagedThumbnail``s (see module doc)."""

    def __init__(self, folder: str):
        super().__init__()
        self._folder = folder

    def expand(self, embedded):
        return embedded | "Stage" >> beam.ParDo(_StageThumbnailsFn(self._folder))


class LocalCopies:
    """Context manager: the thumbnails, ``readable``, from local files.

    Local staging files are read where they are; remote ones are copied to
    a temporary folder first (deleted on exit), so that reading a tile row
    costs no remote request per thumbnail.
    """

    def __init__(self, thumbnails: Sequence):
        self._thumbnails = thumbnails
        self._tmp = None

    def __enter__(self) -> List:
        paths = {t.path for t in self._thumbnails if isinstance(t, StagedThumbnail)}
        remote = sorted(p for p in paths if not is_local(p))
        if not remote:
            return [readable(t) for t in self._thumbnails]
        self._tmp = tempfile.mkdtemp(prefix="beam-projector-thumbs-")
        local: Dict[str, str] = {}
        for i, path in enumerate(remote):
            local[path] = os.path.join(self._tmp, f"{i}{_SUFFIX}")
            with FileSystems.open(path, compression_type="uncompressed") as src, \
                    open(local[path], "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
        return [readable(t._replace(path=local[t.path])
                         if isinstance(t, StagedThumbnail) and t.path in local else t)
                for t in self._thumbnails]

    def __exit__(self, *exc):
        if self._tmp:
            shutil.rmtree(self._tmp, ignore_errors=True)


def _lock_path(folder: str) -> str:
    digest = hashlib.sha256(os.path.abspath(folder).encode()).hexdigest()[:24]
    return os.path.join(tempfile.gettempdir(), f"beam-projector-alive-{digest}")


def hold_staging(folder: str) -> None:
    """Mark a local staging folder as in use by this process (see module doc);
    object stores have no such lock: a killed run's folder stays there."""
    if not is_local(folder) or folder in _HELD:
        return
    f = open(_lock_path(folder), "a")
    fcntl.flock(f, fcntl.LOCK_SH)
    _HELD[folder] = f


def sweep_dead_staging(out: str, keep: str = "") -> List[str]:
    """Delete the staging folders in local ``out`` that no live process holds
    (killed runs'); returns their names. ``keep``: this run's folder name."""
    if not is_local(out) or not os.path.isdir(out):
        return []
    swept = []
    for name in sorted(os.listdir(out)):
        folder = os.path.join(out, name)
        if not name.startswith(STAGING_PREFIX) or name == keep or folder in _HELD:
            continue
        lock = _lock_path(folder)
        if os.path.exists(lock):
            try:
                with open(lock, "a") as f:
                    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)   # held: a live run's
            except OSError:
                continue
        else:
            try:
                if time.time() - os.path.getmtime(folder) < FOREIGN_STAGING_AGE_S:
                    continue
            except OSError:
                continue
        shutil.rmtree(folder, ignore_errors=True)
        try:
            os.remove(lock)
        except OSError:
            pass
        swept.append(name)
    return swept


def delete_staging(folder: str) -> None:
    """Remove a run's staging folder; a failure is logged, never raised (the
    folder is hidden and holds no user data)."""
    held = _HELD.pop(folder, None)
    if held is not None:
        held.close()
        try:
            os.remove(_lock_path(folder))
        except OSError:
            pass
    if is_local(folder):
        if os.path.isdir(folder):
            shutil.rmtree(folder, ignore_errors=True)
        return
    try:   # object stores: the folder is a prefix, which may hold nothing
        FileSystems.delete([folder.rstrip("/") + "/"])
    except Exception as e:  # noqa: BLE001
        LOG.debug("staging folder %s not removed: %s", folder, e)
