"""A tiny SavedModel with two signatures, written the way TF users export."""
import numpy as np
import tensorflow as tf

SIDE = 16


class Embedder(tf.Module):
    """A tiny image model with two signatures, written the way TF users export."""

    def __init__(self):
        super().__init__()
        rng = np.random.default_rng(0)
        self.w = tf.Variable(rng.normal(size=(3, 4)).astype("float32"))
        self.v = tf.Variable(rng.normal(size=(4, 2)).astype("float32"))

    @tf.function(input_signature=[tf.TensorSpec([None, SIDE, SIDE, 3], tf.float32, name="pixels")])
    def serve(self, pixels):
        emb = tf.tanh(tf.reduce_mean(pixels, axis=[1, 2]) / 255.0 @ self.w)
        return {"embedding": emb, "logits": emb @ self.v}

    @tf.function(input_signature=[tf.TensorSpec([None, SIDE, SIDE, 3], tf.float32, name="images")])
    def stats(self, images):
        return {"mean": tf.reduce_mean(images, axis=[1, 2])}


def export_module(path):
    """Export ``Embedder`` as a SavedModel directory; returns the path."""
    module = Embedder()
    tf.saved_model.save(module, path, signatures={"serving_default": module.serve,
                                                   "stats": module.stats})
    return path


def expected_serve(pixels):
    """What ``Embedder.serve`` computes, in numpy."""
    m = Embedder()
    emb = np.tanh(pixels.astype(np.float32).mean(axis=(1, 2)) / 255.0 @ m.w.numpy())
    return {"embedding": emb, "logits": emb @ m.v.numpy()}
