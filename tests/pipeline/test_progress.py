"""Progress lines (pure text, the Beam step, the live line) and the summary file."""
import io
import logging

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.util import assert_that, equal_to
from beam_projector.pipeline import progress
from beam_projector.pipeline.progress import (
    LogProgress,
    next_report,
    progress_text,
    tsv_hint_text,
)


@pytest.mark.parametrize("done,total,elapsed,text", [
    (2000, 10000, 2000 / 48, "embedded 2,000 / 10,000 (20%), 48 images/s, about 3 min left"),
    (500, 10000, 50.0, "embedded 500 / 10,000 (5%), 10 images/s, about 16 min left"),
    (30, 4000, 10.0, "embedded 30 / 4,000 (0%), 3.0 images/s, about 22 min left"),
    (9000, 10000, 90.0, "embedded 9,000 / 10,000 (90%), 100 images/s, about 10 s left"),
    (10000, 10000, 200.0, "embedded 10,000 / 10,000 (100%), 50 images/s, done in 3 min"),
    (50, 60000, 3.0, "embedded 50 / 60,000 (0%), 17 images/s, about 1 h left"),
    (50, 90000, 3.0, "embedded 50 / 90,000 (0%), 17 images/s, about 1 h 30 min left"),
])
def test_progress_text_with_a_total(done, total, elapsed, text):
    assert progress_text("embedded", done, total, elapsed) == text


def test_progress_text_without_a_total_or_on_one_worker_of_many():
    assert progress_text("read", 4000, None, 2.0) == "read 4,000 images, 2,000 images/s"
    assert progress_text("embedded", 2000, 10000, 40.0, whole_job=False) == \
        "embedded 2,000 images on this worker (of 10,000 in all), 50 images/s"
    assert progress_text("decoded", 1000, None, 4.0, whole_job=False) == \
        "decoded 1,000 images, 250 images/s on this worker"


def test_next_report_steps_by_tenths_of_the_total_else_doubling():
    assert [next_report(d, 250) for d in (0, 24, 25, 249)] == [25, 25, 50, 250]
    assert next_report(7, 7) == 7
    assert [next_report(d, None) for d in (0, 999, 1000, 5000)] == [1000, 1000, 2000, 8000]


def test_tsv_hint_only_for_big_tsv_tensors():
    big = {"gs://b/o/data-1/feature_vecs.tsv": 148_400_000}
    line = tsv_hint_text(big, "tsv")
    assert line == ("feature_vecs.tsv is 148 MB of text; --tensor_format binary loads 25x "
                    "faster in TensorBoard (BENCHMARKS.md)")
    assert tsv_hint_text(big, "binary") is None
    assert tsv_hint_text({"x/feature_vecs.tsv": 99_000_000}, "tsv") is None
    assert tsv_hint_text({}, "tsv") is None


def _records(caplog):
    return [r.getMessage() for r in caplog.records if r.name == "beam-projector"]


def test_log_progress_counts_against_a_side_input_total(caplog):
    caplog.set_level(logging.INFO, logger="beam-projector")
    opts = PipelineOptions(["--runner", "FnApiRunner", "--direct_running_mode", "in_memory"])
    with beam.Pipeline(options=opts) as p:
        items = p | beam.Create(list(range(2500)))
        total = items | "Total" >> beam.combiners.Count.Globally()
        out = items | "Progress" >> LogProgress("embedded", total=total, min_gap_s=0)
        assert_that(out, equal_to(list(range(2500))))
    lines = _records(caplog)
    assert [m.split(" (")[0] for m in lines] == [
        f"progress: embedded {n:,} / 2,500" for n in range(250, 2501, 250)], lines
    assert lines[-1].startswith("progress: embedded 2,500 / 2,500 (100%), ")
    assert "done in" in lines[-1] and "left" in lines[0]


def test_log_progress_without_total_logs_doubling_counts(caplog):
    caplog.set_level(logging.INFO, logger="beam-projector")
    opts = PipelineOptions(["--runner", "FnApiRunner", "--direct_running_mode", "in_memory"])
    with beam.Pipeline(options=opts) as p:
        out = p | beam.Create(list(range(2500))) | "Progress" >> LogProgress("decoded",
                                                                             min_gap_s=0)
        assert_that(out, equal_to(list(range(2500))))
    lines = _records(caplog)
    assert [m.split(",")[0] for m in lines] == ["progress: decoded 1", "progress: decoded 2"]
    assert lines[0].startswith("progress: decoded 1,000 images, ")


def test_a_fast_stage_logs_only_its_last_line(caplog):
    caplog.set_level(logging.INFO, logger="beam-projector")
    fn = progress._ProgressFn("embedded")  # min_gap_s 5: a stage of milliseconds
    fn.setup()
    for i in range(300):
        assert list(fn.process(i, total=300)) == [i]
    lines = _records(caplog)
    assert len(lines) == 1 and lines[0].startswith("progress: embedded 300 / 300 (100%)")


def test_a_failed_image_moves_the_total_down_and_its_refill_up_again(caplog):
    """The total is what the plan sends to the model; an image that fails to
    decode there is not coming (-1), the margin image chosen in its place is
    (+1). Changes pass no element on, and the stage still ends at 100 %,
    whichever order the change and the last element arrive in."""
    from beam_projector.transforms.records import TotalChange

    caplog.set_level(logging.INFO, logger="beam-projector")
    fn = progress._ProgressFn("embedded")
    fn.setup()
    for i in range(9):
        assert list(fn.process(i, total=10)) == [i]
    assert list(fn.process(TotalChange(-1), total=10)) == []   # arrives after the 9th
    lines = _records(caplog)
    assert len(lines) == 1 and lines[0].startswith("progress: embedded 9 / 9 (100%)"), lines
    assert list(fn.process(TotalChange(1), total=10)) == []    # a refill was chosen
    assert list(fn.process("refill", total=10)) == ["refill"]
    lines = _records(caplog)
    assert len(lines) == 2 and lines[1].startswith("progress: embedded 10 / 10 (100%)"), lines


def test_live_line_rewrites_one_terminal_line(monkeypatch):
    stream = io.StringIO()
    monkeypatch.setattr(progress.sys, "stderr", stream)
    fn = progress._ProgressFn("embedded", live=True)
    fn.setup()
    for i in range(50):
        list(fn.process(i, total=50))
    text = stream.getvalue()
    assert text.startswith("\r\x1b[Kbeam-projector: embedded ")
    assert text.rsplit("\r\x1b[K", 1)[-1].startswith("beam-projector: embedded 50 / 50 (100%), ")
    assert text.count("\n") == 1 and text.endswith("\n")  # one line, closed when done
    progress.end_live_line(stream)
    assert stream.getvalue() == text  # already closed: nothing more
