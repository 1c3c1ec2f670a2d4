"""Rehearse a cluster run: the real CLI submitted over Beam's Job API to a
job service, with SDK workers started by a separate worker pool, the way
Flink runs Python with ``--environment_type EXTERNAL``.

What the workers run: Beam's ``worker_pool_main`` (without
``--container_executable``) starts each SDK worker as
``python -c "from apache_beam.runners.worker.sdk_worker import SdkHarness; ..."``
with the first ``python`` on the pool's PATH. It never fetches the staged
artifacts, so the workers run the code of the pool's environment (here the
editable install in ``.venv``), not the sdist that ``--setup_file`` stages.
The tests assert both halves: the sdist does reach the job service's staging
folder, and the worker is that bare ``python -c SdkHarness`` command loading
``.venv``'s packages. (In Beam's SDK container, the pool runs with the boot
program as container executable, which does install the staged sdist: that
path is covered by tests/test_packaging.py and tests/test_container.py.)
"""
import filecmp
import glob
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import threading
import time

import pytest

from support import (
    REPO_ROOT,
    check_live_projector,
    free_port,
    run_pipeline,
    tiny_model,
    write_digits,
)

REPO = REPO_ROOT
VENV_BIN = os.path.dirname(sys.executable)
SUMMARY = "run_summary.json"


def venv_env():
    """The environment for Beam's servers: the venv's bin first on PATH,
    because the pool starts workers with the first ``python`` there, not with
    the interpreter that started it."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
    env["PATH"] = VENV_BIN + os.pathsep + env.get("PATH", "")
    return env


class Server:
    """A Beam server in its own process group (it and every worker it starts
    are stopped together), logging to a file."""

    def __init__(self, args, port, log_path, cwd):
        self.port, self.log_path = port, log_path
        self._log = open(log_path, "wb")
        self.proc = subprocess.Popen([sys.executable, "-m", *args], cwd=cwd, env=venv_env(),
                                     stdout=self._log, stderr=subprocess.STDOUT,
                                     start_new_session=True)

    def wait_listening(self, timeout=90):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited {self.proc.returncode}: {self.log_tail()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return self
            except OSError:
                time.sleep(0.2)
        raise RuntimeError(f"server not listening on 127.0.0.1:{self.port}: {self.log_tail()}")

    def log_tail(self, n=3000):
        with open(self.log_path, "rb") as f:
            return f.read().decode("utf-8", "replace")[-n:]

    def stop(self):
        if self.proc.poll() is None:
            for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 10)):
                try:
                    os.killpg(self.proc.pid, sig)
                except ProcessLookupError:
                    break
                try:
                    self.proc.wait(wait)
                    break
                except subprocess.TimeoutExpired:
                    continue
        self._log.close()


def start_server(request, tmp, name, args, port):
    server = Server(args, port, str(tmp / f"{name}.log"), cwd=str(tmp))
    request.addfinalizer(server.stop)
    return server.wait_listening()


def start_job_service(request, tmp):
    port = free_port()
    staging = tmp / "staging"
    staging.mkdir()
    server = start_server(request, tmp, "job_service",
                          ["apache_beam.runners.portability.local_job_service_main",
                           "--port", str(port), "--staging_dir", str(staging)], port)
    server.staging = staging
    return server


def start_worker_pool(request, tmp):
    port = free_port()
    return start_server(request, tmp, "worker_pool",
                        ["apache_beam.runners.worker.worker_pool_main",
                         "--service_port", str(port)], port)


# --- /proc: the SDK workers a pool started -----------------------------------

def children(pid):
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    stat = f.read()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(entry))
    return out


def sdk_workers(pool_pid):
    """{pid: (argv, /proc/pid/maps text)} of the pool's SDK worker processes."""
    found = {}
    for pid in children(pool_pid):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                argv = [a.decode() for a in f.read().split(b"\0") if a]
            with open(f"/proc/{pid}/maps") as f:
                maps = f.read()
        except OSError:
            continue
        if any("SdkHarness" in a for a in argv):
            found[pid] = (argv, maps)
    return found


# --- runs ----------------------------------------------------------------------

def portable_cli(job_service, pool, *flags):
    """The real CLI as a user runs it from the repo root: the
    configs/portable_local.yaml preset, with this test's ports and data."""
    argv = [sys.executable, "-m", "beam_projector", "--config", "configs/portable_local.yaml",
            "--job_endpoint", f"127.0.0.1:{job_service.port}",
            "--environment_config", f"127.0.0.1:{pool.port}", *flags]
    return subprocess.Popen(argv, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))


