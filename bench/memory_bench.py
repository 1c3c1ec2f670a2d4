#!/usr/bin/env python3
"""Memory and shuffle benchmark: peak RSS against N, and bytes per image per boundary.

Runs `python -m beam_projector ...` exactly as a user does (default options, no
runner flags) in child processes and reads each child's peak RSS from
``os.wait4``. With --baseline DIR (a checkout of an older commit, run with the
same interpreter: `git worktree add --detach DIR COMMIT`) the same cases run on
that code too, interleaved within each repetition, so before/after figures and
the throughput ratio come from one invocation on one machine.

Cases (NAME=MODEL:N[:old]; ":old" also runs the baseline):
  mnv2-1500   MobileNetV2 224 px (untrained, 1280-d pooled), 1,500 photos: also
              the throughput case (images/s over the seconds the CLI reports)
  mnv2-6000, mnv2-20000
  cnn-1500, cnn-6000, cnn-100000   the 64 px CNN; 100,000 = TensorBoard's
              limit (small photos, so the set builds in minutes), whose logdir
              is then checked in a live TensorBoard with the test suite's check

Also measured in-process (no pipeline): the encoded size, with the coder Beam
uses for these elements, of one element crossing each stage boundary, before
and after the flat-memory change, so a Dataflow user can price the shuffle;
and what compressing the thumbnails would save.

    python bench/memory_bench.py --baseline /tmp/baseline --json build/bench/memory.json
    python bench/memory_bench.py --cases mnv2-1500=mobilenet_v2:1500 --runs 1   # smoke
"""
import argparse
import json
import os
import re
import shutil
import sys
import time
import zlib
from typing import NamedTuple

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402 - the bench folder is not a package
import run_bench  # noqa: E402

DEFAULT_CASES = ("mnv2-1500=mobilenet_v2:1500:old,mnv2-6000=mobilenet_v2:6000:old,"
                 "mnv2-20000=mobilenet_v2:20000,cnn-1500=small_cnn:1500:old,"
                 "cnn-6000=small_cnn:6000:old,cnn-100000=small_cnn:100000")
SUMMARY = re.compile(r"written=(\d+).* in ([0-9.]+)s")
# Sets above this many photos are made small (48-160 px), so 100,000 build in
# a few minutes and take a few hundred MB: the memory claim is about N, and
# the 64 px model does not need large photos.
SMALL_PHOTOS_FROM = 50_000


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", default=os.path.join(common.REPO, "build", "bench"))
    ap.add_argument("--cases", default=DEFAULT_CASES,
                    help="comma-separated NAME=MODEL:N[:old] (default: %(default)s)")
    ap.add_argument("--runs", type=int, default=3, help="repetitions; medians reported")
    ap.add_argument("--code", default=common.REPO,
                    help="checkout of the code to measure (default: this repository)")
    ap.add_argument("--baseline", default=None,
                    help="checkout of the code to compare with (cases marked :old)")
    ap.add_argument("--new_args", default="",
                    help="extra CLI flags for the measured code only, e.g. '--layout none' to "
                    "compare like with like against a baseline that predates a stage")
    ap.add_argument("--model_only", action="store_true",
                    help="also time the model alone on 1,500 photos (ratio to the compute limit)")
    ap.add_argument("--live_check", default="cnn-100000",
                    help="case whose logdir is checked in a live TensorBoard (default: %(default)s)")
    ap.add_argument("--timeout", type=float, default=5400)
    ap.add_argument("--json", default=None)
    return ap.parse_args(argv)


def parse_cases(text):
    cases = []
    for part in text.split(","):
        name, spec = part.split("=", 1)
        fields = spec.split(":")
        cases.append({"name": name, "model": fields[0], "n": int(fields[1]),
                      "old": len(fields) > 2 and fields[2] == "old"})
    return cases


