"""Models: SavedModels (signature, output keys), Keras files, several embeddings per run."""
import os

import numpy as np
import pytest
import tensorflow as tf
from beam_projector.pipeline.preflight import UsageError
from beam_projector.transforms.images import decode_image, read_bytes
from beam_projector.transforms.model import ModelSpec, load_embedding_model, scale_pixels
from google.protobuf import text_format
from tensorboard.plugins.projector.projector_config_pb2 import ProjectorConfig

from savedmodels import SIDE, expected_serve, export_module
from support import check_live_projector, load_tensor, run_pipeline


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory):
    return export_module(str(tmp_path_factory.mktemp("sm") / "embedder"))


def load_run(out):
    config = text_format.Parse(open(os.path.join(out, "projector_config.pbtxt")).read(),
                               ProjectorConfig())
    tensors = {e.tensor_name: load_tensor(os.path.join(out, e.tensor_path), e.tensor_shape)
               for e in config.embeddings}
    meta = open(os.path.join(out, config.embeddings[0].metadata_path)).read().split("\n")
    return config, tensors, meta


def pixels_of(meta, csv_path, n):
    base = os.path.dirname(csv_path)
    return np.stack([decode_image(read_bytes(os.path.join(base, line.split("\t")[0])),
                                  (SIDE, SIDE), 16)[0] for line in meta[1:n + 1]])


@pytest.fixture(scope="module")
def two_output_run(saved_model, digits, tmp_path_factory):
    csv_path, _ = digits
    out = str(tmp_path_factory.mktemp("sm-run") / "logdir")
    summary = run_pipeline(neighbors=0, layout="none", input=csv_path, model=saved_model,
                           embedding_output="embedding,logits",
                           output=out, max_items=30, tile_size=16)
    return out, summary


