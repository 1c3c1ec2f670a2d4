"""Same input, model and seed -> byte-identical logdir, on the in-memory
runner and on the multi-process runner (which also pickles every DoFn the way
a cluster does). Only run_summary.json, which holds timings, may differ."""
import csv
import os

import numpy as np
import pytest

from support import run_pipeline
from transforms.inference import EmbeddingModelHandler, ModelSpec, load_embedding_model

MAY_DIFFER = {"run_summary.json"}


def dense_model(path):
    """16x16x3 -> Flatten (768) -> Dense 32 'embedding': a wide matmul, whose
    CPU kernels round differently for different batch sizes."""
    import keras

    keras.utils.set_random_seed(1)
    inp = keras.Input((16, 16, 3))
    x = keras.layers.Rescaling(1 / 255.0)(inp)
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dense(32, activation="tanh", name="embedding")(x)
    keras.Model(inp, keras.layers.Dense(3, name="logits")(x)).save(path)
    return path


@pytest.fixture(scope="module")
def setup(digits, tmp_path_factory):
    csv_path, rows = digits
    folder = tmp_path_factory.mktemp("det")
    base = os.path.dirname(csv_path)
    data = str(folder / "in.csv")

    def rel(name):
        # Relative to the CSV: a row is its own sample key, so an absolute
        # path would make the sample (and whether a missing file is in it)
        # depend on pytest's numbered temp folder.
        return os.path.relpath(os.path.join(base, name), folder)

    with open(data, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["path", "label", "note"])
        for i, r in enumerate(rows):
            w.writerow([rel(r["path"]), r["label"], ["", "a\tb", "x"][i % 3]])
        for i in range(5):
            w.writerow([rel(f"missing_{i}.png"), "gone", ""])
    return folder, data, dense_model(str(folder / "dense.keras"))


def files(out):
    got = {}
    for root, _, names in os.walk(out):
        for name in names:
            rel = os.path.relpath(os.path.join(root, name), out)
            if rel not in MAY_DIFFER:
                got[rel] = open(os.path.join(root, name), "rb").read()
    return got


def test_in_memory_and_multi_process_runs_are_byte_identical(setup):
    folder, data, model = setup
    flags = dict(input=data, model=model, embedding_layer="embedding", max_items=40,
                 batch_size=7, seed=5, tile_size=16, max_error_fraction=0.3)
    a = str(folder / "a")
    b = str(folder / "b")
    mp = str(folder / "mp")
    run_pipeline(output=a, **flags)
    run_pipeline(output=b, **flags)
    run_pipeline(output=mp, runner="FnApiRunner", direct_running_mode="multi_processing",
                 direct_num_workers=2, **flags)
    fa, fb, fm = files(a), files(b), files(mp)
    names = sorted(fa)
    assert "projector_config.pbtxt" in names and "errors.tsv" in names
    assert sum(n.startswith("data-") for n in names) == 3   # tensor, metadata, sprite
    assert len(fa["errors.tsv"].splitlines()) > 1            # the dead letters are compared too
    assert fb == fa
    assert "suspects.tsv" in names and b"nn_distance" in next(
        v for k, v in fa.items() if k.endswith("metadata.tsv"))
    assert sorted(fm) == names      # same digest folder name: all asset bytes agree
    for name in names:
        assert fm[name] == fa[name], name


def test_a_vector_does_not_depend_on_its_batch(setup):
    """The handler pads every call to --batch_size: an image's embedding is
    the same bits whether it came in a full batch or a short tail."""
    folder, data, model = setup
    handler = EmbeddingModelHandler(ModelSpec(uri=model, layers=("embedding",)), batch_size=16)
    loaded = load_embedding_model(ModelSpec(uri=model, layers=("embedding",)))
    rng = np.random.RandomState(0)
    images = [rng.randint(0, 256, (16, 16, 3)).astype(np.uint8) for _ in range(16)]
    full = [v[0] for v in handler.run_inference(images, loaded)]
    for size in (1, 3, 5, 7):
        for start in (0, 16 - size):
            part = handler.run_inference(images[start:start + size], loaded)
            for i, v in enumerate(part):
                assert v[0].tobytes() == full[start + i].tobytes(), (size, start, i)
