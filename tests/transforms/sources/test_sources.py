"""Input kinds: TFRecord of tf.Example (bytes or paths, plain or GZIP), image
folders (class sub-folders -> label), CSV; stratified sampling by label."""
import csv
import gzip
import io
import os
import pickle
import re
import shutil
import struct

import apache_beam as beam
import numpy as np
import pytest
import tensorflow as tf
from apache_beam.testing.util import assert_that
from beam_projector.pipeline.preflight import UsageError
from beam_projector.transforms.neighbors import neighbor_columns
from beam_projector.transforms.records import ImageRef
from beam_projector.transforms.sampling import SampleItems
from beam_projector.transforms.sources import detect, tfrecord_framing, tfrecords
from beam_projector.transforms.sources import read as sources_read
from beam_projector.transforms.sources import spec as source_spec
from PIL import Image

from support import check_live_projector, run_pipeline


def feature(value):
    if isinstance(value, bytes):
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))
    if isinstance(value, float):
        return tf.train.Feature(float_list=tf.train.FloatList(value=[value]))
    if isinstance(value, list):
        return tf.train.Feature(int64_list=tf.train.Int64List(value=value))
    return tf.train.Feature(int64_list=tf.train.Int64List(value=[value]))


def example(**features):
    return tf.train.Example(features=tf.train.Features(feature={
        k.replace("__", "/"): feature(v) for k, v in features.items()})).SerializeToString()


def write_records(path, records, gzip=False):
    with tf.io.TFRecordWriter(path, options="GZIP" if gzip else None) as w:
        for r in records:
            w.write(r)
    return path


def digit_records(digits, as_paths=False):
    """One tf.Example per digit: image bytes (or its relative path), label, extras."""
    csv_path, rows = digits
    base = os.path.dirname(csv_path)
    records = []
    for i, r in enumerate(rows):
        image = r["path"].encode() if as_paths else open(os.path.join(base, r["path"]), "rb").read()
        records.append(example(image__encoded=image, label=int(r["label"]), score=i / 4,
                               image__filename=r["path"].encode(),
                               bbox=[1, 2, 3, 4],                 # not scalar: not a default column
                               mask=b"\x89PNG\r\n\x1a\n....."))   # binary: not a default column
    return records


@pytest.fixture(scope="module")
def tfrecord_bytes(digits):
    folder = os.path.dirname(digits[0])
    return write_records(os.path.join(folder, "digits-bytes.tfrecord"), digit_records(digits))


# --- pure helpers -----------------------------------------------------------------

def test_image_signatures_versus_path_strings():
    png = io.BytesIO()
    Image.new("RGB", (2, 2)).save(png, "PNG")
    jpg = io.BytesIO()
    Image.new("RGB", (2, 2)).save(jpg, "JPEG")
    bmp = io.BytesIO()
    Image.new("RGB", (2, 2)).save(bmp, "BMP")
    for data in (png.getvalue(), jpg.getvalue(), bmp.getvalue()):
        assert source_spec.looks_like_image(data)
    for text in (b"images/a.png", b"BMW/photo.jpg", b"gs://b/x.jpg", b"GIF/x.gif"):
        assert not source_spec.looks_like_image(text)
        assert tfrecords._path_text(text) == text.decode()
    assert tfrecords._path_text(b"\xff\xfe\x00junk") is None


def test_feature_values_become_text():
    ex = tf.train.Example.FromString(example(a=b"caf\xc3\xa9", n=7, f=0.1, many=[1, 2]))
    feats = ex.features.feature
    assert [tfrecords.feature_text(feats[k]) for k in ("a", "n", "f", "many")] == \
        ["café", "7", "0.1", "1,2"]
    assert tfrecords.feature_text(feats.get("missing")) == ""


def test_tfrecord_reader_checks_framing(tmp_path, tfrecord_bytes):
    with open(tfrecord_bytes, "rb") as f:
        assert len(list(tfrecord_framing.iter_tfrecords(f))) == 60
    data = bytearray(open(tfrecord_bytes, "rb").read())
    data[40] ^= 0xFF  # flip a byte inside the first record
    with pytest.raises(source_spec.SourceError, match="checksum"):
        list(tfrecord_framing.iter_tfrecords(io.BytesIO(bytes(data))))


