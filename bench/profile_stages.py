#!/usr/bin/env python3
"""Where the time goes: a per-stage profile of the CLI, beside its limits.

Runs ``python -m beam_projector ...`` exactly as a user does, in child
processes, and reads the stage timers every run records in
run_summary.json (``all_counters``: ms_* counters kept by the stages, CPU
and wall, summed over the workers) and the launcher's own timings
(``launcher_seconds``: imports, TensorFlow, checks and model load, graph
build, the job, the summary). In the same repetitions, interleaved, it times
the limits the pipeline is compared with: the model alone (frozen, one batch
shape, on pre-decoded images: ``model_only.py --freeze``) and, for the small
CNN, the original tutorial's one-image loop (``seed_loop.py``).

    python bench/profile_stages.py --json build/bench/profile.json
    python bench/profile_stages.py --cases cnn-1500=small_cnn:1500 --runs 1   # smoke

Cases are NAME=MODEL:N; MODEL is mobilenet_v2 (224 px, fed --pixel_scale
symmetric as the issue measured it) or small_cnn (64 px). Every figure is
the median of --runs; ratios come from those medians, measured in one run.
"""
import argparse
import json
import os
import re
import shutil
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402 - the bench folder is not a package
import run_bench  # noqa: E402

DEFAULT_CASES = "mnv2-3000=mobilenet_v2:3000,cnn-1500=small_cnn:1500"
SUMMARY = re.compile(r"written=(\d+).* in ([0-9.]+)s")
# The stage timers (ms_* counters) and what they measure; CPU timers sum the
# thread (or process) CPU time of that work, wall timers the time a stage
# spent in it. See beam_projector.transforms.timing.
STAGES = [
    ("read + decode for the model", "ms_decode_cpu", "ms_decode_wall"),
    ("  of which the thumbnail", "ms_thumbnail_cpu", None),
    ("margin check", "ms_check_cpu", None),
    ("model", "ms_model_cpu", "ms_model_wall"),
    ("staging thumbnails", "ms_staging_cpu", "ms_staging_wall"),
    ("neighbour columns", "ms_neighbors_cpu", "ms_neighbors_wall"),
    ("layout: fit on the sample", "ms_layout_fit_cpu", "ms_layout_fit_wall"),
    ("layout: place the rows", "ms_layout_place_cpu", "ms_layout_place_wall"),
    ("writer: assets", "ms_writer_assets_cpu", "ms_writer_assets_wall"),
    ("writer: publish", "ms_writer_publish_cpu", "ms_writer_publish_wall"),
]
LAUNCHER = ["imports", "tensorflow", "checks_and_model", "graph", "job", "after_job"]


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", default=os.path.join(common.REPO, "build", "bench"))
    ap.add_argument("--cases", default=DEFAULT_CASES)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--batch", type=int, default=6, help="model-alone batch (frozen, fixed shape)")
    ap.add_argument("--loop", action="store_true", default=True,
                    help="time the tutorial loop for the small CNN (default on)")
    ap.add_argument("--no_loop", dest="loop", action="store_false")
    ap.add_argument("--pipeline_args", default="", help="extra CLI flags for every run")
    ap.add_argument("--baseline", default=None,
                    help="another checkout (git worktree add --detach DIR COMMIT) whose CLI is "
                    "profiled too, interleaved in the same repetitions, for before/after")
    ap.add_argument("--timeout", type=float, default=3600)
    ap.add_argument("--json", default=None)
    return ap.parse_args(argv)


def parse_cases(text):
    out = []
    for part in text.split(","):
        name, spec = part.split("=")
        model, n = spec.split(":")
        out.append({"name": name, "model": model, "n": int(n)})
    return out


def run_pipeline(csv_path, model, layer, n, outdir, extra, timeout, symmetric, code=common.REPO):
    shutil.rmtree(outdir, ignore_errors=True)
    cmd = [sys.executable, "-m", common.cli_module(code), "--input", csv_path, "--model", model,
           "--embedding_layer", layer, "--output", outdir, "--max_items", str(n)]
    if symmetric:
        cmd += ["--pixel_scale", "symmetric"]
    cmd += extra
    r = common.check(common.run_child(cmd, timeout=timeout, cwd=code,
                                      env={"PYTHONPATH": code}), f"pipeline in {code}")
    m = SUMMARY.search(r["stdout"] + r["stderr"])
    written, seconds = int(m.group(1)), float(m.group(2))
    summary = json.load(open(os.path.join(outdir, "run_summary.json")))
    counters = summary.get("all_counters", {})
    out = {"written": written, "reported_s": seconds, "images_per_s": written / seconds,
           "wall_s": r["wall_s"], "wall_images_per_s": written / r["wall_s"],
           "maxrss_mib": r["maxrss_mib"], "cpu_s": r.get("cpu_s"),
           "launcher": summary.get("launcher_seconds", {})}
    for _, cpu, wall in STAGES:
        for key in (cpu, wall):
            if key:
                out[key] = counters.get(key, 0) / 1000.0
    out["padding_rows"] = counters.get("padding_rows", 0)
    shutil.rmtree(outdir, ignore_errors=True)
    return out


