"""One CSV row must never take the machine: devices, FIFOs, sockets, symlink
loops and huge files become errors.tsv rows without being read, and every
read stops at --max_image_bytes + 1, so a run finishes in bounded time and
memory. The pipeline runs in a child process watched from a fresh measuring
process (its RUSAGE_CHILDREN peak is that one child's), which also kills it
past a hard memory or time limit so a regression cannot take the machine."""
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import threading

import pytest
from apache_beam.io.filesystem import FileMetadata, FileSystem
from beam_projector.transforms.images import ImageError, read_bytes
from beam_projector.transforms.records import DEFAULT_MAX_IMAGE_BYTES
from PIL import Image

from support import REPO_ROOT

ROOT = REPO_ROOT
HARD_RSS_KB = 4 * 1024 * 1024    # the watchdog kills the child above 4 GiB ...
HARD_SECONDS = 420               # ... or after 7 minutes
EXTRA_RSS_KB = 300 * 1024        # allowed above the same run without the hostile rows
SPARSE_BYTES = 5 * 1024 ** 3

MEASURE = r'''
import json, resource, subprocess, sys, time
argv, hard_kb, hard_s = json.loads(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
err = []
import threading
threading.Thread(target=lambda: err.append(proc.stderr.read()), daemon=True).start()
start, killed = time.monotonic(), None
while proc.poll() is None:
    try:
        with open(f"/proc/{proc.pid}/status") as f:
            rss = next(int(l.split()[1]) for l in f if l.startswith("VmRSS:"))
    except (OSError, StopIteration):
        rss = 0
    if rss > hard_kb:
        killed = f"rss {rss} kB"
    elif time.monotonic() - start > hard_s:
        killed = "timeout"
    if killed:
        proc.kill()
        break
    time.sleep(0.05)
proc.wait()
time.sleep(0.2)
print(json.dumps({"rc": proc.returncode, "killed": killed,
                  "maxrss_kb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss,
                  "seconds": round(time.monotonic() - start, 1),
                  "stderr": (err[0] if err else b"").decode(errors="replace")[-3000:]}))
'''