def test_tfrecord_length_is_bounded_before_it_is_read(tfrecord_bytes):
    data = open(tfrecord_bytes, "rb").read()
    good = list(tfrecord_framing.iter_tfrecords_at(io.BytesIO(data)))
    header = struct.pack("<Q", 2 ** 40)
    bomb = data + header + struct.pack("<I", tfrecord_framing._masked_crc(header)) + b"x" * 100
    # 2^40 bytes would be a MemoryError (or a worker OOM); the length is refused first
    with pytest.raises(tfrecord_framing.TFRecordFramingError, match=f"of {2 ** 40} bytes exceeds") as e:
        list(tfrecord_framing.iter_tfrecords_at(io.BytesIO(bomb)))
    assert e.value.offset == len(data) == good[-1][0] + 16 + len(good[-1][1])
    with pytest.raises(tfrecord_framing.TFRecordFramingError, match="exceeds the limit of 100") as e:
        list(tfrecord_framing.iter_tfrecords_at(io.BytesIO(data), max_record_bytes=100))
    assert e.value.offset == 0


# --- detection and columns (launcher) -------------------------------------------------

def test_describe_tfrecord_columns_and_compression(tmp_path, digits, tfrecord_bytes):
    spec = detect.describe_input(tfrecord_bytes)
    assert spec.kind == "tfrecord" and spec.compression == "none"
    # every scalar text/number feature, sorted; not the image, the list or the blob
    assert spec.columns == ("source", "image/filename", "label", "score")
    records = digit_records(digits)[:3]
    gz = write_records(str(tmp_path / "a.tfrecord.gz"), records, gzip=True)
    assert detect.describe_input(gz).compression == "gzip"
    # a GZIP file with a plain name: the gzip signature tells, or --compression says
    hidden = write_records(str(tmp_path / "shard-00000"), records, gzip=True)
    spec = detect.describe_input(hidden)
    assert (spec.kind, spec.compression) == ("tfrecord", "gzip")
    with pytest.raises(source_spec.SourceError, match="--compression none"):
        detect.describe_input(gz, compression="none")
    spec = detect.describe_input(gz, metadata_features=("label", "bbox"))
    assert spec.columns == ("source", "label", "bbox")
    # a glob mixing plain and GZIP shards: each file's compression is its own
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    write_records(str(mixed / "a.tfrecord"), records[:1])
    write_records(str(mixed / "b.tfrecord"), records, gzip=True)
    spec = detect.describe_input(str(mixed / "*.tfrecord"))
    assert (spec.compression, spec.auto_compression) == ("none", True)
    assert spec.columns == ("source", "image/filename", "label", "score")


def test_describe_tfrecord_names_what_is_missing(tfrecord_bytes):
    with pytest.raises(source_spec.SourceError, match="no feature 'jpeg'.*'image/encoded', 'image/filename'"):
        detect.describe_input(tfrecord_bytes, image_feature="jpeg")
    with pytest.raises(source_spec.SourceError, match="--metadata_features colour not found"):
        detect.describe_input(tfrecord_bytes, metadata_features=("colour",))


def test_describe_csv_judges_only_the_header_row(tmp_path):
    # A bad byte in row 2 is that row's error (the reader reports it), as in
    # row 1,501; it used to fail the whole run when it fell in the first 8 KB.
    early = tmp_path / "early.csv"
    early.write_bytes(b"path,label\na.png,caf\xe9\nb.png,1\n")
    assert detect.describe_input(str(early)).columns == ("path", "label")
    bad_header = tmp_path / "header.csv"
    bad_header.write_bytes(b"path,l\xe9bel\na.png,1\n")
    with pytest.raises(source_spec.SourceError, match="not UTF-8 text: byte 0xE9 in its header row"):
        detect.describe_input(str(bad_header))
    spaced = tmp_path / "spaced.csv"
    spaced.write_bytes(b"\xef\xbb\xbffile name, path\nx.png,y.png\n")
    with pytest.raises(source_spec.SourceError, match="columns are: 'file name', ' path'$"):
        detect.describe_input(str(spaced))


def test_describe_folder_and_glob(tmp_path, digits):
    tree = make_class_tree(tmp_path / "tree", digits, per_class=2)
    spec = detect.describe_input(str(tree))
    assert (spec.kind, spec.columns, spec.labelled) == ("folder", ("path", "label"), True)
    assert spec.pattern == str(tree) + "/**"
    spec = detect.describe_input(str(tree) + "/class_3/*.png")
    assert (spec.kind, spec.columns) == ("folder", ("path",))
    empty = tmp_path / "no-images"
    empty.mkdir()
    (empty / "notes.txt").write_text("x")
    with pytest.raises(source_spec.SourceError, match="holds no image files"):
        detect.describe_input(str(empty))
    assert detect.describe_input(digits[0]).kind == "csv"


