"""Concurrent runs into one --output: the config never points at a missing or
partial folder, no run sweeps a folder another may still publish, and a
killed run (its lock included) never blocks or corrupts the next one."""
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from beam_projector.transforms import projector
from beam_projector.transforms.records import Embedded, ImageRef, Thumbnail
from beam_projector.transforms.settings import Settings
from beam_projector.transforms.write import assets, layout, lock, ownership, publish
from beam_projector.transforms.write import config as write_config
from PIL import Image

from support import REPO_ROOT, check_live_projector

ROOT = REPO_ROOT

# One process publishing tiny projectors into OUT, slowly (each data file
# write sleeps), so publishes of several processes overlap. KILL_AT=k
# SIGKILLs the process at its k-th data file write.
PUBLISHER = r'''
import os, signal, sys, time, random
import numpy as np
from beam_projector.transforms.records import Embedded, ImageRef, Thumbnail
from beam_projector.transforms.settings import Settings
from beam_projector.transforms.write import assets, layout, publish
from beam_projector.transforms.write import config as write_config

out, seed, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
kill_at = int(os.environ.get("KILL_AT", "0"))
real = publish.write_bytes
seen = [0]

def slow_write(path, data):
    if "/" + layout.DATA_PREFIX in path:
        seen[0] += 1
        if seen[0] == kill_at:
            real(path, data[: len(data) // 2])
            os.kill(os.getpid(), signal.SIGKILL)
        time.sleep(0.05)
    return real(path, data)

def slow_stream(path, produce):
    import io
    buf = io.BytesIO()
    produce(buf)
    return slow_write(path, buf.getvalue())

# the names publish writes through (it imports them from transforms.files)
publish.write_bytes = slow_write
publish.write_stream = slow_stream
rng = random.Random(seed)
for k in range(count):
    time.sleep(rng.uniform(0, 0.3))
    n = rng.randint(3, 9)
    items = [Embedded(ImageRef(f"u{i}", f"img{i}.png", None, (f"img{i}.png",), key=i + 1),
                      Thumbnail.from_rgb(2, 2, bytes([(seed * 7 + i) % 256] * 12)),
                      (np.full(4, seed * 100 + k + i, dtype=np.float32),)) for i in range(n)]
    cfg = write_config.WriterConfig(output=out, columns=("path",), tensor_names=("emb",),
                                    settings=Settings(tile_size=8, max_items=n,
                                                      tensor_format="binary"),
                                    run_id=f"r{seed}x{k}")
    publish.publish(assets.build_assets(items, cfg), cfg, [])
print("done", flush=True)
'''


def folder_problem(out):
    """None when the config points at a complete folder, else what is wrong.
    A change of config during the check (a newer publish) is not a problem."""
    config_path = os.path.join(out, layout.CONFIG_NAME)
    try:
        text = open(config_path).read()
    except FileNotFoundError:
        return None
    folder = ownership.referenced_data_dir(text)
    problem = None
    try:
        embedding = projector.parse_projector_config(text).embeddings[0]
        shape = list(embedding.tensor_shape)
        tensor_path = embedding.tensor_path
        tensor = open(os.path.join(out, tensor_path), "rb").read()
        rows = (len(tensor) // (4 * shape[1]) if tensor_path.endswith(".bytes")
                else len(tensor.decode().splitlines()))
        meta = open(os.path.join(out, folder, layout.METADATA_NAME)).read().splitlines()
        Image.open(os.path.join(out, folder, layout.SPRITE_NAME)).load()
        header = 1 if meta and "\t" in meta[0] else 0   # two or more columns: a header row
        if rows != shape[0] or len(meta) - header != shape[0]:
            problem = f"{folder} partial: {rows} tensor rows, {len(meta)} metadata rows, {shape}"
    except (OSError, ValueError, IndexError) as e:
        problem = f"{folder}: {type(e).__name__}: {e}"
    try:
        unchanged = open(config_path).read() == text
    except FileNotFoundError:
        unchanged = False
    return problem if unchanged else None


def watch(out, stop, problems):
    while not stop.is_set():
        p = folder_problem(out)
        if p:
            problems.append(p)
        time.sleep(0.002)


def assert_tidy(out):
    assert folder_problem(out) is None
    live = ownership.referenced_data_dir(open(os.path.join(out, layout.CONFIG_NAME)).read())
    data = sorted(d for d in os.listdir(out) if d.startswith(layout.DATA_PREFIX))
    assert data == [live]
    manifest = ownership.read_manifest(out)
    assert manifest["data"] == [live] and manifest["pending"] == []
    assert not [n for n in os.listdir(out) if ".tmp-" in n]


def env():
    return dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="")


