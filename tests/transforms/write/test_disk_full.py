"""A full disk, for real: a 20 MB tmpfs mounted for the test (CI runs as
root). A run that hits ENOSPC names the file, removes its own partial data
(or staging) folder, and leaves the previous projector, its extras and the next run's
chances exactly as they were; every extra is written before the config swap,
so a failure never leaves a new projector beside the old extras."""
import os
import subprocess
import sys

import numpy as np
import pytest
from beam_projector.transforms.records import Embedded, ImageRef, Thumbnail
from beam_projector.transforms.settings import Settings
from beam_projector.transforms.write import assets, layout, ownership, publish
from beam_projector.transforms.write import config as write_config

from support import REPO_ROOT, snapshot

# mounts a tmpfs and runs the CLI into it: minutes, not seconds
pytestmark = pytest.mark.slow

ROOT = REPO_ROOT


@pytest.fixture()
def small_disk(tmp_path):
    """A real 20 MB filesystem (tmpfs): writes past it fail with ENOSPC."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=20m", "tmpfs", str(mnt)],
                          capture_output=True, text=True)
    assert done.returncode == 0, (
        f"the disk-full tests mount a 20 MB tmpfs and need root: {done.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def fill(disk, leave):
    """A filler file leaving about ``leave`` bytes free on ``disk``."""
    st = os.statvfs(disk)
    free = st.f_bavail * st.f_frsize
    with open(disk / "filler", "wb") as f:
        f.write(b"\0" * max(0, free - leave))
    return disk / "filler"


def cli(*args):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="")
    proc = subprocess.run([sys.executable, "-m", "beam_projector", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    return proc.returncode, proc.stderr.strip().splitlines()


def test_a_run_that_fills_the_disk_names_the_file_and_removes_its_folder(
        small_disk, digits, model_path):
    csv_path, _ = digits
    out = small_disk / "logdir"
    common = ["--input", csv_path, "--model", model_path, "--embedding_layer", "embedding",
              "--output", str(out)]
    code, err = cli(*common, "--max_items", "10", "--tile_size", "16")
    assert code == 0, err[-5:]
    before = snapshot(str(out))
    filler = fill(small_disk, 16 * 1024)
    code, err = cli(*common, "--max_items", "60", "--tile_size", "128")
    assert code == 1, err[-5:]
    line = err[-1]
    # the thumbnails' staging file fills the disk first (a data folder that
    # does not fit: test_an_extra_that_does_not_fit... and test_publish)
    assert line.startswith(f"beam-projector: failed: cannot write {out}/"
                           ".beam-projector-staging-"), line
    assert "[Errno 28] No space left on device" in line
    assert "nothing published, the previous projector is unchanged" in line
    # the logdir is as it was: no staging folder, no temp file, same manifest
    assert snapshot(str(out)) == before
    # and the next run, with space again, is not blocked by anything left over
    os.remove(filler)
    code, err = cli(*common, "--max_items", "60", "--tile_size", "128")
    assert code == 0, err[-5:]
    data = [d for d in os.listdir(out) if d.startswith(layout.DATA_PREFIX)]
    assert data == ownership.read_manifest(str(out))["data"] and len(data) == 1


def assets_for(out, seed, n=6, preview_bytes=0):
    items = [Embedded(ImageRef(f"u{i}", f"i{i}", None, (f"i{i}",), key=i + 1),
                      Thumbnail.from_rgb(2, 2, bytes([seed * 20 + i] * 12)),
                      (np.full(4, seed + i / 7, dtype=np.float32),)) for i in range(n)]
    cfg = write_config.WriterConfig(output=str(out), columns=("path",), tensor_names=("emb",),
                                    settings=Settings(tile_size=8, max_items=n,
                                                      tensor_format="binary"),
                                    run_id=f"run{seed}")
    built = assets.build_assets(items, cfg)
    if preview_bytes:   # a preview too big for what is left on the disk
        built = built._replace(preview_png=os.urandom(preview_bytes))
    return built, cfg


def test_an_extra_that_does_not_fit_fails_before_the_config_swap(small_disk):
    out = small_disk / "logdir"
    assets, cfg = assets_for(out, 1)
    publish.publish(assets, cfg, [])
    before = snapshot(str(out))
    fill(small_disk, 300 * 1024)
    # the data folder fits in 300 KB, the 1 MB preview does not
    assets, cfg = assets_for(out, 2, preview_bytes=1024 * 1024)
    with pytest.raises(publish.PublishError) as e:
        publish.publish(assets, cfg, [])
    msg = str(e.value)
    assert msg.startswith(f"cannot write {out / layout.PREVIEW_NAME}: [Errno 28]"), msg
    assert "nothing published" in msg and f"removed its partial data-{assets.digest}/" in msg
    # still the previous projector, with its own preview, errors and summary
    assert snapshot(str(out)) == before


def test_a_full_disk_refuses_the_output_and_leaves_no_write_probe(small_disk, digits, model_path):
    """At 0 bytes free the probe's create() succeeds and its write fails:
    each refused run used to leave a 0-byte .write-probe-* behind."""
    from beam_projector.transforms.checks import check_output

    out = small_disk / "out"
    out.mkdir()
    filler = fill(small_disk, 0)
    try:
        for _ in range(2):
            with pytest.raises(ValueError, match="is not writable"):
                check_output(str(out))
        assert os.listdir(out) == []
    finally:
        os.remove(filler)
