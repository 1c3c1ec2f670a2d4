"""The records that flow between stages.

NamedTuples rather than dicts: they pickle small, compare in a stable order and
make each stage's contract visible in one place. Records hold data only: a
staged thumbnail is read back by ``staging``, not by its record.
"""
from typing import NamedTuple, Optional, Tuple

# --max_image_bytes default: 256 MiB is the raw size of an 8-bit RGB image at
# Pillow's pixel limit (Image.MAX_IMAGE_PIXELS = 89,478,485 px x 3 bytes =
# 256 MiB - 1), which the decoder refuses anyway; compressed photos are far
# smaller (a 100-megapixel JPEG is about 30-60 MB). A larger file is a scan
# with 16-bit or alpha channels at best, and not worth a worker's memory.
# Every image read (files, and TFRecord records carrying image bytes) stops
# at this many bytes + 1.
DEFAULT_MAX_IMAGE_BYTES = 256 * 1024 * 1024


# Names shared by every stage, in one place: the Beam metrics namespace of
# every counter (pipeline.progress reads it back), and the tag of every
# dead-letter output (ErrorRow elements) a step emits beside its main one.
METRICS_NAMESPACE = "projector"


ERRORS_TAG = "errors"


# errors.tsv holds one short line per failure: every value it writes (the
# input's name, the stage, the reason) is cut to this many characters, since
# a CSV field can be a pasted blob and a reason can quote one.
MAX_ERROR_CHARS = 300


def capped(value, limit: int = MAX_ERROR_CHARS) -> str:
    """``value`` as one printable line of at most ``limit`` characters; a cut
    value ends saying how long it was."""
    text = "".join(c if c.isprintable() else " " for c in str(value))
    if len(text) <= limit:
        return text
    tail = f"... ({len(text):,} characters)"
    return text[:max(0, limit - len(tail))] + tail


class ImageRef(NamedTuple):
    """One input item before decoding."""
    uid: str                      # stable identity the sample key hashes
    ref: str                      # path/URI, or a description of where the bytes came from
    content: Optional[bytes]      # the encoded image when the source holds it
    metadata: Tuple[str, ...]     # values for the metadata columns, in column order
    key: int = 0                  # seeded sample key (filled by sampling.assign_key)


class Thumbnail(NamedTuple):
    """An RGB thumbnail that fits inside a square tile (aspect ratio kept),
    stored as PNG: lossless, and about a third smaller than raw RGB on
    photos (docs/benchmarks-history.md, "Memory and shuffle"), which is what every stage
    after the embedding stage holds and shuffles per image. Encoded and
    decoded with the sprite's own PNG code (``png.encode_png``), which
    costs about half of Pillow's per thumbnail ("Throughput, third pass")."""
    width: int
    height: int
    png: bytes

    @classmethod
    def from_image(cls, img) -> "Thumbnail":
        import numpy as np

        from beam_projector.transforms.png import encode_png
        return cls(img.width, img.height, encode_png(np.asarray(img.convert("RGB"))))

    @classmethod
    def from_rgb(cls, width: int, height: int, rgb: bytes) -> "Thumbnail":
        from PIL import Image
        return cls.from_image(Image.frombytes("RGB", (width, height), rgb))

    def image(self):
        """The thumbnail as a PIL RGB image."""
        from PIL import Image

        from beam_projector.transforms.png import decode_own_png
        pixels = decode_own_png(self.png)
        if pixels is not None and pixels.shape == (self.height, self.width, 3):
            return Image.fromarray(pixels)
        import io
        img = Image.open(io.BytesIO(self.png))   # a PNG from elsewhere
        img.load()
        return img

    @property
    def rgb(self) -> bytes:
        """Raw RGB bytes, row-major."""
        return self.image().tobytes()

    def digest(self) -> bytes:
        """sha256 of the PNG: what the logdir's digest hashes per thumbnail."""
        import hashlib
        return hashlib.sha256(self.png).digest()


class StagedThumbnail(NamedTuple):
    """A ``Thumbnail`` whose PNG waits in a staging file instead of
    travelling to the writer (``staging``, which also reads it back)."""
    width: int
    height: int
    path: str
    offset: int
    length: int
    sha256: bytes

    def digest(self) -> bytes:
        return self.sha256


class Embedded(NamedTuple):
    """What the writer needs for one image: order, metadata, tile, vectors."""
    item: ImageRef
    thumbnail: Thumbnail
    vectors: Tuple[object, ...]   # one float32 vector per embedding tensor


class ErrorRow(NamedTuple):
    """A dead-letter row: which item, at which stage, and why. ``fields``:
    the failed element's own identifying fields, (name, value) pairs, so a
    library user can trace it back (errors.tsv shows them in ``ref``)."""
    ref: str
    stage: str
    reason: str
    key: int = 0
    fields: Tuple[Tuple[str, str], ...] = ()


class TotalChange(NamedTuple):
    """Not an item: tells a progress step its total moved by ``delta`` (an
    image the plan sent to the model failed, or a refill took its place)."""
    delta: int


def order_key(item: ImageRef):
    """The total order used for sampling and for writing: key, then uid."""
    return (item.key, item.uid)
