"""The data folder's files: errors.tsv (issue 28)."""
from beam_projector.transforms.records import MAX_ERROR_CHARS, ErrorRow
from beam_projector.transforms.write.assets import errors_tsv


def test_every_errors_tsv_value_is_capped():
    """A 100,000-character path, and a reason quoting it (as an OSError's
    'File name too long' does), stay one short line each."""
    path = "/x/" + "p" * 100_000
    text = errors_tsv([ErrorRow(path, "read", f"cannot read file: OSError: {path!r}"),
                       ErrorRow("a.png", "decode\tstage", "two\nlines")]).decode()
    lines = text.splitlines()
    assert len(lines) == 3
    values = [v for line in lines for v in line.split("\t")]
    assert max(len(v) for v in values) <= MAX_ERROR_CHARS
    assert lines[1].split("\t")[0].endswith("... (100,003 characters)")
    assert lines[2] == "a.png\tdecode stage\ttwo lines"
