"""The worker image recipe (Dockerfile) and the lock, checked without Docker.

Docker is not available here, so the image is never built in tests. What can
be checked is: the base image is Beam's SDK image of the lock's Beam and
Python versions (a mismatch breaks the worker boot on Dataflow and Flink),
the environment under test is exactly the lock, every path the Dockerfile
copies exists and is not excluded by .dockerignore, and the package builds
from exactly those paths and installs on the lock, offline.
"""
import email
import importlib.metadata
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import zipfile

import apache_beam
import pytest

from support import REPO_ROOT

REPO = REPO_ROOT
DOCKERFILE = os.path.join(REPO, "Dockerfile")
LOCK = os.path.join(REPO, "requirements.lock")


def locked():
    """{normalised name: version} of every pin in requirements.lock."""
    pins = {}
    for line in open(LOCK):
        m = re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)", line)
        if m:
            pins[re.sub(r"[-_.]+", "-", m.group(1)).lower()] = m.group(2)
    return pins


def lock_python():
    """The Python the lock was made for, from its header."""
    m = re.search(r"for python (\d+\.\d+)", open(LOCK).read())
    assert m, "requirements.lock names no python version"
    return m.group(1)


def instructions():
    """(INSTRUCTION, argument text) pairs, continuation lines joined."""
    text = re.sub(r"\\\n", " ", open(DOCKERFILE).read())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def copies():
    """[(sources, destination)] of every COPY."""
    out = []
    for word, rest in instructions():
        if word == "COPY":
            args = [a for a in shlex.split(rest) if not a.startswith("--")]
            out.append((args[:-1], args[-1]))
    return out


def pip_install_args():
    """The arguments of the Dockerfile's install of the package itself."""
    runs = [rest for word, rest in instructions() if word == "RUN" and "pip install" in rest]
    assert len(runs) == 1, runs
    steps = [shlex.split(step) for step in runs[0].split("&&")]
    package = [w for w in steps if "install" in w and "/opt/beam-projector" in w]
    assert len(package) == 1, steps
    words = package[0]
    return words[words.index("install") + 1:]


def test_base_image_matches_the_locked_beam_and_python():
    froms = [rest for word, rest in instructions() if word == "FROM"]
    assert len(froms) == 1, froms
    assert froms[0] == f"apache/beam_python{lock_python()}_sdk:{locked()['apache-beam']}"
    # the image installs the lock itself, hash-checked, then the package
    # without resolving anything again
    runs = " ".join(rest for word, rest in instructions() if word == "RUN")
    assert "--require-hashes -r /opt/beam-projector/requirements.lock" in runs
    assert "--no-deps" in pip_install_args()


def test_the_environment_under_test_is_the_lock():
    """Every locked package is installed at its locked version, and this
    Python is the lock's: what the tests pass on is what the lock installs."""
    assert f"{sys.version_info.major}.{sys.version_info.minor}" == lock_python()
    pins = locked()
    assert {"apache-beam", "tensorflow", "tfx-bsl", "tensorboard", "pillow", "numpy"} <= set(pins)
    installed = {re.sub(r"[-_.]+", "-", d.metadata["Name"]).lower(): d.version
                 for d in importlib.metadata.distributions()}
    wrong = {name: (version, installed.get(name)) for name, version in pins.items()
             if installed.get(name) != version}
    assert not wrong, wrong
    assert apache_beam.__version__ == pins["apache-beam"]


def test_every_copied_path_exists_and_reaches_the_build_context():
    ignore = [line.strip() for line in open(os.path.join(REPO, ".dockerignore"))
              if line.strip() and not line.startswith("#")]
    assert ignore[0] == "*"  # an allow-list: .venv and build/ never reach the daemon
    allowed = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    sources = [s for srcs, _ in copies() for s in srcs]
    assert {"requirements.lock", "setup.py", "README.md", "MANIFEST.in", "beam_projector/",
            "configs/"} <= set(sources)
    for src in sources:
        assert os.path.exists(os.path.join(REPO, src)), src
        assert src.rstrip("/") in allowed, f"{src} is excluded by .dockerignore"


@pytest.fixture(scope="module")
def image_wheel(tmp_path_factory):
    """Lay out exactly what the Dockerfile copies, then build the wheel pip
    would build in the image (offline: no index, no build isolation)."""
    tmp = tmp_path_factory.mktemp("image")
    root = tmp / "opt" / "beam-projector"
    install_dir = next(a for a in pip_install_args() if a.startswith("/"))
    assert install_dir.rstrip("/") == "/opt/beam-projector"
    for srcs, dest in copies():
        assert dest.rstrip("/").startswith(install_dir.rstrip("/")), dest
        target = tmp / dest.lstrip("/")
        for src in srcs:
            path = os.path.join(REPO, src)
            if os.path.isdir(path):
                shutil.copytree(path, target, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                target.mkdir(parents=True, exist_ok=True)
                shutil.copy(path, target / os.path.basename(src))
    wheels = tmp / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-index",
                    "--no-build-isolation", "-w", str(wheels), str(root)],
                   check=True, capture_output=True, cwd=str(tmp))
    built = list(wheels.glob("beam_projector-*.whl"))
    assert len(built) == 1, built
    return built[0]


def test_the_wheel_carries_the_package_and_its_pins(image_wheel):
    with zipfile.ZipFile(image_wheel) as whl:
        names = set(whl.namelist())
        meta_name = next(n for n in names if n.endswith(".dist-info/METADATA"))
        meta = email.message_from_bytes(whl.read(meta_name))
    # one package of our own at the top of site-packages, nothing else
    assert {n.split("/")[0] for n in names} == {"beam_projector", "beam_projector-0.1.0.dist-info"}
    tracked = subprocess.run(["git", "ls-files", "beam_projector", "configs"], cwd=REPO,
                             check=True, capture_output=True, text=True).stdout.split()
    wanted = {f for f in tracked if f.endswith(".py") and f.startswith("beam_projector/")}
    wanted |= {"beam_projector/" + f for f in tracked if f.startswith("configs/")}
    assert {"beam_projector/pipeline/cli.py", "beam_projector/configs/dataflow.yaml",
            "beam_projector/__main__.py"} <= names
    assert not wanted - names, sorted(wanted - names)
    requires = sorted(r for r in meta.get_all("Requires-Dist") if "extra ==" not in r)
    installed = sorted(r for r in importlib.metadata.requires("beam-projector")
                       if "extra ==" not in r)
    assert requires == installed
    assert any(r.startswith("tensorflow") and "<2.22" in r for r in requires), requires
    assert any(r.startswith("tfx-bsl") for r in requires), requires


def test_the_package_installs_on_the_lock_offline(image_wheel, tmp_path):
    """The lock plus the wheel's own requirements resolve with no index to
    exactly what is installed: pip finds every one satisfied (hashes
    required, as the image installs them) and plans to install nothing, so
    the wheel's ranges admit every locked version (a conflict fails here,
    since nothing can be fetched)."""
    with zipfile.ZipFile(image_wheel) as whl:
        meta_name = next(n for n in whl.namelist() if n.endswith(".dist-info/METADATA"))
        meta = email.message_from_bytes(whl.read(meta_name))
    requires = [r for r in meta.get_all("Requires-Dist") if "extra ==" not in r]
    assert requires
    report = tmp_path / "report.json"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--dry-run", "--no-index",
                    "--report", str(report), "-r", LOCK, *requires],
                   check=True, capture_output=True)
    planned = {i["metadata"]["name"]: i["metadata"]["version"]
               for i in json.load(open(report))["install"]}
    assert planned == {}, planned
