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
    # the input's columns, then the neighbour columns (on by default, as in the CLI)
    assert meta[0].split("\t")[:3] == ["id", "label", "nn_label_agreement"] and len(meta) == 51
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
    assert meta[0].split("\t")[:4] == ["path", "label", "parity", "nn_label_agreement"]
    assert len(meta) == 41
    assert all(p == ("even" if int(label) % 2 == 0 else "odd")
               for _, label, p, *_ in (line.split("\t") for line in meta[1:]))
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


def test_bad_settings_fail_at_construction_and_nothing_else_happens_until_run(model_path,
                                                                               tmp_path):
    """A setting out of range is a ValueError when the transform is made;
    applying it loads no model and touches no folder (the CLI, or
    validate=True, checks those before any work; otherwise the run does)."""
    from beam_projector import ImagesToProjector
    from beam_projector.transforms import model as model_module

    with pytest.raises(ValueError, match="max_items must be at least 1"):
        ImagesToProjector(output=str(tmp_path), model=model_path, max_items=0)
    p = beam.Pipeline(runner="FnApiRunner")
    images = p | beam.Create([("x.png", {"label": "1"})])
    out = tmp_path / "o"
    model_module._LOADED.clear()
    images | ImagesToProjector(output=str(out), model=model_path, layers=["nope"],
                               columns=["label"])
    assert not out.exists() and not model_module._LOADED   # nothing loaded, nothing written
    with pytest.raises(ValueError, match="unknown embedding layer nope"):
        images | "Checked" >> ImagesToProjector(output=str(out), model=model_path,
                                                layers=["nope"], columns=["label"],
                                                validate=True)
    with pytest.raises(ValueError, match="needs columns"):
        images | "Again" >> ImagesToProjector(output=str(out), model=model_path)
    with pytest.raises(Exception, match="unknown embedding layer nope"):
        p.run().wait_until_finish()   # the run says what the model lacks
    assert not out.exists()           # and leaves nothing behind: no folder, no staging


def test_a_column_named_like_a_neighbour_column_is_a_value_error(model_path, tmp_path):
    """Issue 28: the neighbour columns (neighbors=10 by default) were appended
    to a user's own, so a user column named nn_distance gave metadata.tsv two
    columns of that name, and the projector (keyed by name) showed one. Now a
    ValueError when the transform is made, or applied to a ReadResult whose
    columns clash; neighbors=0 is fine. Duplicate names of the user's own
    are refused by WriteToProjector too."""
    from beam_projector import ImagesToProjector, ReadImages, WriteToProjector

    out = str(tmp_path / "out")
    with pytest.raises(ValueError, match="'nn_distance' would be written twice: neighbors "
                                         "adds a column of that name.*neighbors=0"):
        ImagesToProjector(output=out, model=model_path, columns=["path", "nn_distance"])
    with pytest.raises(ValueError, match="'label' is column 2 and 3"):
        ImagesToProjector(output=out, model=model_path, columns=["path", "label", "label"],
                          neighbors=0)
    ImagesToProjector(output=out, model=model_path, columns=["path", "nn_distance"], neighbors=0)
    with pytest.raises(ValueError, match="'cluster' would be written twice: layout adds a "
                                         "column of that name.*layout=\"none\""):
        ImagesToProjector(output=out, model=model_path, columns=["path", "cluster"],
                          layout="umap")
    ImagesToProjector(output=out, model=model_path, columns=["path", "cluster"])
    csv_path = tmp_path / "images.csv"
    csv_path.write_text("path,label,nn_label_agreement\nx.png,1,mine\n")
    p = beam.Pipeline(runner="FnApiRunner")
    with pytest.raises(ValueError, match="'nn_label_agreement' would be written twice"):
        p | ReadImages(str(csv_path)) | ImagesToProjector(output=out, model=model_path)
    with pytest.raises(ValueError, match="'id' is column 1 and 2"):
        WriteToProjector(out, columns=["id", "id"])


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
                               columns=["label"], max_items=20, neighbors=0, layout="none",
                               after_embed=["Bucket" >> beam.Map(_append_norm_bucket)],
                               extra_columns=["norm"]))
    meta = _metadata(out)
    assert meta[0] == "label\tnorm" and len(meta) == 21
    assert {line.split("\t")[1] for line in meta[1:]} <= {"high", "low"}


# --- the Beam-native stages (issue 26) --------------------------------------------------

def _tensors(out):
    from support import load_tensor
    config = _config(out)
    return {e.tensor_name: load_tensor(os.path.join(out, e.tensor_path), e.tensor_shape)
            for e in config.embeddings}


def _errors(out):
    lines = open(os.path.join(out, layout.ERRORS_NAME), encoding="utf-8").read().splitlines()
    return [line.split("\t") for line in lines[1:]]