def test_savedmodel_outputs_become_separate_tensors(two_output_run, digits):
    out, summary = two_output_run
    assert summary["written"] == 30
    config, tensors, meta = load_run(out)
    names = [e.tensor_name for e in config.embeddings]
    assert names == ["embedding", "logits"]
    assert [list(e.tensor_shape) for e in config.embeddings] == [[30, 4], [30, 2]]
    # each its own tensor file; one metadata file and one sprite shared
    assert len({e.tensor_path for e in config.embeddings}) == 2
    assert len({e.metadata_path for e in config.embeddings}) == 1
    assert len({e.sprite.image_path for e in config.embeddings}) == 1
    expected = expected_serve(pixels_of(meta, digits[0], 30))
    for name in names:
        np.testing.assert_allclose(tensors[name], expected[name], rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_live_tensorboard_serves_every_tensor(two_output_run):
    out, _ = two_output_run
    meta, _ = check_live_projector(out, n=30, dims={"embedding": 4, "logits": 2}, tile=16)
    assert meta.split("\n")[0] == "path\tlabel"


def test_signature_and_pixel_scale_reach_the_model(saved_model, digits, tmp_path):
    """--signature picks the function; --pixel_scale unit feeds it 0-1 pixels."""
    csv_path, _ = digits
    out = str(tmp_path / "o")
    run_pipeline(input=csv_path, model=saved_model, signature="stats", pixel_scale="unit",
                 output=out, max_items=10, tile_size=16)
    config, tensors, meta = load_run(out)
    assert [e.tensor_name for e in config.embeddings] == ["mean"]
    expected = pixels_of(meta, csv_path, 10).astype(np.float32).mean(axis=(1, 2)) / 255.0
    np.testing.assert_allclose(tensors["mean"], expected, rtol=1e-5, atol=1e-6)
    assert tensors["mean"].max() <= 1.0 and tensors["mean"].max() > 0.5


def test_unknown_signature_and_output_name_what_exists(saved_model, digits, tmp_path):
    csv_path, _ = digits
    with pytest.raises(UsageError, match="has no signature 'nope'.*serving_default, stats"):
        run_pipeline(input=csv_path, model=saved_model, signature="nope", output=str(tmp_path))
    with pytest.raises(UsageError, match="unknown embedding output pooled.*embedding, logits"):
        run_pipeline(input=csv_path, model=saved_model, embedding_output="pooled",
                     output=str(tmp_path))


def test_keras_export_savedmodel_default_output(model_path, digits, tmp_path):
    """A Keras 3 ``model.export`` SavedModel: one output, taken by default."""
    import keras
    exported = str(tmp_path / "exported")
    keras.saving.load_model(model_path).export(exported, verbose=False)
    out = str(tmp_path / "o")
    run_pipeline(input=digits[0], model=exported, output=out, max_items=8, tile_size=16)
    config, tensors, _ = load_run(out)
    (name, tensor), = tensors.items()
    assert tensor.shape == (8, 3)  # the tiny model's logits


@pytest.mark.parametrize("batch_size", [None, 4])
def test_the_launcher_and_the_in_process_worker_share_one_load(model_path, digits, tmp_path,
                                                               monkeypatch, batch_size):
    """The launcher loads the model to check it; the in-process worker reuses
    that load (a second one costs seconds for an ImageNet-sized model), whether
    the batch size is given or resolved from the model's config."""
    import beam_projector.transforms.model as model_module
    loads = []
    real = model_module.load_embedding_model
    monkeypatch.setattr(model_module, "load_embedding_model",
                        lambda spec: loads.append(spec) or real(spec))
    model_module._LOADED.clear()
    extra = {} if batch_size is None else {"batch_size": batch_size}
    run_pipeline(input=digits[0], model=model_path, output=str(tmp_path / "o"),
                 max_items=8, tile_size=16, **extra)
    assert len(loads) == 1 and loads[0].batch_size == (batch_size or loads[0].batch_size) > 0


def test_several_keras_layers_in_one_model_call(model_path):
    model = load_embedding_model(ModelSpec(uri=model_path, layers=("embedding", "pool")))
    calls = []
    inner = model._fn
    model._fn = lambda x: calls.append(len(x)) or inner(x)
    batch = np.random.default_rng(0).integers(0, 256, (5, SIDE, SIDE, 3), dtype=np.uint8)
    mats = model.embed(batch)
    assert calls == [model.batch_size]   # one call (padded to the traced batch) for both layers
    assert model.names == ["embedding", "pool"]
    assert [m.shape for m in mats] == [(5, 8), (5, 8)]
    assert not np.allclose(mats[0], mats[1])


def test_several_keras_layers_become_separate_tensors(model_path, digits, tmp_path):
    import keras
    out = str(tmp_path / "o")
    run_pipeline(input=digits[0], model=model_path, embedding_layer="embedding,pool",
                 output=out, max_items=10, tile_size=16)
    config, tensors, meta = load_run(out)
    assert [e.tensor_name for e in config.embeddings] == ["embedding", "pool"]
    keras_model = keras.saving.load_model(model_path)
    x = pixels_of(meta, digits[0], 10).astype("float32")
    for name in ("embedding", "pool"):
        sub = keras.Model(keras_model.inputs, keras_model.get_layer(name).output)
        np.testing.assert_allclose(tensors[name], sub.predict(x, verbose=0), rtol=1e-4, atol=1e-5)


def test_h5_file_loads_and_cuts_at_a_layer(tmp_path):
    import support
    h5 = support.tiny_model(str(tmp_path / "tiny.h5"))
    model = load_embedding_model(ModelSpec(uri=h5, layers=("embedding",)))
    assert model.input_size == (SIDE, SIDE, 3)
    (mat,) = model.embed(np.zeros((2, SIDE, SIDE, 3), np.uint8))
    assert mat.shape == (2, 8)


def test_uint8_savedmodel_input(tmp_path):
    """Exported detection/hub-style models take uint8 images: raw pixels cast exactly."""
    class Sum(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, 4, 4, 3], tf.uint8, name="image")])
        def serve(self, image):
            return {"total": tf.reduce_sum(tf.cast(image, tf.float32), axis=[1, 2])}

    module = Sum()
    tf.saved_model.save(module, str(tmp_path / "u8"), signatures={"serving_default": module.serve})
    model = load_embedding_model(ModelSpec(uri=str(tmp_path / "u8")))
    batch = np.full((2, 4, 4, 3), 255, np.uint8)
    (mat,) = model.embed(batch)
    np.testing.assert_array_equal(mat, np.full((2, 3), 255 * 16, np.float32))


class AnySize(tf.Module):
    """Hub-style export: images of any height and width."""

    @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.float32, name="images")])
    def serve(self, images):
        shape = tf.cast(tf.shape(images)[1:3], tf.float32)
        return {"size": tf.tile(shape[None, :], [tf.shape(images)[0], 1]),
                "mean": tf.reduce_mean(images, axis=[1, 2])}


@pytest.fixture(scope="module")
def any_size_model(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("anysize") / "m")
    module = AnySize()
    tf.saved_model.save(module, path, signatures={"serving_default": module.serve})
    return path


