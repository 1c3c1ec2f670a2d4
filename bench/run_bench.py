#!/usr/bin/env python3
"""Speed benchmark: the tutorial loop vs the model alone vs the pipeline.

For each model (MobileNetV2 224x224 untrained, embedding = its global average
pooling, 1280-d; a small 64 px CNN, embedding layer 'embedding'), on one
photo set and one machine, interleaved within each repetition:

  (a) loop      bench/seed_loop.py, the original tutorial's one-image-at-a-time
                loop, as a subprocess (images/s from its own timer, which
                excludes imports and model load; whole-process wall time too);
  (b) model     bench/model_only.py: the model alone on pre-decoded batches of
                64 through a fixed-signature tf.function - the compute limit;
  (c) pipeline  `python -m beam_projector ...` exactly as a user runs it, as a
                subprocess: whole-process wall time, and the seconds the CLI
                reports ("... in Xs": graph build to publish, without imports).

Each figure is the median over --runs repetitions; the ratios are computed
from those medians, so they come from the same run on the same machine.

    python bench/run_bench.py --json build/bench/speed.json
    python bench/run_bench.py --count 60 --runs 1          # smoke test

Levers: --pipeline_args passes flags through to the 'default' pipeline run;
--variant NAME='ARGS' adds more pipeline configurations timed in the same
repetitions (in both, leading KEY=VALUE words are environment variables), e.g.
  --variant "mp2=--direct_running_mode multi_processing --direct_num_workers 2"
  --variant "intra1=TF_NUM_INTRAOP_THREADS=1 --batch_size 64"
--env KEY=VALUE sets a variable for every child (loop, model and pipeline).
"""
import argparse
import csv
import json
import os
import re
import shlex
import shutil
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402 - the bench folder is not a package

MODELS = {
    # name: (input side, embedding layer or None = find the pooling layer)
    "mobilenet_v2": (224, None),
    "small_cnn": (64, "embedding"),
}
SUMMARY = re.compile(r"written=(\d+).* in ([0-9.]+)s")
LOOP = re.compile(r"images=(\d+) seconds=([0-9.]+)")


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", default=os.path.join(common.REPO, "build", "bench"),
                    help="photos, models and outputs go here (default: build/bench)")
    ap.add_argument("--count", type=int, default=1500, help="photos in the set (default: 1500)")
    ap.add_argument("--runs", type=int, default=3, help="repetitions; medians reported (default: 3)")
    ap.add_argument("--models", default="mobilenet_v2,small_cnn",
                    help="comma-separated subset of: " + ", ".join(MODELS))
    ap.add_argument("--steps", default="loop,model,pipeline",
                    help="comma-separated subset of loop,model,pipeline (default: all)")
    ap.add_argument("--loop_limit", type=int, default=None,
                    help="time the MobileNetV2 tutorial loop on only this many images "
                         "(images/s stays comparable; the small CNN loop always runs all "
                         "--count images, as its whole-process ratio needs)")
    ap.add_argument("--model_batch", type=int, default=64,
                    help="batch size of the model-only timing (default: 64)")
    ap.add_argument("--pipeline_args", default="",
                    help="extra flags (and leading KEY=VALUE env words) for the 'default' "
                         "pipeline configuration, e.g. '--batch_size 64'")
    ap.add_argument("--variant", action="append", default=[],
                    help="NAME=ARGS: one more pipeline configuration, timed in the same "
                         "repetitions; ARGS as for --pipeline_args (repeatable)")
    ap.add_argument("--env", action="append", default=[],
                    help="KEY=VALUE for every child process (repeatable)")
    ap.add_argument("--timeout", type=float, default=3600, help="per child process, seconds")
    ap.add_argument("--keep_outputs", action="store_true",
                    help="keep the logdirs written (default: removed after each run)")
    ap.add_argument("--json", default=None, help="write all figures to this JSON file")
    return ap.parse_args(argv)


