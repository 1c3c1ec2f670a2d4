"""Shared pieces of the benchmark scripts: the machine, timed child processes,
medians, tables and a live TensorBoard.

Benchmarks time whole child processes (what a user waits for) and read each
child's peak RSS from ``os.wait4``: ``getrusage(RUSAGE_CHILDREN)`` would give
the maximum over *all* children so far, so a smaller second run could not
show a smaller figure.
"""
import contextlib
import json
import os
import platform
import shlex
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from typing import Dict, List, Optional, Sequence

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(REPO, "bench")
TB_PREFIX = "/data/plugin/projector"


def _first(path: str, prefix: str) -> Optional[str]:
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(prefix):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def _version(dist: str) -> str:
    from importlib import metadata
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "-"


def machine() -> Dict:
    """What the figures were measured on (and how busy it was at the start)."""
    mem_kb = _first("/proc/meminfo", "MemTotal")
    return {
        "nproc": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "cpu_model": _first("/proc/cpuinfo", "model name") or platform.processor() or "-",
        "memory_gib": round(int(mem_kb.split()[0]) / 2**20, 1) if mem_kb else None,
        "loadavg_at_start": list(os.getloadavg()),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": {d: _version(d) for d in ("apache-beam", "tensorflow", "keras", "tensorboard",
                                              "pillow", "numpy")},
        "started": time.strftime("%Y-%m-%d %H:%M:%S %z"),
    }


def print_machine(m: Dict) -> None:
    print(f"machine: {m['nproc']} cores ({m['cpu_model']}), {m['memory_gib']} GiB memory; "
          f"load average at start {', '.join(f'{x:.2f}' for x in m['loadavg_at_start'])}")
    print(f"software: Python {m['python']}, " + ", ".join(f"{k} {v}" for k, v in m["versions"].items()))
    print(f"started: {m['started']}")
    sys.stdout.flush()


def cli_module(code_dir: str) -> str:
    """The module that runs the CLI in a checkout: ``beam_projector`` since
    the package was made one (issue 25), ``pipeline.run`` before. A baseline
    checkout runs with PYTHONPATH=code_dir, which comes before the venv's
    editable install of this repository, so the old layout is what runs."""
    return ("beam_projector" if os.path.exists(os.path.join(code_dir, "beam_projector",
                                                               "__main__.py"))
            else "pipeline.run")


def run_child(cmd: Sequence[str], env: Optional[Dict[str, str]] = None,
              timeout: Optional[float] = None, cwd: str = REPO) -> Dict:
    """Run ``cmd`` to the end; wall seconds, exit code, output, peak RSS (MiB).

    The RSS comes from ``os.wait4`` on this child: its own peak, or that of
    the largest descendant it waited for.
    """
    full_env = dict(os.environ)
    full_env.update(env or {})
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(list(cmd), stdout=out, stderr=err, env=full_env, cwd=cwd)
        killed = []
        timer = None
        if timeout:
            def kill():
                killed.append(True)
                proc.kill()
            timer = threading.Timer(timeout, kill)
            timer.start()
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        if timer:
            timer.cancel()
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout = out.read().decode("utf-8", "replace")
        stderr = err.read().decode("utf-8", "replace")
    return {"cmd": " ".join(shlex.quote(c) for c in cmd), "rc": proc.returncode,
            "timed_out": bool(killed), "wall_s": round(wall, 3),
            "maxrss_mib": round(usage.ru_maxrss / 1024, 1),
            "cpu_s": round(usage.ru_utime + usage.ru_stime, 3),   # the child's own CPU
            "stdout": stdout, "stderr": stderr}


def check(result: Dict, what: str) -> Dict:
    if result["rc"] != 0:
        tail = (result["stderr"] or result["stdout"])[-3000:]
        raise SystemExit(f"{what} failed (rc={result['rc']}, timed out={result['timed_out']}):\n"
                         f"$ {result['cmd']}\n{tail}")
    return result


def median(values: Sequence[Optional[float]]) -> Optional[float]:
    vals = [v for v in values if v is not None]
    return statistics.median(vals) if vals else None


def ratio(a: Optional[float], b: Optional[float]) -> Optional[float]:
    return a / b if a is not None and b else None


def fmt(value, digits=2) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def table(headers: List[str], rows: List[List]) -> str:
    cells = [headers] + [[fmt(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def write_json(path: Optional[str], data: Dict) -> None:
    if not path:
        return
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(data, f, indent=2, sort_keys=False)
        f.write("\n")
    print(f"\nJSON written to {path}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_get(url: str, timeout: float = 600):
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


@contextlib.contextmanager
def tensorboard(logdir: str, timeout: float = 180, projector_ready: bool = True):
    """A fresh ``tensorboard`` on 127.0.0.1 (same flags as tests/support.py).

    Yields (base_url, seconds until ready). Ready means /runs listed a
    projector run, or with ``projector_ready=False`` only that the server
    answers ``/data/environment``: the projector plugin reads its configs
    *and loads every tensor file* on its first request, so a benchmark of
    that load must not ask the plugin anything before it starts the clock.
    """
    port = free_port()
    exe = os.path.join(os.path.dirname(sys.executable), "tensorboard")
    # stderr to a file, not a pipe: a full pipe would stall the server.
    log = tempfile.TemporaryFile()
    proc = subprocess.Popen([exe, "--logdir", str(logdir), "--host", "127.0.0.1",
                             "--port", str(port), "--load_fast", "false"],
                            stdout=subprocess.DEVNULL, stderr=log)
    base = f"http://127.0.0.1:{port}"
    t0 = time.perf_counter()
    try:
        while True:
            if proc.poll() is not None:
                log.seek(0)
                raise RuntimeError(f"tensorboard exited: {log.read().decode()[-2000:]}")
            try:
                if projector_ready:
                    status, body = http_get(base + TB_PREFIX + "/runs", timeout=60)
                    if status == 200 and json.loads(body):
                        break
                elif http_get(base + "/data/environment", timeout=60)[0] == 200:
                    break
            except (urllib.error.URLError, ConnectionError, OSError):
                pass
            if time.perf_counter() - t0 > timeout:
                raise RuntimeError("tensorboard did not list any projector run in time")
            time.sleep(0.2)
        yield base, time.perf_counter() - t0
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
