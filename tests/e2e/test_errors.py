"""Failures: model outputs that are not finite, failures that must not shrink
the sample, --max_error_fraction, and one-line usage errors before any work."""
import csv
import os
import subprocess
import sys

import numpy as np
import pytest
from beam_projector.transforms.sampling import sample_key
from PIL import Image

import support
from support import REPO_ROOT, run_pipeline

ROOT = REPO_ROOT


def read_tsv(path):
    with open(path, encoding="utf-8", newline="") as f:
        return [line.split("\t") for line in f.read().split("\n")[:-1]]


def published(out):
    """(metadata rows without header, tensor) of the logdir's current config."""
    from google.protobuf import text_format
    from tensorboard.plugins.projector.projector_config_pb2 import ProjectorConfig

    from support import load_tensor

    config = text_format.Parse(open(os.path.join(out, "projector_config.pbtxt")).read(),
                               ProjectorConfig())
    emb = config.embeddings[0]
    meta = read_tsv(os.path.join(out, emb.metadata_path))[1:]
    tensor = load_tensor(os.path.join(out, emb.tensor_path), emb.tensor_shape)
    return meta, tensor


def write_csv(path, rows):
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["path", "label"])
        w.writerows(rows)
    return path


def snapshot(folder, skip=()):
    out = {}
    for root, _, files in os.walk(folder):
        for name in files:
            path = os.path.join(root, name)
            rel = os.path.relpath(path, folder)
            if rel not in skip:
                out[rel] = open(path, "rb").read()
    return out


# --- non-finite model outputs ------------------------------------------------

def nan_for_black_model(path):
    """A SavedModel whose 6-d embedding is (channel means / 255, channel
    means / their sum): 0/0 = NaN exactly for an all-black image."""
    import tensorflow as tf

    class Model(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, 16, 16, 3], tf.float32)])
        def serve(self, images):
            m = tf.reduce_mean(images, axis=[1, 2])
            return {"embedding": tf.concat(
                [m / 255.0, m / tf.reduce_sum(m, axis=1, keepdims=True)], axis=1)}

    module = Model()
    tf.saved_model.save(module, path, signatures={"serving_default": module.serve})
    return path


def test_non_finite_model_outputs_become_embed_dead_letters(digits, tmp_path):
    csv_path, rows = digits
    base = os.path.dirname(csv_path)
    black = []
    for i in range(3):
        p = str(tmp_path / f"black_{i}.png")
        Image.new("RGB", (12, 12), (0, 0, 0)).save(p)
        black.append(p)
    good = [[os.path.join(base, r["path"]), r["label"]] for r in rows[:30]]
    data = write_csv(str(tmp_path / "in.csv"), good + [[p, "black"] for p in black])
    model = nan_for_black_model(str(tmp_path / "nan_model"))
    out = str(tmp_path / "out")
    summary = run_pipeline(input=data, model=model, output=out, max_items=100, tile_size=16)
    errors = read_tsv(os.path.join(out, "errors.tsv"))[1:]
    assert sorted(e[0] for e in errors) == sorted(black)
    assert all(e[1] == "embed" and "not finite" in e[2] for e in errors)
    meta, tensor = published(out)
    assert sorted(m[0] for m in meta) == sorted(g[0] for g in good)
    assert tensor.shape == (30, 6) and np.all(np.isfinite(tensor))
    assert summary["written"] == 30 and summary["failed"] == 3


# --- failures do not shrink the sample ----------------------------------------

def first_keys(rows, seed):
    """Rows in sample-key order (the CSV source's uid is the joined raw row)."""
    return sorted(rows, key=lambda r: (sample_key("\x1f".join(r), seed), "\x1f".join(r)))


@pytest.fixture(scope="module")
def mixed(digits, tmp_path_factory):
    """60 good digits and 12 missing files, several of which sort inside the
    first 30 keys."""
    csv_path, rows = digits
    base = os.path.dirname(csv_path)
    good = [[os.path.join(base, r["path"]), r["label"]] for r in rows]
    bad = [[os.path.join(base, f"missing_{i}.png"), "gone"] for i in range(12)]
    folder = tmp_path_factory.mktemp("mixed")
    return write_csv(str(folder / "mixed.csv"), good + bad), good, bad