def small_photo_set(workdir, count, seed=0):
    """``count`` small JPEGs (48-160 px crops of the two sample photos) + CSV."""
    from PIL import Image
    from sklearn.datasets import load_sample_images

    folder = os.path.join(workdir, f"small-photos-{count}")
    csv_path = os.path.join(folder, "images.csv")
    if os.path.exists(csv_path) and run_bench.csv_rows(csv_path) == count:
        print(f"photos: reusing {csv_path}")
        return csv_path
    print(f"photos: making {count} small JPEGs in {folder} ...", flush=True)
    t0 = time.perf_counter()
    shutil.rmtree(folder, ignore_errors=True)
    os.makedirs(os.path.join(folder, "images"))
    rng = np.random.default_rng(seed)
    sources = [Image.fromarray(a).reduce(2) for a in load_sample_images().images]
    with open(csv_path + ".tmp", "w") as f:
        f.write("path,label\n")
        for i in range(count):
            s = int(rng.integers(2))
            src = sources[s]
            cw, ch = int(rng.integers(40, src.width)), int(rng.integers(40, src.height))
            x0, y0 = int(rng.integers(0, src.width - cw + 1)), int(rng.integers(0, src.height - ch + 1))
            side = int(rng.integers(48, 161))
            img = src.crop((x0, y0, x0 + cw, y0 + ch))
            img = img.resize((side, max(16, side * ch // cw)), Image.BILINEAR)
            path = os.path.join(folder, "images", f"{i // 1000:03d}", f"{i:06d}.jpg")
            os.makedirs(os.path.dirname(path), exist_ok=True)
            img.save(path, quality=int(rng.integers(75, 96)))
            f.write(f"{path},{('china', 'flower')[s]}-{i % 7}\n")
    os.replace(csv_path + ".tmp", csv_path)
    print(f"photos: made in {time.perf_counter() - t0:.1f}s", flush=True)
    return csv_path


def photos_for(workdir, n):
    return small_photo_set(workdir, n) if n >= SMALL_PHOTOS_FROM else run_bench.photo_set(workdir, n)


def run_case(code_dir, csv_path, model, layer, n, outdir, timeout, extra=()):
    shutil.rmtree(outdir, ignore_errors=True)
    cmd = [sys.executable, "-m", common.cli_module(code_dir), "--input", csv_path, "--model", model,
           "--embedding_layer", layer, "--output", outdir, "--max_items", str(n), *extra]
    env = {"TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": "",
           "PYTHONPATH": code_dir}
    r = common.check(common.run_child(cmd, env=env, timeout=timeout, cwd=code_dir),
                     f"pipeline N={n} in {code_dir}")
    m = SUMMARY.search(r["stdout"] + r["stderr"])
    written, seconds = int(m.group(1)), float(m.group(2))
    result = {"written": written, "reported_s": seconds, "images_per_s": written / seconds,
              "wall_s": r["wall_s"], "maxrss_mib": r["maxrss_mib"]}
    try:   # what the fixed batch shape padded (issue 24); older code does not count it
        with open(os.path.join(outdir, "run_summary.json")) as f:
            result["padding_rows"] = json.load(f)["all_counters"].get("padding_rows")
    except (OSError, ValueError, KeyError):
        pass
    return result


def live_check(outdir, n, dims):
    sys.path.insert(0, os.path.join(common.REPO, "tests"))
    import support  # the test suite's own check

    from beam_projector.transforms.projector import tile_size_for
    t0 = time.perf_counter()
    support.check_live_projector(outdir, n=n, dims=dims, tile=tile_size_for(n, 100))
    return round(time.perf_counter() - t0, 1)


# --- bytes per image at each stage boundary ----------------------------------------

class DecodedImage(NamedTuple):
    """The element the old graph cut to N: model input pixels and thumbnail."""
    item: object
    pixels: object
    thumbnail: object


class Thumbnailed(NamedTuple):
    """The element the two-decode layout carried across the cut to N: the
    reference and the thumbnail (transforms.items had it until the
    single-decode plan; kept here so the figure stays measurable)."""
    item: object
    thumbnail: object


def boundary_bytes(csv_path, count=200, model_side=224, tile=100):
    """Encoded bytes of one element at each materialised boundary, medians
    over ``count`` photos, with the coder Beam picks for these elements."""
    import apache_beam as beam

    from beam_projector.transforms import images
    import hashlib

    from beam_projector.transforms.records import Embedded, ImageRef, StagedThumbnail
    from beam_projector.transforms.sampling import sample_key

    coder = beam.coders.registry.get_coder(object)
    rows = [line.split(",", 1)[0] for line in open(csv_path).read().splitlines()[1:count + 1]]
    sizes = {k: [] for k in ("ref", "old_decoded", "old_embedded_1280", "thumbnailed", "embedded_1280",
                             "embedded_staged_1280", "neighbor_slim_1280", "thumb_raw", "thumb_zlib1", "thumb_png")}
    vec = np.random.default_rng(0).standard_normal(1280).astype(np.float32)
    for path in rows:
        ref = ImageRef(uid=path, ref=path, content=None, metadata=(path, "label"),
                       key=sample_key(path, 0))
        data = images.read_bytes(path)
        pixels, thumb = images.decode_image(data, (model_side, model_side), tile)
        sizes["ref"].append(len(coder.encode(ref)))
        # the old graph carried the thumbnail as raw RGB
        old_thumb = (thumb.width, thumb.height, thumb.rgb)
        sizes["old_decoded"].append(len(coder.encode(DecodedImage(ref, pixels, old_thumb))))
        sizes["old_embedded_1280"].append(len(coder.encode(DecodedImage(ref, old_thumb, (vec,)))))
        # what crossed the cut to N from 2026-11-27 to the single-decode plan
        sizes["thumbnailed"].append(len(coder.encode(Thumbnailed(ref, thumb))))
        sizes["embedded_1280"].append(len(coder.encode(Embedded(ref, thumb, (vec,)))))
        # since the staging change: the writer's group gets the thumbnail's
        # place in a staging file, and the neighbour stage a packed slim row
        staged = StagedThumbnail(thumb.width, thumb.height,
                                 "/out/.beam-projector-staging-" + "0" * 32 + "/" + "0" * 32
                                 + ".thumbs", 12_345_678, len(thumb.png),
                                 hashlib.sha256(thumb.png).digest())
        sizes["embedded_staged_1280"].append(len(coder.encode(Embedded(ref, staged, (vec,)))))
        from beam_projector.transforms import neighbors as nb
        e = Embedded(ref, thumb, (vec,))
        sizes["neighbor_slim_1280"].append(len(coder.encode(nb._slim(e, 0, 1, 0, nb.PROJECTED_DIMS))))
        raw = thumb.rgb
        sizes["thumb_raw"].append(len(raw))
        sizes["thumb_zlib1"].append(len(zlib.compress(raw, 1)))
        sizes["thumb_png"].append(len(thumb.png))
    return {k: int(np.median(v)) for k, v in sizes.items()}


def main(argv=None):
    args = parse_args(argv)
    m = common.machine()
    common.print_machine(m)
    cases = parse_cases(args.cases)
    results = {"machine": m, "cases": {}, "runs": args.runs}
    inputs = {}
    for c in cases:
        model, layer = run_bench.model_file(args.workdir, c["model"])
        inputs[c["name"]] = (photos_for(args.workdir, c["n"]), model, layer)
    codes = [("new", os.path.abspath(args.code))] + ([("old", os.path.abspath(args.baseline))]
                                      if args.baseline else [])
    runs = {c["name"]: {name: [] for name, _ in codes} for c in cases}
    model_only = []
    for rep in range(args.runs):
        for c in cases:
            csv_path, model, layer = inputs[c["name"]]
            for name, code_dir in codes:
                if name == "old" and not c["old"]:
                    continue
                out = os.path.join(args.workdir, "memory-out", f"{c['name']}-{name}")
                extra = args.new_args.split() if name == "new" else ()
                r = run_case(code_dir, csv_path, model, layer, c["n"], out, args.timeout, extra)
                runs[c["name"]][name].append(r)
                print(f"run {rep + 1} {c['name']} [{name}]: {r['maxrss_mib']:.0f} MiB peak, "
                      f"{r['images_per_s']:.1f} img/s ({r['reported_s']:.1f}s pipeline, "
                      f"{r['wall_s']:.1f}s wall), padding rows {r.get('padding_rows')}",
                      flush=True)
                if name == "new" and c["name"] == args.live_check and rep == 0:
                    dims = 64 if c["model"] == "small_cnn" else 1280
                    r["live_check_s"] = live_check(out, r["written"], {layer: dims})
                    print(f"  live TensorBoard check passed ({r['live_check_s']}s)", flush=True)
                shutil.rmtree(out, ignore_errors=True)
        if args.model_only:
            csv_path, model, layer = inputs[cases[0]["name"]]
            model_only.append(run_bench.time_model(csv_path, model, layer, 1500, 64, {}, args.timeout))
            print(f"run {rep + 1} model only: {model_only[-1]['images_per_s']:.1f} img/s", flush=True)
    rows = []
    for c in cases:
        med = {name: {k: common.median([r[k] for r in rs])
                      for k in ("maxrss_mib", "images_per_s", "reported_s", "wall_s")}
               for name, rs in runs[c["name"]].items() if rs}
        results["cases"][c["name"]] = {"model": c["model"], "n": c["n"], "median": med,
                                       "runs": runs[c["name"]]}
        old = med.get("old", {})
        rows.append([c["name"], old.get("maxrss_mib"), med["new"]["maxrss_mib"],
                     old.get("images_per_s"), med["new"]["images_per_s"],
                     common.ratio(med["new"]["images_per_s"], old.get("images_per_s"))])
    if model_only:
        results["model_only_images_per_s"] = common.median([r["images_per_s"] for r in model_only])
    results["boundary_bytes"] = boundary_bytes(inputs[cases[0]["name"]][0])
    print()
    print(common.table(["case", "old peak MiB", "new peak MiB", "old img/s", "new img/s",
                        "new/old img/s"], rows))
    if model_only:
        print(f"model only (MobileNetV2, batch 64): {results['model_only_images_per_s']:.1f} img/s")
    print("bytes per element at each boundary (median): " + ", ".join(
        f"{k} {v}" for k, v in results["boundary_bytes"].items()))
    common.write_json(args.json, results)


if __name__ == "__main__":
    main()
