"""What beam-projector owns in a logdir: only what its manifest lists is ever
replaced or deleted; a logdir holding someone else's projector files is
refused before any work; --output may not be a glob or inside the input."""
import json
import os
import subprocess
import sys
import time

import pytest
from beam_projector.pipeline.preflight import UsageError
from beam_projector.transforms import standalone
from beam_projector.transforms.write import layout, ownership, publish

import support
from support import REPO_ROOT, run_pipeline, snapshot, tiny_assets

ROOT = REPO_ROOT

USER_CONFIG = '''embeddings {
  tensor_name: "mine"
  tensor_path: "data-mine/vecs.tsv"
  metadata_path: "data-mine/labels.tsv"
}
'''


def cli(*args, timeout=300):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="")
    proc = subprocess.run([sys.executable, "-m", "beam_projector", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)
    return proc.returncode, proc.stderr.strip().splitlines()


def user_logdir(path):
    """The issue's logdir: training events, two user data-* folders, the
    user's index.html and a hand-written config with an embedding 'mine'."""
    os.makedirs(path / "data-mine")
    os.makedirs(path / "data-0123456789abcdef")
    (path / "events.out.tfevents.123").write_bytes(b"\x18\x00\x00\x00events" * 20)
    (path / "data-mine" / "vecs.tsv").write_text("1\t2\n3\t4\n5\t6\n")
    (path / "data-mine" / "labels.tsv").write_text("a\nb\nc\n")
    (path / "data-0123456789abcdef" / "feature_vecs.tsv").write_text("0.5\t0.25\n")
    (path / "data-0123456789abcdef" / "notes.txt").write_text("mine too\n")
    (path / "index.html").write_text("<html><body>my experiment notes</body></html>\n")
    (path / "projector_config.pbtxt").write_text(USER_CONFIG)
    return snapshot(str(path))


@pytest.mark.slow
def test_a_logdir_with_user_content_is_refused_byte_for_byte(digits, model_path, tmp_path):
    csv_path, _ = digits
    logdir = tmp_path / "logs"
    before = user_logdir(logdir)
    code, err = cli("--input", csv_path, "--model", model_path, "--embedding_layer",
                    "embedding", "--output", str(logdir), "--max_items", "20",
                    "--tile_size", "16", "--standalone")
    assert code == 2, err[-5:]
    line = err[-1]
    assert line.startswith("beam-projector: error: --output ")
    assert "index.html, projector_config.pbtxt" in line and "did not write" in line
    assert f"--output {logdir / 'projector'}" in line and "its own run" in line
    # nothing changed, nothing added: not even a lock or a probe file
    assert snapshot(str(logdir)) == before
    assert sorted(os.listdir(logdir)) == sorted(
        ["events.out.tfevents.123", "data-mine", "data-0123456789abcdef", "index.html",
         "projector_config.pbtxt"])

    # the suggested sub-folder works, twice, and TensorBoard shows both runs
    sub = str(logdir / "projector")
    for n in (20, 25):
        run_pipeline("--standalone", input=csv_path, model=model_path,
                     embedding_layer="embedding", output=sub, max_items=n, tile_size=16)
    after = snapshot(str(logdir))
    assert {k: v for k, v in after.items() if not k.startswith("projector" + os.sep)} == before
    with support.tensorboard(str(logdir)) as get:
        deadline = time.monotonic() + 60
        while True:   # the sub-folder run appears once TensorBoard has read its events
            status, body = get(support.TB_PREFIX + "/runs")
            if sorted(json.loads(body)) == [".", "projector"] or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert status == 200 and sorted(json.loads(body)) == [".", "projector"]
        info = json.loads(get(support.TB_PREFIX + "/info?run=.")[1])
        assert [e["tensorName"] for e in info["embeddings"]] == ["mine"]
        info = json.loads(get(support.TB_PREFIX + "/info?run=projector")[1])
        assert info["embeddings"][0]["tensorShape"] == ["25", "8"] or \
            info["embeddings"][0]["tensorShape"] == [25, 8]
    data = sorted(d for d in os.listdir(sub) if d.startswith(layout.DATA_PREFIX))
    assert data == [ownership.referenced_data_dir(open(os.path.join(sub, layout.CONFIG_NAME)).read())]


def test_user_data_folders_and_page_survive_runs_into_the_logdir(digits, model_path, tmp_path):
    """Without a config of its own in the way, a run may share the logdir:
    its sweep never touches a data-* folder it did not write, and a plain run
    never touches the user's index.html; a --standalone run is refused."""
    csv_path, _ = digits
    logdir = tmp_path / "logs"
    before = user_logdir(logdir)
    os.remove(logdir / "projector_config.pbtxt")
    del before["projector_config.pbtxt"]
    for n in (20, 25):
        run_pipeline(input=csv_path, model=model_path, embedding_layer="embedding",
                     output=str(logdir), max_items=n, tile_size=16)
    after = snapshot(str(logdir))
    for rel, data in before.items():
        assert after[rel] == data, rel
    ours = [d for d in os.listdir(logdir) if d.startswith(layout.DATA_PREFIX)
            and d not in ("data-mine", "data-0123456789abcdef")]
    assert len(ours) == 1
    manifest = ownership.read_manifest(str(logdir))
    assert manifest["data"] == ours
    assert "index.html" not in manifest["files"]
    with pytest.raises(UsageError, match=r"holds index\.html, which beam-projector did not"):
        run_pipeline("--standalone", input=csv_path, model=model_path,
                     embedding_layer="embedding", output=str(logdir), max_items=20,
                     tile_size=16)


def legacy_logdir(path):
    """What the previous version wrote: no manifest, a config pointing at data-<16 hex>."""
    folder = path / "data-89abcdef01234567"
    os.makedirs(folder)
    (folder / "feature_vecs.bytes").write_bytes(b"\0" * 64)
    (folder / "metadata.tsv").write_text("path\tlabel\n" + "a\t1\n" * 2)
    (path / "projector_config.pbtxt").write_text(
        'embeddings {\n  tensor_name: "embedding"\n  tensor_path: "data-89abcdef01234567/'
        'feature_vecs.bytes"\n  metadata_path: "data-89abcdef01234567/metadata.tsv"\n'
        '  tensor_shape: 2\n  tensor_shape: 8\n}\n')
    (path / "errors.tsv").write_text("input\tstage\treason\n")
    (path / "run_summary.json").write_text("{}\n")


def test_a_logdir_from_the_previous_version_is_refused_with_a_way_out(digits, model_path,
                                                                      tmp_path):
    csv_path, _ = digits
    logdir = tmp_path / "old"
    legacy_logdir(logdir)
    before = snapshot(str(logdir))
    with pytest.raises(UsageError) as e:
        run_pipeline(input=csv_path, model=model_path, embedding_layer="embedding",
                     output=str(logdir), max_items=10, tile_size=16)
    msg = str(e.value)
    assert "errors.tsv, run_summary.json, projector_config.pbtxt" in msg
    assert "earlier beam-projector version" in msg and "data-89abcdef01234567/" in msg
    assert snapshot(str(logdir)) == before
    # following the hint hands the folder over
    for name in ("errors.tsv", "run_summary.json", "projector_config.pbtxt"):
        os.remove(logdir / name)
    import shutil
    shutil.rmtree(logdir / "data-89abcdef01234567")
    run_pipeline(input=csv_path, model=model_path, embedding_layer="embedding",
                 output=str(logdir), max_items=10, tile_size=16)
    assert ownership.read_manifest(str(logdir))["exists"]


def test_publish_refuses_foreign_files_and_ignores_a_tampered_manifest(tmp_path):
    assets, cfg = tiny_assets(tmp_path)
    out = cfg.output
    os.makedirs(out)
    with open(os.path.join(out, layout.PREVIEW_NAME), "wb") as f:
        f.write(b"my own picture")
    with pytest.raises(ownership.OwnershipError, match="preview.png"):
        publish.publish(assets, cfg, [])
    assert open(os.path.join(out, layout.PREVIEW_NAME), "rb").read() == b"my own picture"
    assert not [n for n in os.listdir(out) if n.startswith("data-")]
    os.remove(os.path.join(out, layout.PREVIEW_NAME))
    # a manifest naming things the tool never writes cannot make it delete them
    os.makedirs(os.path.join(out, "data-mine"))
    open(os.path.join(out, "data-mine", "x"), "w").write("x")
    open(os.path.join(out, "notes.txt"), "w").write("x")
    with open(os.path.join(out, layout.MANIFEST_NAME), "w") as f:
        json.dump({"files": ["notes.txt", "../x"], "data": ["data-mine", "../../etc"],
                   "pending": ["../*"]}, f)
    publish.publish(assets, cfg, [])
    assert os.path.isfile(os.path.join(out, "data-mine", "x"))
    assert os.path.isfile(os.path.join(out, "notes.txt"))
    manifest = ownership.read_manifest(out)
    assert manifest["data"] == [layout.DATA_PREFIX + assets.digest]
    assert manifest["files"] == sorted([layout.CONFIG_NAME, layout.ERRORS_NAME,
                                        layout.SUMMARY_NAME, layout.EVENTS_NAME, layout.PREVIEW_NAME])


# --- issue 16.1: glob characters in --output -------------------------------------

def test_glob_characters_in_output_are_refused_before_anything_is_touched(digits, model_path,
                                                                         tmp_path):
    csv_path, _ = digits
    base = tmp_path / "x"
    os.makedirs(base / "run1")
    os.makedirs(base / "runB")
    (base / "run1" / "data-2024.parquet").write_bytes(b"PAR1 precious")
    (base / "runB" / "data-report.csv").write_text("a,b\n1,2\n")
    before = snapshot(str(base))
    for output in (str(base / "run?"), str(base / "x[0-9]"), str(base / "r*")):
        with pytest.raises(UsageError, match=r"glob character") as e:
            run_pipeline(input=csv_path, model=model_path, embedding_layer="embedding",
                         output=output, max_items=10, tile_size=16)
        assert "not writable" not in str(e.value)
        assert snapshot(str(base)) == before
        assert sorted(os.listdir(base)) == ["run1", "runB"]   # no probe, no new folder


# --- issue 16.2: --output inside the input folder -----------------------------------

@pytest.fixture()
def photo_folder(tmp_path):
    csv_path, rows = support.write_digits(str(tmp_path / "photos"), count=12)
    os.remove(csv_path)
    return str(tmp_path / "photos" / "images"), rows


def test_output_inside_a_folder_input_is_refused(photo_folder, model_path):
    folder, _ = photo_folder
    before = snapshot(folder)
    for output, fragment in ((folder, "inside the input folder"),
                             (folder + "/", "inside the input folder"),
                             (os.path.join(folder, "logdir"), "inside the input folder")):
        with pytest.raises(UsageError, match=fragment):
            run_pipeline(input=folder, model=model_path, output=output, max_items=10,
                         tile_size=16)
        assert snapshot(folder) == before
    with pytest.raises(UsageError, match="matches .*preview.png, a file this run writes"):
        run_pipeline(input=folder + "/**", model=model_path,
                     output=os.path.join(folder, "logdir"), max_items=10, tile_size=16)
    assert snapshot(folder) == before and len(before) == 12


def test_a_glob_input_that_cannot_reach_the_output_stays_allowed(photo_folder, model_path):
    """'images/*.png' never descends into images/logdir: the second run reads
    the same 12 photos, not its own preview or sprite."""
    folder, _ = photo_folder
    out = os.path.join(folder, "logdir")
    for _ in range(2):
        summary = run_pipeline(input=folder + "/*.png", model=model_path, output=out,
                               max_items=50, tile_size=16)
        assert summary["read"] == 12 and summary["written"] == 12
    assert os.path.isfile(os.path.join(out, layout.PREVIEW_NAME))
    assert standalone.INDEX_NAME not in os.listdir(out)


def test_an_output_that_is_the_folder_of_an_input_glob_is_refused(photo_folder, model_path):
    """Issue 28: 'F/*.png' does not match F/preview.png, so --output F was
    allowed, and a later --input F embedded that run's preview and sprite."""
    folder, _ = photo_folder
    before = snapshot(folder)
    for output in (folder, folder + "/"):
        with pytest.raises(UsageError, match="is the folder of --input .*a sub-folder is fine"):
            run_pipeline(input=folder + "/*.png", model=model_path, output=output,
                         max_items=10, tile_size=16)
    assert snapshot(folder) == before


def test_a_folder_run_skips_a_logdir_inside_it(photo_folder, model_path, tmp_path):
    """A logdir in a sub-folder (allowed for a glob that cannot reach it, or
    left by an older version) holds preview.png and data-*/sprite.png: a
    later run over the whole folder reads the 12 photos only."""
    folder, _ = photo_folder
    run_pipeline(input=folder + "/*.png", model=model_path, output=os.path.join(folder, "logdir"),
                 max_items=50, tile_size=16)
    summary = run_pipeline(input=folder, model=model_path, output=str(tmp_path / "elsewhere"),
                           max_items=50, tile_size=16)
    assert summary["read"] == 12 and summary["written"] == 12
    meta = open(os.path.join(tmp_path / "elsewhere", next(
        d for d in os.listdir(tmp_path / "elsewhere") if d.startswith("data-")),
        layout.METADATA_NAME)).read()
    assert "preview" not in meta and "sprite" not in meta
    assert meta.split("\t", 2)[:2] == ["path", "nn_distance"]   # no label column from logdir/
