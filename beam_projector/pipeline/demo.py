"""The demo: real images, a real trained model, the real pipeline, offline.

Writes scikit-learn's 1,797 labelled 8x8 digits as PNG files with a CSV,
trains a small Keras CNN on them for a few seconds, then runs the pipeline
with the layer before the classifier as the embedding.

    python -m beam_projector.pipeline.demo [--workdir build/demo] [-- extra pipeline flags]
"""
import argparse
import csv
import os
import sys
import time
from typing import Tuple

import numpy as np

INPUT_SIDE = 32


def make_digits(folder: str) -> str:
    """PNG files plus images.csv (path,label); returns the CSV path."""
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    img_dir = os.path.join(folder, "images")
    os.makedirs(img_dir, exist_ok=True)
    csv_path = os.path.join(folder, "images.csv")
    with open(csv_path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label"])
        for i, (img, label) in enumerate(zip(digits.images, digits.target)):
            # 0..16 grey levels, dark ink on white like the original scans
            px = (255 - img * (255 / 16)).astype(np.uint8)
            name = f"images/digit_{i:04d}.png"
            Image.fromarray(px, mode="L").save(os.path.join(folder, name))
            w.writerow([name, str(int(label))])
    return csv_path


# Planted faults (--plant_faults and tests/test_neighbors.py): a known share
# of flipped labels and known near-duplicates of a few originals.
COPY_KINDS = ("exact", "resized", "jpeg", "resized_jpeg")


def _copy_bytes(px: np.ndarray, kind: str) -> Tuple[bytes, str]:
    """One near-duplicate of an 8x8 grey digit: (encoded bytes, extension)."""
    import io

    from PIL import Image

    img = Image.fromarray(px, mode="L")
    if kind in ("resized", "resized_jpeg"):
        img = img.resize((24, 24), Image.BILINEAR)
    buf = io.BytesIO()
    if kind in ("jpeg", "resized_jpeg"):
        img.save(buf, format="JPEG", quality=85)
        return buf.getvalue(), "jpg"
    img.save(buf, format="PNG")
    return buf.getvalue(), "png"


def plant_faults(folder: str, flip_fraction: float = 0.03, copies_per_kind: int = 10,
                 seed: int = 0) -> dict:
    """make_digits with planted faults; returns the CSV path and what was planted.

    A random ``flip_fraction`` of the digits get another label, and
    ``copies_per_kind`` originals (none of them flipped) get a copy of each
    kind in COPY_KINDS: the same file, resized 3x, JPEG re-encoded, both.
    """
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    n = len(digits.images)
    rng = np.random.default_rng(seed)
    order = rng.permutation(n)
    n_flip = int(round(flip_fraction * n))
    flipped = set(int(i) for i in order[:n_flip])
    sources = [int(i) for i in order[n_flip:n_flip + copies_per_kind * len(COPY_KINDS)]]
    labels = [int(t) for t in digits.target]
    for i in sorted(flipped):
        labels[i] = (labels[i] + int(rng.integers(1, 10))) % 10
    img_dir = os.path.join(folder, "images")
    os.makedirs(img_dir, exist_ok=True)
    rows, names = [], []
    for i, img in enumerate(digits.images):
        px = (255 - img * (255 / 16)).astype(np.uint8)
        name = f"images/digit_{i:04d}.png"
        Image.fromarray(px, mode="L").save(os.path.join(folder, name))
        rows.append((name, labels[i]))
        names.append(name)
    copies = {}
    for c, i in enumerate(sources):
        kind = COPY_KINDS[c // copies_per_kind]
        px = (255 - digits.images[i] * (255 / 16)).astype(np.uint8)
        data, ext = _copy_bytes(px, kind)
        name = f"images/copy_{c:03d}_{kind}_of_{i:04d}.{ext}"
        with open(os.path.join(folder, name), "wb") as f:
            f.write(data)
        rows.append((name, int(digits.target[i])))
        copies[name] = names[i]
    csv_path = os.path.join(folder, "images.csv")
    with open(csv_path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label"])
        w.writerows(rows)
    return {"csv": csv_path, "flipped": sorted(names[i] for i in flipped), "copies": copies,
            "labels": [lab for _, lab in rows[:n]]}


def train_model(path: str, seconds_budget_epochs: int = 8, labels=None) -> str:
    """A small CNN trained on the digits; its 'embedding' layer is the map."""
    import keras
    from sklearn.datasets import load_digits

    keras.utils.set_random_seed(0)
    digits = load_digits()
    x = 255 - digits.images * (255 / 16)
    x = np.repeat(x[..., None], 3, axis=-1).astype("float32")
    # what the pipeline feeds: the 8x8 image resized to the model's input
    x = keras.ops.convert_to_numpy(keras.ops.image.resize(x, (INPUT_SIDE, INPUT_SIDE)))
    y = digits.target if labels is None else np.asarray(labels)
    model = keras.Sequential([
        keras.Input((INPUT_SIDE, INPUT_SIDE, 3)),
        keras.layers.Rescaling(1 / 255.0),
        keras.layers.Conv2D(16, 3, activation="relu", padding="same"),
        keras.layers.MaxPooling2D(),
        keras.layers.Conv2D(32, 3, activation="relu", padding="same"),
        keras.layers.MaxPooling2D(),
        keras.layers.Flatten(),
        keras.layers.Dense(32, activation="relu", name="embedding"),
        keras.layers.Dense(10, name="logits"),
    ])
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    model.fit(x, y, epochs=seconds_budget_epochs, batch_size=64, verbose=0)
    acc = model.evaluate(x, y, verbose=0)[1]
    print(f"demo: trained CNN, training accuracy {acc:.3f}")
    model.save(path)
    return path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", default="build/demo")
    ap.add_argument("--plant_faults", action="store_true",
                    help="flip 3%% of the labels and add 40 near-duplicate copies, for the "
                    "nn_* columns and suspects.tsv to find")
    args, extra = ap.parse_known_args(argv)
    # quiet like the pipeline's CLI: Keras/TensorFlow are imported first here
    from beam_projector.pipeline.logs import configure_logging, level_from_argv
    from beam_projector.transforms.worker import import_tensorflow_quietly
    level = level_from_argv(extra)
    import_tensorflow_quietly(level)
    configure_logging(level)
    work = os.path.abspath(args.workdir)
    os.makedirs(work, exist_ok=True)
    t0 = time.time()
    labels, count = None, 1797
    if args.plant_faults:
        planted = plant_faults(os.path.join(work, "planted"))
        csv_path, labels = planted["csv"], planted["labels"]
        count += len(planted["copies"])
        print(f"demo: planted {len(planted['flipped'])} flipped labels and "
              f"{len(planted['copies'])} copies in {csv_path}")
    else:
        csv_path = make_digits(os.path.join(work, "digits"))
    model_path = train_model(os.path.join(work, "digits_cnn.keras"), labels=labels)
    logdir = os.path.join(work, "logdir")
    from beam_projector.pipeline.cli import main as run_main
    rc = run_main(["--input", csv_path, "--model", model_path, "--embedding_layer", "embedding",
                   "--output", logdir, "--max_items", str(count), "--layout", "umap"] + extra)
    if rc == 0:
        print(f"demo: done in {time.time() - t0:.1f}s. Open it with:\n"
              f"  {os.path.dirname(sys.executable)}/tensorboard --logdir {logdir} "
              f"--host 127.0.0.1 --port 6006\n"
              f"then the PROJECTOR tab at http://127.0.0.1:6006/#projector; the Bookmarks "
              f"panel (bottom right) has the layout of every point and the likely label "
              f"errors, duplicates and outliers; Color by suspect; and see "
              f"{logdir}/suspects.tsv")
    return rc


if __name__ == "__main__":
    sys.exit(main())
