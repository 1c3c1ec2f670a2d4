"""Detect an input's kind and learn its columns, on the launcher, before any work.

So options are validated and the writer knows the metadata header before
any worker runs. Every problem is a ``SourceError`` naming what to fix.
"""
import re
from typing import Dict, List, Optional, Sequence

from apache_beam.io.filesystems import FileSystems

from beam_projector.transforms.sources.csv_files import (
    csv_header,
    has_rows,
    metadata_columns,
)
from beam_projector.transforms.sources.folder import own_logdir_picture, relative_to
from beam_projector.transforms.sources.spec import (
    COMPRESSIONS,
    IMAGE_EXTENSIONS,
    SOURCE_COLUMN,
    SourceError,
    SourceSpec,
    is_image_path,
    quoted_names,
)
from beam_projector.transforms.sources.tfds import TFDS_INFO, read_tfds_folder
from beam_projector.transforms.sources.tfrecord_framing import (
    is_tfrecord,
    resolve_compression,
)
from beam_projector.transforms.sources.tfrecords import is_scalar_text, scan_examples

# train.tfrecord, x.tfrecords.gz, TFDS shards (mnist-train.tfrecord-00000-of-00004),
# the Object Detection API's train.record.
_TFRECORD_NAME = re.compile(r"\.(tfrecords?|tfrec|records?)(-\d+-of-\d+)?(\.gz|\.gzip)?$")


# How many files the launcher lists to learn a folder's layout.
FOLDER_PROBE = 10_000


def _has_glob(pattern: str) -> bool:
    return any(c in pattern for c in "*?[")


def expand_input(pattern: str) -> List[str]:
    """Files matching ``pattern`` (a path or glob), sorted for determinism."""
    try:
        result = FileSystems.match([pattern])[0]
    except Exception as e:  # noqa: BLE001 - BeamIOError and scheme errors alike
        raise SourceError(f"input {pattern} cannot be listed: {e}") from None
    paths = sorted(m.path for m in result.metadata_list if not m.path.endswith("/"))
    if not paths:
        raise SourceError(f"input {pattern} does not exist (no file matches)")
    return paths


def directory_root(pattern: str) -> Optional[str]:
    """``pattern`` without its trailing slash when it names a folder holding
    files (on object stores: a prefix with objects below it), else None."""
    if _has_glob(pattern):
        return None
    base = pattern.rstrip("/")
    try:
        found = FileSystems.match([base + "/**"], limits=[1])[0].metadata_list
    except Exception:  # noqa: BLE001 - not listable as a folder: treat as a file
        return None
    return base if found else None


def _name_kind(path: str) -> Optional[str]:
    name = path.rsplit("/", 1)[-1].lower()
    if name.endswith(IMAGE_EXTENSIONS):
        return "folder"
    if name.endswith(".csv"):
        return "csv"
    if _TFRECORD_NAME.search(name):
        return "tfrecord"
    return None


def detect_kind(paths: Sequence[str]) -> str:
    """The input kind of the matched files: by name, else by content."""
    kinds = {_name_kind(p) for p in paths}
    if kinds & {"csv", "tfrecord"} == {"csv", "tfrecord"}:
        raise SourceError("input matches both CSV and TFRecord files; give one kind per run")
    if "folder" in kinds and not kinds & {"csv", "tfrecord"}:
        return "folder"
    for kind in ("tfrecord", "csv"):
        if kind in kinds:
            return kind
    return "tfrecord" if is_tfrecord(paths[0]) else "csv"


