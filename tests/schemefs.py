"""A Beam ``FileSystem`` under the ``schemefs://`` scheme, over a local folder
(``SCHEMEFS_ROOT``), for code that must read through Beam's FileSystems.

It imports only apache_beam, so it also loads in Airflow's virtualenv (where
Beam comes with the Beam provider). Beam finds filesystems by subclass:
importing this module registers the scheme in that process.
"""
import os

from apache_beam.io.localfilesystem import LocalFileSystem

SCHEME = "schemefs"


class SchemeTestFileSystem(LocalFileSystem):
    """``schemefs://a/b`` is ``$SCHEMEFS_ROOT/a/b``; nothing else changes."""

    @classmethod
    def scheme(cls):
        return SCHEME

    @staticmethod
    def _local(path):
        prefix = SCHEME + "://"
        if path.startswith(prefix):
            return os.path.join(os.environ["SCHEMEFS_ROOT"], path[len(prefix):])
        return path

    def open(self, path, *args, **kwargs):
        return super().open(self._local(path), *args, **kwargs)

    def exists(self, path):
        return super().exists(self._local(path))

    def match(self, patterns, limits=None):
        return super().match([self._local(p) for p in patterns], limits)
