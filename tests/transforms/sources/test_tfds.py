"""TensorFlow Datasets folders: shards written by tensorflow-datasets itself.

A tiny ``GeneratorBasedBuilder`` over generated images is prepared offline
(no download: its split generators make the examples). The pipeline must
find the image feature, write ClassLabel features as class names and report
the dataset's name, version and split, without importing
tensorflow-datasets at run time.
"""
import glob
import json
import os

import numpy as np
import pytest
from beam_projector.transforms.sources import detect
from beam_projector.transforms.sources import spec as source_spec
from beam_projector.transforms.sources import tfds as tfds_meta

from support import load_tensor, run_pipeline

SHAPES = ["circle", "square", "triangle"]


@pytest.fixture(scope="module")
def tfds_folder(tmp_path_factory):
    import tensorflow_datasets as tfds

    class TinyShapes(tfds.core.GeneratorBasedBuilder):
        """12 train / 4 test images: a grey level per example, a 3-class label."""
        VERSION = tfds.core.Version("1.2.0")

        def _info(self):
            return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
                "picture": tfds.features.Image(shape=(None, None, 3)),
                "shape": tfds.features.ClassLabel(names=SHAPES),
                "size": tfds.features.Scalar(dtype=np.int64),
            }))

        def _split_generators(self, dl_manager):
            return {"train": self._generate_examples(0, 12),
                    "test": self._generate_examples(12, 16)}

        def _generate_examples(self, start, stop):
            for i in range(start, stop):
                px = np.full((10 + i, 12, 3), i * 15, np.uint8)
                yield i, {"picture": px, "shape": i % 3, "size": i}

    data_dir = tmp_path_factory.mktemp("tfds")
    builder = TinyShapes(data_dir=str(data_dir))
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(try_download_gcs=False))
    return str(builder.data_dir)


def test_tfds_files_are_what_tfds_writes(tfds_folder):
    names = sorted(os.path.basename(p) for p in glob.glob(tfds_folder + "/*"))
    assert "dataset_info.json" in names and "features.json" in names
    assert "shape.labels.txt" in names
    assert any(n.startswith("tiny_shapes-train.tfrecord-00000-of-") for n in names)


def test_describe_finds_the_image_feature_and_class_names(tfds_folder):
    spec = detect.describe_input(tfds_folder + "/tiny_shapes-train.tfrecord-*")
    assert spec.kind == "tfrecord" and spec.image_feature == "picture"
    assert spec.columns == ("source", "shape", "size")
    assert dict(spec.label_names) == {"shape": tuple(SHAPES)}
    assert dict(spec.tfds) == {"name": "tiny_shapes", "version": "1.2.0", "split": "train"}
    # an explicit --image_feature still wins; a missing one is still named
    with pytest.raises(source_spec.SourceError, match="no feature 'image/encoded'"):
        detect.describe_input(tfds_folder + "/tiny_shapes-train.tfrecord-*",
                               image_feature="image/encoded")
    # the folder itself: told which shards to give
    with pytest.raises(source_spec.SourceError, match="TensorFlow Datasets folder"):
        detect.describe_input(tfds_folder)


def test_nested_features_json_flattens_like_tfds():
    features = {"pythonClassName": "tensorflow_datasets.core.features.features_dict.FeaturesDict",
                "featuresDict": {"features": {
                    "image": {"pythonClassName": "tensorflow_datasets.core.features."
                              "image_feature.Image"},
                    "objects": {"pythonClassName": "tensorflow_datasets.core.features."
                                "features_dict.FeaturesDict",
                                "featuresDict": {"features": {"kind": {
                                    "pythonClassName": "tensorflow_datasets.core.features."
                                    "class_label_feature.ClassLabel"}}}},
                    "label": {"pythonClassName": "tensorflow_datasets.core.features."
                              "class_label_feature.ClassLabel"}}}}
    images, labels = tfds_meta.tfds_features(features)
    assert images == ["image"]
    assert labels == [("objects/kind", "objects-kind.labels.txt"), ("label", "label.labels.txt")]


def test_pipeline_writes_class_names_and_reports_the_tfds_split(tfds_folder, model_path,
                                                                tmp_path):
    out = str(tmp_path / "out")
    summary = run_pipeline(neighbors=0, layout="none", input=tfds_folder + "/tiny_shapes-test.tfrecord-*", model=model_path,
                           embedding_layer="embedding", output=out, max_items=10, tile_size=16)
    assert summary["written"] == 4 and summary["failed"] == 0
    assert summary["tfds"] == {"name": "tiny_shapes", "version": "1.2.0", "split": "test"}
    assert json.load(open(os.path.join(out, "run_summary.json")))["tfds"] == summary["tfds"]
    (data,) = glob.glob(os.path.join(out, "data-*"))
    meta = open(os.path.join(data, "metadata.tsv")).read().split("\n")
    assert meta[0] == "source\tshape\tsize"
    rows = sorted(line.split("\t")[1:] for line in meta[1:-1])
    # test split: examples 12..15 -> shapes 0,1,2,0 by name, sizes as numbers
    assert rows == sorted([[SHAPES[i % 3], str(i)] for i in range(12, 16)])
    assert load_tensor(os.path.join(data, "feature_vecs.tsv"), (4, 8)).shape == (4, 8)
