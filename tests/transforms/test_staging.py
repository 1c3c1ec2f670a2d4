"""Staged thumbnails (transforms/staging.py): written per bundle, read back
byte for byte, hashed as before, and the folder removed afterwards."""
import os

import apache_beam as beam
import numpy as np
from beam_projector.transforms.records import (
    Embedded,
    ImageRef,
    StagedThumbnail,
    Thumbnail,
)
from beam_projector.transforms.staging import (
    LocalCopies,
    StageThumbnails,
    delete_staging,
    readable,
    staging_dir,
)

import support

_OUT = []


def _keep(actual):
    _OUT.extend(actual)


def _items(n):
    rng = np.random.default_rng(0)
    return [Embedded(ImageRef(str(i), f"{i}.png", None, (str(i),), i),
                     Thumbnail.from_rgb(5 + i % 3, 4, rng.integers(0, 256, (5 + i % 3) * 4 * 3,
                                                                    dtype=np.uint8).tobytes()),
                     (np.full(3, i, np.float32),))
            for i in range(n)]


def test_staged_thumbnails_read_back_identical(tmp_path):
    from apache_beam.testing.util import assert_that

    items = _items(40)
    folder = staging_dir(str(tmp_path), "run1")
    _OUT.clear()
    with beam.Pipeline("FnApiRunner") as p:
        assert_that(p | beam.Create(items, reshuffle=False) | StageThumbnails(folder), _keep)
    assert len(_OUT) == 40 and os.listdir(folder)
    by_uid = {e.item.uid: e for e in _OUT}
    for e in items:
        record = by_uid[e.item.uid].thumbnail
        assert isinstance(record, StagedThumbnail) and not hasattr(record, "png")   # no I/O
        staged = readable(record)                    # reads its staging file on use
        assert staged.png == e.thumbnail.png and staged.digest() == e.thumbnail.digest()
        assert staged.image().tobytes() == e.thumbnail.image().tobytes()
        assert (staged.width, staged.height) == (e.thumbnail.width, e.thumbnail.height)
    with LocalCopies([e.thumbnail for e in _OUT]) as local:   # local files: read in place
        assert [t.png for t in local] == [readable(e.thumbnail).png for e in _OUT]
    delete_staging(folder)
    assert not os.path.exists(folder)
    delete_staging(folder)   # gone already: no error


HOLDER = r"""
import sys, time
from beam_projector.transforms.staging import hold_staging
hold_staging(sys.argv[1])
print("held", flush=True)
time.sleep(600)
"""


def test_sweep_takes_only_the_folders_of_dead_runs(tmp_path):
    import signal
    import subprocess
    import sys

    from beam_projector.transforms.staging import (
        STAGING_PREFIX,
        hold_staging,
        sweep_dead_staging,
    )

    root = support.REPO_ROOT
    live, dead, mine = (staging_dir(str(tmp_path), r) for r in ("live", "dead", "mine"))
    procs = []
    for folder in (live, dead):
        proc = subprocess.Popen([sys.executable, "-c", HOLDER, folder], cwd=root,
                                env=dict(os.environ, PYTHONPATH=root), stdout=subprocess.PIPE)
        assert proc.stdout.readline().strip() == b"held"
        procs.append(proc)
    hold_staging(mine)
    for folder in (live, dead, mine):   # as the runs' first staged files make them
        os.makedirs(folder)
    old = staging_dir(str(tmp_path), "other-host")   # no lock here: swept once a day old
    os.makedirs(old)
    os.utime(old, (0, 0))
    os.makedirs(staging_dir(str(tmp_path), "other-host-new"))
    procs[1].send_signal(signal.SIGKILL)   # the kernel drops its lock
    procs[1].wait()
    try:
        assert sweep_dead_staging(str(tmp_path)) == [STAGING_PREFIX + "dead",
                                                     STAGING_PREFIX + "other-host"]
        assert os.path.isdir(live) and os.path.isdir(mine) and not os.path.exists(dead)
    finally:
        procs[0].kill()
        procs[0].wait()
        delete_staging(mine)
    assert sweep_dead_staging(str(tmp_path)) == [STAGING_PREFIX + "live"]
    assert os.listdir(tmp_path) == [STAGING_PREFIX + "other-host-new"]


def test_remote_thumbnails_are_read_a_window_at_a_time(tmp_path, monkeypatch):
    """Stages after the model read staged thumbnails one by one; from a
    remote filesystem that must not be one request per thumbnail."""
    from apache_beam.io.filesystems import FileSystems
    from beam_projector.transforms import staging

    import schemefs

    monkeypatch.setenv("SCHEMEFS_ROOT", str(tmp_path))
    data = np.random.default_rng(1).integers(0, 256, 3000, dtype=np.uint8).tobytes()
    (tmp_path / "stage.thumbs").write_bytes(data)
    path = schemefs.SCHEME + "://stage.thumbs"
    opened = []
    real_open = FileSystems.open
    monkeypatch.setattr(FileSystems, "open",
                        lambda p, *a, **k: opened.append(p) or real_open(p, *a, **k))
    # schemefs subclasses the local filesystem; here it stands for a remote one
    monkeypatch.setattr(staging, "is_local", lambda p: not p.startswith(schemefs.SCHEME))
    monkeypatch.setattr(staging, "REMOTE_WINDOW", 1000)
    monkeypatch.setattr(staging._WINDOW, "last", None, raising=False)
    ranges = [(o, 100) for o in range(0, 3000, 100)] + [(50, 10), (2950, 50)]
    for offset, length in ranges:
        assert staging.read_range(path, offset, length) == data[offset:offset + length]
    # in order: one read per 1,000-byte window; then two reads behind the window
    assert len(opened) == 3 + 2, opened
