#!/usr/bin/env python3
# Copied unchanged (apart from this header) from ../shared/bench/seed_loop.py, the
# reference script that issue 5 names; kept here so the benchmark is
# self-contained in the project.
# This is the tutorial baseline the pipeline is measured against: keep it the
# naive one-image-at-a-time loop, do not optimise it.
"""The reference baseline: the one-image-at-a-time loop that the original
projector tutorial uses, made runnable on a CSV of image paths.

For each image: tf.io.read_file + decode_jpeg + resize_with_pad, the model
called on a batch of one, a second decode with PIL for the sprite tile; then
feature_vecs.tsv, metadata.tsv and sprite.jpg written at the end, with the
sprite grid of ceil(sqrt(n)) tiles a side. No sampling beyond "first N rows",
no error handling: this is the thing to beat, not a thing to copy.

    python seed_loop.py --csv images.csv --model MODEL [--layer NAME] \
        --out OUT_DIR [--limit 1500] [--size 224] [--tile 100]
"""
import argparse
import csv
import os
import time

import numpy as np
import tensorflow as tf
from PIL import Image


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--csv", required=True)
    ap.add_argument("--model", required=True, help=".keras/.h5 file or SavedModel dir")
    ap.add_argument("--layer", default=None, help="layer whose output is the embedding")
    ap.add_argument("--out", required=True)
    ap.add_argument("--limit", type=int, default=1500)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--tile", type=int, default=100)
    args = ap.parse_args()

    model = tf.keras.models.load_model(args.model)
    if args.layer:
        model = tf.keras.models.Model(inputs=model.inputs, outputs=model.get_layer(args.layer).output)

    with open(args.csv, newline="") as f:
        rows = list(csv.DictReader(f))[: args.limit]

    t0 = time.perf_counter()
    images_pil, embeddings, labels = [], [], []
    for row in rows:
        raw = tf.io.read_file(row["path"])
        img = tf.image.decode_jpeg(raw, channels=3)
        img = tf.image.resize_with_pad(img, args.size, args.size)
        emb = model(tf.expand_dims(img, axis=0))
        embeddings.append(np.asarray(emb)[0].reshape(-1))
        images_pil.append(Image.open(row["path"]).resize((args.tile, args.tile)))
        labels.append(row.get("label", ""))

    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "feature_vecs.tsv"), "w") as fw:
        csv.writer(fw, delimiter="\t").writerows(embeddings)
    side = int(np.ceil(np.sqrt(len(embeddings))))
    sprite = Image.new("RGBA", (args.tile * side, args.tile * side), (0, 0, 0, 0))
    for i, im in enumerate(images_pil):
        r, c = divmod(i, side)
        sprite.paste(im, (args.tile * c, args.tile * r))
    sprite.convert("RGB").save(os.path.join(args.out, "sprite.jpg"))
    with open(os.path.join(args.out, "metadata.tsv"), "w") as f:
        for label in labels:
            f.write(f"{label}\n")
    dt = time.perf_counter() - t0
    print(f"images={len(rows)} seconds={dt:.2f} images_per_s={len(rows) / dt:.1f}")


if __name__ == "__main__":
    main()