def measure(args):
    """Run the CLI in a child of a fresh process; (peak RSS kB, result dict)."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="")
    argv = [sys.executable, "-m", "beam_projector", *args]
    out = subprocess.run([sys.executable, "-c", MEASURE, json.dumps(argv), str(HARD_RSS_KB),
                          str(HARD_SECONDS)], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=HARD_SECONDS + 120)
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["killed"] is None, result
    return result["maxrss_kb"], result


@pytest.fixture(scope="module")
def hostile_csv(tmp_path_factory):
    from sklearn.datasets import load_sample_images

    folder = tmp_path_factory.mktemp("bounded")
    photos = []
    for i, arr in enumerate(load_sample_images().images):
        for q in range(10):
            path = folder / f"photo_{i}_{q}.jpg"
            Image.fromarray(arr).save(path, "JPEG", quality=60 + 3 * q)
            photos.append(str(path))
    fifo = folder / "pipe.png"
    os.mkfifo(fifo)
    os.symlink("loop_b.png", folder / "loop_a.png")
    os.symlink("loop_a.png", folder / "loop_b.png")
    sparse = folder / "huge.tiff"
    with open(sparse, "wb") as f:
        f.truncate(SPARSE_BYTES)          # 5 GB that occupy no disk
    sock_path = folder / "sock.png"
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(sock_path))
    bad = {"/dev/zero": "not a regular file (character device)",
           "/dev/urandom": "not a regular file (character device)",
           str(fifo): "not a regular file (FIFO)",
           str(folder / "loop_a.png"): "symlink loop",
           str(sparse): f"file too large: {SPARSE_BYTES} bytes > {DEFAULT_MAX_IMAGE_BYTES}",
           str(sock_path): "not a regular file (socket)"}
    rows = ["/dev/zero", "/dev/urandom"] + photos[:10] + [str(fifo), str(folder / "loop_a.png"),
                                                         str(sparse), str(sock_path)] + photos[10:]
    hostile = folder / "hostile.csv"
    hostile.write_text("path\n" + "".join(f"{r}\n" for r in rows))
    plain = folder / "plain.csv"
    plain.write_text("path\n" + "".join(f"{r}\n" for r in photos))
    yield folder, str(hostile), str(plain), bad, photos
    sock.close()


def test_devices_fifos_loops_and_huge_files_are_rows_in_bounded_time_and_memory(
        hostile_csv, model_path):
    folder, hostile, plain, bad, photos = hostile_csv
    common = ["--model", model_path, "--embedding_layer", "embedding", "--max_items", "50",
              "--tile_size", "16", "--max_error_fraction", "0.5"]
    out = str(folder / "hostile_out")
    peak, result = measure(["--input", hostile, "--output", out, *common])
    assert result["rc"] == 0, result["stderr"]
    with open(os.path.join(out, "errors.tsv"), encoding="utf-8") as f:
        rows = [line.split("\t") for line in f.read().splitlines()[1:]]
    got = {r[0]: (r[1], r[2]) for r in rows}
    assert set(got) == set(bad)
    for ref, reason in bad.items():
        assert got[ref][0] == "read" and got[ref][1].startswith(reason), got[ref]
    summary = json.load(open(os.path.join(out, "run_summary.json")))
    assert summary["counters"]["written"] == len(photos)

    base_peak, base = measure(["--input", plain, "--output", str(folder / "plain_out"),
                               *common])
    assert base["rc"] == 0, base["stderr"]
    print(f"peak RSS: hostile {peak / 1024:.0f} MiB in {result['seconds']}s, "
          f"photos only {base_peak / 1024:.0f} MiB in {base['seconds']}s")
    assert peak < base_peak + EXTRA_RSS_KB, (peak, base_peak)
    # the FIFO was never opened: still a FIFO, nobody waiting on it
    assert stat_is_fifo(str(folder / "pipe.png"))


def stat_is_fifo(path):
    import stat
    return stat.S_ISFIFO(os.stat(path).st_mode)


# --- read_bytes unit checks --------------------------------------------------------

def test_a_fifo_is_refused_without_blocking(tmp_path):
    fifo = str(tmp_path / "p.jpg")
    os.mkfifo(fifo)
    result = []

    def read():
        try:
            read_bytes(fifo)
        except ImageError as e:
            result.append(str(e))
    t = threading.Thread(target=read, daemon=True)
    t.start()
    t.join(10)
    assert result == ["not a regular file (FIFO)"]


def test_size_limit_uses_the_reported_size_and_exact_boundary(tmp_path):
    path = tmp_path / "img.bin"
    path.write_bytes(b"x" * 1000)
    assert read_bytes(str(path), max_bytes=1000) == b"x" * 1000
    with pytest.raises(ImageError, match=r"^file too large: 1000 bytes > 999$"):
        read_bytes(str(path), max_bytes=999)
    with pytest.raises(ImageError, match="symlink loop"):
        os.symlink("self.png", tmp_path / "self.png")
        read_bytes(str(tmp_path / "self.png"))


class _Endless(io.RawIOBase):
    """A stream of zeros that never ends, counting what was read."""
    consumed = 0

    def readable(self):
        return True

    def readinto(self, b):
        n = len(b)
        b[:n] = b"\0" * n
        _Endless.consumed += n
        return n


class LiarFileSystem(FileSystem):
    """``liar://x``: reports size 0 and streams zeros forever (a lying source)."""

    @classmethod
    def scheme(cls):
        return "liar"

    def metadata(self, path):
        return FileMetadata(path, 0)

    def open(self, path, mime_type="application/octet-stream", compression_type="auto"):
        return io.BufferedReader(_Endless())

    def join(self, base, *paths):
        return "/".join((base,) + paths)

    def split(self, path):
        return path.rsplit("/", 1)

    # the rest of the FileSystem interface is not used here
    mkdirs = has_dirs = create = copy = rename = exists = size = last_updated = \
        checksum = delete = _list = lambda *a, **k: None


def test_a_source_that_lies_about_its_size_is_read_only_to_the_limit():
    limit = 3 * 1024 * 1024 + 7
    _Endless.consumed = 0
    with pytest.raises(ImageError, match=f"^file too large: more than {limit} bytes read"):
        read_bytes("liar://bucket/endless.png", max_bytes=limit)
    # the reader buffers at most one chunk beyond what was asked for
    assert limit < _Endless.consumed <= limit + 1 + io.DEFAULT_BUFFER_SIZE


def test_max_image_bytes_is_an_option_with_the_items_default():
    from beam_projector.pipeline.options import ProjectorOptions

    assert ProjectorOptions([]).max_image_bytes == DEFAULT_MAX_IMAGE_BYTES == 256 * 1024 ** 2
    assert ProjectorOptions(["--max_image_bytes", "1000"]).max_image_bytes == 1000


def test_max_image_bytes_must_be_positive(digits, model_path, tmp_path):
    from beam_projector.pipeline.preflight import UsageError

    from support import run_pipeline

    csv_path, _ = digits
    with pytest.raises(UsageError, match="--max_image_bytes must be at least 1"):
        run_pipeline(input=csv_path, model=model_path, output=str(tmp_path / "o"),
                     max_image_bytes=0)
    shutil.rmtree(tmp_path / "o", ignore_errors=True)