# --- readers in a pipeline ---------------------------------------------------------------

def collect(pcoll, path, label):
    """Write a PCollection's elements to ``path`` (DoFns run on pickled copies,
    so a closure over a Python list would stay empty)."""
    def save(actual):
        with open(path, "wb") as f:
            pickle.dump(list(actual), f)
    assert_that(pcoll, save, label=label)


def load(path):
    with open(path, "rb") as f:
        return pickle.load(f)


def read_refs(spec, tmp_path):
    p = beam.Pipeline(runner="FnApiRunner")
    refs, errors = p | sources_read.ReadImageRefs(spec)
    collect(refs, tmp_path / "refs.pkl", "CollectRefs")
    collect(errors, tmp_path / "errors.pkl", "CollectErrors")
    result = p.run()
    result.wait_until_finish()
    counters = {c.key.metric.name: c.committed for c in result.metrics().query()["counters"]
                if c.key.metric.namespace == "projector"}
    return load(tmp_path / "refs.pkl"), load(tmp_path / "errors.pkl"), counters


def test_tfrecord_bytes_paths_and_bad_records(tmp_path, digits):
    csv_path, rows = digits
    base = os.path.dirname(csv_path)
    records = digit_records(digits, as_paths=False)[:3] + digit_records(digits, as_paths=True)[3:5]
    records += [b"\x08\x96\x01not a proto", example(label=1), example(image__encoded=[7])]
    path = write_records(os.path.join(base, "mixed.tfrecord"), records)
    spec = detect.describe_input(path)
    refs, errors, counters = read_refs(spec, tmp_path)
    assert counters["read"] == 5 and counters["failed_read"] == 3
    by_name = {r.metadata[1]: r for r in refs}  # columns: source, image/filename, label, score
    assert sorted(by_name) == sorted(r["path"] for r in rows[:5])
    # bytes kept in the ref; paths resolved against the record file's folder
    assert by_name[rows[0]["path"]].content == open(os.path.join(base, rows[0]["path"]), "rb").read()
    assert by_name[rows[0]["path"]].metadata[0].startswith(path + "#")
    assert by_name[rows[3]["path"]].content is None
    assert by_name[rows[3]["path"]].ref == os.path.join(base, rows[3]["path"])
    assert by_name[rows[3]["path"]].metadata[0] == rows[3]["path"]
    for i, row in enumerate(rows[:5]):
        assert by_name[row["path"]].metadata[2:] == (row["label"], f"{i / 4:g}")
    reasons = sorted(e.reason.split(";")[0] for e in errors)
    assert reasons[0].startswith("feature 'image/encoded' holds int64_list")
    assert reasons[1] == "record has no 'image/encoded' feature"
    assert reasons[2].startswith("record is not a tf.Example")
    assert all(e.stage == "read" and e.ref.startswith(path + "#") for e in errors)
    # uids are content hashes: the same on a second read, and unique here
    again, _, _ = read_refs(spec, tmp_path)
    assert sorted(r.uid for r in refs) == sorted(r.uid for r in again)
    assert len({r.uid for r in refs}) == 5


