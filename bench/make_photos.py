#!/usr/bin/env python3
# Copied unchanged (apart from this header) from ../shared/bench/make_photos.py, the
# reference script that issue 5 names; kept here so the benchmark is
# self-contained in the project.
"""Make a folder of photo-like JPEGs and a labels CSV for benchmarks.

Crops, rescales, flips and recolours the two photos that scikit-learn ships
(load_sample_images), so every file differs and the sizes vary like a real
photo collection (roughly 200 to 1600 px on the long side).

    python make_photos.py OUT_DIR [--count 1500] [--seed 0]

Writes OUT_DIR/images/NNNNNN.jpg and OUT_DIR/images.csv with the columns
path,label (label: which source photo and which crop quadrant).
"""
import argparse
import csv
import os

import numpy as np
from PIL import Image, ImageEnhance
from sklearn.datasets import load_sample_images


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--count", type=int, default=1500)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rng = np.random.default_rng(args.seed)
    sources = [Image.fromarray(a) for a in load_sample_images().images]
    names = ["china", "flower"]
    img_dir = os.path.join(args.out, "images")
    os.makedirs(img_dir, exist_ok=True)
    with open(os.path.join(args.out, "images.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label"])
        for i in range(args.count):
            s = int(rng.integers(len(sources)))
            src = sources[s]
            W, H = src.size
            cw, ch = int(rng.integers(W // 3, W)), int(rng.integers(H // 3, H))
            x0, y0 = int(rng.integers(0, W - cw + 1)), int(rng.integers(0, H - ch + 1))
            img = src.crop((x0, y0, x0 + cw, y0 + ch))
            scale = float(rng.uniform(0.6, 3.0))
            img = img.resize((max(16, int(cw * scale)), max(16, int(ch * scale))), Image.BILINEAR)
            if rng.random() < 0.5:
                img = img.transpose(Image.FLIP_LEFT_RIGHT)
            img = ImageEnhance.Color(img).enhance(float(rng.uniform(0.3, 1.7)))
            quadrant = ("top" if y0 + ch / 2 < H / 2 else "bottom") + ("left" if x0 + cw / 2 < W / 2 else "right")
            path = os.path.join(img_dir, f"{i:06d}.jpg")
            img.save(path, quality=int(rng.integers(75, 96)))
            w.writerow([os.path.abspath(path), f"{names[s]}-{quadrant}"])


if __name__ == "__main__":
    main()
