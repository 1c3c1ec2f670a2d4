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
    """An RGB thumbnail that fits inside a square tile (aspect ratio kept),
    stored as PNG: lossless, and about 35 % smaller than raw RGB on photos
    (BENCHMARKS.md, "Memory and shuffle"), which is what every stage after
    the thumbnail pass holds and shuffles per image."""
    width: int
    height: int
    png: bytes

    @classmethod
    def from_image(cls, img) -> "Thumbnail":
        import io
        buf = io.BytesIO()
        img.convert("RGB").save(buf, format="PNG", compress_level=1)
        return cls(img.width, img.height, buf.getvalue())

    @classmethod
    def from_rgb(cls, width: int, height: int, rgb: bytes) -> "Thumbnail":
        from PIL import Image
        return cls.from_image(Image.frombytes("RGB", (width, height), rgb))

    def image(self):
        """The thumbnail as a PIL RGB image."""
        import io

        from PIL import Image
        img = Image.open(io.BytesIO(self.png))
        img.load()
        return img

    @property
    def rgb(self) -> bytes:
        """Raw RGB bytes, row-major."""
        return self.image().tobytes()


class Thumbnailed(NamedTuple):
    """A sampled image that decoded, with its sprite thumbnail: all that
    crosses the cut to N. The model input is decoded again after the cut,
    inside the inference stage, so no model-sized pixels travel."""
    item: ImageRef                # content kept: the model pass decodes it again
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
