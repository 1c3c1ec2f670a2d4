"""The offline layout (issue 27) at TensorBoard's limit: N = 100,000 x 1280-d,
and what it adds to the demo.

``stage``: the synthetic clustered vectors of ``neighbors_bench.py`` (100
clusters, 1280-d) generated inside a Beam pipeline and pushed through
``LayoutColumns`` (UMAP fitted on the first 10,000 in output order, every
other row placed), its (key, values) table counted as the writer would join
it; then, in the same child, the writer's share: bookmarks.json with four
views of all N points, and preview.png from the layout. Each run is a child
process: wall and CPU seconds, the pipeline's seconds with and without the
stage (the same generator, only counted), peak RSS (wait4 and the sampled
process tree). The first run gets an empty numba cache (NUMBA_CACHE_DIR, the
very first run on a machine), the next ones reuse it (warm).

``quality``: the same pure functions in this process: trustworthiness@10
(cosine, against the raw 1280-d rows) on a fixed 5,000-row subsample and
the share of each point's 10 nearest 2-D neighbours in its own cluster, for
the layout and for a 2-D PCA of all rows.

``demo``: the demo's digits (1,797, the demo's trained CNN) through the CLI
with ``--layout umap`` and ``--layout none`` alternately, ``--runs`` each
(median), warm numba cache: the CLI's pipeline seconds and the process wall.

    python bench/layout_bench.py --json build/bench/layout.json
    python bench/layout_bench.py --n 5000 --runs 1 --steps stage,quality   # smoke
"""
import argparse
import json
import os
import re
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from bench import common  # noqa: E402
from bench.neighbors_bench import CHUNK, make_chunk, timed  # noqa: E402

STEPS = ("stage", "quality", "demo")


