"""The Airflow DAG, run by Airflow from its own virtualenv (``make airflow``).

Airflow and the pipeline live in different virtualenvs, so each check runs
Airflow's interpreter in a subprocess with a private AIRFLOW_HOME (SQLite
database, no examples); the operator then shells out to this venv's python.
"""
import datetime
import json
import os
import subprocess
import sys

import pytest
import yaml

from support import REPO_ROOT, check_live_projector

REPO = REPO_ROOT
AIRFLOW_PYTHON = os.path.join(REPO, os.environ.get("AIRFLOW_VENV", ".venv-airflow"), "bin", "python")
DAGS = os.path.join(REPO, "dags")
DAY = datetime.date(2025, 1, 2)

INSPECT = """
import json, sys
from airflow.dag_processing.dagbag import DagBag
bag = DagBag(dag_folder=sys.argv[1])
dag = bag.get_dag("beam_projector")
out = {"import_errors": {k: str(v) for k, v in bag.import_errors.items()}, "dag_ids": bag.dag_ids}
if dag is not None:
    (task,) = dag.tasks
    out.update(schedule=dag.schedule, timetable=type(dag.timetable).__name__, catchup=dag.catchup,
               operator=type(task).__name__, retries=task.retries, py_file=task.py_file,
               py_options=task.py_options, py_interpreter=task.py_interpreter,
               runner=task.runner, pipeline_options=task.pipeline_options)
print("RESULT " + json.dumps(out))
"""

RUN = """
import datetime, json, sys
from airflow.dag_processing.dagbag import DagBag
dag = DagBag(dag_folder=sys.argv[1]).get_dag("beam_projector")
day = datetime.datetime.fromisoformat(sys.argv[2]).replace(tzinfo=datetime.timezone.utc)
run = dag.test(logical_date=day)
print("RESULT " + json.dumps({"state": str(run.state)}))
"""


@pytest.fixture(scope="module")
def airflow_home(tmp_path_factory):
    if not os.path.exists(AIRFLOW_PYTHON):
        pytest.fail(f"{AIRFLOW_PYTHON} is missing: `make airflow` builds it (`make test` does)")
    home = tmp_path_factory.mktemp("airflow_home")
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("AIRFLOW", "BEAM_PROJECTOR_", "PYTHONPATH"))}
    env.update({
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": DAGS,
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home}/airflow.db",
    })
    subprocess.run([os.path.join(os.path.dirname(AIRFLOW_PYTHON), "airflow"), "db", "migrate"],
                   env=env, cwd=str(home), check=True, capture_output=True, timeout=300)
    return home, env


def airflow_python(script, args, env, cwd, timeout=600):
    proc = subprocess.run([AIRFLOW_PYTHON, "-c", script, *args], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=timeout)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, (proc.stdout[-3000:], proc.stderr[-5000:])
    return json.loads(lines[-1][len("RESULT "):]), proc


def test_dagbag_loads_the_dag_with_its_defaults(airflow_home):
    home, env = airflow_home
    info, _ = airflow_python(INSPECT, [DAGS], env, str(home))
    assert info["import_errors"] == {}
    assert info["dag_ids"] == ["beam_projector"]
    assert info["operator"] == "BeamRunPythonPipelineOperator"
    assert info["py_file"] == "beam_projector" and info["py_options"] == ["-m"]
    assert info["py_interpreter"] == os.path.join(REPO, ".venv", "bin", "python")
    assert info["retries"] == 2 and info["catchup"] is False
    assert info["schedule"] == "@daily"
    preset = os.path.join(REPO, "configs", "local_multiprocess.yaml")
    assert info["pipeline_options"]["config"] == preset
    assert info["runner"] == yaml.safe_load(open(preset))["runner"]
    assert info["pipeline_options"]["output"] == os.path.join(REPO, "build", "airflow") + "/{{ ds }}"


CONFIG_SCRIPT = """
import json, sys
sys.path.insert(0, sys.argv[2])   # tests/: registers the schemefs:// Beam filesystem
import schemefs  # noqa: F401
""" + INSPECT


def test_dag_reads_its_config_through_beam_filesystems(airflow_home, tmp_path):
    """A config on a non-local Beam filesystem (as gs:// on Cloud Composer):
    the DAG parses and takes the runner from it, which an open() could not."""
    home, env = airflow_home
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "remote.yaml").write_text(yaml.safe_dump({
        "runner": "DataflowRunner", "input": "gs://b/images.csv", "max_items": 10}))
    url = "schemefs://configs/remote.yaml"
    env = {**env, "BEAM_PROJECTOR_CONFIG": url, "SCHEMEFS_ROOT": str(tmp_path)}
    info, _ = airflow_python(CONFIG_SCRIPT, [DAGS, os.path.join(REPO, "tests")], env, str(home))
    assert info["import_errors"] == {}
    assert info["runner"] == "DataflowRunner"
    assert info["pipeline_options"]["config"] == url


def test_dag_test_writes_a_run_dated_logdir_tensorboard_serves(airflow_home, digits, model_path,
                                                              tmp_path):
    home, env = airflow_home
    csv_path, _ = digits
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump({
        "input": csv_path, "model": model_path, "embedding_layer": "embedding",
        "max_items": 30, "tile_size": 16, "runner": "FnApiRunner",
        "direct_running_mode": "in_memory"}))
    root = tmp_path / "projector"
    env = {**env, "BEAM_PROJECTOR_CONFIG": str(config), "BEAM_PROJECTOR_OUTPUT_ROOT": str(root),
           "BEAM_PROJECTOR_PYTHON": sys.executable, "BEAM_PROJECTOR_RETRY_DELAY_S": "1"}
    result, proc = airflow_python(RUN, [DAGS, DAY.isoformat()], env, str(tmp_path))
    assert result["state"] == "success", proc.stderr[-5000:]
    logs = proc.stdout + proc.stderr
    assert "python -m beam_projector --runner=FnApiRunner" in logs
    out = root / DAY.isoformat()
    assert sorted(p.name for p in root.iterdir()) == [DAY.isoformat()]
    summary = json.load(open(out / "run_summary.json"))
    assert summary["counters"]["written"] == 30
    assert summary["options"]["output"] == str(out)
    assert summary["options"]["config"] == str(config)
    meta, _ = check_live_projector(str(out), 30, {"embedding": 8}, 16)
    assert len(meta.split("\n")) == 32  # header + 30 rows + final newline