def test_failures_inside_the_first_n_do_not_shrink_the_output(mixed, model_path, tmp_path):
    data, good, bad = mixed
    n = 30
    bad_paths = {b[0] for b in bad}
    # the first seed whose first N keys hold at least 3 failures (the paths,
    # and so the keys, depend on the temp folder)
    for seed in range(100):
        order = first_keys(good + bad, seed)
        if sum(r[0] in bad_paths for r in order[:n]) >= 3:
            break
    else:
        pytest.fail("no seed puts 3 failures inside the first N keys")
    expect = [r for r in order if r[0] not in bad_paths][:n]
    cut = order.index(expect[-1])
    expect_errors = sorted(r[0] for r in order[:cut] if r[0] in bad_paths)

    out = str(tmp_path / "out")
    summary = run_pipeline(input=data, model=model_path, output=out, max_items=n, seed=seed,
                           tile_size=16, max_error_fraction=0.3)
    meta, tensor = published(out)
    written, keyed = [m[0] for m in meta], [r[0] for r in expect]
    assert sorted(written) == sorted(keyed)   # the first N good
    # in key order, but for one exemplar row per suspect kind moved to the
    # top, which fixes the suspect column's colours (suspects.order_rows)
    assert any(written[k:] == [p for p in keyed if p not in written[:k]] for k in range(5))
    assert tensor.shape == (n, 3)
    errors = read_tsv(os.path.join(out, "errors.tsv"))[1:]
    assert sorted(e[0] for e in errors) == expect_errors
    assert all(e[1] == "read" and e[2] == "file not found" for e in errors)
    assert summary["written"] == n


def test_fewer_good_items_than_n_publishes_all_of_them(mixed, model_path, tmp_path, capsys):
    """Also the CLI's closing summary line, with the failure count."""
    from beam_projector.pipeline.cli import main

    data, good, bad = mixed
    out = str(tmp_path / "out")
    assert main(["--input", data, "--model", model_path, "--output", out, "--max_items", "500",
                 "--tile_size", "16", "--max_error_fraction", "0.3"]) == 0
    meta, _ = published(out)
    assert sorted(m[0] for m in meta) == sorted(g[0] for g in good)
    assert len(read_tsv(os.path.join(out, "errors.tsv"))) == 1 + len(bad)
    line = capsys.readouterr().out.strip().splitlines()[-1]
    n_all, n_good = len(good) + len(bad), len(good)
    assert line.startswith(f"beam-projector: read={n_all} sampled={n_all} decoded={n_good} "
                           f"embedded={n_good} written={n_good} failed={len(bad)} in "), line


# --- --max_error_fraction -------------------------------------------------------

