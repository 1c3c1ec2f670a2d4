"""Cluster readiness without a cluster.

Dataflow and Flink workers install the package Beam builds from
``--setup_file ./setup.py``; the multi-process FnApiRunner pickles every DoFn
into other processes the way their workers do.
"""
import glob
import json
import os
import subprocess
import sys
import tarfile

import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.runners.portability.stager import Stager
from beam_projector.pipeline.config import expand_config
from google.protobuf import text_format
from tensorboard.plugins.projector.projector_config_pb2 import ProjectorConfig

from support import REPO_ROOT, check_live_projector, run_pipeline

REPO = REPO_ROOT


def _repo_files(pattern):
    return {os.path.relpath(p, REPO) for p in glob.glob(os.path.join(REPO, pattern))}


@pytest.fixture(scope="module")
def staged(tmp_path_factory, monkeypatch_module):
    """What the Dataflow/Flink launcher stages for ``configs/dataflow.yaml``:
    Beam's own Stager builds the sdist from ``setup_file: ./setup.py``."""
    monkeypatch_module.chdir(REPO)  # the preset's ./setup.py is relative to the repo root
    options = PipelineOptions(expand_config(["--config", "configs/dataflow.yaml"]))
    temp = str(tmp_path_factory.mktemp("staging"))
    resources = Stager.create_job_resources(options, temp)
    staged = [r for r in resources if b"workflow.tar.gz" in r.role_payload]
    assert len(staged) == 1, resources
    tarballs = glob.glob(os.path.join(temp, "*.tar.gz"))
    assert len(tarballs) == 1
    return tarballs[0], resources


@pytest.fixture(scope="module")
def workflow_tarball(staged):
    return staged[0]


def test_workers_install_the_lock_first(staged):
    """The Dataflow preset stages requirements.lock, unchanged, as the
    workers' requirements file (installed before the sdist), and nothing
    from a launcher-side download cache: hashes and all, the lock is what
    each worker installs."""
    from apache_beam.portability.api import beam_runner_api_pb2

    files = {}
    for r in staged[1]:
        role = beam_runner_api_pb2.ArtifactStagingToRolePayload.FromString(r.role_payload)
        path = beam_runner_api_pb2.ArtifactFilePayload.FromString(r.type_payload).path
        files[role.staged_name] = path
    assert {"requirements.txt", "workflow.tar.gz"} <= set(files), sorted(files)
    assert not [f for f in files if f.endswith((".whl", ".tar.gz")) and f != "workflow.tar.gz"]
    lock = open(os.path.join(REPO, "requirements.lock"), "rb").read()
    assert open(files["requirements.txt"], "rb").read() == lock
    assert b"--hash=sha256:" in lock


@pytest.fixture(scope="module")
def monkeypatch_module():
    mp = pytest.MonkeyPatch()
    yield mp
    mp.undo()


def test_sdist_ships_the_package_its_presets_and_the_lock(workflow_tarball):
    with tarfile.open(workflow_tarball) as tar:
        names = tar.getnames()
    root = names[0].split("/")[0]
    shipped = {n[len(root) + 1:] for n in names if n.startswith(root + "/")}
    tracked = subprocess.run(["git", "ls-files", "beam_projector", "configs"], cwd=REPO,
                             check=True, capture_output=True, text=True).stdout.split()
    wanted = {f for f in tracked if f.endswith((".py", ".yaml"))}
    assert {"configs/dataflow.yaml", "beam_projector/pipeline/cli.py",
            "beam_projector/__main__.py", "setup.py", "requirements.lock"} <= shipped
    assert not wanted - shipped, sorted(wanted - shipped)
    # nothing from the launcher's working tree beyond the package
    assert not [n for n in shipped if n.split("/")[0] in ("tests", "build", ".venv", "dags")]