def _describe_tfrecord(paths, image_feature, metadata_features, compression) -> SourceSpec:
    tfds = read_tfds_folder(paths)
    if not image_feature:
        image_feature = (("image" if "image" in tfds.image_features else tfds.image_features[0])
                         if tfds and tfds.image_features else "image/encoded")
    requested, compression = compression, resolve_compression(paths[0], compression)
    examples = scan_examples(paths, requested)
    if not examples:
        raise SourceError(f"TFRecord input {paths[0]} has no records")
    seen: Dict[str, bool] = {}
    for ex in examples:
        for name, feature in ex.features.feature.items():
            seen[name] = seen.get(name, True) and is_scalar_text(feature)
    if image_feature not in seen:
        raise SourceError(f"TFRecord {paths[0]} has no feature {image_feature!r} in its first "
                          f"{len(examples)} records (set --image_feature); its features are: "
                          f"{quoted_names(sorted(seen))}")
    if metadata_features:
        unknown = [n for n in metadata_features if n not in seen]
        if unknown:
            raise SourceError(f"--metadata_features {', '.join(unknown)} not found in the first "
                              f"{len(examples)} records; the features are: "
                              f"{quoted_names(sorted(seen))}")
        features = tuple(metadata_features)
    else:
        features = tuple(sorted(n for n, scalar in seen.items() if scalar and n != image_feature))
    if SOURCE_COLUMN in features:
        raise SourceError(f"feature {SOURCE_COLUMN!r} clashes with the input's first metadata "
                          "column (where each image came from); list the features to keep "
                          "with --metadata_features")
    label_names, about = (), ()
    if tfds:
        label_names = tuple((k, v) for k, v in tfds.label_names if k in features)
        about = (("name", tfds.name), ("version", tfds.version),
                 ("split", ",".join(tfds.splits)))
    return SourceSpec(kind="tfrecord", pattern="", paths=tuple(paths),
                      columns=(SOURCE_COLUMN,) + features, image_feature=image_feature,
                      features=features, compression=compression,
                      label_names=label_names, tfds=about,
                      auto_compression=requested == "auto")


def _describe_csv(pattern, paths, image_column) -> SourceSpec:
    header = csv_header(paths[0])
    if image_column not in header:
        raise SourceError(f"CSV {paths[0]} has no column {image_column!r} "
                          f"(set --image_column); its columns are: {quoted_names(header)}")
    if not any(has_rows(p) for p in paths):
        raise SourceError(f"input {pattern} has a header but no rows")
    return SourceSpec(kind="csv", pattern=pattern, paths=tuple(paths),
                      columns=tuple(metadata_columns(header, image_column)),
                      image_column=image_column)


def _describe_folder(pattern: str, root: str, listed: Sequence[str]) -> SourceSpec:
    images = [p for p in listed if is_image_path(p) and not own_logdir_picture(p)]
    if not images:
        raise SourceError(f"input {pattern} holds no image files "
                          f"({', '.join(IMAGE_EXTENSIONS)})")
    labelled = bool(root) and any("/" in relative_to(p, root) for p in images)
    return SourceSpec(kind="folder", pattern=root + "/**" if root else pattern, paths=(),
                      columns=("path", "label") if labelled else ("path",),
                      root=root, labelled=labelled)


def describe_input(pattern: str, image_column: str = "path",
                   image_feature: str = "", metadata_features: Sequence[str] = (),
                   compression: str = "auto") -> SourceSpec:
    """Detect the kind of ``--input`` and learn its columns. Raises SourceError.

    ``image_feature`` empty: the TFDS dataset's image feature for shards of
    a TensorFlow Datasets folder, else ``image/encoded``.
    """
    if compression not in COMPRESSIONS:
        raise SourceError(f"--compression must be one of {', '.join(COMPRESSIONS)}, "
                          f"got {compression!r}")
    root = directory_root(pattern)
    if root is not None:
        # A bounded listing: enough to see the layout without walking a bucket
        # of millions of objects on the launcher; the workers list it all.
        listed = [m.path for m in FileSystems.match([root + "/**"], limits=[FOLDER_PROBE])[0]
                  .metadata_list]
        if any(p.rsplit("/", 1)[-1] == TFDS_INFO for p in listed):
            raise SourceError(f"input {pattern} is a TensorFlow Datasets folder: give the "
                              f"shards of a split, e.g. '{root}/*-train.tfrecord-*'")
        return _describe_folder(pattern, root, listed)
    paths = expand_input(pattern)
    kind = detect_kind(paths)
    if kind == "folder":
        return _describe_folder(pattern, "", paths)
    if kind == "tfrecord":
        return _describe_tfrecord(paths, image_feature, tuple(metadata_features), compression)
    return _describe_csv(pattern, paths, image_column)