@pytest.mark.slow
@pytest.mark.parametrize("attempt", range(3))
def test_overlapping_publishes_never_expose_a_missing_or_partial_folder(tmp_path, attempt):
    out = str(tmp_path / "out")
    script = tmp_path / "publisher.py"
    script.write_text(PUBLISHER)
    stop, problems = threading.Event(), []
    watcher = threading.Thread(target=watch, args=(out, stop, problems), daemon=True)
    watcher.start()
    rng = random.Random(attempt)
    procs = []
    for seed in range(4):
        time.sleep(rng.uniform(0, 0.4))        # randomised start gaps
        procs.append(subprocess.Popen([sys.executable, str(script), out, str(seed + 10 * attempt),
                                       "3"], cwd=ROOT, env=env(), stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE))
    outputs = [p.communicate(timeout=300) for p in procs]
    stop.set()
    watcher.join()
    for p, (o, e) in zip(procs, outputs):
        assert p.returncode == 0 and b"done" in o, e.decode()[-2000:]
    assert problems == []
    assert_tidy(out)


@pytest.mark.slow
def test_a_killed_publisher_blocks_nothing_and_is_swept(tmp_path):
    out = str(tmp_path / "out")
    script = tmp_path / "publisher.py"
    script.write_text(PUBLISHER)
    first = subprocess.run([sys.executable, str(script), out, "1", "1"], cwd=ROOT, env=env(),
                           capture_output=True, timeout=300)
    assert first.returncode == 0, first.stderr.decode()[-2000:]
    before_config = open(os.path.join(out, layout.CONFIG_NAME)).read()
    killed = subprocess.run([sys.executable, str(script), out, "2", "1"], cwd=ROOT,
                            env=dict(env(), KILL_AT="2"), capture_output=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL
    # the killed run held the lock and left a claimed, half-written folder
    assert open(os.path.join(out, layout.CONFIG_NAME)).read() == before_config
    assert len([d for d in os.listdir(out) if d.startswith(layout.DATA_PREFIX)]) == 2
    assert len(ownership.read_manifest(out)["pending"]) == 1
    assert flock_state(out) == "free"       # the kernel released the dead run's flock
    with lock.PublishLock(out, wait_s=5):
        assert flock_state(out) == "held"   # ours now
    again = subprocess.run([sys.executable, str(script), out, "3", "1"], cwd=ROOT, env=env(),
                           capture_output=True, timeout=300)
    assert again.returncode == 0, again.stderr.decode()[-2000:]
    assert_tidy(out)


def flock_state(out):
    """Whether another process finds OUT's publish lock held ("held") or
    can take it ("free"): asked from a child process, since flock locks are
    per open file and a process's own lock would not show."""
    probe = ("import fcntl, sys\n"
             "f = open(sys.argv[1], 'a')\n"
             "try:\n    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)\n    print('free')\n"
             "except OSError:\n    print('held')\n")
    return subprocess.run([sys.executable, "-c", probe, os.path.join(out, lock.LOCK_NAME)],
                          capture_output=True, text=True, check=True).stdout.strip()


def test_a_live_lock_holder_makes_others_wait(tmp_path):
    out = str(tmp_path / "out")
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from beam_projector.transforms.write import lock\n"
         "with lock.PublishLock(sys.argv[1]):\n    print('held', flush=True); time.sleep(600)",
         out], cwd=ROOT, env=env(), stdout=subprocess.PIPE)
    try:
        assert holder.stdout.readline().strip() == b"held"
        with pytest.raises(lock.LockTimeout, match="still publishing"):
            with lock.PublishLock(out, wait_s=1):
                pass
    finally:
        holder.kill()
        holder.wait()
    with lock.PublishLock(out, wait_s=5):   # a killed holder's flock is gone at once
        assert flock_state(out) == "held"


# --- object stores: the lease ---------------------------------------------------------

@pytest.fixture()
def memtest(tmp_path):
    from memtestfs import PREFIX, MemTestFileSystem

    saved = MemTestFileSystem.root
    MemTestFileSystem.root = str(tmp_path / "bucket-root")
    os.makedirs(MemTestFileSystem.root)
    yield PREFIX + "bucket/logdir"
    MemTestFileSystem.root = saved


def put_lease(out, **lease):
    from apache_beam.io.filesystems import FileSystems

    with FileSystems.create(out + "/" + lock.LOCK_NAME) as f:
        f.write(json.dumps(lease).encode())


def read_lease(out):
    from apache_beam.io.filesystems import FileSystems

    with FileSystems.open(out + "/" + lock.LOCK_NAME) as f:
        return json.loads(f.read().decode())


