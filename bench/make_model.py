#!/usr/bin/env python3
# Copied unchanged (apart from this header) from ../shared/bench/make_model.py, the
# reference script that issue 5 names; kept here so the benchmark is
# self-contained in the project.
"""Build an ImageNet-sized Keras model with untrained weights, for timing.

No weights can be downloaded here, so the benchmark model is MobileNetV2
(224x224x3 input, about 300 MFLOPs an image) with random weights: the cost of
inference is real even if the embedding means nothing.

    python make_model.py OUT.keras [--arch mobilenet_v2|resnet50|small_cnn]

The embedding layer to pick is printed: 'global_average_pooling2d' style
pooled features (1280-d for MobileNetV2, 2048-d for ResNet50).
"""
import argparse

import tensorflow as tf


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--arch", default="mobilenet_v2", choices=["mobilenet_v2", "resnet50", "small_cnn"])
    args = ap.parse_args()
    tf.keras.utils.set_random_seed(0)
    if args.arch == "small_cnn":
        inp = tf.keras.Input((64, 64, 3))
        x = tf.keras.layers.Rescaling(1 / 255.0)(inp)
        for filters in (16, 32, 64):
            x = tf.keras.layers.Conv2D(filters, 3, activation="relu", padding="same")(x)
            x = tf.keras.layers.MaxPooling2D()(x)
        x = tf.keras.layers.GlobalAveragePooling2D(name="embedding")(x)
        out = tf.keras.layers.Dense(10, name="logits")(x)
        model = tf.keras.Model(inp, out)
    else:
        app = {"mobilenet_v2": tf.keras.applications.MobileNetV2,
               "resnet50": tf.keras.applications.ResNet50}[args.arch]
        model = app(weights=None, include_top=True, input_shape=(224, 224, 3), classes=1000)
    model.save(args.out)
    pooled = [layer.name for layer in model.layers if "pool" in layer.name.lower()]
    print(f"saved {args.out}; input {model.input_shape}; pooled layers: {pooled[-1:]}")


if __name__ == "__main__":
    main()