def tree(folder):
    """Every file below ``folder`` (relative path -> bytes)."""
    out = {}
    for root, _, files in os.walk(folder):
        for name in files:
            path = os.path.join(root, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, folder)] = f.read()
    return out


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """60 real digits plus a corrupt image and a missing one, so errors.tsv
    has rows; --max_items above the row count samples every row."""
    folder = tmp_path_factory.mktemp("portable_digits")
    csv_path, _ = write_digits(str(folder), count=60)
    with open(folder / "images" / "broken.png", "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n not really a png")
    with open(csv_path, "a") as f:
        f.write("images/broken.png,3\nimages/missing.png,4\n")
    model = tiny_model(str(folder / "tiny.keras"))
    flags = ["--input", csv_path, "--model", model, "--embedding_layer", "embedding",
             "--max_items", "70", "--tile_size", "16", "--seed", "7", "--batch_size", "32"]
    return flags


@pytest.fixture(scope="module")
def in_memory(dataset, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("in_memory") / "logdir")
    summary = run_pipeline(*dataset, "--output", out)
    return out, summary


@pytest.fixture(scope="module")
def servers(request, tmp_path_factory):
    """A job service and a worker pool, separate processes on free ports,
    both stopped (with their workers) when the module ends or fails."""
    tmp = tmp_path_factory.mktemp("servers")
    return start_job_service(request, tmp), start_worker_pool(request, tmp)


@pytest.fixture(scope="module")
def rehearsal(servers, dataset, tmp_path_factory):
    """The CLI submitted to the servers; the pool's SDK workers are recorded
    from /proc while the job runs."""
    job_service, pool = servers
    out = str(tmp_path_factory.mktemp("portable") / "logdir")
    seen, done = {}, threading.Event()

    def watch():
        while not done.is_set():
            for pid, info in sdk_workers(pool.proc.pid).items():
                if "tensorflow" in info[1] or pid not in seen:
                    seen[pid] = info
            time.sleep(0.1)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    cli = portable_cli(job_service, pool, *dataset, "--output", out)
    try:
        stdout, stderr = cli.communicate(timeout=240)
    finally:
        cli.kill()
        done.set()
        watcher.join()
    assert cli.returncode == 0, (stderr[-3000:], pool.log_tail())
    return {"out": out, "stdout": stdout, "workers": seen, "job_service": job_service,
            "pool": pool}


def test_logdir_is_byte_identical_to_the_in_memory_run(rehearsal, in_memory):
    """Every file but run_summary.json (timings, options): config, data-*/
    tensor, metadata, sprite, errors.tsv, preview, whatever the writer adds."""
    expected, got = tree(in_memory[0]), tree(rehearsal["out"])
    expected.pop(SUMMARY)
    got.pop(SUMMARY)
    assert "projector_config.pbtxt" in expected and "errors.tsv" in expected
    data_files = {os.path.basename(p) for p in expected if p.startswith("data-")}
    assert data_files >= {"metadata.tsv", "sprite.png"}
    assert data_files & {"feature_vecs.tsv", "feature_vecs.bytes"}
    errors = expected["errors.tsv"].decode().splitlines()
    assert len(errors) == 3 and any("broken.png" in e for e in errors) \
        and any("missing.png" in e for e in errors)
    assert sorted(got) == sorted(expected)
    for rel in expected:
        assert got[rel] == expected[rel], f"{rel} differs from the in-memory run's"


def test_counters_and_summary_come_back_through_the_job_service(rehearsal, in_memory):
    out, summary = in_memory
    local = json.load(open(os.path.join(out, SUMMARY)))
    remote = json.load(open(os.path.join(rehearsal["out"], SUMMARY)))
    assert remote["counters"] == local["counters"] == {k: summary[k] for k in local["counters"]}
    # the stage timers (ms_*) are timings: the same set, not the same values
    def counts(summary):
        return {k: v for k, v in summary["all_counters"].items() if not k.startswith("ms_")}
    assert counts(remote) == counts(local) and counts(local)["written"] == 60
    assert set(remote["all_counters"]) == set(local["all_counters"])
    assert local["counters"]["failed"] == 2 and local["counters"]["written"] == 60
    assert remote["options"]["runner"] == "PortableRunner"
    assert remote["options"]["environment_type"] == "EXTERNAL"
    assert remote["options"]["config"] == "configs/portable_local.yaml"
    last = rehearsal["stdout"].strip().splitlines()[-1]
    assert last.startswith("beam-projector: read=62 sampled=62 decoded=60 embedded=60 "
                           "written=60 failed=2 in ")