@pytest.mark.slow
def test_example_vectors_to_projector_writes_rows_in_a_runner_independent_order(tmp_path):
    """(a) Precomputed vectors + images + metadata: row i of the tensor is
    the vector given for the id in metadata row i, TensorBoard serves it,
    and the in-memory and multi-process runners write the same bytes."""
    import numpy as np

    from beam_projector.pipeline.examples import vectors_to_projector as example
    rows = example.digit_vector_rows(90)
    out, mp = str(tmp_path / "a"), str(tmp_path / "mp")
    example.run(rows, out)
    example.run(rows, mp, ["--runner", "FnApiRunner", "--direct_running_mode",
                           "multi_processing", "--direct_num_workers", "2"])
    meta = _metadata(out)
    assert meta[0] == "id\tlabel" and len(meta) == 91
    (tensor,) = _tensors(out).values()
    by_id = {r["id"]: r for r in rows}
    for i, line in enumerate(meta[1:]):
        rid, label = line.split("\t")
        assert by_id[rid]["label"] == label
        np.testing.assert_array_equal(tensor[i], np.float32(by_id[rid]["vector"]))
    assert [m.split("\t")[0] for m in meta[1:]] != sorted(by_id)   # hashed, not sorted by id
    from support import snapshot
    a, b = snapshot(out), snapshot(mp)
    a.pop("run_summary.json"), b.pop("run_summary.json")
    assert a == b
    check_live_projector(out, n=90, dims={"vector": 16}, tile=_config(out).embeddings[0]
                         .sprite.single_image_dim[0])


@pytest.mark.slow
def test_example_own_handler_embeds_with_beams_own_sklearn_handler(tmp_path):
    """(b) A ModelHandler this project did not write (Beam's
    SklearnModelHandlerNumpy, a pickled PCA): EmbedImages decodes, resizes
    and batches, the handler's vectors reach the tensor unchanged."""
    import pickle

    import numpy as np

    from beam_projector.pipeline.examples import own_handler
    from beam_projector.pipeline.examples.from_rows import digit_rows
    from beam_projector.transforms.images import decode_image

    rows = digit_rows(60)
    model_uri = own_handler.pickled_pca(str(tmp_path))
    out = str(tmp_path / "out")
    own_handler.run(rows, out, model_uri)
    meta = _metadata(out)
    assert meta[0] == "id\tlabel" and len(meta) == 61
    (tensor,) = _tensors(out).values()
    assert tensor.shape == (60, 12)
    pca = pickle.load(open(model_uri, "rb"))
    by_id = {r["id"]: r["png"] for r in rows}
    for i, line in enumerate(meta[1:]):
        pixels, _ = decode_image(by_id[line.split("\t")[0]], (8, 8), 8, "stretch")
        want = pca.transform(own_handler.grey_pixels([pixels]))[0]
        np.testing.assert_allclose(tensor[i], want, rtol=1e-5, atol=1e-5)


def test_a_user_model_handler_with_two_outputs_gives_two_tensors(tmp_path):
    """A user-style ModelHandler subclass whose inference is a dict of two
    vectors: EmbedImages passes both, WriteToProjector writes two tensors."""
    from apache_beam.ml.inference.base import ModelHandler, PredictionResult

    from beam_projector import EmbedImages, WriteToProjector
    from beam_projector.pipeline.examples.from_rows import digit_rows

    class MeanAndMax(ModelHandler):
        def load_model(self):
            return None

        def run_inference(self, batch, model, inference_args=None):
            return [PredictionResult(x, {"mean": x.mean(axis=(0, 1)) + [0, 1, 2],
                                         "max": x.max(axis=0).ravel()[:5]}) for x in batch]

    out = str(tmp_path / "two")
    with beam.Pipeline(runner="FnApiRunner") as p:
        (p | beam.Create([{"id": r["id"], "image": r["png"], "label": r["label"]}
                          for r in digit_rows(20)])
           | EmbedImages(MeanAndMax(), image_size=(6, 6))
           | WriteToProjector(out, columns=["id"]))
    tensors = _tensors(out)
    assert {k: v.shape for k, v in tensors.items()} == {"max": (20, 5), "mean": (20, 3)}


@pytest.mark.slow
def test_example_dead_letters_are_rows_of_errors_tsv_and_the_rest_is_published(model_path,
                                                                              tmp_path):
    """(c) Each malformed row is one dead letter naming it by its id; the
    good rows are published."""
    from beam_projector.pipeline.examples import dead_letters

    out = str(tmp_path / "dead")
    dead_letters.run(dead_letters.rows_with_mistakes(40), out, model_path)
    assert len(_metadata(out)) == 41
    errors = {ref: (stage, reason) for ref, stage, reason in _errors(out)}
    assert set(errors) == {"id=no-image", "id=base64-text", "id=not-an-image", "id=no-label"}
    assert errors["id=no-image"][1].startswith("no 'image' field")
    assert "cannot be a path or URI" in errors["id=base64-text"][1]
    assert len(errors["id=base64-text"][1]) < 300            # never the 7,040 characters
    assert errors["id=not-an-image"][0] == "decode"
    assert errors["id=no-label"][1].startswith("no field 'label'")


