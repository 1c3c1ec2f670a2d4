"""Pure rules for the standalone Embedding Projector (no TensorBoard server).

The standalone projector (projector.tensorflow.org, and the ``vz-projector-app``
element TensorBoard's own projector bundle also registers) reads one JSON
config in "demo" serving mode. Its data provider fetches every path in that
config as a URL relative to the *page*, not to the JSON file, and reads a
tensor as raw float32 exactly when ``tensorPath`` ends in ``.bytes``. So the
writer puts ``projector_config.json`` in the logdir root with paths relative to
that root, and the page that shows it must be served from the same folder.
"""
import html
import json
import posixpath
from typing import Optional, Sequence, Tuple

STANDALONE_CONFIG_NAME = "projector_config.json"
INDEX_NAME = "index.html"
# TensorBoard's projector bundle (Apache-2.0), copied from the installed
# tensorboard package so the export needs no download and no server code.
BUNDLE_NAME = "projector_binary.js"
BUNDLE_PACKAGE = "tensorboard.plugins.projector.tf_projector_plugin"
BYTES_EXTENSION = ".bytes"
# Lets the writer tell its own index.html from one a user put in the logdir.
INDEX_MARKER = "<!-- written by beam-projector -->"


def _check_relative(path: str, what: str) -> str:
    if (not path or path.startswith("/") or "://" in path or "\\" in path
            or ".." in posixpath.normpath(path).split("/")):
        raise ValueError(f"{what} must be a relative path inside the export, got {path!r}")
    return path


def config_json(tensors: Sequence[Tuple[str, Tuple[int, int], str]], metadata_path: str,
                sprite_path: Optional[str], tile: int,
                bookmarks_path: Optional[str] = None) -> str:
    """projector_config.json: one entry per (tensor_name, (N, D), .bytes path);
    ``bookmarks_path`` (fetched by the page like the others) for each, when given."""
    if not tensors:
        raise ValueError("the standalone config needs at least one tensor")
    embeddings = []
    for name, shape, path in tensors:
        if not _check_relative(path, "tensorPath").endswith(BYTES_EXTENSION):
            raise ValueError(f"tensorPath must end in {BYTES_EXTENSION} to be read as "
                             f"float32, got {path!r}")
        n, d = (int(v) for v in shape)
        if n < 1 or d < 1:
            raise ValueError(f"tensorShape must be positive, got {shape!r}")
        emb = {"tensorName": str(name), "tensorShape": [n, d], "tensorPath": path,
               "metadataPath": _check_relative(metadata_path, "metadataPath")}
        if sprite_path:
            emb["sprite"] = {"imagePath": _check_relative(sprite_path, "sprite.imagePath"),
                             "singleImageDim": [int(tile), int(tile)]}
        if bookmarks_path:
            emb["bookmarksPath"] = _check_relative(bookmarks_path, "bookmarksPath")
        embeddings.append(emb)
    return json.dumps({"embeddings": embeddings}, indent=2) + "\n"


def index_html(config_name: str = STANDALONE_CONFIG_NAME, title: str = "Embedding Projector",
               bundle_name: str = BUNDLE_NAME) -> str:
    """A page that runs the projector bundle in demo mode on ``config_name``.

    ``polymerSkipLoadingFontRoboto`` stops the bundle from fetching Google
    Fonts, so the page loads nothing from outside the folder.
    """
    cfg = html.escape(_check_relative(config_name, "config path"), quote=True)
    js = html.escape(_check_relative(bundle_name, "bundle path"), quote=True)
    return f"""<!doctype html>
{INDEX_MARKER}
<html>
<head>
<meta charset="utf-8">
<title>{html.escape(title)}</title>
<style>html, body {{ height: 100%; margin: 0; width: 100%; font-family: Roboto, sans-serif; }}</style>
<script>window.polymerSkipLoadingFontRoboto = true;</script>
</head>
<body>
<vz-projector-app serving-mode="demo" projector-config-json-path="{cfg}"
  documentation-link="https://www.tensorflow.org/tensorboard/tensorboard_projector_plugin"
  bug-report-link=""></vz-projector-app>
<script src="{js}"></script>
</body>
</html>
"""