def test_rehearsal_loads_in_a_live_tensorboard(rehearsal):
    meta, _ = check_live_projector(rehearsal["out"], n=60, dims={"embedding": 8}, tile=16)
    lines = meta.rstrip("\n").split("\n")
    # the input's columns first, then the neighbour columns (on by default)
    assert lines[0].split("\t")[:2] == ["path", "label"] and len(lines) == 61


def test_what_the_workers_run(rehearsal):
    """The sdist crosses the Job API into the job service's staging folder,
    but the pool's workers do not install it: each is the bare `python -c
    SdkHarness(...)` command of worker_pool_main, a child of the pool,
    running the venv's interpreter and packages (TensorFlow and gRPC shared
    objects mapped from .venv's site-packages)."""
    staged = [p for p in glob.glob(str(rehearsal["job_service"].staging / "**"), recursive=True)
              if os.path.isfile(p) and tarfile.is_tarfile(p)]
    names = [n for p in staged for n in tarfile.open(p).getnames()]
    # the sdist's folder is beam_projector-0.1.0 (setuptools normalises the
    # distribution name, PEP 625)
    assert "beam_projector-0.1.0/beam_projector/pipeline/run.py" in names, names[:20]
    workers = rehearsal["workers"]
    assert workers, "no SDK worker process was seen under the worker pool"
    site = os.path.realpath(os.path.join(VENV_BIN, ".."))
    for argv, maps in workers.values():
        assert argv[:2] == ["python", "-c"] and "SdkHarness(" in argv[2]
        assert "pip" not in argv[2]
        assert any(site in line and "grpc" in line for line in maps.splitlines())
    assert any(site in line and "tensorflow" in line
               for _, maps in workers.values() for line in maps.splitlines())


def test_worker_killed_mid_run_fails_cleanly(servers, in_memory, tmp_path_factory):
    """Kill the SDK worker once the job is embedding (TensorFlow mapped into
    the worker: read, sample and decode are done). Beam's job service does
    not retry bundles, so the job fails: exit 1, one `beam-projector:
    failed:` line naming the lost worker, no traceback, and the previous
    logdir stays byte-identical."""
    tmp = tmp_path_factory.mktemp("kill")
    job_service, pool = servers
    # a slower run than the rehearsal: more images and a larger model input
    big = tmp / "big"
    csv_path, _ = write_digits(str(big), count=200)
    model = tiny_model(str(big / "m64.keras"), side=64)
    out = str(tmp / "logdir")
    shutil.copytree(in_memory[0], out)  # the logdir of a previous run
    before = tree(out)
    earlier = set(sdk_workers(pool.proc.pid))  # a previous job's worker, being stopped
    cli = portable_cli(job_service, pool, "--input", csv_path, "--model", model,
                       "--embedding_layer", "embedding", "--output", out,
                       "--max_items", "150", "--tile_size", "16")
    try:
        killed = None
        deadline = time.time() + 180
        while killed is None and time.time() < deadline and cli.poll() is None:
            for pid, (_, maps) in sdk_workers(pool.proc.pid).items():
                if "libtensorflow" in maps and pid not in earlier:
                    assert tree(out) == before  # nothing published yet: this is mid-run
                    os.kill(pid, signal.SIGKILL)
                    killed = pid
                    break
            time.sleep(0.02)
        assert killed, ("the worker never reached the embedding stage", cli.poll(),
                        pool.log_tail())
        stdout, stderr = cli.communicate(timeout=120)
    finally:
        cli.kill()
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert cli.returncode == 1, (stdout, stderr[-3000:])
    failed = [line for line in lines if line.startswith("beam-projector: failed:")]
    assert failed == [lines[-1]], lines[-5:]
    assert "SDK worker was lost" in failed[0], failed[0]
    assert "Traceback" not in stderr, stderr[-3000:]
    assert tree(out) == before
    assert filecmp.cmp(os.path.join(out, "projector_config.pbtxt"),
                       os.path.join(in_memory[0], "projector_config.pbtxt"), shallow=False)
