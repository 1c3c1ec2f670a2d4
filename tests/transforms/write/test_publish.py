"""Atomic publish: a run killed part-way (SIGKILL, no cleanup) leaves the
existing logdir's files byte-for-byte as they were, its config pointing at
complete files, and a live TensorBoard still serving it."""
import os
import shutil
import signal
import stat
import subprocess
import sys
import time

import pytest
from beam_projector.transforms.staging import STAGING_PREFIX
from beam_projector.transforms.write import layout, ownership, publish
from beam_projector.transforms.write.assets import asset_bytes

from support import REPO_ROOT, check_live_projector, run_pipeline, snapshot, tiny_assets

ROOT = REPO_ROOT

# Runs the real CLI in one process (in-memory runner) and SIGKILLs itself at
# a chosen point of the publish step, so the kill lands exactly there.
KILLER = r'''
import os, signal, sys
from apache_beam.io.filesystems import FileSystems
from beam_projector.transforms.write import layout, publish

when = os.environ["KILL_WHEN"]
seen = {"data": 0}
real_write, real_stream, real_rename = publish.write_bytes, publish.write_stream, FileSystems.rename

def die():
    os.kill(os.getpid(), signal.SIGKILL)

def write_stream(path, produce):
    if "/" + layout.DATA_PREFIX in path:
        seen["data"] += 1
        if when == "data:%d" % seen["data"]:
            import io
            buf = io.BytesIO()
            produce(buf)
            data = buf.getvalue()
            real_write(path, data[: len(data) // 2])   # a half-written asset
            die()
    return real_stream(path, produce)

def rename(sources, destinations):
    if when == "config" and destinations[0].endswith(layout.CONFIG_NAME):
        die()                                          # new config complete, not yet swapped in
    return real_rename(sources, destinations)

publish.write_stream = write_stream   # the name publish writes assets through
FileSystems.rename = staticmethod(rename)
from beam_projector.pipeline.cli import main
sys.exit(main(sys.argv[1:]))
'''


def referenced_folder(logdir):
    return ownership.referenced_data_dir(open(os.path.join(logdir, layout.CONFIG_NAME)).read())


@pytest.fixture(scope="module")
def old_logdir(digits, model_path, tmp_path_factory):
    """A good, published logdir: 20 digits."""
    csv_path, _ = digits
    out = str(tmp_path_factory.mktemp("pub") / "old")
    run_pipeline(input=csv_path, model=model_path, embedding_layer="embedding", output=out,
                 max_items=20, tile_size=16)
    return out


def assert_old_logdir_intact(logdir, before, extras_swapped=False):
    """``extras_swapped``: killed between renaming the extras (errors.tsv,
    preview, summary) into place and the config rename that comes last."""
    after = snapshot(logdir)
    for rel, data in before.items():
        if rel == layout.MANIFEST_NAME:
            continue   # a run claims its folder and files there before writing them
        if extras_swapped and rel in layout.ROOT_FILES and rel != layout.CONFIG_NAME:
            continue
        assert after.get(rel) == data, f"{rel} changed"
    old = referenced_folder(logdir)
    for rel in set(after) - set(before):
        # a killed run can leave only what nothing references: its staging
        # data folder, its thumbnails' staging folder or a temp file beside
        # the config
        top = rel.split(os.sep, 1)[0]
        assert ((top.startswith(layout.DATA_PREFIX) and top != old) or ".tmp-" in rel
                or top.startswith(STAGING_PREFIX)), rel


@pytest.mark.slow
def test_kill_at_every_publish_step_leaves_the_old_logdir(old_logdir, digits, model_path,
                                                          tmp_path):
    csv_path, _ = digits
    before = snapshot(old_logdir)
    script = tmp_path / "killer.py"
    script.write_text(KILLER)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="",
               PYTHONPATH=ROOT)
    runs = {}
    for when in ("data:1", "data:2", "config"):
        logdir = str(tmp_path / when.replace(":", "_"))
        shutil.copytree(old_logdir, logdir)
        # a different sample, so the new data folder differs from the old one
        args = ["--input", csv_path, "--model", model_path, "--embedding_layer", "embedding",
                "--output", logdir, "--max_items", "30", "--tile_size", "16"]
        runs[when] = (logdir, subprocess.Popen(
            [sys.executable, str(script), *args], cwd=ROOT, env=dict(env, KILL_WHEN=when),
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))
    for when, (logdir, proc) in runs.items():
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == -signal.SIGKILL, (when, err.decode()[-2000:])
        leftovers = set(snapshot(logdir)) - set(before)
        assert leftovers, f"{when}: the kill came before the publish step started"
        assert_old_logdir_intact(logdir, before, extras_swapped=when == "config")
    # still served, as the 20-point projector it was, even beside a complete
    # but never swapped-in config and data folder
    check_live_projector(runs["config"][0], n=20, dims={"embedding": 8}, tile=16)
    # the next good run publishes and sweeps what the killed one left
    logdir = runs["data:2"][0]
    assert [n for n in os.listdir(logdir) if n.startswith(STAGING_PREFIX)]   # the killed run's
    run_pipeline(input=csv_path, model=model_path, embedding_layer="embedding", output=logdir,
                 max_items=30, tile_size=16)
    data = [d for d in os.listdir(logdir) if d.startswith(layout.DATA_PREFIX)]
    assert data == [referenced_folder(logdir)]
    assert not [n for n in os.listdir(logdir) if ".tmp-" in n]
    assert not [n for n in os.listdir(logdir) if n.startswith(STAGING_PREFIX)]
    manifest = ownership.read_manifest(logdir)
    assert manifest["data"] == data and manifest["pending"] == []
    assert sorted(os.listdir(os.path.join(logdir, data[0]))) == sorted(
        ["feature_vecs.tsv", "metadata.tsv", "sprite.png"])  # tsv: the default