def bad_tail_files(folder, digits, good=110):
    """TFRecord files whose first ``good`` records are fine and whose tail is
    broken the ways a copy, a disk or a hostile writer breaks them. Returns
    ({path: (good records, offset of the break)}, records per file)."""
    csv_path, rows = digits
    base = os.path.dirname(csv_path)
    pngs = [open(os.path.join(base, r["path"]), "rb").read() for r in rows]

    def records(tag):
        return [example(image__encoded=pngs[i % len(pngs)], label=i, file=tag.encode())
                for i in range(good + 10)]

    def framed(recs):
        out = io.BytesIO()
        for r in recs:
            head = struct.pack("<Q", len(r))
            out.write(head + struct.pack("<I", tfrecord_framing._masked_crc(head)) + r
                      + struct.pack("<I", tfrecord_framing._masked_crc(r)))
        return out.getvalue()

    def at(recs, n):  # byte offset of record n
        return sum(16 + len(r) for r in recs[:n])

    expect = {}
    recs = records("truncated")
    path = os.path.join(folder, "truncated.tfrecord")
    open(path, "wb").write(framed(recs)[:at(recs, good) + 30])
    expect[path] = (good, at(recs, good))
    recs = records("crc")
    data = bytearray(framed(recs))
    data[at(recs, good) + 20] ^= 0x01   # one flipped bit inside record ``good``
    path = os.path.join(folder, "crc.tfrecord")
    open(path, "wb").write(bytes(data))
    expect[path] = (good, at(recs, good))
    recs = records("huge")[:good]
    head = struct.pack("<Q", 2 ** 40)
    path = os.path.join(folder, "huge.tfrecord")
    open(path, "wb").write(framed(recs) + head + struct.pack("<I", tfrecord_framing._masked_crc(head))
                           + b"\0" * 64)
    expect[path] = (good, at(recs, good))
    recs = records("gzip")
    path = os.path.join(folder, "truncated_gzip.tfrecord")  # plain name: found by signature
    packed = gzip.compress(framed(recs))
    open(path, "wb").write(packed[:len(packed) - 40])
    expect[path] = (None, None)   # where the compressed tail breaks: read from the row
    recs = records("ok")
    path = os.path.join(folder, "ok.tfrecord")
    open(path, "wb").write(framed(recs))
    expect[path] = (len(recs), None)
    return expect, good + 10


def test_broken_tfrecord_tails_are_error_rows_and_the_rest_is_read(tmp_path, digits):
    """Beam's ReadAllFromTFRecord raised on each of these and killed the job."""
    folder = tmp_path / "tails"
    folder.mkdir()
    expect, per_file = bad_tail_files(str(folder), digits)
    counters = {}
    for path in sorted(expect):
        spec = detect.describe_input(path)
        if path.endswith("truncated_gzip.tfrecord"):
            assert spec.compression == "gzip"
        got_refs, got_errors, counters = read_refs(spec, tmp_path)
        good, offset = expect[path]
        if path.endswith("ok.tfrecord"):
            assert len(got_refs) == per_file and not got_errors
            continue
        assert len(got_errors) == 1, (path, got_errors)
        row = got_errors[0]
        assert (row.ref, row.stage, row.key) == (path, "read", 0)
        assert row.reason.isprintable() and len(row.reason) < 300
        n = int(re.search(r"after (\d+) good records", row.reason).group(1))
        if good is None:   # GZIP: the records before the break, at least the first 100
            assert 100 <= n < per_file and "truncated GZIP stream" in row.reason
            assert "of the uncompressed stream" in row.reason
        else:
            assert n == good and f"at byte {offset} " in row.reason, row.reason
        assert len(got_refs) == n and counters["read"] == n and counters["failed_read"] == 1


def test_a_run_over_broken_tfrecords_goes_on_and_lists_them(tmp_path, digits, model_path):
    folder = tmp_path / "tails"
    folder.mkdir()
    expect, per_file = bad_tail_files(str(folder), digits)
    out = str(tmp_path / "logdir")
    summary = run_pipeline(input=str(folder / "*.tfrecord"), model=model_path,
                           embedding_layer="embedding", output=out, max_items=30, tile_size=16)
    assert summary["written"] == 30
    with open(os.path.join(out, "errors.tsv"), encoding="utf-8") as f:
        rows = [line.split("\t") for line in f.read().split("\n")[1:-1]]
    broken = {p for p, (good, _) in expect.items() if good != per_file}
    assert {r[0] for r in rows} == broken and all(r[1] == "read" for r in rows)
    for ref, _, reason in rows:
        good, offset = expect[ref]
        assert "the rest of this file is skipped" in reason
        if offset is not None:
            assert f"at byte {offset} " in reason and f"after {good} good records" in reason
        else:   # the GZIP shard in a glob of plain ones: compression is per file
            assert "truncated GZIP stream" in reason, reason
            assert int(re.search(r"after (\d+) good records", reason).group(1)) >= 100


