#!/usr/bin/env python3
"""Scale benchmark: sampling from huge CSVs, the writer stage, and how fast a
live TensorBoard serves a big tensor in each format.

  sample       generates CSVs of --rows rows (path,label; the paths need not
               exist), then times Read + Sample only - transforms.sources.ReadCsv
               and transforms.sampling.SampleItems(--sample) on the FnApiRunner -
               as one subprocess per size: wall time and that process's peak RSS
               (os.wait4). Memory should stay flat in the number of rows (the
               bottom-k keeps --sample items) and time grow linearly.
  writer       transforms.write.select_for_publish + build_assets + publish for
               --items synthetic Embedded items of --dims floats, with real
               photo thumbnails at the tile the pipeline would use, for each
               tensor format; plus a breakdown of build_assets by asset.
  tensorboard  for the logdirs the writer step wrote: a fresh
               `tensorboard --logdir` each time, then the seconds until
               GET /data/plugin/projector/tensor?run=.&name=T answers.

Every figure is the median of --runs. Outputs a table, and JSON with --json.

    python bench/scale_bench.py --json build/bench/scale.json
    python bench/scale_bench.py --rows 20000,200000 --items 1000 --runs 1   # smoke test
"""
import argparse
import os
import shlex
import shutil
import sys
import time
from urllib.parse import quote

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import common  # noqa: E402 - the bench folder is not a package

TENSOR_NAME = "embedding"
DEFAULT_RUNNER_ARGS = "--runner FnApiRunner --direct_running_mode in_memory"


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", default=os.path.join(common.REPO, "build", "bench", "scale"))
    ap.add_argument("--steps", default="sample,writer,tensorboard",
                    help="comma-separated subset of sample,writer,tensorboard")
    ap.add_argument("--runs", type=int, default=3, help="repetitions; medians reported (default: 3)")
    ap.add_argument("--rows", default="1000000,10000000",
                    help="CSV sizes to sample from, comma-separated (default: 1000000,10000000)")
    ap.add_argument("--sample", type=int, default=5000, help="sample size (default: 5000)")
    ap.add_argument("--runner_args", default=DEFAULT_RUNNER_ARGS,
                    help=f"Beam flags of the sampling runs (default: {DEFAULT_RUNNER_ARGS!r})")
    ap.add_argument("--items", type=int, default=10000, help="writer items (default: 10000)")
    ap.add_argument("--dims", type=int, default=1280, help="embedding size (default: 1280)")
    ap.add_argument("--tile", type=int, default=100,
                    help="requested tile px; shrunk like the pipeline does (default: 100)")
    ap.add_argument("--timeout", type=float, default=3600, help="per child process, seconds")
    ap.add_argument("--json", default=None, help="write all figures to this JSON file")
    return ap.parse_args(argv)


# --- sample: Read + Sample on huge CSVs ---------------------------------------------

def make_csv(path: str, rows: int) -> float:
    """path,label rows; reused when a file with the same row count exists."""
    marker = path + ".rows"
    if os.path.exists(path) and os.path.exists(marker) and open(marker).read() == str(rows):
        return 0.0
    t0 = time.perf_counter()
    os.makedirs(os.path.dirname(path), exist_ok=True)
    chunk = 100_000
    with open(path, "w") as f:
        f.write("path,label\n")
        for start in range(0, rows, chunk):
            f.write("".join(f"/photos/{i // 1000:05d}/img_{i:09d}.jpg,class_{i % 37}\n"
                            for i in range(start, min(rows, start + chunk))))
    with open(marker, "w") as f:
        f.write(str(rows))
    return time.perf_counter() - t0