def test_any_size_model_needs_image_size(any_size_model, digits, tmp_path):
    csv_path, _ = digits
    with pytest.raises(UsageError, match="--image_size HEIGHTxWIDTH"):
        run_pipeline(input=csv_path, model=any_size_model, output=str(tmp_path / "o"))
    with pytest.raises(UsageError, match="--image_size"):
        run_pipeline(input=csv_path, model=any_size_model, output=str(tmp_path / "o"),
                     image_size="12xbig")


def test_image_size_reaches_the_model(any_size_model, digits, tmp_path):
    csv_path, _ = digits
    out = str(tmp_path / "o")
    run_pipeline(input=csv_path, model=any_size_model, embedding_output="size", image_size="12x20",
                 output=out, max_items=4, tile_size=16)
    _, tensors, _ = load_run(out)
    np.testing.assert_array_equal(tensors["size"], np.tile([[12, 20]], (4, 1)).astype(np.float32))


def test_image_size_must_match_a_fixed_input(saved_model, digits, tmp_path):
    csv_path, _ = digits
    with pytest.raises(UsageError, match="takes 16x16 images; --image_size 32x32 does not match"):
        run_pipeline(input=csv_path, model=saved_model, image_size="32",
                     output=str(tmp_path / "o"))


# --- models that do not fit: refused when loaded (preflight), not at inference ------

def test_two_input_and_four_channel_models_are_refused_when_loaded(tmp_path):
    from beam_projector.transforms.model import ModelError

    from support import odd_model
    two = odd_model(str(tmp_path / "two.keras"), "two_inputs")
    with pytest.raises(ModelError, match="takes 2 inputs \\('image', 'mask'\\); an image "
                                         "embedding model takes one image"):
        load_embedding_model(ModelSpec(uri=two))
    four = odd_model(str(tmp_path / "four.keras"), "four_channels")
    with pytest.raises(ModelError, match="takes 4-channel images; beam-projector feeds RGB"):
        load_embedding_model(ModelSpec(uri=four))

    class Rgba(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, 8, 8, 4], tf.float32)])
        def serve(self, x):
            return {"mean": tf.reduce_mean(x, axis=[1, 2])}

    module = Rgba()
    tf.saved_model.save(module, str(tmp_path / "rgba"), signatures={"serving_default": module.serve})
    with pytest.raises(ModelError, match="takes 4-channel images"):
        load_embedding_model(ModelSpec(uri=str(tmp_path / "rgba")))


def test_a_lambda_over_a_def_is_one_short_reason(tmp_path):
    """Issue 28: a .keras whose Lambda wraps a def (saved by another
    process, as a user's training script does) failed with 2 KB of nested
    config dumps; now one line naming the layer and the function, and what
    to do."""
    from beam_projector.transforms.model import ModelError

    from support import child_python

    path = str(tmp_path / "lambda.keras")
    code, _, err = child_python(f"""
        import keras
        def scale(x):
            return x / 255.0
        inp = keras.Input((16, 16, 3))
        x = keras.layers.Lambda(scale, name="scale")(inp)
        x = keras.layers.GlobalAveragePooling2D(name="embedding")(x)
        keras.Model(inp, keras.layers.Dense(2)(x)).save({path!r})
    """)
    assert code == 0, err[-1000:]
    with pytest.raises(ModelError) as e:
        load_embedding_model(ModelSpec(uri=path, layers=("embedding",)))
    text = str(e.value)
    assert len(text) < 600 and "config=" not in text and "\n" not in text, text
    assert "its Lambda layer 'scale' calls the Python function 'scale'" in text, text
    assert "register_keras_serializable" in text and "keras.layers.Rescaling" in text


def test_one_dimensional_embedding_is_refused(tmp_path):
    from beam_projector.transforms.model import ModelError

    from support import odd_model
    path = odd_model(str(tmp_path / "one.keras"), "one_d")
    with pytest.raises(ModelError, match="'score' has shape \\(batch, 1\\): 1 dimension; the "
                                         "projector needs at least 2"):
        load_embedding_model(ModelSpec(uri=path))          # the model output
    assert load_embedding_model(ModelSpec(uri=path, layers=("embedding",))).names == ["embedding"]


def test_corrupt_model_files_say_what_is_wrong(tmp_path, model_path):
    from beam_projector.transforms.model import ModelError
    truncated = tmp_path / "truncated.keras"
    truncated.write_bytes(open(model_path, "rb").read()[:3000])
    with pytest.raises(ModelError) as e:
        load_embedding_model(ModelSpec(uri=str(truncated)))
    assert "not a zip archive" in str(e.value) and "File not found" not in str(e.value)
    fake_h5 = tmp_path / "model.h5"
    fake_h5.write_bytes(b"\0" * 4096)
    with pytest.raises(ModelError, match="no HDF5 signature"):
        load_embedding_model(ModelSpec(uri=str(fake_h5)))


