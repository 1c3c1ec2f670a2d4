"""Airflow DAG: run the beam-projector pipeline daily into a run-dated logdir.

Airflow and the pipeline live in different virtual environments (Airflow's
pins and TensorFlow's do not mix): ``BeamRunPythonPipelineOperator`` shells
out to the pipeline venv's interpreter as ``python -m beam_projector
--runner=R --config=FILE --output=ROOT/<ds>``, so this file imports nothing
from the project. The config is read through Beam's ``FileSystems`` (Beam
comes with the Beam provider), so a ``gs://`` config works on Cloud
Composer; reading it is the only I/O at parse time.

Settings (environment of the Airflow scheduler/worker, read at parse time):
  BEAM_PROJECTOR_CONFIG       YAML preset (default: configs/local_multiprocess.yaml);
                              its ``runner`` is the operator's runner
  BEAM_PROJECTOR_OUTPUT_ROOT  folder or gs:// prefix; each run writes ROOT/YYYY-MM-DD
                              (default: build/airflow in the repository)
  BEAM_PROJECTOR_PYTHON       the pipeline's interpreter (default: the repository's .venv)
  BEAM_PROJECTOR_SCHEDULE     cron or preset (default: @daily)
  BEAM_PROJECTOR_RETRY_DELAY_S seconds between the 2 retries (default: 300)
"""
import os
from datetime import datetime, timedelta
from pathlib import Path

import yaml
from airflow.providers.apache.beam.operators.beam import BeamRunPythonPipelineOperator
from airflow.sdk import DAG

REPO = Path(__file__).resolve().parents[1]
CONFIG = os.environ.get("BEAM_PROJECTOR_CONFIG",
                        str(REPO / "configs" / "local_multiprocess.yaml"))
OUTPUT_ROOT = os.environ.get("BEAM_PROJECTOR_OUTPUT_ROOT", str(REPO / "build" / "airflow"))
PYTHON = os.environ.get("BEAM_PROJECTOR_PYTHON", str(REPO / ".venv" / "bin" / "python"))
SCHEDULE = os.environ.get("BEAM_PROJECTOR_SCHEDULE", "@daily")
RETRY_DELAY = timedelta(seconds=float(os.environ.get("BEAM_PROJECTOR_RETRY_DELAY_S", "300")))


def _runner(config_path: str) -> str:
    """The preset's runner: the operator passes --runner itself (and would
    otherwise default to DirectRunner, which tries to download Prism).
    Read through Beam's FileSystems: local paths, gs://, s3://, ..."""
    from apache_beam.io.filesystems import FileSystems

    with FileSystems.open(config_path, compression_type="uncompressed") as f:
        return (yaml.safe_load(f.read().decode("utf-8")) or {}).get("runner", "FnApiRunner")


with DAG(
    dag_id="beam_projector",
    description="Images + model -> TensorBoard Embedding Projector logdir, one folder per day",
    schedule=SCHEDULE,
    start_date=datetime(2025, 1, 1),
    catchup=False,
    max_active_runs=1,
    default_args={"retries": 2, "retry_delay": RETRY_DELAY},
    tags=["beam-projector"],
) as dag:
    BeamRunPythonPipelineOperator(
        task_id="projector_logdir",
        py_file="beam_projector",
        py_options=["-m"],
        py_interpreter=PYTHON,
        runner=_runner(CONFIG),
        pipeline_options={
            "config": CONFIG,
            # a run-dated folder: reruns of a day replace that day's logdir
            # atomically, other days stay as they were
            "output": f"{OUTPUT_ROOT.rstrip('/')}/{{{{ ds }}}}",
        },
    )