def child(args, beam_args):
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions

    from beam_projector.pipeline.run import default_local_runner
    from beam_projector.transforms.layout_stage import LayoutColumns

    out = {}
    table_path = os.path.join(tempfile.mkdtemp(prefix="layout-bench-"), "values")
    for stage in ("generate_only", "with_layout"):
        options = PipelineOptions(beam_args)
        default_local_runner(options)
        p = beam.Pipeline(options=options)
        items = (p | beam.Create(list(range(-(-args.n // CHUNK))))
                 | beam.Reshuffle() | beam.FlatMap(make_chunk, args.n))
        if stage == "with_layout":
            values = items | LayoutColumns(sample=args.sample)
            _ = (values | beam.combiners.ToList()
                 | beam.Map(_save, table_path, args.n))
        else:
            _ = (items | beam.Map(lambda e: 1) | beam.combiners.Count.Globally()
                 | beam.Map(_check, args.n))
        t0 = time.perf_counter()
        p.run().wait_until_finish()
        out[stage + "_s"] = round(time.perf_counter() - t0, 2)
    # the writer's share: bookmarks with 4 views, and the preview's layout
    from beam_projector.transforms import bookmarks, preview
    with open(table_path + ".json") as f:
        table = json.load(f)
    coords = [row[1:] for row in table]
    t0 = time.perf_counter()
    views = [bookmarks.layout_view(args.n, "umap", "cluster")] + [
        bookmarks.View(f"view {i}", list(range(i, 100 * args.n // 100, args.n // 100))[:100],
                       "suspect") for i in range(3)]
    data = bookmarks.bookmarks_json(views, (args.n, 1280), ("umap-0", "umap-1"), coords)
    out["bookmarks_s"] = round(time.perf_counter() - t0, 2)
    out["bookmarks_mb"] = round(len(data) / 2 ** 20, 2)
    positions = np.array([[float(v) for v in c] for c in coords[:10_000]])
    t0 = time.perf_counter()
    preview.grid_layout(positions, preview.preview_geometry(len(positions), 25)[0])
    out["preview_layout_s"] = round(time.perf_counter() - t0, 2)
    out["clusters"] = len({row[0] for row in table})
    print("RESULT " + json.dumps(out))


def _check(count, n):
    if count != n:
        raise RuntimeError(f"{count} items came out of {n}")


def _save(rows, path, n):
    _check(len(rows), n)
    rows = sorted(rows)
    with open(path + ".json", "w") as f:
        json.dump([list(v) for _, v in rows], f)


def stage(args):
    cache = tempfile.mkdtemp(prefix="numba-cache-")
    runs = []
    for i in range(args.runs + 1):
        os.environ["NUMBA_CACHE_DIR"] = cache       # the child inherits it
        r = timed([sys.executable, os.path.abspath(__file__), "--child", "--n", str(args.n),
                   "--sample", str(args.sample)])
        r["cache"] = "cold" if i == 0 else "warm"
        r["stage_s"] = round(r["with_layout_s"] - r["generate_only_s"], 2)
        print(f"{r['cache']}: stage {r['stage_s']}s (pipeline {r['with_layout_s']}s, generate only "
              f"{r['generate_only_s']}s), child wall {r['wall_s']}s cpu {r['cpu_s']}s, maxrss "
              f"{r['maxrss_mib']} MiB, tree {r['tree_rss_mib']} MiB, bookmarks "
              f"{r['bookmarks_s']}s ({r['bookmarks_mb']} MB), load {r['load_after']:.1f}",
              flush=True)
        runs.append(r)
    return runs


def quality(args):
    from sklearn.manifold import trustworthiness

    from beam_projector.transforms import layout
    from beam_projector.transforms.preview import pca_2d

    xs, clusters, keys = [], [], []
    for chunk in range(-(-args.n // CHUNK)):
        for e in make_chunk(chunk, args.n):
            xs.append(e.vectors[0])
            clusters.append(int(e.item.metadata[1]))
            keys.append((e.item.key, e.item.uid))
    order = sorted(range(args.n), key=lambda i: keys[i])
    x = np.stack([xs[i] for i in order])
    labels = np.array([clusters[i] for i in order])
    del xs
    s = min(args.sample, args.n)
    t0 = time.perf_counter()
    model = layout.fit_layout(list(range(s)), x[:s], [str(v) for v in labels[:s]])
    fit_s = time.perf_counter() - t0
    y = np.empty((args.n, 2))
    y[:s] = model.y
    t0 = time.perf_counter()
    for a in range(s, args.n, 4096):
        y[a:a + 4096] = layout.place(model, x[a:a + 4096])[0]
    place_s = time.perf_counter() - t0
    rng = np.random.default_rng(0)
    sub = np.sort(rng.choice(args.n, size=min(5000, args.n), replace=False))
    out = {"fit_s": round(fit_s, 2), "place_s": round(place_s, 2), "clusters": len(model.names)}
    for name, pos in (("layout", y), ("pca", pca_2d(x))):
        out[f"{name}_trust10"] = round(float(trustworthiness(x[sub], pos[sub], n_neighbors=10,
                                                              metric="cosine")), 4)
        out[f"{name}_nn10"] = round(_nn_agreement(pos, labels), 4)
    return out


def _nn_agreement(pos, labels, k=10):
    from sklearn.neighbors import NearestNeighbors

    _, idx = NearestNeighbors(n_neighbors=k + 1).fit(pos).kneighbors(pos)
    return float((labels[idx[:, 1:]] == labels[:, None]).mean())


def demo(args):
    from beam_projector.pipeline.demo import make_digits, train_model

    work = os.path.abspath(args.workdir)
    os.makedirs(work, exist_ok=True)
    csv_path = make_digits(os.path.join(work, "digits"))
    model = train_model(os.path.join(work, "digits_cnn.keras"))
    runs = {"umap": [], "none": []}
    for i in range(args.runs + 1):          # the first pair warms the numba and OS caches
        for layout in ("umap", "none"):
            r = common.run_child([sys.executable, "-m", "beam_projector", "--input", csv_path,
                                  "--model", model, "--embedding_layer", "embedding",
                                  "--output", os.path.join(work, f"logdir-{layout}"),
                                  "--max_items", "1797", "--layout", layout])
            common.check(r, f"demo --layout {layout}")
            m = re.search(r" in ([\d.]+)s", r["stdout"] + r["stderr"])
            r["pipeline_s"] = float(m.group(1)) if m else None
            print(f"demo --layout {layout}: pipeline {r['pipeline_s']}s, wall {r['wall_s']}s, "
                  f"maxrss {r['maxrss_mib']} MiB{' (warm-up)' if i == 0 else ''}", flush=True)
            if i:
                runs[layout].append({k: r[k] for k in ("pipeline_s", "wall_s", "maxrss_mib")})
    med = {lay: {k: common.median([r[k] for r in rs]) for k in rs[0]} for lay, rs in runs.items()}
    return {"runs": runs, "median": med,
            "extra_pipeline_s": round(med["umap"]["pipeline_s"] - med["none"]["pipeline_s"], 2),
            "extra_wall_s": round(med["umap"]["wall_s"] - med["none"]["wall_s"], 2)}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--sample", type=int, default=10_000)
    ap.add_argument("--runs", type=int, default=3, help="warm runs (after one cold run)")
    ap.add_argument("--steps", default=",".join(STEPS))
    ap.add_argument("--workdir", default="build/bench/layout-demo")
    ap.add_argument("--json")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args, beam_args = ap.parse_known_args(argv)
    if args.child:
        return child(args, beam_args)
    m = common.machine()
    common.print_machine(m)
    results = {"machine": m, "n": args.n, "dim": 1280, "sample": args.sample}
    steps = [s for s in args.steps.split(",") if s]
    if "stage" in steps:
        results["stage"] = stage(args)
        rows = [[r["cache"], r["stage_s"], r["with_layout_s"], r["generate_only_s"], r["cpu_s"],
                 r["maxrss_mib"], r["tree_rss_mib"], r["bookmarks_s"], r["bookmarks_mb"],
                 r["load_after"]] for r in results["stage"]]
        print(common.table(["numba cache", "stage s", "pipeline s", "generate only s",
                            "child cpu s", "maxrss MiB", "tree RSS MiB", "bookmarks s",
                            "bookmarks MB", "load"], rows))
    if "quality" in steps:
        results["quality"] = quality(args)
        print("quality:", json.dumps(results["quality"]), flush=True)
    if "demo" in steps:
        results["demo"] = demo(args)
        print("demo:", json.dumps(results["demo"]["median"]),
              "extra pipeline s:", results["demo"]["extra_pipeline_s"],
              "extra wall s:", results["demo"]["extra_wall_s"], flush=True)
    common.write_json(args.json, results)


if __name__ == "__main__":
    main()