def test_feature_map_layer_needs_pool(model_path):
    from beam_projector.transforms.model import ModelError
    with pytest.raises(ModelError, match="'conv' has shape \\(batch, 16, 16, 8\\), a feature map, "
                                         "not one vector per image \\(batch, D\\): set --pool"):
        load_embedding_model(ModelSpec(uri=model_path, layers=("conv",)))
    import keras
    keras_model = keras.saving.load_model(model_path)
    conv = keras.Model(keras_model.inputs, keras_model.get_layer("conv").output)
    batch = np.random.default_rng(1).integers(0, 256, (3, SIDE, SIDE, 3), dtype=np.uint8)
    maps = conv.predict(batch.astype("float32"), verbose=0)
    expect = {"avg": maps.mean(axis=(1, 2)), "max": maps.max(axis=(1, 2)),
              "flatten": maps.reshape(3, -1)}
    for pool, want in expect.items():
        model = load_embedding_model(ModelSpec(uri=model_path, layers=("conv", "embedding"),
                                               pool=pool))
        got, emb = model.embed(batch)
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
        assert emb.shape == (3, 8)   # (batch, D) outputs are left as they are


def test_feature_map_savedmodel_output_needs_pool(tmp_path):
    from beam_projector.transforms.model import ModelError

    class Maps(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, 8, 8, 3], tf.float32, name="x")])
        def serve(self, x):
            return {"maps": x[:, ::2, ::2, :], "mean": tf.reduce_mean(x, axis=[1, 2])}

    module = Maps()
    path = str(tmp_path / "maps")
    tf.saved_model.save(module, path, signatures={"serving_default": module.serve})
    with pytest.raises(ModelError, match="'maps' has shape \\(batch, 4, 4, 3\\), a feature map"):
        load_embedding_model(ModelSpec(uri=path, outputs=("maps",)))
    model = load_embedding_model(ModelSpec(uri=path, outputs=("maps",), pool="avg"))
    batch = np.random.default_rng(2).integers(0, 256, (2, 8, 8, 3), dtype=np.uint8)
    (got,) = model.embed(batch)
    np.testing.assert_allclose(got, batch[:, ::2, ::2].astype(np.float32).mean(axis=(1, 2)),
                               rtol=1e-5)


def test_pool_option_reaches_the_projector(model_path, digits, tmp_path):
    import keras
    csv_path, _ = digits
    with pytest.raises(UsageError, match="'conv'.*--pool avg, max or flatten"):
        run_pipeline(input=csv_path, model=model_path, embedding_layer="conv",
                     output=str(tmp_path / "refused"))
    out = str(tmp_path / "o")
    run_pipeline(input=csv_path, model=model_path, embedding_layer="conv", pool="max",
                 output=out, max_items=6, tile_size=16)
    config, tensors, meta = load_run(out)
    assert list(config.embeddings[0].tensor_shape) == [6, 8]
    keras_model = keras.saving.load_model(model_path)
    conv = keras.Model(keras_model.inputs, keras_model.get_layer("conv").output)
    maps = conv.predict(pixels_of(meta, csv_path, 6).astype("float32"), verbose=0)
    np.testing.assert_allclose(tensors["conv"], maps.max(axis=(1, 2)), rtol=1e-4, atol=1e-5)


def bn_model(path, side=SIDE):
    """A Keras CNN with batch normalisation (non-trivial statistics), the
    kind freezing speeds up."""
    import keras
    keras.utils.set_random_seed(1)
    inp = keras.Input((side, side, 3))
    x = keras.layers.Conv2D(8, 3, padding="same", use_bias=False, name="conv")(inp)
    bn = keras.layers.BatchNormalization(name="bn")
    x = keras.layers.ReLU(6.0)(bn(x))
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    model = keras.Model(inp, keras.layers.Dense(4, name="embedding")(x))
    rng = np.random.default_rng(1)
    gamma, beta, mean, var = bn.get_weights()
    bn.set_weights([rng.uniform(0.5, 2, gamma.shape), rng.normal(size=beta.shape),
                    rng.normal(50, 10, mean.shape), rng.uniform(100, 900, var.shape)])
    model.save(path)
    return model


