"""Remote paths: every read and write goes through Beam's FileSystems.

``MemTestFileSystem`` is a real Beam ``FileSystem`` registered under its own
scheme (``memtest://``) over a temp folder, with object-store semantics like
GCS (no directories, prefix listing, ``exists`` only for objects). Beam finds
filesystems by subclass, so defining it registers it for the whole process,
which is where the in-memory FnApiRunner runs the workers. Nothing in the
pipeline knows the scheme: if inputs, images, models or the logdir bypassed
FileSystems (``open()``, ``os.path``, ``tf.io.gfile``), these runs would fail.
"""
import io
import os

import numpy as np
import pytest
import tensorflow as tf
from apache_beam.io.filesystems import FileSystems
from beam_projector.pipeline.preflight import UsageError
from google.protobuf import text_format
from tensorboard.plugins.projector.projector_config_pb2 import ProjectorConfig

from memtestfs import PREFIX, MemTestFileSystem
from savedmodels import export_module
from support import run_pipeline


@pytest.fixture(scope="module")
def bucket(tmp_path_factory):
    """A memtest bucket holding the digits, a .keras model and a SavedModel."""
    MemTestFileSystem.root = str(tmp_path_factory.mktemp("memtest"))
    return PREFIX + "bucket"


def upload(local, remote):
    """Copy a local file or folder tree into memtest through FileSystems."""
    if os.path.isdir(local):
        for dirpath, _, files in os.walk(local):
            for name in files:
                rel = os.path.relpath(os.path.join(dirpath, name), local).replace(os.sep, "/")
                upload(os.path.join(dirpath, name), remote + "/" + rel)
        return
    with open(local, "rb") as src, FileSystems.create(remote, compression_type="uncompressed") as dst:
        dst.write(src.read())


def read_logdir(out):
    def read(rel):
        with FileSystems.open(out + "/" + rel, compression_type="uncompressed") as f:
            return f.read()
    config = text_format.Parse(read("projector_config.pbtxt").decode(), ProjectorConfig())
    return config, read


def test_scheme_is_registered_and_object_store_like(bucket):
    assert isinstance(FileSystems.get_filesystem(bucket + "/x"), MemTestFileSystem)
    with FileSystems.create(bucket + "/deep/a/b.txt") as f:
        f.write(b"hi")
    assert FileSystems.exists(bucket + "/deep/a/b.txt")
    assert not FileSystems.exists(bucket + "/deep/a")  # no folders on an object store
    found = [m.path for m in FileSystems.match([bucket + "/deep/**"])[0].metadata_list]
    assert found == [bucket + "/deep/a/b.txt"]
    assert os.path.isfile(os.path.join(MemTestFileSystem.root, "bucket/deep/a/b.txt"))


def test_csv_images_keras_model_and_logdir_all_remote(bucket, digits, model_path):
    csv_path, rows = digits
    base = bucket + "/csvrun"
    upload(os.path.dirname(csv_path), base)  # images.csv + images/ (relative paths)
    upload(model_path, base + "/model/tiny.keras")
    out = base + "/logdir"
    summary = run_pipeline(neighbors=0, layout="none", input=base + "/images.csv", model=base + "/model/tiny.keras",
                           embedding_layer="embedding", output=out, max_items=12, tile_size=16)
    assert summary["written"] == 12 and summary["failed"] == 0
    config, read = read_logdir(out)
    emb = config.embeddings[0]
    assert list(emb.tensor_shape) == [12, 8]
    meta = read(emb.metadata_path).decode().split("\n")
    assert meta[0] == "path\tlabel" and len(meta) == 14
    by_path = {r["path"]: r["label"] for r in rows}
    assert all(by_path[line.split("\t")[0]] == line.split("\t")[1] for line in meta[1:13])
    assert emb.tensor_path.endswith("feature_vecs.tsv")  # the default tensor format
    tensor = np.loadtxt(io.BytesIO(read(emb.tensor_path)), delimiter="\t", ndmin=2)
    assert tensor.shape == (12, 8)
    assert read("errors.tsv") == b"input\tstage\treason\n"
    # the thumbnails were staged on the object store, read back, then removed
    backing = os.path.join(MemTestFileSystem.root, "bucket", "csvrun", "logdir")
    assert not [n for n in os.listdir(backing) if n.startswith(".beam-projector-staging-")]


def _example(image, label):
    return tf.train.Example(features=tf.train.Features(feature={
        "image/encoded": tf.train.Feature(bytes_list=tf.train.BytesList(value=[image])),
        "label": tf.train.Feature(int64_list=tf.train.Int64List(value=[label])),
    })).SerializeToString()


def test_gzip_tfrecord_of_remote_paths_and_savedmodel(bucket, digits, tmp_path):
    """A GZIP TFRecord whose image feature holds paths relative to the record
    file; the images, the SavedModel and the logdir live on memtest too."""
    csv_path, rows = digits
    base = bucket + "/tfrun"
    upload(os.path.join(os.path.dirname(csv_path), "images"), base + "/images")
    local_tf = str(tmp_path / "paths.tfrecord.gz")
    with tf.io.TFRecordWriter(local_tf, options="GZIP") as w:
        for r in rows[:20]:
            w.write(_example(r["path"].encode(), int(r["label"])))
    upload(local_tf, base + "/paths.tfrecord.gz")
    saved = export_module(str(tmp_path / "sm"))
    upload(saved, base + "/savedmodel")
    out = base + "/logdir"
    summary = run_pipeline(neighbors=0, layout="none", input=base + "/paths.tfrecord.gz", model=base + "/savedmodel",
                           embedding_output="embedding", output=out, max_items=10,
                           tile_size=16)
    assert summary["read"] == 20 and summary["written"] == 10 and summary["failed"] == 0
    config, read = read_logdir(out)
    emb = config.embeddings[0]
    assert emb.tensor_name == "embedding" and list(emb.tensor_shape) == [10, 4]
    meta = read(emb.metadata_path).decode().split("\n")
    assert meta[0] == "source\tlabel"
    labels = {r["path"]: r["label"] for r in rows}
    for line in meta[1:11]:
        source, label = line.split("\t")
        assert labels[source] == label


def test_class_folder_tree_on_an_object_store(bucket, digits, model_path):
    """No folders on the store: the layout comes from the object names."""
    csv_path, rows = digits
    base = bucket + "/tree"
    src = os.path.dirname(csv_path)
    for r in rows[:24]:
        upload(os.path.join(src, r["path"]),
               f"{base}/digit-{r['label']}/{os.path.basename(r['path'])}")
    out = bucket + "/tree-logdir"
    summary = run_pipeline(neighbors=0, layout="none", input=base, model=model_path, output=out, max_items=24, tile_size=16)
    assert summary["read"] == 24 and summary["written"] == 24
    config, read = read_logdir(out)
    meta = read(config.embeddings[0].metadata_path).decode().split("\n")
    assert meta[0] == "path\tlabel"
    for line in meta[1:25]:
        rel, label = line.split("\t")
        assert rel.split("/")[0] == label and label.startswith("digit-")


def test_unknown_scheme_is_a_usage_error(model_path, tmp_path):
    with pytest.raises(UsageError, match="nosuchscheme://b/x.csv"):
        run_pipeline(input="nosuchscheme://b/x.csv", model=model_path,
                     output=str(tmp_path / "o"))