def split_env(words):
    """Leading KEY=VALUE words -> env dict; the rest are the arguments."""
    env = {}
    while words and re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", words[0]):
        k, v = words.pop(0).split("=", 1)
        env[k] = v
    return env, words


def variants(args):
    out = []
    env, words = split_env(shlex.split(args.pipeline_args))
    out.append({"name": "default", "env": env, "args": words})
    for spec in args.variant:
        name, sep, rest = spec.partition("=")
        if not name or not sep:
            raise SystemExit(f"--variant wants NAME=ARGS, got {spec!r}")
        env, words = split_env(shlex.split(rest))
        out.append({"name": name, "env": env, "args": words})
    names = [v["name"] for v in out]
    if len(set(names)) != len(names):
        raise SystemExit(f"variant names must differ: {names}")
    return out


# --- inputs -----------------------------------------------------------------

def csv_rows(path):
    with open(path, newline="") as f:
        return sum(1 for _ in csv.reader(f)) - 1


def photo_set(workdir, count):
    """bench/make_photos.py output for ``count``, made once and reused."""
    folder = os.path.join(workdir, f"photos-{count}")
    csv_path = os.path.join(folder, "images.csv")
    if os.path.exists(csv_path) and csv_rows(csv_path) == count:
        print(f"photos: reusing {csv_path}")
        return csv_path
    print(f"photos: making {count} JPEGs in {folder} ...", flush=True)
    shutil.rmtree(folder, ignore_errors=True)
    r = common.check(common.run_child([sys.executable, os.path.join(common.BENCH, "make_photos.py"),
                                       folder, "--count", str(count)]), "make_photos")
    print(f"photos: made in {r['wall_s']:.1f}s")
    return csv_path


def model_file(workdir, name):
    """bench/make_model.py output and its embedding layer, made once and reused."""
    path = os.path.join(workdir, "models", f"{name}.keras")
    info_path = path + ".json"
    if os.path.exists(path) and os.path.exists(info_path):
        with open(info_path) as f:
            return path, json.load(f)["layer"]
    os.makedirs(os.path.dirname(path), exist_ok=True)
    r = common.check(common.run_child([sys.executable, os.path.join(common.BENCH, "make_model.py"),
                                       path, "--arch", name]), f"make_model {name}")
    layer = MODELS[name][1]
    if layer is None:  # make_model prints "pooled layers: ['global_average_pooling2d']"
        m = re.search(r"pooled layers: \['([^']+)'\]", r["stdout"])
        if not m:
            raise SystemExit(f"cannot find the pooling layer in: {r['stdout']}")
        layer = m.group(1)
    with open(info_path, "w") as f:
        json.dump({"layer": layer}, f)
    print(f"model: {name} -> {path} (embedding layer {layer!r})")
    return path, layer


# --- the three measurements ----------------------------------------------------

def time_loop(csv_path, model, layer, side, limit, outdir, env, timeout):
    shutil.rmtree(outdir, ignore_errors=True)
    r = common.check(common.run_child(
        [sys.executable, os.path.join(common.BENCH, "seed_loop.py"), "--csv", csv_path,
         "--model", model, "--layer", layer, "--out", outdir, "--limit", str(limit),
         "--size", str(side), "--tile", "100"], env=env, timeout=timeout), "tutorial loop")
    m = LOOP.search(r["stdout"])
    images, seconds = int(m.group(1)), float(m.group(2))
    return {"images": images, "loop_s": seconds, "images_per_s": images / seconds,
            "wall_s": r["wall_s"], "maxrss_mib": r["maxrss_mib"]}


def time_model(csv_path, model, layer, count, batch, env, timeout):
    r = common.check(common.run_child(
        [sys.executable, os.path.join(common.BENCH, "model_only.py"), "--csv", csv_path,
         "--model", model, "--layer", layer, "--count", str(count), "--batch", str(batch)],
        env=env, timeout=timeout), "model only")
    out = json.loads(r["stdout"].strip().splitlines()[-1])
    out.update(wall_s=r["wall_s"], maxrss_mib=r["maxrss_mib"])
    return out