def test_workers_can_install_the_sdist(workflow_tarball, tmp_path):
    """A worker runs `pip install workflow.tar.gz`; the installed copy must
    import, run as ``python -m beam_projector`` and carry the YAML presets
    as package data, found by name."""
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps",
                    "--no-build-isolation", "--target", str(target), workflow_tarball],
                   check=True, capture_output=True)
    # one package of its own (bin/ holds the beam-projector script)
    assert sorted(p.name for p in target.iterdir() if not p.name.endswith(".dist-info")) \
        == ["beam_projector", "bin"]
    assert (target / "bin" / "beam-projector").exists()
    assert sorted(p.name for p in (target / "beam_projector" / "configs").glob("*.yaml")) == \
        sorted(os.path.basename(p) for p in _repo_files("configs/*.yaml"))
    probe = ("import beam_projector.pipeline.run, beam_projector.pipeline.config as c;"
             "print(beam_projector.pipeline.run.__file__);"
             "print(c.load_config('flink')['runner'])")
    env = {**os.environ, "PYTHONPATH": str(target)}
    out = subprocess.run([sys.executable, "-c", probe], cwd=str(tmp_path), check=True,
                         capture_output=True, text=True, env=env).stdout.split("\n")
    assert out[0].startswith(str(target))
    assert out[1] == "FlinkRunner"
    usage = subprocess.run([sys.executable, "-m", "beam_projector", "--help"], cwd=str(tmp_path),
                           check=True, capture_output=True, text=True, env=env).stdout
    assert usage.startswith("usage: beam-projector")


@pytest.fixture(scope="module")
def multiprocess_run(digits, model_path, tmp_path_factory):
    csv_path, _ = digits
    out = str(tmp_path_factory.mktemp("mp") / "logdir")
    summary = run_pipeline("--config", os.path.join(REPO, "configs", "local_multiprocess.yaml"),
                           neighbors=0, layout="umap", input=csv_path, model=model_path,
                           embedding_layer="embedding", output=out, max_items=40, tile_size=16)
    return out, summary


def test_multiprocess_run_end_to_end(multiprocess_run):
    """--runner FnApiRunner --direct_running_mode multi_processing
    --direct_num_workers 2, from the preset: every DoFn crosses a process
    boundary, and the logdir is served by a live TensorBoard."""
    out, summary = multiprocess_run
    assert summary["written"] == 40 and summary["failed"] == 0
    config = text_format.Parse(open(os.path.join(out, "projector_config.pbtxt")).read(),
                               ProjectorConfig())
    assert [list(e.tensor_shape) for e in config.embeddings] == [[40, 8]]
    meta, _ = check_live_projector(out, 40, {"embedding": 8}, 16)
    assert meta.split("\n")[0] == "path\tlabel\tcluster" and len(meta.split("\n")) == 42


def test_run_summary_beside_the_outputs(multiprocess_run, digits):
    out, summary = multiprocess_run
    data = json.load(open(os.path.join(out, "run_summary.json")))
    counters = data["counters"]
    assert set(counters) == {"read", "sampled", "decoded", "failed", "embedded", "written"}
    assert counters["read"] == len(digits[1]) == 60
    assert counters["written"] == 40 and counters["failed"] == 0
    assert counters["embedded"] >= 40 and counters["decoded"] >= 40
    assert counters["sampled"] >= counters["decoded"]
    assert counters == {k: summary[k] for k in counters}
    opts = data["options"]
    assert opts["direct_running_mode"] == "multi_processing" and opts["direct_num_workers"] == 2
    assert opts["runner"] == "FnApiRunner" and opts["max_items"] == 40
    assert opts["config"].endswith("configs/local_multiprocess.yaml")
    assert opts["output"] == out and opts["tensor_format"] == "tsv"  # defaults recorded too
    assert data["wall_seconds"] >= data["pipeline_seconds"] > 0
    # the stage timers, summed over the worker processes, and the launcher's
    stages = {k: v for k, v in data["all_counters"].items() if k.startswith("ms_")}
    for name in ("decode", "model", "writer_assets", "writer_publish", "layout_fit"):
        assert stages[f"ms_{name}_wall"] > 0 and stages[f"ms_{name}_cpu"] >= 0, stages
    # every row is in the layout's fitted sample here: placing them is near 0 ms
    assert stages["ms_layout_place_wall"] >= 0 and stages["ms_layout_fit_cpu"] > 0
    assert stages["ms_decode_cpu"] > 0 and stages["ms_thumbnail_cpu"] <= stages["ms_decode_cpu"]
    # run() in this process; the command adds its imports and TensorFlow's
    assert set(data["launcher_seconds"]) == {"checks_and_model", "graph", "job", "after_job"}