def test_a_lease_of_a_dead_or_expired_holder_is_taken_a_live_one_waited_for(memtest):
    dead = subprocess.Popen(["true"])
    dead.wait()
    put_lease(memtest, owner="killed", host=lock._host(), pid=dead.pid,
              expires=time.time() + 3600)
    with lock.PublishLock(memtest, wait_s=5, settle_s=0.1):
        assert read_lease(memtest)["pid"] == os.getpid()     # taken over: the lease is ours
    put_lease(memtest, owner="elsewhere", host="another-host", pid=1, expires=time.time() - 1)
    with lock.PublishLock(memtest, wait_s=5, settle_s=0.1):
        lease = read_lease(memtest)
        assert (lease["pid"], lease["host"]) == (os.getpid(), lock._host())
        assert lease["expires"] > time.time()
    put_lease(memtest, owner="alive", host=lock._host(), pid=os.getpid(),
              expires=time.time() + 3600)
    with pytest.raises(lock.LockTimeout, match=f"if no such run is alive, delete .*{lock.LOCK_NAME}"):
        with lock.PublishLock(memtest, wait_s=1, settle_s=0.1):
            pass


def test_concurrent_publishes_on_an_object_store(memtest, monkeypatch):
    """Threads of one process, each its own lease owner, publishing into a
    memtest logdir with the real lease protocol."""
    from apache_beam.io.filesystems import FileSystems
    from google.protobuf import text_format
    from tensorboard.plugins.projector.projector_config_pb2 import ProjectorConfig

    monkeypatch.setattr(lock, "SETTLE_S", 0.2)
    monkeypatch.setattr(lock.PublishLock.__init__, "__defaults__", (lock.WAIT_S, lock.LEASE_S, 0.2))
    errors = []

    def publisher(seed):
        try:
            rng = random.Random(seed)
            for k in range(2):
                time.sleep(rng.uniform(0, 0.3))
                n = rng.randint(3, 9)
                items = [Embedded(ImageRef(f"u{i}", f"i{i}", None, (f"i{i}",), key=i + 1),
                                  Thumbnail.from_rgb(2, 2, bytes([seed * 20 + i] * 12)),
                                  (np.full(4, seed * 10 + k + i, dtype=np.float32),))
                         for i in range(n)]
                cfg = write_config.WriterConfig(
                    output=memtest, columns=("path",), tensor_names=("emb",),
                    settings=Settings(tile_size=8, max_items=n, tensor_format="binary"),
                    run_id=f"t{seed}x{k}")
                publish.publish(assets.build_assets(items, cfg), cfg, [])
        except Exception as e:  # noqa: BLE001
            errors.append(repr(e))
    threads = [threading.Thread(target=publisher, args=(s,)) for s in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert errors == []
    with FileSystems.open(memtest + "/" + layout.CONFIG_NAME) as f:
        config = text_format.Parse(f.read().decode(), ProjectorConfig())
    emb = config.embeddings[0]
    folder = emb.tensor_path.split("/")[0]
    with FileSystems.open(memtest + "/" + emb.tensor_path) as f:
        data = f.read()
    rows = (len(data) // (4 * emb.tensor_shape[1]) if emb.tensor_path.endswith(".bytes")
            else len(data.decode().splitlines()))
    assert rows == emb.tensor_shape[0]
    listed = {m.path[len(memtest) + 1:].split("/")[0]
              for m in FileSystems.match([memtest + "/**"])[0].metadata_list}
    assert {d for d in listed if d.startswith(layout.DATA_PREFIX)} == {folder}
    assert ownership.read_manifest(memtest)["data"] == [folder]
    assert lock.LOCK_NAME not in listed    # every lease released


# --- the real CLI, twice at once ------------------------------------------------------

@pytest.mark.slow
def test_two_cli_runs_into_one_output(digits, model_path, tmp_path):
    csv_path, _ = digits
    out = str(tmp_path / "logdir")
    procs = []
    for n in (20, 30):
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "beam_projector", "--input", csv_path, "--model", model_path,
             "--embedding_layer", "embedding", "--output", out, "--max_items", str(n),
             "--tile_size", "16"], cwd=ROOT, env=env(), stdout=subprocess.PIPE,
            stderr=subprocess.PIPE))
        time.sleep(random.uniform(0, 2))
    for p in procs:
        _, err = p.communicate(timeout=600)
        assert p.returncode == 0, err.decode()[-2000:]
    assert_tidy(out)
    n = projector.parse_projector_config(
        open(os.path.join(out, layout.CONFIG_NAME)).read()).embeddings[0].tensor_shape[0]
    shape = json.load(open(os.path.join(out, layout.SUMMARY_NAME)))["counters"]["written"]
    assert shape == n   # the summary describes the projector that is live
    check_live_projector(out, n=n, dims={"embedding": 8}, tile=16)
