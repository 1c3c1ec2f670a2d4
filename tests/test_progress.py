"""Per-stage progress logging and the summary file writer."""
import json
import logging

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.util import assert_that, equal_to

from pipeline.progress import SUMMARY_NAME, LogProgress, write_summary


def test_log_progress_passes_elements_through_and_logs_counts(caplog):
    caplog.set_level(logging.INFO, logger="beam-projector")
    opts = PipelineOptions(["--runner", "FnApiRunner", "--direct_running_mode", "in_memory"])
    with beam.Pipeline(options=opts) as p:
        out = p | beam.Create(list(range(2500))) | "Progress" >> LogProgress("decoded")
        assert_that(out, equal_to(list(range(2500))))
    lines = [r.getMessage() for r in caplog.records if r.name == "beam-projector"]
    assert any(m.startswith("progress: decoded 1000 items") for m in lines), lines
    assert any(m.startswith("progress: decoded 2000 items") for m in lines), lines
    # logged at doubling counts, not per element
    assert len(lines) < 10


def test_write_summary_is_json_in_the_output_folder(tmp_path):
    path = write_summary(str(tmp_path), {"counters": {"written": 3}, "options": {"seed": 1}})
    assert path == str(tmp_path / SUMMARY_NAME)
    assert json.load(open(path)) == {"counters": {"written": 3}, "options": {"seed": 1}}