# Blocks the read of one image on a named pipe (read_bytes itself refuses
# FIFOs without opening them), so the run is provably inside Decode.
BLOCKER = r'''
import sys
from beam_projector.transforms import decode

real = decode.read_bytes

def read_bytes(ref, *args, **kwargs):
    if ref.endswith("blocking.png"):
        with open(ref, "rb") as f:   # blocks until the test opens the writer end
            f.read()
    return real(ref, *args, **kwargs)

decode.read_bytes = read_bytes
from beam_projector.pipeline.cli import main
sys.exit(main(sys.argv[1:]))
'''


@pytest.mark.slow
def test_kill_mid_decode_leaves_the_old_logdir_untouched(old_logdir, digits, model_path,
                                                         tmp_path):
    """The run blocks reading a named pipe among its images (so it is
    provably inside the Decode stage, no timing involved) and is SIGKILLed."""
    csv_path, rows = digits
    logdir = str(tmp_path / "logdir")
    shutil.copytree(old_logdir, logdir)
    before = snapshot(logdir)
    fifo = str(tmp_path / "blocking.png")
    os.mkfifo(fifo)
    data = tmp_path / "in.csv"
    base = os.path.dirname(csv_path)
    data.write_text("path,label\n" + "".join(f"{os.path.join(base, r['path'])},{r['label']}\n"
                                             for r in rows) + f"{fifo},pipe\n")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="", PYTHONPATH=ROOT)
    script = tmp_path / "blocker.py"
    script.write_text(BLOCKER)
    proc = subprocess.Popen(
        [sys.executable, str(script), "--input", str(data), "--model", model_path,
         "--output", logdir, "--max_items", "100", "--tile_size", "16"],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    writer = None
    try:
        deadline = time.monotonic() + 300
        while writer is None:
            assert proc.poll() is None, "the pipeline ended without reading the pipe"
            assert time.monotonic() < deadline, "the pipeline never opened the pipe"
            try:   # succeeds only once the pipeline has the pipe open for reading
                writer = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
            except OSError:
                time.sleep(0.1)
        proc.send_signal(signal.SIGKILL)
        proc.wait(60)
    finally:
        if proc.poll() is None:
            proc.kill()
        if writer is not None:
            os.close(writer)
    assert snapshot(logdir) == before
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)
    check_live_projector(logdir, n=20, dims={"embedding": 8}, tile=16)


# --- the publish step itself ------------------------------------------------------


def test_a_partial_orphan_with_the_same_digest_is_rewritten(tmp_path):
    assets, cfg = tiny_assets(tmp_path)
    folder = os.path.join(cfg.output, layout.DATA_PREFIX + assets.digest)
    os.makedirs(folder)
    with open(os.path.join(folder, layout.SPRITE_NAME), "wb") as f:
        f.write(b"\x89PNG half")                    # what a killed run left
    # unclaimed, it could be anyone's: refused, untouched
    with pytest.raises(ownership.OwnershipError, match=layout.DATA_PREFIX + assets.digest):
        publish.publish(assets, cfg, [])
    assert os.listdir(folder) == [layout.SPRITE_NAME]
    # claimed in the manifest first, as a killed run does before writing
    publish._write_manifest(cfg.output, [], [layout.DATA_PREFIX + assets.digest], ["dead"], "x")
    publish.publish(assets, cfg, [])
    for asset in assets.files:
        assert open(os.path.join(folder, asset.name), "rb").read() == asset_bytes(asset)


def test_republishing_the_same_assets_keeps_one_folder(tmp_path):
    assets, cfg = tiny_assets(tmp_path)
    publish.publish(assets, cfg, [])
    first = snapshot(cfg.output)
    publish.publish(assets, cfg, [])
    assert snapshot(cfg.output) == first
    assert [d for d in os.listdir(cfg.output) if d.startswith(layout.DATA_PREFIX)] == [
        layout.DATA_PREFIX + assets.digest]


def test_the_launchers_summary_keeps_the_writers_data_folder(tmp_path):
    """Issue 28: the launcher's run summary (counters, timings) replaced the
    writer's, and run_summary.json lost its data_folder key."""
    import json

    assets, cfg = tiny_assets(tmp_path)
    cfg = cfg._replace(run_id="a" * 32)
    publish.publish(assets, cfg, [])
    path = os.path.join(cfg.output, layout.SUMMARY_NAME)
    written = json.load(open(path))
    assert written["data_folder"] == layout.DATA_PREFIX + assets.digest
    launcher = {"run_id": cfg.run_id, "counters": {"written": 4, "read": 9},
                "wall_seconds": 1.5}
    assert publish.update_summary(cfg.output, cfg.run_id, json.dumps(launcher).encode())
    merged = json.load(open(path))
    assert merged["data_folder"] == written["data_folder"]
    assert merged["counters"] == launcher["counters"] and merged["wall_seconds"] == 1.5
    # another run's summary is left alone
    assert not publish.update_summary(cfg.output, "b" * 32, b"{}")
