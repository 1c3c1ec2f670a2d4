"""Files through Beam's FileSystems: the few helpers every stage shares.

Every path the tool reads or writes may be local or any Beam filesystem URI
(gs://, s3://); these name the local case once and turn a filesystem error
into one line.
"""
from typing import BinaryIO, Callable, Optional

from apache_beam.io.filesystems import FileSystems
from apache_beam.io.localfilesystem import LocalFileSystem


def join(base: str, *parts: str) -> str:
    return FileSystems.join(base, *parts)


def is_local(path: str) -> bool:
    """Whether Beam reads ``path`` with its local filesystem (a plain path or
    file://); an unknown scheme is not local."""
    try:
        return isinstance(FileSystems.get_filesystem(path), LocalFileSystem)
    except ValueError:
        return False


def local_path(path: str) -> str:
    """A local ``path`` without its file:// scheme."""
    return path[len("file://"):] if path.startswith("file://") else path


def describe_io_error(e: Exception) -> str:
    """An OSError (also when Beam wraps it in BeamIOError) as '[Errno N] text'."""
    inner = getattr(e, "exception_details", None)
    if isinstance(inner, dict) and inner:
        e = next(iter(inner.values()))
    while isinstance(e, OSError) and e.errno is None and e.args and isinstance(e.args[0], OSError):
        e = e.args[0]   # LocalFileSystem wraps an OSError in IOError(err)
    if isinstance(e, OSError) and e.errno is not None:
        return f"[Errno {e.errno}] {e.strerror}"
    return f"{type(e).__name__}: {e}"


def write_bytes(path: str, data: bytes) -> None:
    with FileSystems.create(path, mime_type="application/octet-stream",
                            compression_type="uncompressed") as f:
        f.write(data)


def write_stream(path: str, write: Callable[[BinaryIO], None]) -> None:
    with FileSystems.create(path, mime_type="application/octet-stream",
                            compression_type="uncompressed") as f:
        write(f)


def read_text(path: str) -> Optional[str]:
    if not FileSystems.exists(path):
        return None
    with FileSystems.open(path, compression_type="uncompressed") as f:
        return f.read().decode("utf-8")


def replace_file(path: str, data: bytes, tag: str) -> None:
    """Write beside ``path`` then rename over it: readers see old or new, never half."""
    tmp = path + f".tmp-{tag}"
    write_bytes(tmp, data)
    if FileSystems.exists(path):
        # LocalFileSystem.rename refuses to overwrite on some platforms; GCS
        # rename is copy+delete either way.
        try:
            FileSystems.rename([tmp], [path])
            return
        except Exception:  # noqa: BLE001
            FileSystems.delete([path])
    FileSystems.rename([tmp], [path])