def main(argv=None):
    args = parse_args(argv)
    m = common.machine()
    common.print_machine(m)
    cases = parse_cases(args.cases)
    extra = args.pipeline_args.split()
    results = {"machine": m, "runs": args.runs, "cases": {}}
    for case in cases:
        csv_path = run_bench.photo_set(args.workdir, case["n"])
        model, layer = run_bench.model_file(args.workdir, case["model"])
        symmetric = case["model"] == "mobilenet_v2"
        side = 224 if symmetric else 64
        runs = []
        codes = [("pipeline", common.REPO)] + ([("baseline", os.path.abspath(args.baseline))]
                                               if args.baseline else [])
        for rep in range(args.runs):
            r = {}
            for step, code in codes:
                r[step] = run_pipeline(csv_path, model, layer, case["n"],
                                       os.path.join(args.workdir, "profile-out"), extra,
                                       args.timeout, symmetric, code)
                p = r[step]
                print(f"run {rep + 1} {case['name']} [{step}]: {p['images_per_s']:.1f} img/s "
                      f"({p['reported_s']:.1f}s job, {p['wall_s']:.1f}s wall, "
                      f"{p['maxrss_mib']:.0f} MiB)", flush=True)
            model_cmd = [sys.executable, os.path.join(common.BENCH, "model_only.py"), "--csv",
                         csv_path, "--model", model, "--layer", layer, "--count",
                         str(min(case["n"], 1500)), "--batch", str(args.batch), "--freeze"]
            if symmetric:
                pass   # the model alone takes the decoded pixels; the scale does not change its cost
            mo = common.check(common.run_child(model_cmd, timeout=args.timeout), "model only")
            r["model"] = json.loads(mo["stdout"].strip().splitlines()[-1])
            print(f"run {rep + 1} {case['name']}: model alone {r['model']['images_per_s']:.1f} "
                  f"img/s (frozen, batch {args.batch})", flush=True)
            if args.loop and case["model"] == "small_cnn":
                r["loop"] = run_bench.time_loop(csv_path, model, layer, side, case["n"],
                                                os.path.join(args.workdir, "profile-loop"), {},
                                                args.timeout)
                print(f"run {rep + 1} {case['name']}: tutorial loop {r['loop']['wall_s']:.1f}s "
                      "wall", flush=True)
            runs.append(r)

        def med(step, key):
            return common.median([x[step].get(key) for x in runs if step in x])

        def med_launcher(key, step="pipeline"):
            return common.median([x[step]["launcher"].get(key) for x in runs])

        summary = {"n": case["n"], "model": case["model"], "runs": runs,
                   "pipeline_images_per_s": med("pipeline", "images_per_s"),
                   "wall_images_per_s": med("pipeline", "wall_images_per_s"),
                   "wall_s": med("pipeline", "wall_s"),
                   "maxrss_mib": med("pipeline", "maxrss_mib"),
                   "model_images_per_s": med("model", "images_per_s"),
                   "stages": {label: {"cpu_s": med("pipeline", cpu) if cpu else None,
                                      "wall_s": med("pipeline", wall) if wall else None}
                              for label, cpu, wall in STAGES},
                   "launcher": {k: med_launcher(k) for k in LAUNCHER}}
        if args.baseline:
            summary["baseline"] = {
                "pipeline_images_per_s": med("baseline", "images_per_s"),
                "wall_s": med("baseline", "wall_s"),
                "wall_images_per_s": med("baseline", "wall_images_per_s"),
                "maxrss_mib": med("baseline", "maxrss_mib"),
                "stages": {label: {"cpu_s": med("baseline", cpu) if cpu else None,
                                   "wall_s": med("baseline", wall) if wall else None}
                           for label, cpu, wall in STAGES},
                "launcher": {k: med_launcher(k, "baseline") for k in LAUNCHER}}
        summary["pipeline_over_model"] = common.ratio(summary["pipeline_images_per_s"],
                                                      summary["model_images_per_s"])
        summary["wall_over_model"] = common.ratio(summary["wall_images_per_s"],
                                                  summary["model_images_per_s"])
        if any("loop" in x for x in runs):
            summary["loop_wall_s"] = med("loop", "wall_s")
            summary["loop_over_wall"] = common.ratio(summary["loop_wall_s"], summary["wall_s"])
        results["cases"][case["name"]] = summary

        print()
        print(f"{case['name']}: {case['n']} images, median of {args.runs}")
        base = summary.get("baseline")
        print(common.table(["stage", "CPU s", "wall s"] + (["before CPU s", "before wall s"]
                                                           if base else []),
                           [[label, v["cpu_s"], v["wall_s"]]
                            + ([base["stages"][label]["cpu_s"], base["stages"][label]["wall_s"]]
                               if base else [])
                            for label, v in summary["stages"].items()]))
        print(common.table(["launcher", "s"] + (["before s"] if base else []),
                           [[k, v] + ([base["launcher"][k]] if base else [])
                            for k, v in summary["launcher"].items()]))
        if base:
            print(f"before: pipeline {common.fmt(base['pipeline_images_per_s'], 1)} img/s, whole "
                  f"process {common.fmt(base['wall_s'], 1)} s")
        line = (f"pipeline {common.fmt(summary['pipeline_images_per_s'], 1)} img/s, whole "
                f"process {common.fmt(summary['wall_images_per_s'], 1)} img/s, model alone "
                f"{common.fmt(summary['model_images_per_s'], 1)} img/s: pipeline/model "
                f"{common.fmt(summary['pipeline_over_model'])}, whole/model "
                f"{common.fmt(summary['wall_over_model'])}")
        if "loop_over_wall" in summary:
            line += (f"; tutorial loop {common.fmt(summary['loop_wall_s'], 1)} s against "
                     f"{common.fmt(summary['wall_s'], 1)} s: {common.fmt(summary['loop_over_wall'])} x")
        print(line, flush=True)
    common.write_json(args.json, results)


if __name__ == "__main__":
    main()
