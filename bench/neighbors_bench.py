"""The neighbour stage at TensorBoard's limit (issue 15): N = 100,000 x 1280-d.

Synthetic clustered vectors (100 clusters; within-cluster variation on a
128-d subspace with a decaying spectrum, plus isotropic noise: the shape of
real CNN embeddings) are generated inside a Beam pipeline and pushed through
``NeighborColumns`` (K = 10, the default), the stage the CLI runs: its
(key, values) table is counted, as the writer would join it. Each run is a child process:
wall seconds, the pipeline's seconds with and without the neighbour stage
(the same generator, only counted), and peak RSS, both ``wait4``'s figure
for the child and the sampled sum over the child's process tree (the
multi-process runner's workers included). Medians of ``--runs``.

``--recall`` measures the approximation: the stage's search in PROJECTED_DIMS
(the same pure functions: PCA fitted on the first 4,096 items in order key,
rows projected, ``search_block``) against an exact float64 search in the
full 1280-d centred, normalised space, for ``--queries`` random items.

    python bench/neighbors_bench.py --json build/bench/neighbors.json
    python bench/neighbors_bench.py --n 5000 --runs 1 --queries 200   # smoke
"""
import argparse
import json
import os
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from bench import common  # noqa: E402

DIM, CLUSTERS, SUBSPACE, CHUNK = 1280, 100, 128, 2000
MODES = {"in_memory": [], "multi_processing_2": [
    "--direct_running_mode", "multi_processing", "--direct_num_workers", "2"]}


def _space():
    rng = np.random.default_rng(12345)
    centres = rng.standard_normal((CLUSTERS, DIM)) * 1.0
    basis, _ = np.linalg.qr(rng.standard_normal((DIM, SUBSPACE)))
    scales = 2.0 / np.sqrt(np.arange(1, SUBSPACE + 1))
    return centres, basis.T * scales[:, None]


def vectors(start: int, count: int):
    """Rows start..start+count of the synthetic set: (float32 vectors, cluster ids)."""
    centres, spread = _space()
    rng = np.random.default_rng(start + 1)
    cluster = rng.integers(0, CLUSTERS, count)
    x = centres[cluster] + rng.standard_normal((count, SUBSPACE)) @ spread
    x += 0.05 * rng.standard_normal((count, DIM))
    return x.astype(np.float32), cluster


def make_chunk(chunk: int, n: int):
    from beam_projector.transforms.records import Embedded, ImageRef, Thumbnail

    start = chunk * CHUNK
    count = min(CHUNK, n - start)
    x, cluster = vectors(start, count)
    rng = np.random.default_rng(10_000_000 + chunk)
    keys = rng.integers(0, 2 ** 62, count)
    # 25 px: the tile side at 100,000 points (8192 px sprite)
    pixels = rng.integers(0, 256, (count, 25 * 25 * 3), dtype=np.uint8)
    for i in range(count):
        uid = f"{start + i:07d}"
        item = ImageRef(uid, f"img/{uid}.png", None, (f"img/{uid}.png", str(cluster[i])),
                        int(keys[i]))
        yield Embedded(item, Thumbnail.from_rgb(25, 25, pixels[i].tobytes()), (x[i],))


def _digest(e):
    """Touch what each element carries: an item's metadata, or a (key,
    values) row of the neighbour table."""
    return hash(e.item.metadata if hasattr(e, "item") else e[1]) & 0xFFFF