def time_pipeline(csv_path, model, layer, count, outdir, variant, env, timeout, keep):
    shutil.rmtree(outdir, ignore_errors=True)
    cmd = [sys.executable, "-m", "beam_projector", "--input", csv_path, "--model", model,
           "--embedding_layer", layer, "--output", outdir, "--max_items", str(count)]
    cmd += variant["args"]
    r = common.check(common.run_child(cmd, env={**env, **variant["env"]}, timeout=timeout),
                     f"pipeline ({variant['name']})")
    m = SUMMARY.search(r["stdout"] + r["stderr"])
    if not m:
        raise SystemExit(f"no summary line in the pipeline's output:\n{r['stdout'][-2000:]}")
    written, seconds = int(m.group(1)), float(m.group(2))
    if not keep:
        shutil.rmtree(outdir, ignore_errors=True)
    return {"written": written, "reported_s": seconds, "images_per_s": written / seconds,
            "wall_s": r["wall_s"], "wall_images_per_s": written / r["wall_s"],
            "maxrss_mib": r["maxrss_mib"], "cmd": r["cmd"]}


# --- summary -------------------------------------------------------------------

def summarise(model_name, runs, vnames):
    """Medians of every figure and the ratios between them."""
    def med(step, key):
        return common.median([r[step][key] for r in runs if step in r])

    s = {"loop": {k: med("loop", k) for k in ("images", "images_per_s", "loop_s", "wall_s",
                                             "maxrss_mib")} if any("loop" in r for r in runs) else None,
         "model": {k: med("model", k) for k in ("images", "images_per_s", "seconds",
                                               "decode_images_per_s", "wall_s", "maxrss_mib")}
         if any("model" in r for r in runs) else None,
         "pipeline": {}}
    for v in vnames:
        key = "pipeline:" + v
        if not any(key in r for r in runs):
            continue
        p = {k: med(key, k) for k in ("written", "images_per_s", "reported_s", "wall_s",
                                      "wall_images_per_s", "maxrss_mib")}
        loop, model = s["loop"] or {}, s["model"] or {}
        p["ratios"] = {
            "pipeline_over_model": common.ratio(p["images_per_s"], model.get("images_per_s")),
            "pipeline_wall_over_model": common.ratio(p["wall_images_per_s"], model.get("images_per_s")),
            "speedup_vs_loop": common.ratio(p["images_per_s"], loop.get("images_per_s")),
            "speedup_wall_vs_loop": common.ratio(p["wall_images_per_s"], loop.get("images_per_s")),
            # Only meaningful when the loop ran on every image the pipeline wrote.
            "whole_process_loop_over_pipeline": (
                common.ratio(loop.get("wall_s"), p["wall_s"])
                if loop and loop.get("images") == p["written"] else None),
        }
        s["pipeline"][v] = p
    return s


def print_summary(results):
    rows = []
    for name, res in results["models"].items():
        s = res["summary"]
        if s["loop"]:
            rows.append([name, "loop (tutorial)", s["loop"]["images"], s["loop"]["images_per_s"],
                         s["loop"]["wall_s"], None, None, None, None, s["loop"]["maxrss_mib"]])
        if s["model"]:
            rows.append([name, f"model only (batch {results['config']['model_batch']})",
                         s["model"]["images"], s["model"]["images_per_s"], s["model"]["wall_s"],
                         None, None, None, None, s["model"]["maxrss_mib"]])
        for v, p in s["pipeline"].items():
            r = p["ratios"]
            rows.append([name, f"pipeline [{v}]", p["written"], p["images_per_s"], p["wall_s"],
                         p["wall_images_per_s"], r["pipeline_over_model"], r["speedup_vs_loop"],
                         r["whole_process_loop_over_pipeline"], p["maxrss_mib"]])
    print("\nMedians over", results["config"]["runs"], "run(s); images/s of the pipeline from "
          "its reported seconds, 'wall img/s' from the whole process")
    print(common.table(["model", "what", "images", "img/s", "wall s", "wall img/s",
                        "pipe/model", "x loop", "loop/pipe wall", "peak MiB"], rows))
    print("\npipe/model: pipeline img/s over model-only img/s (target >= 0.85 for mobilenet_v2)")
    print("x loop: pipeline img/s over the tutorial loop's img/s")
    print("loop/pipe wall: whole-process seconds of the loop over the pipeline's, same images "
          "(target >= 5 for small_cnn)")


