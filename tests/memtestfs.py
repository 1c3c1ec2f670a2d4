"""``memtest://``: a real Beam FileSystem with object-store semantics, for tests.

Registered under its own scheme over a temp folder, with semantics like GCS
(no directories, prefix listing, ``exists`` only for objects). Beam finds
filesystems by subclass, so importing this module registers it for the whole
process, which is where the in-memory FnApiRunner runs the workers.
"""
import os
import shutil

from apache_beam.io.filesystem import FileMetadata, FileSystem
from apache_beam.io.localfilesystem import LocalFileSystem

SCHEME = "memtest"


PREFIX = SCHEME + "://"


class MemTestFileSystem(FileSystem):
    """``memtest://bucket/key`` stored at ``root/bucket/key``; GCS-like semantics."""

    root = None  # set by the fixture; one backing folder per test session

    def __init__(self, pipeline_options=None):
        super().__init__(pipeline_options)
        self._local = LocalFileSystem(pipeline_options)

    @classmethod
    def scheme(cls):
        return SCHEME

    @classmethod
    def local(cls, path):
        assert path.startswith(PREFIX), path
        return os.path.join(cls.root, path[len(PREFIX):])

    @classmethod
    def remote(cls, local_path):
        return PREFIX + os.path.relpath(local_path, cls.root).replace(os.sep, "/")

    def join(self, basepath, *paths):
        path = basepath
        for p in paths:
            path = path.rstrip("/") + "/" + p.lstrip("/")
        return path

    def split(self, path):
        head, _, tail = path.rstrip("/").rpartition("/")
        return head, tail

    def has_dirs(self):
        return False

    def mkdirs(self, path):
        pass  # object stores have no folders

    def _list(self, prefix):
        for dirpath, _, files in os.walk(self.root):
            for name in files:
                local = os.path.join(dirpath, name)
                path = self.remote(local)
                if path.startswith(prefix):
                    yield FileMetadata(path, os.path.getsize(local), os.path.getmtime(local))

    def create(self, path, mime_type="application/octet-stream", compression_type="auto"):
        local = self.local(path)
        os.makedirs(os.path.dirname(local), exist_ok=True)
        return self._local.create(local, mime_type, compression_type)

    def open(self, path, mime_type="application/octet-stream", compression_type="auto"):
        return self._local.open(self.local(path), mime_type, compression_type)

    def copy(self, sources, destinations):
        for s, d in zip(sources, destinations):
            os.makedirs(os.path.dirname(self.local(d)), exist_ok=True)
            shutil.copyfile(self.local(s), self.local(d))

    def rename(self, sources, destinations):
        for s, d in zip(sources, destinations):
            os.makedirs(os.path.dirname(self.local(d)), exist_ok=True)
            os.replace(self.local(s), self.local(d))

    def exists(self, path):
        return os.path.isfile(self.local(path))  # a "folder" is only a prefix

    def size(self, path):
        return os.path.getsize(self.local(path))

    def last_updated(self, path):
        return os.path.getmtime(self.local(path))

    def checksum(self, path):
        return str(self.size(path))

    def metadata(self, path):
        return FileMetadata(path, self.size(path), self.last_updated(path))

    def delete(self, paths):
        # Like GCS: a trailing slash deletes everything under the prefix,
        # anything else deletes the objects the path matches.
        for path in paths:
            if path.endswith("/"):
                shutil.rmtree(self.local(path), ignore_errors=True)
            else:
                for m in self.match([path])[0].metadata_list:
                    os.remove(self.local(m.path))
