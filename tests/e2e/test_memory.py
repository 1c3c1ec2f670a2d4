"""Memory stays flat in N: model-sized pixels never pile up between stages.

The pipeline runs in a child process on a model with a large input
(512 x 512, so each model input is 0.75 MiB as uint8 and 3 MiB as float32)
over a few hundred photos, and the child's peak RSS is bounded. Decoding
every sampled image for the model before the cut to N (the design before
the flat-memory change) holds all of them at once: measured here for 400
images, 2,561 MiB peak before against 1,539 MiB now, and 1,394 MiB now for
10 images (docs/benchmarks-history.md, "Memory and shuffle").
"""
import os
import sys

import support
from support import REPO_ROOT

ROOT = REPO_ROOT
SIDE = 512
COUNT = 400
# The base (Python, TensorFlow, Keras, Beam, the model traced on 32-image
# float32 batches of 3 MiB each) is about 1.4 GiB; holding the 400 model
# inputs (0.3 GiB as uint8 alone, with copies far more) exceeds the bound.
BOUND_MIB = 2000


def big_input_model(path):
    import keras

    keras.utils.set_random_seed(0)
    inp = keras.Input((SIDE, SIDE, 3))
    x = keras.layers.Rescaling(1 / 255.0)(inp)
    x = keras.layers.Conv2D(8, 8, strides=8, activation="relu", name="conv")(x)
    x = keras.layers.GlobalAveragePooling2D(name="embedding")(x)
    out = keras.layers.Dense(3, name="logits")(x)
    keras.Model(inp, out).save(path)
    return path


def test_peak_memory_is_bounded_by_the_batch_not_by_n(tmp_path):
    csv_path = support.write_photos(str(tmp_path / "photos"), COUNT)
    model = big_input_model(str(tmp_path / "big.keras"))
    out = str(tmp_path / "out")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="")
    code, err, peak = support.peak_rss_mib(
        [sys.executable, "-m", "beam_projector", "--input", csv_path, "--model", model,
         "--embedding_layer", "embedding", "--output", out, "--max_items", str(COUNT),
         "--no_preview"], env=env, cwd=ROOT)
    assert code == 0, err[-3000:]
    meta = [line for line in open(os.path.join(out, _data_dir(out), "metadata.tsv"))]
    assert len(meta) == COUNT + 1          # header + every photo: nothing lost
    assert peak < BOUND_MIB, f"peak RSS {peak:.0f} MiB >= {BOUND_MIB} MiB"


def _data_dir(out):
    return next(d for d in os.listdir(out) if d.startswith("data-"))


def test_auto_batch_size_follows_the_input_pixels():
    from beam_projector.transforms.model import AUTO_BATCH_MAX, auto_batch_size

    assert auto_batch_size((224, 224)) == 6
    assert auto_batch_size((299, 299)) == 3
    assert auto_batch_size((512, 512)) == 1 and auto_batch_size((2048, 2048)) == 1
    assert auto_batch_size((64, 64)) == AUTO_BATCH_MAX == auto_batch_size((8, 8))


def test_default_batch_holds_less_than_a_large_one(tmp_path):
    """TensorFlow keeps one call's activations for the whole run: at 512 px
    the default (1 image a call) peaks well below --batch_size 32 (about 6
    MiB an image of float32 input and rescaled copy here)."""
    csv_path = support.write_photos(str(tmp_path / "photos"), 64)
    model = big_input_model(str(tmp_path / "big.keras"))
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="")
    peaks = {}
    for name, extra in (("auto", []), ("32", ["--batch_size", "32"])):
        code, err, peaks[name] = support.peak_rss_mib(
            [sys.executable, "-m", "beam_projector", "--input", csv_path, "--model", model,
             "--embedding_layer", "embedding", "--output", str(tmp_path / name),
             "--max_items", "64", "--no_preview", *extra], env=env, cwd=ROOT)
        assert code == 0, err[-3000:]
    assert peaks["auto"] < peaks["32"] - 100, peaks


def test_a_block_is_decoded_whole_before_the_model_sees_any_of_it(monkeypatch):
    """Decoding and the model take turns: the fused model call must not start
    on a block's first images while the pool still decodes the rest (decode
    threads beside TensorFlow's stall it). So nothing leaves the decode step
    until every image of its block is decoded, whatever the batch."""
    import threading
    import time

    from beam_projector.transforms import decode
    from beam_projector.transforms.elements import RefImages
    from beam_projector.transforms.records import ImageRef, Thumbnail

    finished = []
    lock = threading.Lock()

    def fake_decode(item, images, model_size, tile, resize_mode, refill, max_bytes):
        # the first image is quick, the rest slow: emitting as each lands
        # would hand the first one on while the others still decode
        if item.key != 1:
            time.sleep(0.05)
        with lock:
            finished.append(item.key)
        return item, (Thumbnail(1, 1, b""), b"pixels"), (0.0, 0.0)

    monkeypatch.setattr(decode, "_decode_one", fake_decode)
    block = 8
    fn = decode.DecodeForModelFn(RefImages(), block=block, threads=2)
    fn.setup()
    try:
        fn.start_bundle()
        seen = []
        for key in range(1, 2 * block + 1):
            element = ImageRef(f"u{key}", f"r{key}", None, (), key)
            for out in fn.process(element, 4, (4, 4), window=None, timestamp=None):
                with lock:
                    seen.append((out[0][0].key, len(finished)))
        for key, done in seen:
            block_end = ((key - 1) // block + 1) * block
            assert done >= block_end, (key, done)
        assert [k for k, _ in seen] == list(range(1, 2 * block + 1))  # input order
    finally:
        fn.teardown()


# Issue 28: 30 photos and four 89-megapixel 16-bit PNGs (211 KB each) peaked
# at 5.5 GB (0.9 GB without the PNGs): each decode converted the whole image
# through float64, two decode threads at a time. Measured after: about
# 1.2 GB, the decoder's own buffer (170 MiB a PNG) on the photos' peak.
HUGE_PNG_BOUND_MIB = 1600


def test_huge_pngs_among_photos_cost_little_more_than_their_decoders_buffers(tmp_path):
    csv_path = support.write_photos(str(tmp_path / "photos"), 30)
    with open(csv_path, "a") as f:
        for i in range(4):
            f.write(support.big_png(tmp_path / "photos" / f"huge16_{i}.png") + f",huge{i}\n")
    model = support.tiny_model(str(tmp_path / "tiny.keras"))
    out = str(tmp_path / "out")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="")
    code, err, peak = support.peak_rss_mib(
        [sys.executable, "-m", "beam_projector", "--input", csv_path, "--model", model,
         "--embedding_layer", "embedding", "--output", out, "--no_preview"], env=env, cwd=ROOT)
    assert code == 0, err[-3000:]
    meta = open(os.path.join(out, _data_dir(out), "metadata.tsv")).read().splitlines()
    assert len(meta) == 34 + 1 and sum("huge16_" in line for line in meta) == 4
    assert peak < HUGE_PNG_BOUND_MIB, f"peak RSS {peak:.0f} MiB >= {HUGE_PNG_BOUND_MIB} MiB"