def test_malformed_elements_into_images_to_projector_are_dead_letters(model_path, tmp_path):
    """What killed the job before (a dict unpacked into its keys, a dict
    without an image, a 5 MB str taken for a path, metadata of the wrong
    length, a misspelt column) is one errors.tsv row each, bounded in size;
    the good elements are published."""
    from beam_projector import ImagesToProjector
    from beam_projector.pipeline.examples.from_rows import digit_rows

    rows = digit_rows(30)
    good = [{"id": r["id"], "image": r["png"], "label": r["label"]} for r in rows[:26]]
    bad = [{"id": "x1", "label": "3"},                                  # no image
           {"id": "x2", "image": "QUJD" * 1_300_000, "label": "3"},     # 5.2 MB of base64 text
           (rows[26]["png"], ["3", "extra"]),                            # 2 values for 1 column
           {"id": "x4", "image": rows[27]["png"], "lable": "3"},        # misspelt column
           beam.Row(id="x5", image=rows[28]["png"], label="5")]         # a Row is fine
    out = str(tmp_path / "out")
    with beam.Pipeline(runner="FnApiRunner") as p:
        result = (p | beam.Create(good + bad)
                  | ImagesToProjector(output=out, model=model_path, layers=["embedding"],
                                      columns=["label"], neighbors=0, max_error_fraction=0.3))
        assert set(result) == {"summary", "errors"}
    assert len(_metadata(out)) == 26 + 1   # the good ones and the Row (one column: no header)
    errors = {ref: reason for ref, stage, reason in _errors(out)}
    assert errors.keys() >= {"id=x1", "id=x2", "id=x4"} and len(errors) == 4
    assert "no field 'label'" in errors["id=x4"]
    assert any("2 values for the 1 columns" in r for r in errors.values())
    assert os.path.getsize(os.path.join(out, layout.ERRORS_NAME)) < 2000


def test_with_exception_handling_returns_the_pair_runinference_returns(model_path, tmp_path):
    from apache_beam.testing.util import assert_that, equal_to

    from beam_projector import EmbedImages
    from beam_projector.pipeline.examples.from_rows import digit_rows

    rows = [{"id": r["id"], "image": r["png"]} for r in digit_rows(5)] + [{"id": "bad"}]
    with beam.Pipeline(runner="FnApiRunner") as p:
        embedded, errors = (p | beam.Create(rows)
                            | EmbedImages(model_path, layers=["embedding"])
                            .with_exception_handling())
        assert_that(embedded | "Ids" >> beam.Map(lambda r: (r["id"], r["vector"].shape)),
                    equal_to([(r["id"], (8,)) for r in rows[:5]]), label="Embedded")
        assert_that(errors | "Refs" >> beam.Map(lambda e: (e.ref, e.stage, e.fields)),
                    equal_to([("id=bad", "input", (("id", "bad"),))]), label="Errors")


def test_write_to_projector_dead_letters_and_rows_without_pictures(tmp_path):
    """Rows of another dimension, NaN, a non-numeric or absent vector, a
    non-dict element: dead letters. Rows without an image: empty tiles; no
    row with one: no sprite at all."""
    import numpy as np

    from beam_projector import WriteToProjector

    rng = np.random.default_rng(0)
    good = [{"id": i, "vector": rng.normal(size=4), "label": str(i % 3)} for i in range(12)]
    bad = [{"id": "dim", "vector": [1.0, 2.0, 3.0], "label": "0"},
           {"id": "nan", "vector": [1.0, float("nan"), 0.0, 1.0], "label": "0"},
           {"id": "text", "vector": "1 2 3 4", "label": "0"},
           {"id": "none", "label": "0"},
           ("not", "a", "dict")]
    out = str(tmp_path / "out")
    with beam.Pipeline(runner="FnApiRunner") as p:
        (p | beam.Create(good + bad)
           | WriteToProjector(out, columns=["id", "label"], max_error_fraction=0.5))
    config = _config(out)
    assert not config.embeddings[0].sprite.image_path          # no pictures: no sprite
    assert not any(n.startswith("preview") for n in os.listdir(out))
    assert len(_metadata(out)) == 13
    errors = {ref: reason for ref, stage, reason in _errors(out)}
    assert errors["id=dim"].startswith("vector of 3 dimensions; most rows have 4")
    assert "not finite" in errors["id=nan"] and "not numeric" in errors["id=text"]
    assert errors["id=none"].startswith("no 'vector' field")
    assert any(r.startswith("expected a dict or beam.Row") for r in errors.values())
