"""Same input, model and seed -> byte-identical logdir, on the in-memory
runner and on the multi-process runner (which also pickles every DoFn the way
a cluster does). Only run_summary.json, which holds timings, may differ."""
import csv
import os

import numpy as np
import pytest
from beam_projector.transforms.inference import EmbeddingModelHandler
from beam_projector.transforms.model import ModelSpec, load_embedding_model

from support import run_pipeline, tiny_model

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


def cnn_224(path):
    """A 224 px CNN with batch normalisation: small enough to run frozen
    (its normalisations folded into the convolutions), at the input size
    of ImageNet models."""
    import keras

    keras.utils.set_random_seed(2)
    inp = keras.Input((224, 224, 3))
    x = keras.layers.Rescaling(1 / 127.5, offset=-1)(inp)
    for filters in (8, 16, 32):
        x = keras.layers.Conv2D(filters, 3, strides=2, padding="same", use_bias=False)(x)
        x = keras.layers.BatchNormalization()(x)
        x = keras.layers.ReLU()(x)
    x = keras.layers.GlobalAveragePooling2D(name="embedding")(x)
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


MODELS = {"dense": dense_model, "small_cnn": tiny_model, "frozen_224": cnn_224}


@pytest.mark.parametrize("kind", sorted(MODELS))
def test_in_memory_and_multi_process_runs_are_byte_identical(setup, kind):
    folder, data, _ = setup
    model = MODELS[kind](str(folder / f"{kind}.keras"))
    if kind == "frozen_224":
        assert load_embedding_model(ModelSpec(uri=model, layers=("embedding",))).frozen
    flags = dict(input=data, model=model, embedding_layer="embedding", max_items=40,
                 seed=5, tile_size=16, max_error_fraction=0.3, layout="umap")
    if kind == "dense":
        flags["batch_size"] = 7     # a batch that does not divide the sample
    a, mp = str(folder / f"{kind}-a"), str(folder / f"{kind}-mp")
    run_pipeline(output=a, **flags)
    run_pipeline(output=mp, runner="FnApiRunner", direct_running_mode="multi_processing",
                 direct_num_workers=2, **flags)
    fa, fm = files(a), files(mp)
    names = sorted(fa)
    assert "projector_config.pbtxt" in names and "errors.tsv" in names
    # tensor, metadata, sprite, and the layout's bookmarks (a UMAP fit, then
    # rows placed on whichever worker: the same bytes either way)
    assert sum(n.startswith("data-") for n in names) == 4
    assert any(n.endswith("/bookmarks.json") for n in names)
    assert len(fa["errors.tsv"].splitlines()) > 1            # the dead letters are compared too
    assert "suspects.tsv" in names and b"nn_distance" in next(
        v for k, v in fa.items() if k.endswith("metadata.tsv"))
    assert sorted(fm) == names      # same digest folder name: all asset bytes agree
    for name in names:
        assert fm[name] == fa[name], name


def test_a_second_in_memory_run_is_byte_identical(setup):
    folder, data, model = setup
    flags = dict(input=data, model=model, embedding_layer="embedding", max_items=40,
                 batch_size=7, seed=5, tile_size=16, max_error_fraction=0.3)
    a, b = str(folder / "again-a"), str(folder / "again-b")
    run_pipeline(output=a, **flags)
    run_pipeline(output=b, **flags)
    assert files(a) == files(b)


@pytest.mark.parametrize("frozen", [True, False])
@pytest.mark.parametrize("kind", ["keras", "savedmodel"])
def test_a_vector_does_not_depend_on_how_the_images_are_split(setup, tmp_path, monkeypatch,
                                                              kind, frozen):
    """The same 16 images embedded whole, one at a time, and in bundles of
    3, 5 and 7 give the same bits: the model runs one traced batch shape and
    pads a short batch, so an image's vector does not depend on its
    companions (a Dense layer on this CPU moves 64 of 64 rows at batch 1).
    Frozen and unfrozen, Keras file and SavedModel."""
    folder, data, model = setup
    from beam_projector.transforms import model as model_module
    if not frozen:
        monkeypatch.setattr(model_module, "FREEZE_MAX_WEIGHT_BYTES", 0)
    if kind == "savedmodel":
        import keras
        exported = str(tmp_path / "exported")
        keras.saving.load_model(model).export(exported, verbose=False)
        spec = ModelSpec(uri=exported, batch_size=16)
    else:
        spec = ModelSpec(uri=model, layers=("embedding",), batch_size=16)
    loaded = load_embedding_model(spec)
    assert loaded.frozen == frozen and loaded.batch_size == 16
    rng = np.random.RandomState(0)
    images = rng.randint(0, 256, (16, 16, 16, 3)).astype(np.uint8)
    (whole,) = loaded.embed(images)
    for size in (1, 3, 5, 7):
        parts = np.concatenate([loaded.embed(images[i:i + size])[0]
                                for i in range(0, len(images), size)])
        assert parts.tobytes() == whole.tobytes(), size
    handler = EmbeddingModelHandler(spec)
    assert handler.batch_elements_kwargs()["max_batch_size"] == 16
    for start, size in ((0, 1), (9, 7), (4, 5)):
        part = handler.run_inference(list(images[start:start + size]), loaded)
        for i, result in enumerate(part):
            (vector,) = result.inference.values()
            assert vector.tobytes() == whole[start + i].tobytes(), (size, start, i)