def cli(*args, timeout=300):
    """``python -m beam_projector ARGS`` -> (exit code, stderr lines)."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="")
    proc = subprocess.run([sys.executable, "-m", "beam_projector", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)
    return proc.returncode, proc.stderr.strip().splitlines()


def test_too_many_errors_fails_clearly_and_leaves_the_projector(mixed, digits, model_path,
                                                                tmp_path):
    csv_path, rows = digits
    out = str(tmp_path / "logdir")
    run_pipeline(input=csv_path, model=model_path, output=out, max_items=20, tile_size=16)
    before = snapshot(out, skip={"errors.tsv"})

    csv_dir = os.path.dirname(csv_path)
    many_bad = write_csv(str(tmp_path / "bad.csv"),
                         [[os.path.join(csv_dir, r["path"]), r["label"]] for r in rows[:10]]
                         + [[str(tmp_path / f"gone_{i}.png"), "x"] for i in range(10)])
    code, err = cli("--input", many_bad, "--model", model_path, "--output", out,
                    "--max_items", "10", "--tile_size", "16")
    assert code == 1
    assert err[-1].startswith("beam-projector: failed: "), err[-5:]
    assert "sampled items failed" in err[-1] and "> --max_error_fraction 10.0%" in err[-1]
    assert "nothing published" in err[-1] and err[-1].endswith(os.path.join(out, "errors.tsv"))
    errors = read_tsv(os.path.join(out, "errors.tsv"))
    assert errors[0] == ["input", "stage", "reason"]
    assert len(errors) > 2 and all("gone_" in e[0] and e[1] == "read" for e in errors[1:])
    assert snapshot(out, skip={"errors.tsv"}) == before


# --- one-line usage errors before any work -------------------------------------

@pytest.fixture(scope="module")
def usage_cases(digits, model_path, tmp_path_factory):
    """(name, args, expected fragments); each run must fail before any work."""
    csv_path, _ = digits
    t = tmp_path_factory.mktemp("usage")
    (t / "norows.csv").write_text("path,label\n")
    (t / "nocol.csv").write_text("file,label\nx.png,1\n")
    (t / "binary.csv").write_bytes(b"\xff\xfe\x00\x81 not text")
    (t / "junk.keras").write_bytes(b"not a model")
    (t / "empty_model").mkdir()
    (t / "a_file").write_text("x")
    (t / "spaces.csv").write_text("file name, label\nx.png,1\n")
    (t / "truncated.keras").write_bytes(open(model_path, "rb").read()[:3000])
    odd = {kind: support.odd_model(str(t / f"{kind}.keras"), kind)
           for kind in ("two_inputs", "four_channels", "one_d")}
    good = ["--input", csv_path, "--model", model_path]
    cases = [
        ("missing input", ["--input", str(t / "nope.csv"), "--model", model_path],
         ["nope.csv", "does not exist"]),
        ("unreadable input", ["--input", str(t / "binary.csv"), "--model", model_path],
         ["binary.csv", "not UTF-8"]),
        ("no rows", ["--input", str(t / "norows.csv"), "--model", model_path], ["no rows"]),
        ("no image column", ["--input", str(t / "nocol.csv"), "--model", model_path],
         ["no column 'path'", "--image_column", "columns are: 'file', 'label'"]),
        ("model will not load", ["--input", csv_path, "--model", str(t / "junk.keras")],
         ["cannot load model", "Keras .keras or .h5 file, or a TensorFlow SavedModel"]),
        ("truncated .keras", ["--input", csv_path, "--model", str(t / "truncated.keras")],
         ["cannot load model", "truncated.keras", "not a zip archive"]),
        ("header with spaces", ["--input", str(t / "spaces.csv"), "--model", model_path],
         ["no column 'path'", "columns are: 'file name', ' label'"]),
        ("two-input model", ["--input", csv_path, "--model", odd["two_inputs"]],
         ["takes 2 inputs ('image', 'mask')", "takes one image"]),
        ("four-channel model", ["--input", csv_path, "--model", odd["four_channels"]],
         ["takes 4-channel images", "RGB (3 channels) or grayscale (1)"]),
        ("one-dimensional embedding", ["--input", csv_path, "--model", odd["one_d"]],
         ["'score' has shape (batch, 1): 1 dimension", "needs at least 2"]),
        ("feature map without --pool", good + ["--embedding_layer", "conv"],
         ["'conv' has shape (batch, 16, 16, 8), a feature map", "--pool avg, max or flatten"]),
        ("model folder without a SavedModel", ["--input", csv_path, "--model", str(t / "empty_model")],
         ["no saved_model.pb", "Keras .keras or .h5 file, or a TensorFlow SavedModel"]),
        ("missing model", ["--input", csv_path, "--model", str(t / "nope.keras")],
         ["does not exist", "Keras .keras or .h5 file"]),
        ("unknown layer", good + ["--embedding_layer", "nope"],
         ["unknown embedding layer nope", "layers are:", "embedding", "logits"]),
        ("max_items 0", good + ["--max_items", "0"], ["--max_items must be at least 1, got 0"]),
        ("tile too small", good + ["--tile_size", "4"], ["--tile_size must be between 8 and 1024"]),
        ("tile too large", good + ["--tile_size", "5000"], ["--tile_size must be between 8 and 1024"]),
        ("output not writable", good + ["--output", str(t / "a_file" / "logdir")],
         ["--output", "is not writable"]),
    ]
    return t, cases


def test_usage_errors_are_one_line_before_any_work(usage_cases):
    folder, cases = usage_cases
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="")
    procs = []
    for i, (name, args, _) in enumerate(cases):
        out = str(folder / f"out_{i}")
        if "--output" not in args:
            args = args + ["--output", out]
        procs.append((out, subprocess.Popen(
            [sys.executable, "-m", "beam_projector", *args], cwd=ROOT, env=env,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)))
    for (name, _, fragments), (out, proc) in zip(cases, procs):
        stdout, stderr = proc.communicate(timeout=300)
        ours = [line for line in stderr.splitlines() if line.startswith("beam-projector")]
        assert proc.returncode == 2, (name, stderr[-2000:])
        assert len(ours) == 1 and ours[0].startswith("beam-projector: error: "), (name, ours)
        assert stderr.strip().splitlines()[-1] == ours[0], name
        for fragment in fragments:
            assert fragment in ours[0], (name, ours[0])
        assert "Traceback" not in stderr, name
        assert not os.path.exists(out), f"{name}: output created before the error"


# --- the one line the CLI prints for a failure ------------------------------------

# What Beam raised for a two-input model (before the preflight check): the
# worker's traceback as text, the step name on a line of its own. The old CLI
# printed its last line without the step name: "beam-projector: failed: ".
TWO_INPUTS = """in user code:

    File "/work/transforms/inference.py", line 162, in call  *
        out = sub(x, training=False)
    File "/venv/lib/python3.11/site-packages/keras/src/layers/input_spec.py", line 164, in assert_input_compatibility
        raise ValueError(

    ValueError: Layer "functional" expects 2 named input(s) with keys ['a', 'b'], but it received 1 input tensors.
 [while running 'Embed/RunInference/BeamML_RunInference']"""

# And for a 4-channel model: TensorFlow's message holds the whole batch; the
# old CLI printed the tensor's last row.
TENSOR_DUMP = ("Binding inputs to tf.function failed due to `Can not cast TensorSpec(shape=(32, 16, "
               "16, 3), dtype=tf.float32, name=None) to TensorSpec(shape=(None, 16, 16, 4), "
               "dtype=tf.float32, name=None)`. Received args: (<tf.Tensor: shape=(32, 16, 16, 3), "
               "dtype=float32, numpy=\narray([[[[255., 255., 255.],\n"
               + "         [  0.,   0.,   0.],\n" * 300
               + "         [  0.,   0.,   0.]]]], shape=(32, 16, 16, 3), dtype=float32)>,) and "
               "kwargs: {} for signature: (x: TensorSpec(shape=(None, 16, 16, 4))). "
               "[while running 'Embed/RunInference/BeamML_RunInference']")


def test_failure_line_picks_the_line_that_states_the_error():
    from beam_projector.pipeline.cli import failure_line
    assert failure_line(TWO_INPUTS, "ValueError") == (
        "ValueError: Layer \"functional\" expects 2 named input(s) with keys ['a', 'b'], but it "
        "received 1 input tensors.")
    line = failure_line(TENSOR_DUMP, "TypeError")
    assert line.startswith("Binding inputs to tf.function failed due to `Can not cast")
    assert len(line) <= 300 and "[  0." not in line and "numpy" in line
    # a worker traceback as text: the root cause, its module path dropped
    assert failure_line("Traceback (most recent call last):\n  File \"x.py\", line 1, in f\n"
                        "    raise TooManyErrors(msg)\n"
                        "transforms.write.TooManyErrors: 7 of 13 sampled items failed\n"
                        " [while running 'WriteLogdir/Publish']", "RuntimeError") == \
        "TooManyErrors: 7 of 13 sampled items failed"
    # one line: as it is, without the step name
    assert failure_line("no image could be embedded (3 errors); see out/errors.tsv "
                        "[while running 'WriteLogdir/Publish']", "TooManyErrors") == \
        "no image could be embedded (3 errors); see out/errors.tsv"
    # nothing to say: the exception's type, never an empty line
    for empty in ("", "\n  \n", " [while running 'Embed/RunInference']"):
        assert failure_line(empty, "MemoryError") == "MemoryError"
    assert failure_line("bad\x00byte\x1b[31m", "ValueError") == "bad byte [31m"
    assert len(failure_line("x" * 5000, "ValueError", limit=80)) == 80


# --- metadata column names (issue 28) ---------------------------------------------

def csv_with_header(path, digits, header, extra="mine"):
    csv_path, rows = digits
    folder = os.path.dirname(csv_path)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        for r in rows[:30]:
            w.writerow([os.path.join(folder, r["path"]), r["label"], extra])
    return str(path)


@pytest.mark.parametrize("header,flags,fragments", [
    (["path", "label", "nn_distance"], (), ["'nn_distance' would be written twice",
                                            "--neighbors adds a column of that name",
                                            "--neighbors 0"]),
    (["path", "label", "suspect"], (), ["'suspect' would be written twice",
                                        "--neighbors adds a column of that name"]),
    (["path", "label", "cluster"], ("--layout", "umap"),
     ["'cluster' would be written twice", "--layout adds a column of that name",
      "--layout none"]),
    (["path", "label", "label"], (), ["columns of the same name ('label' is column 2 and 3)"])],
    ids=["own-nn_distance", "own-suspect", "own-cluster", "label-twice"])
def test_column_names_the_projector_would_merge_are_refused_before_any_work(
        digits, model_path, tmp_path, header, flags, fragments):
    """The projector keys a row's values by column name: metadata.tsv with two
    columns of one name silently lost one (exit 0, the user's values gone)."""
    path = csv_with_header(tmp_path / "in.csv", digits, header)
    out = tmp_path / "out"
    code, err = cli("--input", path, "--model", model_path, "--output", str(out), *flags)
    assert code == 2, err[-5:]
    assert len(err) == 1 and err[0].startswith("beam-projector: error: "), err
    for fragment in fragments:
        assert fragment in err[0], err[0]
    assert not out.exists()


def test_an_own_nn_column_is_kept_without_neighbours(digits, model_path, tmp_path):
    path = csv_with_header(tmp_path / "in.csv", digits, ["path", "label", "nn_distance"])
    out = str(tmp_path / "out")
    code, err = cli("--input", path, "--model", model_path, "--output", out, "--neighbors", "0")
    assert code == 0, err[-5:]
    meta, _ = published(out)
    assert len(meta) == 30 and {row[2] for row in meta} == {"mine"}


# --- one line on failure, exit 130 on Ctrl-C (issue 28) -------------------------------

def not_progress(stderr_lines):
    return [line for line in stderr_lines if not line.startswith("beam-projector: progress:")]


def missing_files_csv(tmp_path):
    return write_csv(str(tmp_path / "missing.csv"),
                     [[str(tmp_path / f"gone_{i}.png"), "x"] for i in range(20)])


def test_a_failed_job_prints_one_line_and_v_the_traceback(tmp_path, model_path):
    """Beam logs a step's exception with its traceback before re-raising it:
    'ERROR apache_beam.runners.common: ...' and 7 traceback lines came
    before the CLI's own line. -v still shows them."""
    args = ("--input", missing_files_csv(tmp_path), "--model", model_path,
            "--output", str(tmp_path / "out"))
    code, err = cli(*args)
    assert code == 1
    assert not_progress(err) == [err[-1]] and err[-1].startswith("beam-projector: failed: "), err
    assert "no image could be embedded" in err[-1]
    code, err = cli(*args, "-v")
    assert code == 1 and "Traceback (most recent call last):" in "\n".join(err)


def test_a_write_error_prints_one_line(tmp_path, digits, model_path):
    """A full disk without root: RLIMIT_FSIZE fails the staging writes with
    EFBIG, the path ENOSPC takes (write/test_disk_full.py has the real
    tmpfs)."""
    import resource

    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="")
    proc = subprocess.run([sys.executable, "-m", "beam_projector", "--input", digits[0],
                           "--model", model_path, "--output", str(tmp_path / "out")],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
                          preexec_fn=limit)
    err = proc.stderr.strip().splitlines()
    assert proc.returncode == 1, err
    assert not_progress(err) == [err[-1]], err
    assert err[-1].startswith("beam-projector: failed: cannot write "), err


def slow_model(path):
    """About 100 images/s here: Ctrl-C lands mid-run."""
    import keras
    keras.utils.set_random_seed(0)
    inp = keras.Input((160, 160, 3))
    x = keras.layers.Conv2D(32, 3, activation="relu")(inp)
    x = keras.layers.Conv2D(32, 3, activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D(name="embedding")(x)
    keras.Model(inp, keras.layers.Dense(3)(x)).save(path)
    return path


@pytest.fixture(scope="module")
def all_digits(tmp_path_factory):
    csv_path, _ = support.write_digits(str(tmp_path_factory.mktemp("all_digits")))
    return csv_path


def interrupt(args, out, started):
    """The CLI in its own process group, interrupted as a terminal's Ctrl-C
    does (SIGINT to the whole group) once ``started(stderr so far)`` holds;
    (exit code, stderr lines)."""
    import signal
    import threading

    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="")
    proc = subprocess.Popen([sys.executable, "-m", "beam_projector", *args, "--output", out],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, start_new_session=True,
                            # a terminal's job gets SIGINT's default action; one
                            # started from a background job (`cmd &` in a script,
                            # nohup) inherits SIG_IGN, and Python then installs no
                            # KeyboardInterrupt handler at all
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    lines = []
    pump = threading.Thread(target=lambda: lines.extend(proc.stderr), daemon=True)
    pump.start()
    try:
        while proc.poll() is None and not started(lines):
            threading.Event().wait(0.2)
        assert proc.poll() is None, "the run ended before it could be interrupted: " + "".join(lines)
        os.killpg(proc.pid, signal.SIGINT)
        code = proc.wait(timeout=300)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    pump.join(10)
    return code, [line.rstrip("\n") for line in lines]


def staged_thumbnails(out):
    """Thumbnails staged: the embedding stage is under way."""
    def started(_):
        return os.path.isdir(out) and any(
            name.startswith(".beam-projector-staging-") and os.listdir(os.path.join(out, name))
            for name in os.listdir(out))
    return started


@pytest.mark.parametrize("runner", [[], ["--direct_running_mode", "multi_processing",
                                         "--direct_num_workers", "2"]],
                         ids=["in-process", "multi-process"])
def test_ctrl_c_exits_130_with_one_line(all_digits, tmp_path, runner):
    """Ctrl-C exited 1 ('failed: KeyboardInterrupt', a traceback before it);
    on the multi-process runner each SDK worker printed its own traceback
    too (218 lines). Now one line, exit 130, nothing published and the
    staging folder gone."""
    model = slow_model(str(tmp_path / "slow.keras"))
    out = str(tmp_path / "out")
    code, err = interrupt(["--input", all_digits, "--model", model, "--embedding_layer",
                           "embedding", "--max_items", "1797", *runner], out,
                          staged_thumbnails(out))
    assert code == 130, err
    assert not_progress(err) == [err[-1]], err
    assert err[-1].startswith("beam-projector: interrupted; "), err
    assert not os.path.exists(os.path.join(out, "projector_config.pbtxt"))
    assert not [n for n in os.listdir(out) if n.startswith(".beam-projector-staging-")]
