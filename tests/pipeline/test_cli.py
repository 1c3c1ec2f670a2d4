"""First contact: --help from the option declarations, and a quiet stderr.

Both run the real entry points in a subprocess, as a user types them.
"""
import csv
import json
import os
import re
import shutil
import subprocess
import sys

import pytest
from beam_projector.pipeline.options import ProjectorOptions

import hostile_corpus

BIN = os.path.dirname(sys.executable)
GROUPS = ["input", "sampling", "model", "output", "failures", "run"]


def cli_env():
    """The user's environment: nothing pre-quietened (conftest sets
    TF_CPP_MIN_LOG_LEVEL for the test process itself)."""
    return {k: v for k, v in os.environ.items()
            if k not in ("TF_CPP_MIN_LOG_LEVEL", "GRPC_VERBOSITY", "PYTHONWARNINGS")}


def declared_options():
    """Every option ProjectorOptions declares, as Beam's own parser sees it."""
    return sorted(ProjectorOptions([]).get_all_options(current_only=True))


def help_entries(text):
    """{option dest: (group title, entry text)} parsed from argparse's help."""
    entries, group, current = {}, None, None
    for line in text.splitlines():
        if re.match(r"^[a-z][a-z ]*:$", line):
            group, current = line[:-1], None
            continue
        m = re.match(r"^  (?:-\w, )?--(\w+)", line)
        if m and group:
            current = m.group(1)
            entries[current] = [group, line]
        elif current and line.startswith("    "):
            entries[current][1] += " " + line.strip()
        elif not line.strip():
            current = None
    return {k: (g, re.sub(r"\s+", " ", t)) for k, (g, t) in entries.items()}


@pytest.mark.parametrize("command", [[os.path.join(BIN, "beam-projector"), "--help"],
                                     [sys.executable, "-m", "beam_projector", "-h"]],
                         ids=["console-script", "python-m"])
def test_help_lists_every_option_grouped_with_its_default(command):
    proc = subprocess.run(command, capture_output=True, text=True, timeout=120, env=cli_env())
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    text = proc.stdout
    entries = help_entries(text)
    options = declared_options()
    assert len(options) >= 20
    for dest in options:
        assert dest in entries, f"--{dest} is missing from --help"
        group, entry = entries[dest]
        assert group in GROUPS, (dest, group)
        assert "(default:" in entry or "Required" in entry, entry
    # the groups, in order, then how to list Beam's own options
    heads = [line[:-1] for line in text.splitlines() if line[:-1] in GROUPS and line.endswith(":")]
    assert heads == GROUPS
    assert entries["max_items"] == ("sampling", entries["max_items"][1])
    assert "(default: 1500)" in entries["max_items"][1]
    assert "(default: tsv)" in entries["tensor_format"][1]
    assert entries["model"][0] == "model" and entries["output"][0] == "output"
    assert text.rstrip().endswith("beam-projector --help_beam")


@pytest.mark.slow
def test_help_says_what_pool_flatten_costs_downstream():
    """Issue 28: --pool flatten gives H*W*C dimensions; --help says what
    that costs after the model: the tensor's size, and the projector's own
    PCA (a random projection of every vector to 200 dimensions first)."""
    from beam_projector.pipeline.options import format_help

    _, entry = help_entries(format_help())["pool"]
    assert "H*W*C" in entry and "359 MiB tensor" in entry, entry
    assert "200 random directions" in entry and "prefer avg or max" in entry, entry


def test_help_beam_lists_the_runner_options_and_help_needs_no_config(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "beam_projector", "--help_beam"],
                          capture_output=True, text=True, timeout=120, env=cli_env())
    assert proc.returncode == 0, proc.stderr
    for flag in ("--runner", "--direct_num_workers", "--project", "--flink_master"):
        assert flag in proc.stdout
    assert "--max_items" not in proc.stdout  # ours are in --help
    # --help wins before --config is read or Beam parses anything
    proc = subprocess.run([sys.executable, "-m", "beam_projector", "--config",
                           str(tmp_path / "missing.yaml"), "--max_items", "x", "--help"],
                          capture_output=True, text=True, timeout=120, env=cli_env())
    assert proc.returncode == 0 and "sampling:" in proc.stdout, proc.stderr


# --- quiet by default ------------------------------------------------------------------

