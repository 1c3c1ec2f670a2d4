#!/usr/bin/env python3
"""The compute limit: the model alone on pre-decoded batches.

Loads the Keras model and cuts it at the embedding layer, decodes every image
first (untimed, with the pipeline's own ``decode_image`` so the model sees the
same pixels), warms up once, then times only the model calls: batches of
``--batch`` uint8 images -> float32 -> a ``tf.function`` with a fixed input
signature -> numpy. Nothing in a pipeline can embed faster than this on the
same machine and thread settings.

    python bench/model_only.py --csv images.csv --model M.keras --layer L \
        [--count 1500] [--batch 64] [--tile 100] [--resize pad] [--freeze]

Prints one JSON line: images, seconds, images_per_s, decode_s, load_s.
"""
import argparse
import csv
import json
import os
import sys
import time

import numpy as np

# Run as a script, the repo root (where transforms/ lives) is not on sys.path.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--csv", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--layer", default="")
    ap.add_argument("--count", type=int, default=1500)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--tile", type=int, default=100)
    ap.add_argument("--resize", default="pad")
    ap.add_argument("--freeze", action="store_true",
                    help="the model frozen as the pipeline runs it (beam_projector.transforms.model.freeze)")
    ap.add_argument("--dynamic", action="store_true",
                    help="trace with an open batch dimension (the pipeline traces one fixed "
                    "batch shape and pads the last batch)")
    args = ap.parse_args()

    t0 = time.perf_counter()
    import keras
    import tensorflow as tf

    from beam_projector.transforms.images import decode_image, read_bytes

    model = keras.saving.load_model(args.model, compile=False)
    out = model.get_layer(args.layer).output if args.layer else model.outputs[0]
    sub = keras.Model(model.inputs, out)
    shape = tuple(model.inputs[0].shape[1:])

    batch_dim = None if args.dynamic else args.batch

    @tf.function(input_signature=[tf.TensorSpec((batch_dim,) + shape, tf.float32)])
    def embed(x):
        return [sub(x, training=False)]

    if args.freeze:
        from beam_projector.transforms.model import freeze
        frozen = freeze(embed.get_concrete_function(), (args.batch,) + shape, tf.float32,
                        args.model)
        if frozen is None:
            raise SystemExit(f"{args.model} cannot be frozen")
        embed = frozen

    load_s = time.perf_counter() - t0

    with open(args.csv, newline="") as f:
        paths = [row["path"] for row in csv.DictReader(f)][: args.count]
    t0 = time.perf_counter()
    pixels = np.stack([decode_image(read_bytes(p), shape[:2], args.tile, args.resize)[0]
                       for p in paths])
    decode_s = time.perf_counter() - t0

    def batch_at(i):
        x = pixels[i: i + args.batch].astype(np.float32)
        if len(x) < args.batch and not args.dynamic:   # padded, as the pipeline does
            x = np.concatenate([x, np.zeros((args.batch - len(x),) + x.shape[1:], x.dtype)])
        return x

    embed(tf.constant(batch_at(0)))[0].numpy()  # trace + warm up

    t0 = time.perf_counter()
    dims = None
    for i in range(0, len(pixels), args.batch):
        x = batch_at(i)
        vecs = embed(tf.constant(x))[0].numpy().reshape(len(x), -1)
        dims = vecs.shape[1]
    seconds = time.perf_counter() - t0
    print(json.dumps({"images": len(pixels), "seconds": round(seconds, 3),
                      "images_per_s": round(len(pixels) / seconds, 2), "dims": dims,
                      "batch": args.batch, "frozen": args.freeze, "dynamic": args.dynamic, "decode_s": round(decode_s, 3),
                      "decode_images_per_s": round(len(pixels) / decode_s, 1),
                      "load_s": round(load_s, 3)}))


if __name__ == "__main__":
    main()
