"""The TFRecord framing, read with checksums and a length bound before allocation.

Records are read here rather than with Beam's ReadAllFromTFRecord (see
``tfrecords._ReadTFRecordFileFn`` for why); the framing is 16 bytes of
documented format: length, its masked CRC32C, data, the data's masked CRC32C.
"""
import struct
from typing import Iterator, Tuple

from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from beam_projector.transforms.records import DEFAULT_MAX_IMAGE_BYTES
from beam_projector.transforms.sources.spec import COMPRESSIONS, SourceError

_GZIP_MAGIC = b"\x1f\x8b"


def _masked_crc(data: bytes) -> int:
    import google_crc32c  # ships with apache-beam[gcp]; Beam's own TFRecord coder uses it
    crc = google_crc32c.value(bytes(data))
    return ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + 0xA282EAD8) & 0xFFFFFFFF


class TFRecordFramingError(SourceError):
    """The record stream is broken at ``offset`` (bytes from the start of the
    stream, uncompressed for GZIP); framing cannot resync past it."""

    def __init__(self, reason: str, offset: int):
        super().__init__(f"{reason} at byte {offset}")
        self.reason, self.offset = reason, offset


def iter_tfrecords_at(f, max_record_bytes: int = DEFAULT_MAX_IMAGE_BYTES
                      ) -> Iterator[Tuple[int, bytes]]:
    """(offset, record) of an open TFRecord stream, checksums verified.

    The length is checked against its CRC and against ``max_record_bytes``
    before anything is allocated: a flipped bit (or a hostile file) can claim
    2^40 bytes, and ``f.read(2**40)`` is a MemoryError or a worker OOM.
    Raises TFRecordFramingError naming the offset of the bad record.
    """
    offset = 0
    while True:
        header = f.read(12)
        if not header:
            return
        if len(header) < 12:
            raise TFRecordFramingError("truncated TFRecord header", offset)
        length, length_crc = struct.unpack("<QI", header)
        if _masked_crc(header[:8]) != length_crc:
            # at the start: some other kind of file; after good records: a
            # damaged TFRecord (a flipped bit, a bad copy)
            raise TFRecordFramingError(
                "not a TFRecord file (record length checksum mismatch)" if offset == 0
                else "corrupt TFRecord record header (length checksum mismatch)", offset)
        if length > max_record_bytes:
            raise TFRecordFramingError(
                f"TFRecord record of {length} bytes exceeds the limit of {max_record_bytes}",
                offset)
        data = f.read(length)
        footer = f.read(4)
        if len(data) < length or len(footer) < 4:
            raise TFRecordFramingError("truncated TFRecord record", offset)
        if _masked_crc(data) != struct.unpack("<I", footer)[0]:
            raise TFRecordFramingError("corrupt TFRecord record (data checksum mismatch)", offset)
        yield offset, data
        offset += 16 + length


def iter_tfrecords(f, max_record_bytes: int = DEFAULT_MAX_IMAGE_BYTES) -> Iterator[bytes]:
    """Records of an open TFRecord stream, checksums and length bound verified."""
    for _, record in iter_tfrecords_at(f, max_record_bytes):
        yield record


def compression_type(compression: str) -> str:
    return CompressionTypes.GZIP if compression == "gzip" else CompressionTypes.UNCOMPRESSED


def _head(path: str, n: int) -> bytes:
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
        return f.read(n)


def resolve_compression(path: str, requested: str = "auto") -> str:
    """``none`` or ``gzip`` for a TFRecord file: as requested, else from the
    extension, else from the gzip magic bytes (TFDS-style GZIP shards often
    keep a plain .tfrecord name)."""
    if requested not in COMPRESSIONS:
        raise SourceError(f"--compression must be one of {', '.join(COMPRESSIONS)}, "
                          f"got {requested!r}")
    if requested != "auto":
        return requested
    if path.lower().endswith((".gz", ".gzip")):
        return "gzip"
    return "gzip" if _head(path, 2) == _GZIP_MAGIC else "none"


def is_tfrecord(path: str) -> bool:
    try:
        with FileSystems.open(path, compression_type=compression_type(
                resolve_compression(path))) as f:
            next(iter_tfrecords(f), None)
        return True
    except Exception:  # noqa: BLE001 - anything unreadable as TFRecord is not one
        return False