def main(argv=None):
    args = parse_args(argv)
    names = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = set(names) - set(MODELS)
    if unknown:
        raise SystemExit(f"unknown model(s) {sorted(unknown)}; known: {sorted(MODELS)}")
    steps = {s.strip() for s in args.steps.split(",") if s.strip()}
    vs = variants(args)
    base_env = dict(e.split("=", 1) for e in args.env)
    mach = common.machine()
    common.print_machine(mach)
    os.makedirs(args.workdir, exist_ok=True)
    csv_path = photo_set(args.workdir, args.count)
    models = {n: model_file(args.workdir, n) for n in names}
    print(f"config: count={args.count} runs={args.runs} loop_limit={args.loop_limit} "
          f"variants={[(v['name'], v['env'], v['args']) for v in vs]} env={base_env}", flush=True)

    per_model = {n: [] for n in names}
    out = os.path.join(args.workdir, "out")
    for rep in range(args.runs):
        for n in names:
            path, layer = models[n]
            side = MODELS[n][0]
            r = {"loadavg": os.getloadavg()[0]}
            if "loop" in steps:
                limit = min(args.loop_limit or args.count, args.count) if n == "mobilenet_v2" else args.count
                r["loop"] = time_loop(csv_path, path, layer, side, limit,
                                      os.path.join(out, n, "loop"), base_env, args.timeout)
                print(f"run {rep + 1} {n} loop: {r['loop']['images']} images, "
                      f"{r['loop']['images_per_s']:.2f} img/s, process {r['loop']['wall_s']:.1f}s",
                      flush=True)
            if "model" in steps:
                r["model"] = time_model(csv_path, path, layer, args.count, args.model_batch,
                                        base_env, args.timeout)
                print(f"run {rep + 1} {n} model only: {r['model']['images_per_s']:.2f} img/s "
                      f"(decode {r['model']['decode_images_per_s']:.0f} img/s untimed)", flush=True)
            if "pipeline" in steps:
                for v in vs:
                    p = time_pipeline(csv_path, path, layer, args.count,
                                      os.path.join(out, n, "pipeline-" + v["name"]), v, base_env,
                                      args.timeout, args.keep_outputs)
                    r["pipeline:" + v["name"]] = p
                    print(f"run {rep + 1} {n} pipeline [{v['name']}]: {p['written']} written, "
                          f"{p['images_per_s']:.2f} img/s (reported {p['reported_s']:.1f}s, "
                          f"process {p['wall_s']:.1f}s)", flush=True)
            per_model[n].append(r)

    results = {
        "benchmark": "speed",
        "command": " ".join(shlex.quote(a) for a in [sys.executable] + sys.argv),
        "machine": mach,
        "config": {"count": args.count, "runs": args.runs, "loop_limit": args.loop_limit,
                   "model_batch": args.model_batch, "env": base_env, "steps": sorted(steps),
                   "variants": vs, "photos": csv_path},
        "models": {n: {"model": models[n][0], "embedding_layer": models[n][1], "side": MODELS[n][0],
                       "runs": per_model[n],
                       "summary": summarise(n, per_model[n], [v["name"] for v in vs])}
                   for n in names},
        "loadavg_at_end": list(os.getloadavg()),
        "finished": time.strftime("%Y-%m-%d %H:%M:%S %z"),
    }
    print_summary(results)
    print(f"\nload average at end: {', '.join(f'{x:.2f}' for x in results['loadavg_at_end'])}")
    common.write_json(args.json, results)


if __name__ == "__main__":
    main()