def make_class_tree(root, digits, per_class):
    """image_dataset_from_directory layout: root/class_<label>/<file>.png, plus junk."""
    csv_path, rows = digits
    counts = {}
    for r in rows:
        if counts.get(r["label"], 0) >= per_class:
            continue
        counts[r["label"]] = counts.get(r["label"], 0) + 1
        dest = root / f"class_{r['label']}"
        dest.mkdir(parents=True, exist_ok=True)
        shutil.copy(os.path.join(os.path.dirname(csv_path), r["path"]), dest)
    (root / "README.txt").write_text("not an image")
    (root / "class_0" / ".DS_Store").write_bytes(b"\0\0")
    return root


def test_folder_labels_from_sub_folders_and_skips_non_images(tmp_path, digits):
    tree = make_class_tree(tmp_path / "tree", digits, per_class=3)
    refs, errors, counters = read_refs(detect.describe_input(str(tree)), tmp_path)
    assert counters["read"] == 30 and counters["skipped_non_image"] == 2 and not errors
    for r in refs:
        assert r.metadata[1] == r.metadata[0].split("/")[0]
        assert r.uid == r.metadata[0] and r.ref == str(tree / r.metadata[0])
    assert sorted({r.metadata[1] for r in refs}) == [f"class_{i}" for i in range(10)]


# --- end to end -----------------------------------------------------------------------------

@pytest.mark.slow
def test_tfrecord_bytes_run_is_served_by_live_tensorboard(tfrecord_bytes, model_path, tmp_path,
                                                          digits):
    out = str(tmp_path / "logdir")
    summary = run_pipeline(neighbors=0, layout="none", input=tfrecord_bytes, model=model_path, embedding_layer="embedding",
                           output=out, max_items=40, tile_size=16)
    assert summary["read"] == 60 and summary["written"] == 40 and summary["failed"] == 0
    meta, sprite = check_live_projector(out, n=40, dims={"embedding": 8}, tile=16)
    lines = meta.rstrip("\n").split("\n")
    assert lines[0] == "source\timage/filename\tlabel\tscore" and len(lines) == 41
    labels = {r["path"]: r["label"] for r in digits[1]}
    for line in lines[1:]:
        source, filename, label, _ = line.split("\t")
        assert source.startswith(tfrecord_bytes + "#")
        assert labels[filename] == label  # the record's own label reached the projector
    # the sprite shows the digits: dark strokes on white in the first tile
    first = np.asarray(sprite)[:16, :16]
    assert first[..., 3].max() == 255 and first[..., :3].min() < 100


def test_gzip_tfrecord_of_paths_with_chosen_metadata(digits, model_path, tmp_path):
    csv_path, rows = digits
    path = write_records(os.path.join(os.path.dirname(csv_path), "paths.tfrecord.gz"),
                         digit_records(digits, as_paths=True), gzip=True)
    out = str(tmp_path / "o")
    summary = run_pipeline(neighbors=0, layout="none", input=path, model=model_path, metadata_features="label",
                           output=out, max_items=15, tile_size=16)
    assert summary["written"] == 15
    meta = open(next(os.path.join(out, d, "metadata.tsv") for d in os.listdir(out)
                     if d.startswith("data-"))).read().split("\n")
    labels = {r["path"]: r["label"] for r in rows}
    assert meta[0] == "source\tlabel"
    assert all(labels[line.split("\t")[0]] == line.split("\t")[1] for line in meta[1:16])


def test_class_folder_run_with_stratified_sample(tmp_path, digits, model_path):
    tree = make_class_tree(tmp_path / "tree", digits, per_class=4)
    out = str(tmp_path / "o")
    summary = run_pipeline(input=str(tree), model=model_path, output=out, max_items=100,
                           max_per_label=2, tile_size=16)
    assert summary["read"] == 40 and summary["written"] == 20
    meta = open(next(os.path.join(out, d, "metadata.tsv") for d in os.listdir(out)
                     if d.startswith("data-"))).read().split("\n")
    assert meta[0] == "\t".join(("path", "label") + neighbor_columns(True) + ("suspect",))
    labels = [line.split("\t")[1] for line in meta[1:21]]
    assert sorted(labels) == sorted([f"class_{i}" for i in range(10)] * 2)


