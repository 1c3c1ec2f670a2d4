"""The whole pipeline on the local runner, and the logdir a live TensorBoard serves."""
import math
import os

import numpy as np
import pytest
from beam_projector.transforms import projector
from beam_projector.transforms.images import decode_image, read_bytes
from beam_projector.transforms.neighbors import neighbor_columns
from beam_projector.transforms.suspects import SUSPECT_COLUMN
from google.protobuf import text_format
from PIL import Image
from tensorboard.plugins.projector.projector_config_pb2 import ProjectorConfig

from support import check_live_projector, load_tensor, run_pipeline, write_digits


def load_logdir(out):
    config = text_format.Parse(open(os.path.join(out, "projector_config.pbtxt")).read(),
                               ProjectorConfig())
    emb = config.embeddings[0]
    path = lambda rel: os.path.join(out, rel)  # noqa: E731
    meta = open(path(emb.metadata_path), encoding="utf-8").read().split("\n")
    tensor = load_tensor(path(emb.tensor_path), emb.tensor_shape)
    sprite = Image.open(path(emb.sprite.image_path))
    return config, meta, tensor, sprite


# the default columns: the input's, the neighbours', then the suspect column
# the writer ranks (no layout by default: no cluster column)
HEADER = ("path", "label") + neighbor_columns(True) + (SUSPECT_COLUMN,)


@pytest.fixture(scope="module")
def digits_run(digits, model_path, tmp_path_factory):
    csv_path, rows = digits
    out = str(tmp_path_factory.mktemp("out") / "logdir")
    summary = run_pipeline(input=csv_path, model=model_path, embedding_layer="embedding",
                           output=out, max_items=50, tile_size=24)
    return out, summary


def test_summary_counts(digits_run):
    _, summary = digits_run
    assert summary["read"] == 60
    assert summary["written"] == 50 and summary["embedded"] >= 50
    assert summary["failed"] == 0


def test_logdir_files_and_config(digits_run):
    out, _ = digits_run
    config, meta, tensor, sprite = load_logdir(out)
    emb = config.embeddings[0]
    assert emb.tensor_name == "embedding"
    assert list(emb.tensor_shape) == [50, 8]
    assert tensor.shape == (50, 8) and np.all(np.isfinite(tensor))
    assert list(emb.sprite.single_image_dim) == [24, 24]
    for rel in (emb.tensor_path, emb.metadata_path, emb.sprite.image_path):
        assert not os.path.isabs(rel)
        assert os.path.isfile(os.path.join(out, rel))
    # the thumbnails' staging folder (transforms/staging.py) is gone
    assert not [n for n in os.listdir(out) if n.startswith(".beam-projector-staging-")]
    assert meta[0] == "\t".join(HEADER)
    assert meta[-1] == "" and len(meta) == 52  # header + 50 rows + final newline
    assert sprite.size == (8 * 24, 8 * 24) and sprite.mode == "RGBA"
    # the default: the tutorial's TSV (no header, 8 tab-separated floats a row)
    assert emb.tensor_path.endswith("feature_vecs.tsv")
    rows = open(os.path.join(out, emb.tensor_path)).read().split("\n")
    assert len(rows) == 51 and rows[-1] == "" and all(len(r.split("\t")) == 8 for r in rows[:-1])


def test_tsv_tensor_has_no_header_and_no_empty_field(digits, model_path, tmp_path):
    csv_path, _ = digits
    out = str(tmp_path / "o")
    run_pipeline(input=csv_path, model=model_path, output=out, max_items=10, tile_size=16,
                 tensor_format="tsv", embedding_layer="embedding")
    config, _, tensor, _ = load_logdir(out)
    emb = config.embeddings[0]
    raw = open(os.path.join(out, emb.tensor_path)).read()
    assert emb.tensor_path.endswith("feature_vecs.tsv") and tensor.shape == (10, 8)
    assert "\t\n" not in raw and "\t\t" not in raw and not raw.startswith("\t")
    assert len(raw.rstrip("\n").split("\n")) == 10


def test_row_i_tile_i_and_vector_i_are_the_same_image(digits_run, digits, model_path):
    """Order: every metadata row's image is the sprite tile at the same index,
    and its tensor row is that image's own embedding."""
    out, _ = digits_run
    csv_path, _ = digits
    base = os.path.dirname(csv_path)
    config, meta, tensor, sprite = load_logdir(out)
    tile = 24
    per_side = math.ceil(math.sqrt(50))
    px = np.asarray(sprite)
    import keras
    model = keras.saving.load_model(model_path)
    sub = keras.Model(model.inputs, model.get_layer("embedding").output)
    rows = [line.split("\t")[:2] for line in meta[1:51]]
    inputs = []
    for i, (rel, label) in enumerate(rows):
        pixels, thumb = decode_image(read_bytes(os.path.join(base, rel)), (16, 16), tile)
        inputs.append(pixels)
        x0, y0 = projector.tile_origin(i, per_side, tile)
        ox, oy = x0 + (tile - thumb.width) // 2, y0 + (tile - thumb.height) // 2
        cell = px[oy:oy + thumb.height, ox:ox + thumb.width]
        expect = np.frombuffer(thumb.rgb, np.uint8).reshape(thumb.height, thumb.width, 3)
        assert np.array_equal(cell[..., :3], expect), f"tile {i} is not {rel}"
        assert (cell[..., 3] == 255).all()
    direct = sub.predict(np.stack(inputs).astype("float32"), verbose=0)
    np.testing.assert_allclose(tensor, direct, rtol=1e-5, atol=1e-6)


def test_sample_is_deterministic_and_seed_dependent(digits, model_path, tmp_path):
    csv_path, _ = digits
    outs = {}
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        out = str(tmp_path / name)
        run_pipeline(input=csv_path, model=model_path, output=out, max_items=20, seed=seed,
                     tile_size=16)
        outs[name] = load_logdir(out)[1]
    assert outs["a"] == outs["b"]
    assert outs["a"] != outs["c"]


def test_default_layer_is_model_output(digits, model_path, tmp_path):
    csv_path, _ = digits
    out = str(tmp_path / "o")
    run_pipeline(input=csv_path, model=model_path, output=out, max_items=5, tile_size=16)
    config, _, tensor, _ = load_logdir(out)
    assert config.embeddings[0].tensor_name == "logits"
    assert tensor.shape == (5, 3)


def test_live_tensorboard_serves_the_projector(digits_run):
    out, _ = digits_run
    meta, sprite = check_live_projector(out, n=50, dims={"embedding": 8}, tile=24)
    lines = meta.rstrip("\n").split("\n")
    assert lines[0] == "\t".join(HEADER) and len(lines) == 51


def test_quoted_csv_fields_and_relative_paths(tmp_path, model_path):
    """Commas, quotes and newlines inside fields; paths relative to the CSV."""
    import csv
    folder = tmp_path / "data"
    csv_path, rows = write_digits(str(folder), count=6)
    labels = ['plain', 'has,comma', 'has "quote"', 'multi\nline', 'tab\there', '']
    with open(csv_path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "note", "label"])
        for row, note in zip(rows, labels):
            w.writerow([row["path"], note, row["label"]])
    out = str(tmp_path / "out")
    run_pipeline(neighbors=0, layout="none", input=csv_path, model=model_path, output=out, max_items=10, tile_size=16)
    _, meta, _, _ = load_logdir(out)
    assert meta[0] == "path\tnote\tlabel"
    got = {line.split("\t")[0]: line.split("\t")[1] for line in meta[1:7]}
    expect = {r["path"]: projector.escape_metadata_value(n) for r, n in zip(rows, labels)}
    assert got == expect