def child(args, beam_args):
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions

    from beam_projector.pipeline.run import default_local_runner
    from beam_projector.transforms.neighbors import NeighborColumns

    out = {}
    for stage in ("generate_only", "with_neighbors"):
        options = PipelineOptions(beam_args)
        default_local_runner(options)
        p = beam.Pipeline(options=options)
        items = (p | beam.Create(list(range(-(-args.n // CHUNK))))
                 | beam.Reshuffle() | beam.FlatMap(make_chunk, args.n))
        if stage == "with_neighbors":
            items = items | NeighborColumns(10, 0, 1, 0)
        _ = (items | beam.Map(_digest) | beam.combiners.Count.Globally()
             | beam.Map(lambda c, n=args.n: _check(c, n)))
        t0 = time.perf_counter()
        p.run().wait_until_finish()
        out[stage + "_s"] = round(time.perf_counter() - t0, 2)
    print("RESULT " + json.dumps(out))


def _check(count, n):
    if count != n:
        raise RuntimeError(f"{count} items came out of {n}")


def tree_rss_mib(pid: int) -> float:
    """RSS summed over ``pid`` and its descendants, from /proc."""
    children, rss = {}, {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                parts = f.read().rsplit(")", 1)[1].split()
            children.setdefault(int(parts[1]), []).append(int(d))
            rss[int(d)] = int(parts[21]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, IndexError, ValueError):
            pass
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        total += rss.get(p, 0)
        todo += children.get(p, [])
    return total / 2 ** 20


def timed(cmd):
    """Run a child: wall and CPU seconds (user + sys, its reaped workers
    included), wait4's peak RSS and the peak of the sampled process-tree RSS.
    CPU seconds are the figure to read on a busy shared machine."""
    import subprocess
    import tempfile

    peak = [0.0]
    stop = threading.Event()
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, cwd=common.REPO)

        def sample():
            while not stop.is_set():
                peak[0] = max(peak[0], tree_rss_mib(proc.pid))
                stop.wait(0.25)

        t = threading.Thread(target=sample, daemon=True)
        t.start()
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        stop.set()
        t.join()
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode(), err.read().decode()
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"neighbour bench child failed:\n{stderr[-3000:]}")
    line = next(x for x in stdout.splitlines() if x.startswith("RESULT "))
    result = json.loads(line[len("RESULT "):])
    result.update(wall_s=round(wall, 2), cpu_s=round(usage.ru_utime + usage.ru_stime, 2),
                  maxrss_mib=round(usage.ru_maxrss / 1024, 1), tree_rss_mib=round(peak[0], 1),
                  load_after=os.getloadavg()[0])
    return result


def _ppid(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return -1


def recall(n: int, queries: int, k: int = 10):
    """Recall@k of the projected search against the exact 1280-d search."""
    from beam_projector.transforms import neighbors as nb

    xs, clusters, keys = [], [], []
    for chunk in range(-(-n // CHUNK)):
        for e in make_chunk(chunk, n):
            xs.append(e.vectors[0])
            clusters.append(e.item.metadata[1])
            keys.append((e.item.key, e.item.uid))
    order = sorted(range(n), key=lambda i: keys[i])
    x = np.stack([xs[i] for i in order])
    labels = [clusters[i] for i in order]
    del xs
    proj = nb.fit_projection(x[:nb.PCA_SAMPLE], nb.PROJECTED_DIMS)
    # as the stage does: each vector waits for the PCA packed (float16 at 1280-d)
    z = np.stack([nb.project(nb.unpack_vector(nb.pack_vector(v)), proj) for v in x])
    rng = np.random.default_rng(0)
    q = np.sort(rng.choice(n, size=min(queries, n), replace=False))
    approx = nb.search_block(z, q, k)
    mean = x.astype(np.float64).mean(axis=0)
    kept = float(np.mean((z[q].astype(np.float64) ** 2).sum(axis=1)))
    hits = same_agreement = 0
    rel_err = []
    for start in range(0, len(q), 100):
        rows = q[start:start + 100]
        u = nb.centre_normalise(x[rows], mean)
        sims = np.concatenate([u @ nb.centre_normalise(x[a:a + 20000], mean).T
                               for a in range(0, n, 20000)], axis=1)
        sims[np.arange(len(rows)), rows] = -np.inf
        for j, row in enumerate(rows):
            exact = np.lexsort((np.arange(n), -sims[j]))[:k]
            cand, s = approx[start + j]
            hits += len(set(exact.tolist()) & set(cand.tolist()))
            agree = lambda idx: sum(labels[i] == labels[row] for i in idx)  # noqa: E731
            same_agreement += agree(exact) == agree(cand)
            d_exact = 1 - sims[j, exact[-1]]
            rel_err.append(abs((1 - s[-1]) - d_exact) / max(d_exact, 1e-9))
    return {"recall_at_k": round(hits / (k * len(q)), 4), "k": k, "queries": len(q),
            "dims": nb.PROJECTED_DIMS, "energy_kept": round(kept, 4),
            "same_label_agreement": round(same_agreement / len(q), 4),
            "kth_distance_median_rel_err": round(float(np.median(rel_err)), 4)}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--modes", default=",".join(MODES))
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--no_recall", action="store_true")
    ap.add_argument("--json")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args, beam_args = ap.parse_known_args(argv)
    if args.queries < 1 and not args.no_recall:
        ap.error("--queries must be at least 1 (--no_recall skips the recall measurement)")
    if args.child:
        return child(args, beam_args)
    m = common.machine()
    common.print_machine(m)
    results = {"machine": m, "n": args.n, "dim": DIM, "runs": {}}
    rows = []
    for mode in [m for m in args.modes.split(",") if m and args.runs > 0]:
        runs = []
        for _ in range(args.runs):
            r = timed([sys.executable, os.path.abspath(__file__), "--child", "--n", str(args.n)]
                      + MODES[mode])
            print(f"{mode}: wall {r['wall_s']}s (cpu {r['cpu_s']}s), pipeline "
                  f"{r['with_neighbors_s']}s (generate only {r['generate_only_s']}s), maxrss "
                  f"{r['maxrss_mib']} MiB, tree {r['tree_rss_mib']} MiB, load {r['load_after']:.1f}",
                  flush=True)
            runs.append(r)
        results["runs"][mode] = runs
        med = {k: common.median([r[k] for r in runs]) for k in runs[0]}
        rows.append([mode, med["with_neighbors_s"], med["generate_only_s"],
                     med["with_neighbors_s"] - med["generate_only_s"], med["cpu_s"],
                     med["maxrss_mib"], med["tree_rss_mib"], med["load_after"]])
    if rows:
        print(common.table(["runner", "pipeline s", "generate only s", "neighbour stage s",
                            "child cpu s", "maxrss MiB", "tree RSS MiB", "load"], rows))
    if not args.no_recall:
        results["recall"] = recall(args.n, args.queries)
        print("recall:", json.dumps(results["recall"]))
    common.write_json(args.json, results)


if __name__ == "__main__":
    main()
