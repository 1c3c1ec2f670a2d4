"""The library API as a Beam user meets it: the README's two examples run end
to end (live TensorBoard check), chaining, dead letters and early checks."""
import os

import apache_beam as beam
import pytest
from beam_projector.transforms import projector
from beam_projector.transforms.write import layout

from support import check_live_projector


def _config(out):
    return projector.parse_projector_config(open(os.path.join(out, layout.CONFIG_NAME)).read())


def _metadata(out):
    emb = _config(out).embeddings[0]
    return open(os.path.join(out, emb.metadata_path), encoding="utf-8").read().splitlines()


def _check_live(out, n):
    emb = _config(out).embeddings[0]
    check_live_projector(out, n=n, dims={emb.tensor_name: 8}, tile=emb.sprite.single_image_dim[0])


@pytest.mark.slow
def test_example_from_rows(model_path, tmp_path):
    from beam_projector.pipeline.examples import from_rows

    out = str(tmp_path / "rows")
    rows = from_rows.digit_rows(80)
    from_rows.run(rows, out, model_path, "embedding", max_items=50)
    meta = _metadata(out)
    assert meta[0] == "id\tlabel" and len(meta) == 51
    by_id = {r["id"]: r["label"] for r in rows}
    assert all(by_id[line.split("\t")[0]] == line.split("\t")[1] for line in meta[1:])
    _check_live(out, 50)


@pytest.mark.slow
def test_example_from_csv(digits, model_path, tmp_path):
    from beam_projector.pipeline.examples import from_csv

    digits_csv, _ = digits
    csv_path = str(tmp_path / "images.csv")
    base = os.path.dirname(digits_csv)
    with open(digits_csv) as src, open(csv_path, "w") as f:
        f.write(next(src))
        f.writelines(os.path.join(base, line) for line in src)
        f.write(",4\n")          # a read dead letter (empty path): errors.tsv, not a crash
    out = str(tmp_path / "csv")
    from_csv.main(["--input", csv_path, "--model", model_path, "--output", out,
                   "--max_items", "40"])
    meta = _metadata(out)
    assert meta[0] == "path\tlabel\tparity" and len(meta) == 41
    assert all(p == ("even" if int(label) % 2 == 0 else "odd")
               for _, label, p in (line.split("\t") for line in meta[1:]))
    errors = open(os.path.join(out, layout.ERRORS_NAME)).read()
    assert f"{csv_path}:62\tread\tempty 'path' value" in errors   # read.errors reached it
    _check_live(out, 40)


def test_read_result_chains_and_keeps_read_errors(tmp_path, model_path):
    from beam_projector import ImagesToProjector, ReadImages

    folder = tmp_path / "in"
    folder.mkdir()
    csv_path = folder / "images.csv"
    csv_path.write_text("path,label\nnot-there.png,1\n")
    out = str(tmp_path / "out")
    with pytest.raises(Exception, match="no image could be embedded"):
        with beam.Pipeline(runner="FnApiRunner") as p:
            result = (p | ReadImages(str(csv_path))
                      | ImagesToProjector(output=out, model=model_path, layers=["embedding"]))
            assert set(result) == {"summary", "errors"}
    errors = open(os.path.join(out, layout.ERRORS_NAME)).read().splitlines()
    assert len(errors) == 2 and "not-there.png" in errors[1]


def test_bad_settings_and_model_fail_before_any_work(model_path, tmp_path):
    from beam_projector import ImagesToProjector

    with pytest.raises(ValueError, match="max_items must be at least 1"):
        ImagesToProjector(output=str(tmp_path), model=model_path, max_items=0)
    p = beam.Pipeline(runner="FnApiRunner")
    images = p | beam.Create([("x.png", {"label": "1"})])
    with pytest.raises(ValueError, match="nope"):
        images | ImagesToProjector(output=str(tmp_path / "o"), model=model_path, layers=["nope"],
                                   columns=["label"])
    with pytest.raises(ValueError, match="needs columns"):
        images | "Again" >> ImagesToProjector(output=str(tmp_path / "o"), model=model_path)


def test_public_names_resolve_lazily():
    """Every exported name resolves to a documented object of the library,
    and importing the package imports neither TensorFlow nor the CLI (a
    worker unpickling a DoFn, or a user's pipeline, pays only for what it
    uses)."""
    import subprocess
    import sys
    probe = ("import sys, beam_projector;"
             "print(sorted(m for m in sys.modules if m.split('.')[0] in "
             "('tensorflow', 'keras') or m.startswith('beam_projector.pipeline')));"
             "objs = [getattr(beam_projector, n) for n in beam_projector.__all__];"
             "print(all(o.__doc__ and o.__module__.startswith('beam_projector.transforms')"
             " for o in objs))")
    out = subprocess.run([sys.executable, "-c", probe], check=True, capture_output=True,
                         text=True).stdout.split("\n")
    assert out[0] == "[]"
    assert out[1] == "True"
    import beam_projector
    assert {"ImagesToProjector", "ReadImages", "SampleItems", "NeighborColumns"} <= set(
        beam_projector.__all__)
    with pytest.raises(AttributeError):
        beam_projector.KeepFirstN   # noqa: B018 - removed: it was used nowhere


def _append_norm_bucket(e):
    """An after_embed stage: one more metadata value per Embedded element."""
    import numpy as np
    bucket = "high" if float(np.linalg.norm(e.vectors[0])) > 1.0 else "low"
    return e._replace(item=e.item._replace(metadata=e.item.metadata + (bucket,)))


def test_after_embed_stage_adds_a_column(model_path, tmp_path):
    """The slot for stages between embedding and the write (e.g. neighbour
    columns): their appended values reach metadata.tsv under extra_columns."""
    from beam_projector import ImagesToProjector
    from beam_projector.pipeline.examples.from_rows import digit_rows

    out = str(tmp_path / "extra")
    rows = digit_rows(30)
    with beam.Pipeline(runner="FnApiRunner") as p:
        (p | beam.Create([(r["png"], [r["label"]]) for r in rows])
           | ImagesToProjector(output=out, model=model_path, layers=["embedding"],
                               columns=["label"], max_items=20,
                               after_embed=["Bucket" >> beam.Map(_append_norm_bucket)],
                               extra_columns=["norm"]))
    meta = _metadata(out)
    assert meta[0] == "label\tnorm" and len(meta) == 21
    assert {line.split("\t")[1] for line in meta[1:]} <= {"high", "low"}