def test_a_keras_model_runs_frozen_and_gives_its_own_vectors(tmp_path):
    path = str(tmp_path / "bn.keras")
    keras_model = bn_model(path)
    model = load_embedding_model(ModelSpec(uri=path, layers=("pool", "embedding")))
    assert model.frozen
    x = np.random.default_rng(2).integers(0, 256, (6, SIDE, SIDE, 3), dtype=np.uint8)
    got = model.embed(x)
    import keras
    want = keras.Model(keras_model.inputs, [keras_model.get_layer("pool").output,
                                            keras_model.get_layer("embedding").output]
                       ).predict(x.astype("float32"), verbose=0)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5)


def test_a_savedmodel_runs_frozen_and_keeps_its_output_names(saved_model):
    model = load_embedding_model(ModelSpec(uri=saved_model, outputs=("logits", "embedding")))
    assert model.frozen
    x = np.random.default_rng(3).integers(0, 256, (5, SIDE, SIDE, 3), dtype=np.uint8)
    logits, embedding = model.embed(x)
    want = expected_serve(x)
    np.testing.assert_allclose(logits, want["logits"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(embedding, want["embedding"], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", ["keras", "savedmodel"])
def test_a_frozen_call_binds_its_batch_directly(tmp_path, saved_model, monkeypatch, kind):
    """A frozen model's call never goes through TensorFlow's failed bind
    (which formats the whole batch into an error it then swallows), and the
    direct call gives the public call's bits."""
    import tensorflow as tf
    from beam_projector.transforms import model as model_module
    from tensorflow.python.eager.polymorphic_function import function_type_utils
    frozen = []
    real_freeze = model_module.freeze
    monkeypatch.setattr(model_module, "freeze",
                        lambda *a, **k: frozen.append(real_freeze(*a, **k)) or frozen[-1])
    if kind == "keras":
        path = str(tmp_path / "bn.keras")
        bn_model(path)
        model = load_embedding_model(ModelSpec(uri=path, layers=("pool", "embedding")))
    else:
        model = load_embedding_model(ModelSpec(uri=saved_model, outputs=("logits", "embedding")))
    assert model.frozen and frozen[-1] is not None
    failed = []
    real_bind = function_type_utils.bind_function_inputs

    def bind(*args, **kwargs):
        try:
            return real_bind(*args, **kwargs)
        except Exception as e:
            failed.append(e)
            raise
    monkeypatch.setattr(function_type_utils, "bind_function_inputs", bind)
    x = np.random.default_rng(4).integers(0, 256, (model.batch_size, SIDE, SIDE, 3),
                                          dtype=np.uint8)
    got = model.embed(x)
    assert not failed
    public = frozen[-1](tf.constant(scale_pixels(x, model.pixel_scale)))
    assert len(got) == len(public) == 2
    for g, w in zip(got, public):
        assert np.array_equal(g, w.numpy())


@pytest.mark.parametrize("fault", ["cannot_freeze", "wrong_outputs"])
def test_a_model_that_does_not_freeze_right_runs_as_loaded(tmp_path, monkeypatch, fault):
    """Freezing is only a speed-up: when TensorFlow cannot freeze a model, or
    the frozen function's probe output differs, the model runs unfrozen."""
    from tensorflow.python.framework import convert_to_constants
    real = convert_to_constants.convert_variables_to_constants_v2

    def faulty(concrete):
        if fault == "cannot_freeze":
            raise ValueError("a resource that is not a variable")
        frozen = real(concrete)
        return lambda x: [t * 1.01 for t in frozen(x)]

    monkeypatch.setattr(convert_to_constants, "convert_variables_to_constants_v2", faulty)
    path = str(tmp_path / "bn.keras")
    keras_model = bn_model(path)
    model = load_embedding_model(ModelSpec(uri=path))
    assert not model.frozen
    x = np.random.default_rng(4).integers(0, 256, (3, SIDE, SIDE, 3), dtype=np.uint8)
    np.testing.assert_allclose(model.embed(x)[0], keras_model.predict(x.astype("float32"), verbose=0),
                               rtol=1e-5, atol=1e-5)


def test_a_model_with_large_weights_runs_unfrozen(tmp_path, monkeypatch):
    """A frozen graph holds its weights several times over, so only small
    models are frozen (here the limit is lowered under the tiny model's)."""
    from beam_projector.transforms import model as model_module
    path = str(tmp_path / "bn.keras")
    bn_model(path)
    assert load_embedding_model(ModelSpec(uri=path)).frozen
    monkeypatch.setattr(model_module, "FREEZE_MAX_WEIGHT_BYTES", 64)
    assert not load_embedding_model(ModelSpec(uri=path)).frozen