OUR_LINES = [
    r"beam-projector: progress: (read|decoded) [\d,]+ images, [\d.,]+ images/s",
    # the total is what goes to the model: the 40 that decoded
    r"beam-projector: progress: embedded [\d,]+ / 40 \(\d+%\), [\d.,]+ images/s, "
    r"(about [\d]+ (s|min) left|done in \d+ s)",
]


@pytest.fixture(scope="module")
def digits_with_a_warning(tmp_path_factory, digits):
    """40 digits plus one image Pillow warns about (a decompression-bomb-band
    PNG: DecompressionBombWarning), which must become an errors.tsv row."""
    csv_path, rows = digits
    folder = tmp_path_factory.mktemp("warned")
    shutil.copytree(os.path.dirname(csv_path) + "/images", folder / "images")
    with open(folder / "images" / "band.png", "wb") as f:
        f.write(hostile_corpus.bomb_png(10000, 10000))
    with open(folder / "images.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label"])
        for r in rows[:40]:
            w.writerow([r["path"], r["label"]])
        w.writerow(["images/band.png", "x"])
    return str(folder / "images.csv")


def run_cli(csv_path, model_path, out, *extra):
    return subprocess.run(
        [os.path.join(BIN, "beam-projector"), "--input", csv_path, "--model", model_path,
         "--embedding_layer", "embedding", "--output", out, "--max_items", "41",
         "--tile_size", "16", *extra],
        capture_output=True, text=True, timeout=600, env=cli_env())


@pytest.mark.slow
def test_a_normal_run_prints_only_our_lines(digits_with_a_warning, model_path, tmp_path):
    out = str(tmp_path / "out")
    proc = run_cli(digits_with_a_warning, model_path, out)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stderr.splitlines()
    assert lines, "no progress line at all"
    for line in lines:
        assert any(re.fullmatch(p, line) for p in OUR_LINES), f"unexpected stderr line: {line!r}"
    assert re.fullmatch(r"beam-projector: progress: embedded 40 / 40 \(100%\), .*, done in .*",
                        lines[-1]), lines
    assert proc.stdout.splitlines() == [proc.stdout.strip()]
    assert re.fullmatch(r"beam-projector: read=41 sampled=41 decoded=40 embedded=40 written=40 "
                        r"failed=1 in [\d.]+s\n", proc.stdout)
    # the file Pillow warned about is still accounted for
    errors = open(os.path.join(out, "errors.tsv")).read().splitlines()
    assert len(errors) == 2 and errors[1].startswith(
        os.path.join(os.path.dirname(digits_with_a_warning), "images", "band.png") + "\tdecode\t"
        "decompression bomb")
    # where the command's own time went, beside the stages' timers
    launcher = json.load(open(os.path.join(out, "run_summary.json")))["launcher_seconds"]
    assert set(launcher) == {"imports", "tensorflow", "checks_and_model", "graph", "job",
                             "after_job"}
    assert launcher["imports"] > 0 and launcher["job"] > 0


@pytest.mark.slow
def test_log_level_brings_the_libraries_back(digits_with_a_warning, model_path, tmp_path):
    proc = run_cli(digits_with_a_warning, model_path, str(tmp_path / "out"), "--log_level", "INFO")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stderr.splitlines()
    theirs = [line for line in lines if not line.startswith("beam-projector: ")]
    assert any("DecompressionBombWarning" in line for line in theirs), theirs[-20:]
    assert any(line.startswith("INFO apache_beam") for line in theirs), theirs[-20:]
    assert any("oneDNN" in line or "cpu_feature_guard" in line or "cuda" in line.lower()
               for line in theirs), theirs[:20]


@pytest.mark.slow
def test_the_multi_process_runner_is_quiet_too(digits_with_a_warning, model_path, tmp_path):
    """Its worker processes load the model themselves: they must not print
    TensorFlow's load banners either (they inherit the quiet setting)."""
    proc = run_cli(digits_with_a_warning, model_path, str(tmp_path / "out"),
                   "--direct_running_mode", "multi_processing", "--direct_num_workers", "2")
    assert proc.returncode == 0, proc.stderr
    for line in proc.stderr.splitlines():
        assert line.startswith("beam-projector: progress: "), f"unexpected stderr line: {line!r}"
    assert "written=40 failed=1" in proc.stdout
