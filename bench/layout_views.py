"""The issue 27 views at TensorBoard's limit, end to end: 100,000 digit images
through the real CLI, then each saved view restored in TensorBoard's
projector in headless Chromium and screenshotted.

The images: scikit-learn's 1,797 digits, each drawn many times with a random
shift of up to 1 px, a random stroke gain and grey noise, as 8x8 PNG files
(written once into --workdir), with planted faults: --flip of the labels
changed to another digit, and --copies exact copies of other images. The
model: the demo's small CNN trained on the original digits (a few seconds).
The CLI runs twice, with ``--layout umap`` and ``--layout none`` (the wall
time of each process and its peak RSS: the layout's end-to-end cost at
N = 100,000, 32-d), then TensorBoard serves the first logdir and Chromium
restores every bookmark: the screenshots go to --shots (the docs' images).

    python bench/layout_views.py --json build/bench/layout-views.json --shots docs
"""
import argparse
import csv
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "tests"))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "tests", "e2e"))

import numpy as np  # noqa: E402

from bench import common  # noqa: E402

SHOT_NAMES = ("layout", "label_errors", "duplicates", "outliers")


def make_images(folder: str, n: int, flip: float, copies: int, seed: int = 0) -> dict:
    """n augmented digit PNGs + images.csv (path,label); what was planted."""
    from PIL import Image
    from sklearn.datasets import load_digits

    csv_path = os.path.join(folder, "images.csv")
    facts = os.path.join(folder, "planted.json")
    if os.path.exists(facts):
        return json.load(open(facts))
    d = load_digits()
    rng = np.random.default_rng(seed)
    base = rng.integers(0, len(d.images), n - copies)
    flipped = set(rng.choice(n - copies, int(flip * (n - copies)), replace=False).tolist())
    rows = []
    for i, b in enumerate(base):
        img = np.zeros((10, 10))
        dy, dx = rng.integers(0, 3, 2)
        img[dy:dy + 8, dx:dx + 8] = d.images[b] * rng.uniform(0.8, 1.2)
        img = img[1:9, 1:9] + rng.normal(0, 0.6, (8, 8))
        px = (255 - np.clip(img, 0, 16) * (255 / 16)).astype(np.uint8)
        name = f"images/{i // 1000:03d}/d{i:06d}.png"
        os.makedirs(os.path.join(folder, os.path.dirname(name)), exist_ok=True)
        Image.fromarray(px, mode="L").save(os.path.join(folder, name))
        label = int(d.target[b])
        if i in flipped:
            label = (label + int(rng.integers(1, 10))) % 10
        rows.append([name, str(label)])
    sources = rng.choice(n - copies, copies, replace=False)
    copied = {}
    for c, s in enumerate(sources):
        name = f"images/copies/c{c:05d}.png"
        os.makedirs(os.path.join(folder, "images", "copies"), exist_ok=True)
        with open(os.path.join(folder, rows[s][0]), "rb") as f:
            data = f.read()
        with open(os.path.join(folder, name), "wb") as f:
            f.write(data)
        rows.append([name, rows[s][1]])
        copied[name] = rows[s][0]
    with open(csv_path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label"])
        w.writerows(rows)
    out = {"csv": csv_path, "flipped": sorted(rows[i][0] for i in flipped), "copies": copied}
    json.dump(out, open(facts, "w"))
    return out


def run_cli(csv_path, model, out, n, layout):
    r = common.run_child([sys.executable, "-m", "beam_projector", "--input", csv_path,
                          "--model", model, "--embedding_layer", "embedding", "--output", out,
                          "--max_items", str(n), "--tensor_format", "binary",
                          "--layout", layout])
    common.check(r, f"--layout {layout}")
    print(f"--layout {layout}: wall {r['wall_s']}s, maxrss {r['maxrss_mib']} MiB; "
          f"{(r['stdout'] + r['stderr']).strip().splitlines()[-1]}", flush=True)
    return {k: r[k] for k in ("wall_s", "maxrss_mib")}


def screenshots(logdir: str, folder: str, prefix: str) -> dict:
    """Each bookmark restored in TensorBoard's projector: a screenshot of the
    page, and what the projector reports (selection, projection)."""
    import support
    import test_browser as tb

    os.makedirs(folder, exist_ok=True)
    got = {}
    with support.tensorboard(logdir, timeout=600) as get:
        with tb.chromium(get.base + "/#projector") as page:
            t0 = time.time()
            tb.wait_for_projector(page, timeout=900)
            labels = tb.saved_views(page, timeout=600)
            got["load_s"] = round(time.time() - t0, 1)
            for i, label in enumerate(labels):
                t0 = time.time()
                state = page.evaluate(tb.RESTORE_JS % i)
                restore = time.time() - t0
                time.sleep(8)       # let the scatter plot redraw (swiftshader is slow)
                shot = page.screenshot()
                name = f"{prefix}_{SHOT_NAMES[i] if i < len(SHOT_NAMES) else i}.png"
                shot.save(os.path.join(folder, name))
                got[label] = {"file": name, "projection": state["type"],
                              "points": len(state["coords"]), "selected": len(state["selected"]),
                              "restore_s": round(restore, 2)}
                print(label, got[label], flush=True)
    return got


def demo_shot(work: str, folder: str, name: str = "projector_suspect.png") -> str:
    """The demo with --plant_faults, its layout view restored and coloured by
    the suspect column: the picture docs/output.md shows."""
    import support
    import test_browser as tb

    from beam_projector.pipeline.demo import main as demo_main

    demo_dir = os.path.join(work, "demo-planted")
    if demo_main(["--workdir", demo_dir, "--plant_faults"]) != 0:
        raise SystemExit("the demo failed")
    with support.tensorboard(os.path.join(demo_dir, "logdir")) as get:
        with tb.chromium(get.base + "/#projector") as page:
            tb.wait_for_projector(page)
            tb.saved_views(page)
            page.evaluate(tb.RESTORE_JS % 0)
            page.evaluate("P.dataPanel.selectedColorOptionName = 'suspect'")
            time.sleep(8)
            shot = page.screenshot()
    os.makedirs(folder, exist_ok=True)
    shot.save(os.path.join(folder, name))
    return name


def recall(logdir: str, planted: dict) -> dict:
    (marks,) = [os.path.join(logdir, d, "bookmarks.json") for d in os.listdir(logdir)
                if d.startswith("data-")]
    meta = os.path.join(os.path.dirname(marks), "metadata.tsv")
    with open(meta, newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    views = {s["label"].split(":")[0]: [rows[i]["path"] for i in s["selectedPoints"]]
             for s in json.load(open(marks))}
    flipped, copies = set(planted["flipped"]), set(planted["copies"])
    sel = views.get("Likely label errors", [])
    suspect = {r["path"] for r in rows if r["suspect"] == "label?"}
    return {"flipped": len(flipped), "label_view_selected": len(sel),
            "label_view_precision": round(len(flipped & set(sel)) / max(1, len(sel)), 3),
            "label_column_marked": len(suspect),
            "label_column_recall": round(len(flipped & suspect) / max(1, len(flipped)), 3),
            "label_column_precision": round(len(flipped & suspect) / max(1, len(suspect)), 3),
            "copies": len(copies),
            "duplicates_view_copies": len(copies & set(views.get("Duplicates", []))),
            "bookmarks_mb": round(os.path.getsize(marks) / 2 ** 20, 1),
            "clusters": len({r["cluster"] for r in rows})}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--flip", type=float, default=0.02)
    ap.add_argument("--copies", type=int, default=200)
    ap.add_argument("--workdir", default="build/bench/layout-views")
    ap.add_argument("--shots", default="build/bench/layout-views/shots")
    ap.add_argument("--prefix", default="bookmark_100k")
    ap.add_argument("--steps", default="run,none,shots")
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    from beam_projector.pipeline.demo import train_model

    m = common.machine()
    common.print_machine(m)
    work = os.path.abspath(args.workdir)
    os.makedirs(work, exist_ok=True)
    planted = make_images(os.path.join(work, "images"), args.n, args.flip, args.copies)
    model = os.path.join(work, "digits_cnn.keras")
    if not os.path.exists(model):
        train_model(model)
    results = {"machine": m, "n": args.n}
    steps = args.steps.split(",")
    logdir = os.path.join(work, "logdir")
    if "run" in steps:
        results["umap"] = run_cli(planted["csv"], model, logdir, args.n, "umap")
    if "none" in steps:
        results["none"] = run_cli(planted["csv"], model, os.path.join(work, "logdir-none"),
                                  args.n, "none")
    if os.path.isdir(logdir):
        results["views"] = recall(logdir, planted)
        print("views:", json.dumps(results["views"]), flush=True)
    if "shots" in steps:
        results["shots"] = screenshots(logdir, args.shots, args.prefix)
    if "demo_shot" in steps:
        results["demo_shot"] = demo_shot(work, args.shots)
    common.write_json(args.json, results)


if __name__ == "__main__":
    main()