def sample_child(argv):
    """Child process: Read + Sample only, then one JSON line."""
    import json
    import resource

    ap = argparse.ArgumentParser()
    ap.add_argument("--csv", required=True)
    ap.add_argument("--n", type=int, required=True)
    args, beam_args = ap.parse_known_args(argv)

    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions

    from beam_projector.transforms.sampling import SampleItems
    from beam_projector.transforms.sources.csv_files import ReadCsv

    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    kept = beam.metrics.Metrics.counter("bench", "sampled")

    def count(item):
        kept.inc()
        return item

    t0 = time.perf_counter()
    p = beam.Pipeline(options=PipelineOptions(beam_args))
    refs, _ = p | "ReadInput" >> ReadCsv([args.csv], "path")
    _ = refs | "Sample" >> SampleItems(args.n, 0) | "Count" >> beam.Map(count)
    result = p.run()
    result.wait_until_finish()
    seconds = time.perf_counter() - t0
    counters = {c.key.metric.name: c.committed for c in result.metrics().query()["counters"]
                if c.key.metric.namespace in ("bench", "projector")}
    print(json.dumps({"pipeline_s": round(seconds, 3), "read": counters.get("read"),
                      "sampled": counters.get("sampled"),
                      "rss_after_imports_mib": round(rss_before, 1),
                      "rss_peak_self_mib": round(
                          resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}))


def bench_sample(args, sizes):
    import json

    csvs = {}
    for rows in sizes:
        path = os.path.join(args.workdir, f"rows-{rows}.csv")
        made = make_csv(path, rows)
        print(f"csv: {path} ({rows} rows, {os.path.getsize(path) / 2**20:.0f} MiB)"
              + (f", made in {made:.1f}s" if made else ", reused"), flush=True)
        csvs[rows] = path
    runs = {rows: [] for rows in sizes}
    for rep in range(args.runs):
        for rows in sizes:  # interleaved, so drifting load hits every size alike
            r = common.check(common.run_child(
                [sys.executable, os.path.abspath(__file__), "_sample", "--csv", csvs[rows],
                 "--n", str(args.sample)] + shlex.split(args.runner_args), timeout=args.timeout),
                f"Read+Sample of {rows} rows")
            out = json.loads(r["stdout"].strip().splitlines()[-1])
            if out["read"] != rows or out["sampled"] != min(rows, args.sample):
                raise SystemExit(f"Read+Sample of {rows} rows counted {out}")
            out.update(wall_s=r["wall_s"], maxrss_mib=r["maxrss_mib"])
            runs[rows].append(out)
            print(f"run {rep + 1} sample {rows} rows: process {r['wall_s']:.1f}s "
                  f"(pipeline {out['pipeline_s']:.1f}s), peak RSS {r['maxrss_mib']:.0f} MiB",
                  flush=True)
    summary = {}
    for rows in sizes:
        s = {k: common.median([r[k] for r in runs[rows]])
             for k in ("wall_s", "pipeline_s", "maxrss_mib", "rss_after_imports_mib")}
        s["rows_per_s"] = rows / s["pipeline_s"]
        s["us_per_row"] = s["pipeline_s"] / rows * 1e6
        summary[rows] = s
    return {"csvs": csvs, "runner_args": args.runner_args, "sample": args.sample,
            "runs": runs, "summary": summary}


# --- writer: build_assets + publish -----------------------------------------------

def synthetic_items(n: int, dims: int, tile: int, seed: int = 0):
    """n Embedded items: random vectors, thumbnails cut from real photos."""
    from PIL import Image
    from sklearn.datasets import load_sample_images

    from beam_projector.transforms.records import Embedded, ImageRef, Thumbnail
    from beam_projector.transforms.projector import fit_within
    from beam_projector.transforms.sampling import sample_key

    rng = np.random.default_rng(seed)
    photos = [Image.fromarray(a) for a in load_sample_images().images]
    vectors = rng.standard_normal((n, dims), dtype=np.float32)
    items = []
    for i in range(n):
        src = photos[i % len(photos)]
        w, h = int(rng.integers(src.width // 4, src.width)), int(rng.integers(src.height // 4, src.height))
        x0, y0 = int(rng.integers(0, src.width - w + 1)), int(rng.integers(0, src.height - h + 1))
        thumb = src.crop((x0, y0, x0 + w, y0 + h)).resize(fit_within(w, h, tile), Image.BILINEAR)
        path = f"/photos/img_{i:06d}.jpg"
        ref = ImageRef(uid=path, ref=path, content=None, metadata=(path, f"class_{i % 37}"),
                       key=sample_key(path, 0))
        items.append(Embedded(ref, Thumbnail.from_image(thumb),
                              (vectors[i],)))
    return items


def bench_writer(args, formats=("tsv", "binary")):
    from beam_projector.transforms import projector
    from beam_projector.transforms.write.config import WriterConfig
    from beam_projector.transforms.settings import Settings
    from beam_projector.transforms.write.assets import build_assets
    from beam_projector.transforms.write.publish import publish
    from beam_projector.transforms.write.stage import select_for_publish

    tile = projector.tile_size_for(args.items, args.tile)
    t0 = time.perf_counter()
    items = synthetic_items(args.items, args.dims, tile)
    print(f"writer: {args.items} items x {args.dims}-d, {tile} px thumbnails "
          f"(requested {args.tile}), made in {time.perf_counter() - t0:.1f}s", flush=True)
    runs = {f: [] for f in formats}
    logdirs = {}
    for rep in range(args.runs):
        for fmt in formats:
            out = os.path.join(args.workdir, f"logdir-{fmt}")
            shutil.rmtree(out, ignore_errors=True)  # else publish finds the folder and skips it
            cfg = WriterConfig(output=out, columns=("path", "label"), tensor_names=(TENSOR_NAME,),
                               settings=Settings(tile_size=tile, max_items=args.items,
                                                 tensor_format=fmt))
            # the pipeline's defaults for every other field, as a plain run writes
            t0 = time.perf_counter()
            kept, _, reported = select_for_publish(items, [], cfg.max_items)
            t1 = time.perf_counter()
            assets = build_assets(kept, cfg)
            t2 = time.perf_counter()
            publish(assets, cfg, reported)
            t3 = time.perf_counter()
            sizes = {name: len(data) for name, data in assets.files}
            r = {"select_s": t1 - t0, "build_assets_s": t2 - t1, "publish_s": t3 - t2,
                 "total_s": t3 - t0, "files": sizes,
                 "tensor_file": assets.tensors[0][2]}
            runs[fmt].append(r)
            logdirs[fmt] = out
            print(f"run {rep + 1} writer [{fmt}]: total {r['total_s']:.2f}s (build_assets "
                  f"{r['build_assets_s']:.2f}s, publish {r['publish_s']:.2f}s), tensor file "
                  f"{r['tensor_file']} {sizes[r['tensor_file']] / 2**20:.1f} MiB", flush=True)
    summary = {f: {k: common.median([r[k] for r in runs[f]])
                   for k in ("select_s", "build_assets_s", "publish_s", "total_s")}
               for f in formats}
    for f in formats:
        summary[f]["tensor_file"] = runs[f][-1]["tensor_file"]
        summary[f]["files_mib"] = {k: round(v / 2**20, 2) for k, v in runs[f][-1]["files"].items()}
    return {"items": args.items, "dims": args.dims, "tile": tile, "runs": runs,
            "summary": summary, "breakdown": writer_breakdown(items, tile, args.runs),
            "logdirs": logdirs}


def writer_breakdown(items, tile, runs):
    """Median seconds of each part of build_assets, to show where the time goes."""
    from beam_projector.transforms import projector
    from beam_projector.transforms import png

    parts = {
        "stack_vectors": lambda: np.stack([e.vectors[0] for e in items]).astype(np.float32),
    }
    matrix = parts["stack_vectors"]()
    parts["tensor_tsv"] = lambda: projector.tensor_tsv(matrix)
    parts["tensor_binary"] = lambda: projector.tensor_binary(matrix)
    parts["metadata_tsv"] = lambda: projector.metadata_tsv(("path", "label"),
                                                          [e.item.metadata for e in items])
    parts["assemble_sprite"] = lambda: projector.assemble_sprite([e.thumbnail for e in items], tile)
    sprite = parts["assemble_sprite"]()
    parts["sprite_png"] = lambda: png.png_bytes(sprite)
    try:  # preview.png (a PCA map of the thumbnails), where the writer makes one
        from beam_projector.transforms import preview
    except ImportError:
        preview = None
    if preview is not None and hasattr(preview, "render_preview"):
        grid, _ = preview.preview_geometry(len(items), tile)
        parts["preview_pca"] = lambda: preview.pca_2d(matrix)
        coords = parts["preview_pca"]()
        parts["preview_grid_layout"] = lambda: preview.grid_layout(coords, grid)
        parts["preview_whole_incl_pca"] = lambda: png.png_bytes(
            preview.render_preview([e.thumbnail for e in items], matrix, tile))
    out = {}
    for name, fn in parts.items():
        times = []
        for _ in range(runs):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        out[name] = common.median(times)
    return out


# --- tensorboard: time to serve the tensor ---------------------------------------

def bench_tensorboard(args, logdirs):
    runs = {f: [] for f in logdirs}
    expected = args.items * args.dims * 4
    for rep in range(args.runs):
        for fmt, logdir in logdirs.items():
            # The first projector request reads the config and loads the tensor
            # file (then cached), so nothing asks the plugin before the clock starts.
            with common.tensorboard(logdir, projector_ready=False) as (base, ready_s):
                t0 = time.perf_counter()
                status, body = common.http_get(
                    f"{base}{common.TB_PREFIX}/tensor?run=.&name={quote(TENSOR_NAME)}")
                seconds = time.perf_counter() - t0
                t0 = time.perf_counter()
                again = common.http_get(
                    f"{base}{common.TB_PREFIX}/tensor?run=.&name={quote(TENSOR_NAME)}")
                cached = time.perf_counter() - t0
            if status != 200 or len(body) != expected or again[1] != body:
                raise SystemExit(f"tensor [{fmt}]: HTTP {status}, {len(body)} bytes, "
                                 f"expected {expected}: {body[:300]!r}")
            runs[fmt].append({"tensor_s": seconds, "cached_tensor_s": cached,
                              "server_ready_s": ready_s})
            print(f"run {rep + 1} tensorboard [{fmt}]: first tensor answer in {seconds:.2f}s, "
                  f"cached {cached:.2f}s (server up in {ready_s:.1f}s)", flush=True)
    summary = {f: {k: common.median([r[k] for r in runs[f]])
                   for k in ("tensor_s", "cached_tensor_s", "server_ready_s")} for f in runs}
    if "tsv" in summary and "binary" in summary:
        summary["tsv_over_binary"] = common.ratio(summary["tsv"]["tensor_s"],
                                                  summary["binary"]["tensor_s"])
    return {"shape": [args.items, args.dims], "runs": runs, "summary": summary}


# --- main ------------------------------------------------------------------

def print_summary(res):
    if "sample" in res:
        s = res["sample"]["summary"]
        sizes = sorted(s)
        rows = [[n, s[n]["wall_s"], s[n]["pipeline_s"], s[n]["us_per_row"],
                 s[n]["rss_after_imports_mib"], s[n]["maxrss_mib"]] for n in sizes]
        print(f"\nRead + Sample({res['sample']['sample']}), {res['sample']['runner_args']}; "
              "medians")
        print(common.table(["rows", "process s", "pipeline s", "us/row", "RSS after imports MiB",
                            "peak RSS MiB"], rows))
        if len(sizes) > 1:
            a, b = sizes[0], sizes[-1]
            print(f"{b} vs {a} rows ({b / a:.0f}x): pipeline time x"
                  f"{s[b]['pipeline_s'] / s[a]['pipeline_s']:.2f}, peak RSS x"
                  f"{s[b]['maxrss_mib'] / s[a]['maxrss_mib']:.2f} (target: 1M rows <= 10 s)")
    if "writer" in res:
        w = res["writer"]
        rows = [[f, v["total_s"], v["select_s"], v["build_assets_s"], v["publish_s"],
                 v["files_mib"][v["tensor_file"]]] for f, v in w["summary"].items()]
        print(f"\nWriter stage: {w['items']} items x {w['dims']}-d + sprite ({w['tile']} px tiles); "
              "medians (target <= 10 s)")
        print(common.table(["format", "total s", "select s", "build_assets s", "publish s",
                            "tensor MiB"], rows))
        print("build_assets breakdown (s): " + ", ".join(
            f"{k} {v:.2f}" for k, v in w["breakdown"].items()))
    if "tensorboard" in res:
        t = res["tensorboard"]
        rows = [[f, v["tensor_s"], v["cached_tensor_s"], v["server_ready_s"]]
                for f, v in t["summary"].items() if isinstance(v, dict)]
        print(f"\nLive TensorBoard, GET /tensor for {t['shape'][0]} x {t['shape'][1]}, fresh server "
              "each time (first answer loads the file); medians")
        print(common.table(["format", "first tensor s", "cached tensor s", "server up s"], rows))
        if t["summary"].get("tsv_over_binary"):
            print(f"TSV / binary: x{t['summary']['tsv_over_binary']:.1f}")


def main(argv=None):
    args = parse_args(argv)
    steps = {s.strip() for s in args.steps.split(",") if s.strip()}
    sizes = sorted(int(r) for r in args.rows.split(",") if r.strip())
    mach = common.machine()
    common.print_machine(mach)
    os.makedirs(args.workdir, exist_ok=True)
    res = {"benchmark": "scale",
           "command": " ".join(shlex.quote(a) for a in [sys.executable] + sys.argv),
           "machine": mach}
    if "sample" in steps:
        res["sample"] = bench_sample(args, sizes)
    if "writer" in steps or "tensorboard" in steps:
        res["writer"] = bench_writer(args)
    if "tensorboard" in steps:
        res["tensorboard"] = bench_tensorboard(args, res["writer"]["logdirs"])
    res["loadavg_at_end"] = list(os.getloadavg())
    res["finished"] = time.strftime("%Y-%m-%d %H:%M:%S %z")
    print_summary(res)
    print(f"\nload average at end: {', '.join(f'{x:.2f}' for x in res['loadavg_at_end'])}")
    common.write_json(args.json, res)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_sample":
        sample_child(sys.argv[2:])
    else:
        main()
