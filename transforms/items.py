"""The records that flow between stages.

NamedTuples rather than dicts: they pickle small, compare in a stable order and
make each stage's contract visible in one place.
"""
from typing import NamedTuple, Optional, Tuple

# The largest encoded image (or TFRecord record) read into memory: no real photo
# comes near it, and a bigger one would be a worker's memory for one item.
DEFAULT_MAX_IMAGE_BYTES = 256 * 1024 * 1024


class ImageRef(NamedTuple):
    """One input item before decoding."""
    uid: str                      # stable identity the sample key hashes
    ref: str                      # path/URI, or a description of where the bytes came from
    content: Optional[bytes]      # the encoded image when the source holds it
    metadata: Tuple[str, ...]     # values for the metadata columns, in column order
    key: int = 0                  # seeded sample key (filled by sampling.assign_key)


class Thumbnail(NamedTuple):
    """An RGB thumbnail that fits inside a square tile (aspect ratio kept)."""
    width: int
    height: int
    rgb: bytes


class DecodedImage(NamedTuple):
    """One decoded image: the model input and its sprite thumbnail."""
    item: ImageRef                # content dropped after decode
    pixels: object                # uint8 numpy array H x W x 3 for the model
    thumbnail: Thumbnail


class Embedded(NamedTuple):
    """What the writer needs for one image: order, metadata, tile, vectors."""
    item: ImageRef
    thumbnail: Thumbnail
    vectors: Tuple[object, ...]   # one float32 vector per embedding tensor


class ErrorRow(NamedTuple):
    """A dead-letter row: which item, at which stage, and why."""
    ref: str
    stage: str
    reason: str
    key: int = 0


def order_key(item: ImageRef):
    """The total order used for sampling and for writing: key, then uid."""
    return (item.key, item.uid)