def test_stratified_sampling_is_per_label_bottom_k_and_capped_by_n(tmp_path):
    items = [ImageRef(uid=f"img{i}", ref=f"img{i}", content=None,
                              metadata=(f"img{i}", "abc"[i % 3])) for i in range(300)]

    def sample(n, per_label, seed):
        with beam.Pipeline(runner="FnApiRunner") as p:
            out = (p | beam.Create(items)
                   | SampleItems(n, seed, per_label=per_label, label_index=1)
                   | beam.Map(lambda it: it.uid))
            collect(out, tmp_path / "sample.pkl", "Collect")
        return load(tmp_path / "sample.pkl")

    from beam_projector.transforms.sampling import sample_key
    per_label = sample(100, 5, seed=7)
    expect = []
    for label in "abc":
        mine = sorted((sample_key(it.uid, 7), it.uid) for it in items if it.metadata[1] == label)
        expect += [uid for _, uid in mine[:5]]
    assert sorted(per_label) == sorted(expect)
    capped = sample(8, 5, seed=7)  # --max_items still bounds the total
    keys = sorted((sample_key(u, 7), u) for u in expect)
    assert sorted(capped) == sorted(u for _, u in keys[:8])


def test_max_per_label_needs_the_label_column(tfrecord_bytes, model_path, tmp_path, digits):
    with pytest.raises(UsageError, match="label column 'class'.*'source', 'image/filename', 'label'"):
        run_pipeline(input=tfrecord_bytes, model=model_path, output=str(tmp_path / "o"),
                     max_per_label=2, label_column="class")
    with pytest.raises(UsageError, match="--max_per_label must be at least 1"):
        run_pipeline(input=digits[0], model=model_path, output=str(tmp_path / "o"),
                     max_per_label=0)


# --- CSV records: the reader keeps its place (issue 28) ------------------------------

def blob_csv(folder, digits, bad_row=200):
    """The issue's CSV: rows of digit paths with a notes column, row
    ``bad_row``'s note a quoted field of 80 lines of 65 KB (5.2 MB: every line
    under the 1 MiB line bound, the field far over the csv module's 128 KiB)."""
    _, rows = digits
    blob = "\n".join(f"{i:03d} log entry value=" + "x" * 65_000 for i in range(80))
    path = os.path.join(folder, "images.csv")
    with open(path, "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["path", "label", "notes"])
        for i in range(1, 251):
            r = rows[i % len(rows)]
            w.writerow([os.path.join(os.path.dirname(digits[0]), r["path"]), r["label"],
                        blob if i == bad_row else f"note {i}"])
    return path


def read_csv_file(path):
    from beam_projector.transforms.records import ERRORS_TAG
    from beam_projector.transforms.sources.csv_files import _ReadCsvFn
    out = list(_ReadCsvFn("path").process(path))
    return ([o for o in out if not hasattr(o, "tag")],
            [o.value for o in out if getattr(o, "tag", None) == ERRORS_TAG])


def test_a_quoted_field_over_the_limit_is_one_error_and_the_reader_resyncs(tmp_path, digits):
    """Once the csv module raised on the field, it resumed on the field's next
    line: 79 phantom rows whose 'paths' were 65 KB of the field, and a 6 MB
    errors.tsv. Now: one row naming file:line, then the next real record."""
    path = blob_csv(str(tmp_path), digits)
    refs, errors = read_csv_file(path)
    assert [e.ref for e in errors] == [f"{path}:201"]
    assert "field larger than field limit" in errors[0].reason
    assert "(lines 201-280 skipped)" in errors[0].reason
    assert len(refs) == 249 and all(r.ref.endswith(".png") for r in refs)
    assert [r.metadata[2] for r in refs][198:200] == ["note 199", "note 201"]


def test_a_record_over_the_bound_is_one_error_however_its_lines_are_cut(tmp_path):
    """A quoted record of short lines over 1 MiB is skipped whole without
    being held (line numbers stay physical), as is one long line; a quoted
    field that never closes ends the file with one row saying so."""
    from beam_projector.transforms.sources import csv_files
    field = '"' + "y" * 50_000 + "\n" + "y" * 50_000 + '"'   # under csv's 128 KiB field limit
    record = "b.png," + ",".join([field] * 12) + "\n"         # 1.2 MB on lines 3-15
    text = f'path,notes\na.png,ok\n{record}c.png,{"z" * 1_100_000}\nd.png,fine\n'
    path = tmp_path / "records.csv"
    path.write_text(text)
    refs, errors = read_csv_file(str(path))
    assert [r.metadata[0] for r in refs] == ["a.png", "d.png"]
    assert [(e.ref.rsplit(":", 1)[1], e.reason) for e in errors] == [
        ("3", f"CSV row at lines 3-15 is {len(record):,} bytes (more than "
              f"{csv_files.MAX_CSV_LINE_BYTES}); skipped"),
        ("16", f"line longer than {csv_files.MAX_CSV_LINE_BYTES} bytes; skipped")]
    big = "\n".join("y" * 60_000 for _ in range(30))
    path.write_text(f'path,notes\na.png,ok\nb.png,"never closed\n{big}\n')
    refs, errors = read_csv_file(str(path))
    assert [r.metadata[0] for r in refs] == ["a.png"] and len(errors) == 1
    assert errors[0].reason.endswith("(lines 3-33 skipped: a quoted field opened on line 3 "
                                     "is not closed before the end of the file)"), errors


def test_the_record_reader_gives_the_csv_modules_rows(tmp_path):
    """On CSVs the csv module reads without an error (csv.writer's output
    with quotes, commas and line breaks in fields, CRLF, blank lines, a BOM,
    no final newline, quotes inside unquoted fields) the rows are the csv
    module's own: the same uids, so the same sample and outputs as before."""
    import csv as csv_module
    import random

    from beam_projector.transforms.sources.csv_files import csv_rows

    def plain(data):
        """The csv module over the file's lines, split at LF only as a
        binary readline splits them (the reader before this one)."""
        data = data.removeprefix(b"\xef\xbb\xbf")
        lines = re.findall(rb"[^\n]*\n|[^\n]+", data)
        return list(csv_module.reader(line.decode("utf-8", "surrogateescape") for line in lines))

    rng = random.Random(0)
    alphabet = ["a", "b", ",", '"', "\n", " ", "é", "\r\n", 'x"y', '""']
    cases = [b'path,label\na.png,1\n"b,c.png","2"\n', b'\xef\xbb\xbfpath\r\nx.png\r\n\r\n"y""q.png"\n',
             b'p,l\na"b,c\n"a"x,b\nlast,no newline', b'p\n\xe9t\xe9.png\n', b'p,n\n"x\n\ny",1\nz,2\n']
    for _ in range(1500):
        rows = [["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 6)))
                 for _ in range(rng.randint(1, 3))] for _ in range(rng.randint(1, 6))]
        buf = io.StringIO()
        csv_module.writer(buf, lineterminator=rng.choice(["\n", "\r\n"])).writerows(rows)
        cases.append(buf.getvalue().encode())
        cases.append("".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40))).encode())
    compared = 0
    for data in cases:
        try:
            want = plain(data)
        except csv_module.Error:
            continue            # rows after an error differ by design: see the tests above
        got = [(row, problem) for _, row, problem in csv_rows(io.BytesIO(data))]
        assert got == [(row, None) for row in want], data
        compared += 1
    assert compared > 2000


