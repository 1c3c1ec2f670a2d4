#!/usr/bin/env python3
"""The writer alone on real photo thumbnails: build_assets and publish, in seconds.

The pipeline's writer is one stage on one core, so its time adds straight to
the run's. This times exactly its two steps (``build_assets``: matrix,
metadata, digest, preview.png; ``publish``: the TSV tensor, the sprite, the
extras) on N thumbnails made from a photo folder by the code's own
``decode_image``, with random 1280-d vectors. ``--code`` runs another
checkout's writer (a git worktree of an older commit, say), so two versions
can be compared in the same minutes; run them interleaved.

    python bench/writer_bench.py --photos build/bench/photos-1500 --runs 3
    python bench/writer_bench.py --photos build/bench/photos-1500 --code /tmp/old-checkout

Prints one line per run and a JSON line with the medians.
"""
import argparse
import glob
import json
import os
import shutil
import statistics
import sys
import tempfile
import time


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--photos", required=True, help="folder with images/*.jpg (make_photos.py)")
    ap.add_argument("--n", type=int, default=1500)
    ap.add_argument("--dim", type=int, default=1280)
    ap.add_argument("--tile", type=int, default=100)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--code", default=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                    help="checkout whose transforms/ is timed (default: this one)")
    args = ap.parse_args()
    sys.path.insert(0, os.path.abspath(args.code))

    import numpy as np

    from beam_projector.transforms import images
    from beam_projector.transforms.write import config as write_config
    from beam_projector.transforms.settings import Settings
    from beam_projector.transforms.write import assets
    from beam_projector.transforms.write import publish
    from beam_projector.transforms.records import Embedded, ImageRef

    files = sorted(glob.glob(os.path.join(args.photos, "images", "*.jpg")))[:args.n]
    if len(files) < args.n:
        raise SystemExit(f"{args.photos} has {len(files)} photos, fewer than --n {args.n}")
    rng = np.random.default_rng(0)
    kept = []
    for i, path in enumerate(files):
        with open(path, "rb") as f:
            thumb = images.decode_image(f.read(), (224, 224), args.tile)[1]
        item = ImageRef(path, path, None, (f"label{i % 8}", os.path.basename(path)), key=i)
        kept.append(Embedded(item, thumb, (rng.random(args.dim).astype(np.float32),)))
    rows = []
    for run in range(args.runs):
        out = tempfile.mkdtemp(prefix="writer-bench-")
        try:
            cfg = write_config.WriterConfig(output=out, columns=("label", "file"),
                                            tensor_names=("emb",),
                                            settings=Settings(tile_size=args.tile,
                                                              max_items=args.n),
                                            run_id=f"bench{run}")
            t0 = time.perf_counter()
            assets = assets.build_assets(kept, cfg)
            t1 = time.perf_counter()
            publish.publish(assets, cfg, [])
            t2 = time.perf_counter()
        finally:
            shutil.rmtree(out, ignore_errors=True)
        rows.append({"build_assets_s": t1 - t0, "publish_s": t2 - t1, "total_s": t2 - t0})
        print(f"run {run + 1}: build_assets {t1 - t0:.2f} s, publish {t2 - t1:.2f} s, "
              f"total {t2 - t0:.2f} s", flush=True)
    print(json.dumps({"code": os.path.abspath(args.code), "n": args.n, "runs": args.runs,
                      **{k: round(statistics.median(r[k] for r in rows), 2) for k in rows[0]}}))


if __name__ == "__main__":
    main()
