"""Measure the --duplicate_threshold default (issue 15).

The pipeline calls two neighbours the same picture when the mean absolute
grey difference of their 16x16 signatures (from the sprite thumbnails) is at
most the threshold. This script decodes scikit-learn's 1,797 digits and
planted copies of 40 of them (exact, resized 3x, JPEG q85, resized + JPEG)
exactly as the pipeline does (decode_image at the demo's tile size), then
prints the distance of every copy to its original and how many pairs of
*distinct* digits (all 1.6 M pairs, not only embedding neighbours) fall at or
under each candidate threshold.

    python bench/duplicate_threshold.py [--json out.json]
"""
import argparse
import json
import os
import sys
import tempfile

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from beam_projector.pipeline.demo import COPY_KINDS, plant_faults  # noqa: E402
from beam_projector.transforms import projector
from beam_projector.transforms.images import decode_image  # noqa: E402
from beam_projector.transforms.neighbors import pixel_distance, signature  # noqa: E402

THRESHOLDS = (1, 2, 3, 4, 5, 6, 8, 10, 12, 16, 20)


def signatures(folder, names, tile):
    out = []
    for name in names:
        with open(os.path.join(folder, name), "rb") as f:
            _, thumb = decode_image(f.read(), (32, 32), tile)
        out.append(np.frombuffer(signature(thumb), np.uint8))
    return np.stack(out)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    folder = tempfile.mkdtemp(prefix="dupthr-")
    planted = plant_faults(folder)
    tile = projector.tile_size_for(1797 + len(planted["copies"]), 100)
    originals = [f"images/digit_{i:04d}.png" for i in range(1797)]
    sig = signatures(folder, originals, tile)
    copy_names = sorted(planted["copies"])
    csig = signatures(folder, copy_names, tile)
    index = {n: i for i, n in enumerate(originals)}
    copy_d = {kind: [] for kind in COPY_KINDS}
    for name, s in zip(copy_names, csig):
        kind = os.path.basename(name).split("_", 2)[2].rsplit("_of_", 1)[0]
        copy_d[kind].append(float(pixel_distance(s, sig[index[planted["copies"][name]]])))
    # every pair of distinct digits
    pair_d = []
    for i in range(len(sig) - 1):
        pair_d.append(pixel_distance(sig[i + 1:], sig[i]))
    pair_d = np.concatenate(pair_d)
    print(f"tile {tile}px, signature 16x16 grey; distances are mean |grey difference| (0-255)")
    for kind, d in copy_d.items():
        print(f"copies {kind:>12}: n={len(d)} max {max(d):.2f} mean {np.mean(d):.2f}")
    print(f"distinct pairs: n={len(pair_d)} min {pair_d.min():.2f} "
          f"1st percentile {np.percentile(pair_d, 1):.2f}")
    table = []
    all_copies = [x for d in copy_d.values() for x in d]
    for t in THRESHOLDS:
        row = {"threshold": t, "copies_found": int(sum(x <= t for x in all_copies)),
               "copies": len(all_copies), "distinct_pairs_within": int((pair_d <= t).sum())}
        table.append(row)
        print(f"threshold {t:>3}: copies found {row['copies_found']}/{row['copies']}, "
              f"distinct pairs within {row['distinct_pairs_within']}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"copies": copy_d, "distinct_min": float(pair_d.min()), "table": table},
                      f, indent=2)


if __name__ == "__main__":
    main()
