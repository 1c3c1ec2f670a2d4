"""What the launcher learns about an input, and the names every reader shares."""
from typing import NamedTuple, Sequence, Tuple

from apache_beam.io.filesystems import FileSystems


class SourceError(ValueError):
    """The input cannot be read as asked; the message says what to fix."""


INPUT_KINDS = ("csv", "tfrecord", "folder")


COMPRESSIONS = ("auto", "none", "gzip")


# What Pillow decodes and image_dataset_from_directory accepts, plus TIFF/WebP.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp", ".tif", ".tiff")


SOURCE_COLUMN = "source"


class SourceSpec(NamedTuple):
    """What the launcher learned about ``--input``; all a worker needs to read it."""
    kind: str                          # one of INPUT_KINDS
    pattern: str                       # as given (folder: the glob the workers list)
    paths: Tuple[str, ...]             # csv/tfrecord: the matched files
    columns: Tuple[str, ...]           # metadata columns, in order
    image_column: str = "path"         # csv: column holding the image path
    image_feature: str = "image/encoded"   # tfrecord: bytes feature with the image or its path
    features: Tuple[str, ...] = ()     # tfrecord: features that become metadata columns
    compression: str = "none"          # tfrecord: resolved "none" or "gzip" (of the first file)
    auto_compression: bool = False     # tfrecord: --compression auto: resolve it per file
    root: str = ""                     # folder: the directory paths and labels are relative to
    labelled: bool = False             # folder: class sub-folders give a label column
    # tfrecord from a TensorFlow Datasets folder: ClassLabel feature -> class
    # names (written instead of the indices), and (name, version, split) pairs
    label_names: Tuple[Tuple[str, Tuple[str, ...]], ...] = ()
    tfds: Tuple[Tuple[str, str], ...] = ()


def is_image_path(path: str) -> bool:
    return path.lower().endswith(IMAGE_EXTENSIONS)


def looks_like_image(data: bytes) -> bool:
    """True when ``data`` starts with an image file signature (JPEG, PNG, GIF,
    BMP, TIFF, WebP). A path string never does: it has no NUL or 0xFF bytes."""
    head = bytes(data[:16])
    return (head.startswith((b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF87a", b"GIF89a",
                             b"II*\x00", b"MM\x00*"))
            or (head[:4] == b"RIFF" and head[8:12] == b"WEBP")
            or (head[:2] == b"BM" and len(head) >= 10 and head[6:10] == b"\x00\x00\x00\x00"))


def parent_dir(path: str) -> str:
    return path.rsplit("/", 1)[0] if "/" in path else "."


def resolve_ref(value: str, base_dir: str) -> str:
    """Relative image paths resolve against the CSV's folder; URIs stay as given."""
    if "://" in value or value.startswith("/"):
        return value
    return FileSystems.join(base_dir, value)


def quoted_names(names: Sequence[str]) -> str:
    """Column names for a message, quoted so spaces and empty names show."""
    return ", ".join(repr(n) for n in names)
