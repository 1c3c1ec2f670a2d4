"""Helpers shared by the tests: real images, tiny models, a live TensorBoard."""
import contextlib
import csv
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import numpy as np
from PIL import Image

TB_PREFIX = "/data/plugin/projector"
# the repository root (this file is tests/support.py)
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def write_digits(folder, count=None, columns=("path", "label")):
    """scikit-learn's real 8x8 digits as PNGs + a CSV; returns (csv_path, rows)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    n = len(digits.images) if count is None else count
    os.makedirs(os.path.join(folder, "images"), exist_ok=True)
    rows = []
    for i in range(n):
        px = (255 - digits.images[i] * (255 / 16)).astype(np.uint8)
        rel = f"images/digit_{i:04d}.png"
        Image.fromarray(px, mode="L").save(os.path.join(folder, rel))
        rows.append({"path": rel, "label": str(int(digits.target[i]))})
    csv_path = os.path.join(folder, "images.csv")
    with open(csv_path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(columns), extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    return csv_path, rows


def tiny_model(path, side=16, embedding_dim=8, channels=3):
    """A small untrained CNN with a named 'embedding' layer, saved to ``path``."""
    import keras

    keras.utils.set_random_seed(0)
    inp = keras.Input((side, side, channels))
    x = keras.layers.Rescaling(1 / 255.0)(inp)
    x = keras.layers.Conv2D(8, 3, activation="relu", padding="same", name="conv")(x)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    x = keras.layers.Dense(embedding_dim, activation="tanh", name="embedding")(x)
    out = keras.layers.Dense(3, name="logits")(x)
    model = keras.Model(inp, out)
    model.save(path)
    return path


def load_tensor(path, shape):
    """A tensor file as the projector reads it: TSV text, or raw float32 (.bytes)."""
    if str(path).endswith(".bytes"):
        return np.fromfile(path, dtype="<f4").reshape([int(s) for s in shape])
    return np.loadtxt(path, delimiter="\t", dtype=np.float32, ndmin=2)


def run_pipeline(*args, **flags):
    """Run the pipeline in-process; flags become --key value."""
    from beam_projector.pipeline.run import run

    argv = list(args)
    for k, v in flags.items():
        argv += [f"--{k}", str(v)]
    return run(argv)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def tensorboard(logdir, timeout=120):
    """A real `tensorboard` on 127.0.0.1; yields a get(path) -> (status, bytes) function."""
    port = free_port()
    exe = os.path.join(os.path.dirname(sys.executable), "tensorboard")
    proc = subprocess.Popen([exe, "--logdir", str(logdir), "--host", "127.0.0.1",
                             "--port", str(port), "--load_fast", "false"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    base = f"http://127.0.0.1:{port}"

    def get(path):
        try:
            with urllib.request.urlopen(base + path, timeout=60) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()

    try:
        deadline = time.time() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"tensorboard exited: {proc.stderr.read().decode()[-2000:]}")
            try:
                status, body = get(TB_PREFIX + "/runs")
                if status == 200 and json.loads(body):
                    break
            except (urllib.error.URLError, ConnectionError, OSError):
                pass
            if time.time() > deadline:
                raise RuntimeError("tensorboard did not list any projector run in time")
            time.sleep(0.5)
        get.base = base
        yield get
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


def check_live_projector(logdir, n, dims, tile):
    """Assert a live TensorBoard serves ``logdir`` as an N-point projector.

    ``dims`` maps tensor name -> D. Returns (metadata text, sprite image).
    """
    import io
    import math
    from urllib.parse import quote

    with tensorboard(logdir) as get:
        status, body = get(TB_PREFIX + "/runs")
        assert status == 200 and json.loads(body) == ["."]
        status, body = get(TB_PREFIX + "/info?run=.")
        assert status == 200, body
        info = json.loads(body)
        shapes = {e["tensorName"]: [int(s) for s in e["tensorShape"]] for e in info["embeddings"]}
        assert shapes == {name: [n, d] for name, d in dims.items()}
        for name, d in dims.items():
            status, body = get(f"{TB_PREFIX}/tensor?run=.&name={quote(name)}")
            assert status == 200, body[:300]
            assert len(body) == n * d * 4
            assert np.all(np.isfinite(np.frombuffer(body, dtype="<f4")))
        name = next(iter(dims))
        status, meta = get(f"{TB_PREFIX}/metadata?run=.&name={quote(name)}")
        assert status == 200, meta[:300]
        status, sprite = get(f"{TB_PREFIX}/sprite_image?run=.&name={quote(name)}")
        assert status == 200, sprite[:300]
    img = Image.open(io.BytesIO(sprite))
    assert img.format == "PNG"
    side = math.ceil(math.sqrt(n)) * tile
    assert img.size == (side, side)
    return meta.decode("utf-8"), img


def write_photos(folder, count, seed=0):
    """``count`` photo-like JPEGs (crops of scikit-learn's two sample photos,
    300-640 px) with a path,label CSV; returns the CSV path."""
    from sklearn.datasets import load_sample_images

    rng = np.random.default_rng(seed)
    photos = [Image.fromarray(a) for a in load_sample_images().images]
    os.makedirs(os.path.join(folder, "images"), exist_ok=True)
    csv_path = os.path.join(folder, "images.csv")
    with open(csv_path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label"])
        for i in range(count):
            src = photos[i % 2]
            cw, ch = int(rng.integers(300, src.width)), int(rng.integers(300, src.height))
            x0, y0 = int(rng.integers(0, src.width - cw + 1)), int(rng.integers(0, src.height - ch + 1))
            rel = f"images/photo_{i:05d}.jpg"
            src.crop((x0, y0, x0 + cw, y0 + ch)).save(os.path.join(folder, rel), quality=85)
            w.writerow([rel, ("china", "flower")[i % 2]])
    return csv_path


def big_png(path, width=9400, height=9500, bit_depth=16, colour_type=0):
    """A PNG of 89.3 megapixels (under Pillow's limit of 89.5) that is about
    200 KB on disk: one gradient row, then rows equal to the one above
    (PNG's 'up' filter). Written row by row, never held decoded.
    ``colour_type``: 0 grey, 2 RGB, 6 RGBA."""
    import struct
    import zlib

    def chunk(tag, body):
        return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", zlib.crc32(tag + body))

    channels = {0: 1, 2: 3, 6: 4}[colour_type]
    if bit_depth == 16:
        row = (np.arange(width * channels, dtype=np.uint32) * 65535
               // (width * channels)).astype(">u2").tobytes()
    else:
        row = (np.arange(width * channels) % 256).astype(np.uint8).tobytes()
    comp = zlib.compressobj(9)
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(
            ">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)))
        data = comp.compress(b"\x00" + row)
        same = b"\x02" + bytes(len(row))
        for _ in range(height - 1):
            data += comp.compress(same)
        f.write(chunk(b"IDAT", data + comp.flush()) + chunk(b"IEND", b""))
    return str(path)


def peak_rss_mib(cmd, env=None, cwd=None, timeout=900):
    """Run ``cmd`` to the end; (exit code, stderr text, its peak RSS in MiB).

    ``os.wait4`` gives this child's own peak (or its largest waited-for
    descendant's); ``getrusage(RUSAGE_CHILDREN)`` would be the maximum over
    every child the test process ever had.
    """
    import tempfile
    import threading

    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=err)
        timer = threading.Timer(timeout, proc.kill)
        timer.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        finally:
            timer.cancel()
        proc.returncode = os.waitstatus_to_exitcode(status)
        err.seek(0)
        return proc.returncode, err.read().decode("utf-8", "replace"), usage.ru_maxrss / 1024


# Prepended to the code child_python runs: reset_peak() starts the peak
# anew (Linux: writing 5 to clear_refs resets VmHWM), peak_growth_mib() is
# the growth of the peak RSS since that reset.
_PEAK_HELPERS = """
def _status_mib(key):
    for line in open('/proc/self/status'):
        if line.startswith(key + ':'):
            return int(line.split()[1]) / 1024
def reset_peak():
    global _rss_at_reset
    import gc
    gc.collect()
    open('/proc/self/clear_refs', 'w').write('5')
    _rss_at_reset = _status_mib('VmRSS')
def peak_growth_mib():
    return _status_mib('VmHWM') - _rss_at_reset
"""


def child_python(code, timeout=300, address_space_gib=None, file_size=None, env=None):
    """Run ``code`` in a fresh Python; (exit code, stdout, stderr).

    For memory bounds of one call: the code calls ``reset_peak()`` right
    before it and prints ``peak_growth_mib()`` after, so imports and inputs
    do not count. ``address_space_gib`` caps the child's address space
    (RLIMIT_AS), so code that would take gigabytes fails fast with a
    MemoryError instead of taking the machine's memory; ``file_size`` caps
    any file it writes (RLIMIT_FSIZE: a full disk without root).
    """
    import resource
    import textwrap

    def limits():
        if address_space_gib:
            size = int(address_space_gib * 1024 ** 3)
            resource.setrlimit(resource.RLIMIT_AS, (size, size))
        if file_size is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (file_size, file_size))
    child_env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="",
                     **(env or {}))
    p = subprocess.run([sys.executable, "-c", _PEAK_HELPERS + textwrap.dedent(code)],
                       capture_output=True, text=True, env=child_env, cwd=REPO_ROOT,
                       timeout=timeout, preexec_fn=limits)
    return p.returncode, p.stdout, p.stderr


def odd_model(path, kind, side=16):
    """A Keras model that does not fit the pipeline the way ``kind`` says:
    ``two_inputs``, ``four_channels`` (RGBA input) or ``one_d`` (a 1-unit
    layer named 'score' next to an 8-unit 'embedding')."""
    import keras

    keras.utils.set_random_seed(0)
    if kind == "two_inputs":
        a, b = keras.Input((side, side, 3), name="image"), keras.Input((side, side, 3), name="mask")
        x = keras.layers.GlobalAveragePooling2D()(keras.layers.Concatenate()([a, b]))
        model = keras.Model([a, b], keras.layers.Dense(4, name="embedding")(x))
    elif kind == "four_channels":
        inp = keras.Input((side, side, 4))
        x = keras.layers.GlobalAveragePooling2D()(inp)
        model = keras.Model(inp, keras.layers.Dense(4, name="embedding")(x))
    elif kind == "one_d":
        inp = keras.Input((side, side, 3))
        x = keras.layers.Dense(8, name="embedding")(keras.layers.GlobalAveragePooling2D()(inp))
        model = keras.Model(inp, keras.layers.Dense(1, name="score")(x))
    else:
        raise ValueError(kind)
    model.save(path)
    return path


def snapshot(folder):
    """{relative path: bytes} of every file under ``folder``."""
    out = {}
    for root, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(root, name)
            out[os.path.relpath(path, folder)] = open(path, "rb").read()
    return out


def tiny_assets(tmp_path, n=4):
    """A writer's assets for ``n`` tiny items, and their WriterConfig."""
    from beam_projector.transforms.records import Embedded, ImageRef, Thumbnail
    from beam_projector.transforms.settings import Settings
    from beam_projector.transforms.write.assets import build_assets
    from beam_projector.transforms.write.config import WriterConfig

    items = [Embedded(ImageRef(f"u{i}", f"img{i}.png", None, (f"img{i}.png", str(i)), key=i + 1),
                      Thumbnail.from_rgb(2, 2, bytes([i * 40] * 12)),
                      (np.arange(3, dtype=np.float32) + i,)) for i in range(n)]
    cfg = WriterConfig(output=str(tmp_path / "out"), columns=("path", "label"),
                       tensor_names=("emb",), settings=Settings(tile_size=8, max_items=n))
    return build_assets(items, cfg), cfg


_COLLECTED = []   # the in-process runner calls _collect in this process


def _collect(actual):
    _COLLECTED.extend(actual)


def run_collected(transform, items):
    """The elements ``transform`` makes of ``items`` on the in-process
    runner, in the order the runner gave them."""
    import apache_beam as beam
    from apache_beam.testing.util import assert_that

    _COLLECTED.clear()
    with beam.Pipeline("FnApiRunner") as p:
        assert_that(p | beam.Create(items) | transform, _collect)
    return list(_COLLECTED)
