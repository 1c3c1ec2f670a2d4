"""TensorFlow Datasets folders: the image feature and class names, from TFDS's own files.

TFDS writes its shards beside dataset_info.json (name, version, splits),
features.json (the FeaturesDict, as JSON) and NAME.labels.txt per
ClassLabel feature. Reading those three JSON/text files is all it takes to
know the image feature and the class names: tensorflow-datasets itself is
not needed at run time.
"""
import json
from typing import List, NamedTuple, Optional, Sequence, Tuple

from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from beam_projector.transforms.sources.spec import parent_dir

TFDS_INFO, TFDS_FEATURES = "dataset_info.json", "features.json"


_TFDS_IMAGE = "image_feature.Image"


_TFDS_CLASS_LABEL = "class_label_feature.ClassLabel"


_TFDS_DICT = "features_dict.FeaturesDict"


def tfds_features(features_json: dict) -> Tuple[List[str], List[Tuple[str, str]]]:
    """From features.json: the tf.Example keys of the Image features, and
    (key, labels file name) of the ClassLabel features, in declaration order.

    Nested FeaturesDicts flatten to ``parent/child`` keys; their labels file
    is ``parent-child.labels.txt`` (TFDS's ``convert_feature_name_to_filename``).
    Sequences hold lists, never a metadata scalar, so they are not entered.
    """
    images, labels = [], []

    def walk(node: dict, key: str, filename: str):
        cls = node.get("pythonClassName", "")
        if cls.endswith(_TFDS_DICT) or "featuresDict" in node:
            for name, child in node.get("featuresDict", {}).get("features", {}).items():
                walk(child, f"{key}/{name}" if key else name,
                     f"{filename.replace('/', '-')}-{name.replace('/', '.')}" if filename
                     else name.replace("/", "."))
        elif cls.endswith(_TFDS_IMAGE):
            images.append(key)
        elif cls.endswith(_TFDS_CLASS_LABEL):
            labels.append((key, filename + ".labels.txt"))

    walk(features_json, "", "")
    return images, labels


def tfds_splits(info: dict, paths: Sequence[str]) -> List[str]:
    """The splits the shard names belong to (``NAME-SPLIT.tfrecord-00000-of-00004``)."""
    name = info.get("name", "")
    fmt = info.get("fileFormat", "tfrecord")
    found = []
    for split in (s.get("name", "") for s in info.get("splits", [])):
        prefix = f"{name}-{split}.{fmt}"
        if split and any(p.rsplit("/", 1)[-1].startswith(prefix) for p in paths):
            found.append(split)
    return found


def _read_json(path: str) -> Optional[dict]:
    try:
        with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
            data = json.loads(f.read().decode("utf-8"))
    except Exception:  # noqa: BLE001 - missing or unreadable: not a TFDS folder
        return None
    return data if isinstance(data, dict) else None


def _read_lines(path: str) -> Optional[Tuple[str, ...]]:
    try:
        with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
            return tuple(line.strip() for line in f.read().decode("utf-8").splitlines()
                         if line.strip())
    except Exception:  # noqa: BLE001 - no labels file: the indices stay
        return None


class TfdsFolder(NamedTuple):
    name: str
    version: str
    splits: Tuple[str, ...]
    image_features: Tuple[str, ...]
    label_names: Tuple[Tuple[str, Tuple[str, ...]], ...]


def read_tfds_folder(paths: Sequence[str]) -> Optional[TfdsFolder]:
    """What the TFDS files beside the first shard say, or None when there
    are none (any other TFRecords)."""
    folder = parent_dir(paths[0])
    info = _read_json(FileSystems.join(folder, TFDS_INFO))
    if info is None or "name" not in info:
        return None
    images, labels = tfds_features(_read_json(FileSystems.join(folder, TFDS_FEATURES)) or {})
    names = []
    for key, filename in labels:
        found = _read_lines(FileSystems.join(folder, filename))
        if found:
            names.append((key, found))
    return TfdsFolder(name=str(info["name"]), version=str(info.get("version", "")),
                      splits=tuple(tfds_splits(info, paths)), image_features=tuple(images),
                      label_names=tuple(names))