def test_a_header_over_the_line_bound_is_not_called_empty(tmp_path):
    """A 1.1 MB header row read as a blank line: 'input ... is empty'."""
    wide = tmp_path / "wide.csv"
    wide.write_text(",".join(["path", "label"] + [f"c{i:06d}" for i in range(140_000)])
                    + "\na.png,1\n")
    with pytest.raises(source_spec.SourceError) as e:
        detect.describe_input(str(wide))
    assert "is empty" not in str(e.value)
    assert "its header row is longer than 1048576 bytes" in str(e.value)



def test_a_bad_length_checksum_after_good_records_is_not_called_not_a_tfrecord(tfrecord_bytes):
    """A flipped bit in record 31's length CRC, after 30 good records, said
    'not a TFRecord file'; that stays the word for a bad first header."""
    data = bytearray(open(tfrecord_bytes, "rb").read())
    good = list(tfrecord_framing.iter_tfrecords_at(io.BytesIO(bytes(data))))
    offset = good[30][0]
    data[offset + 8] ^= 0x01
    with pytest.raises(tfrecord_framing.TFRecordFramingError) as e:
        list(tfrecord_framing.iter_tfrecords_at(io.BytesIO(bytes(data))))
    assert e.value.offset == offset
    assert e.value.reason == "corrupt TFRecord record header (length checksum mismatch)"
    data[8] ^= 0x01
    with pytest.raises(tfrecord_framing.TFRecordFramingError,
                       match=r"^not a TFRecord file \(record length checksum mismatch\) at byte 0$"):
        list(tfrecord_framing.iter_tfrecords_at(io.BytesIO(bytes(data))))
