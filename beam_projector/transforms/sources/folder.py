"""A folder (class sub-folders give a label) or a glob of image files -> ImageRefs."""

import re
from typing import Optional

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems

from beam_projector.transforms.records import METRICS_NAMESPACE, ImageRef
from beam_projector.transforms.sources.spec import SourceSpec, is_image_path
from beam_projector.transforms.write.layout import (
    DATA_PREFIX,
    MANIFEST_NAME,
    PREVIEW_NAME,
    SPRITE_NAME,
)


def relative_to(path: str, root: str) -> str:
    return path[len(root):].lstrip("/") if root and path.startswith(root) else path


_OWN_SPRITE = re.compile("/" + re.escape(DATA_PREFIX) + "[0-9a-f]{16}/" + re.escape(SPRITE_NAME) + "$")


def own_logdir_picture(path: str) -> Optional[str]:
    """The logdir when ``path`` is a picture beam-projector wrote there
    (``LOGDIR/preview.png``, ``LOGDIR/data-<digest>/sprite.png``, with
    LOGDIR holding the tool's manifest), else None. A logdir inside an image
    folder (an older version allowed ``--input 'F/*.jpg' --output F``, and a
    sub-folder is allowed) must not feed its preview and sprite to a later
    run over the folder. Only those two names are looked at, so a folder of
    photos costs nothing."""
    if path.endswith("/" + PREVIEW_NAME):
        logdir = path[:-len(PREVIEW_NAME) - 1]
    elif _OWN_SPRITE.search(path):
        logdir = path.rsplit("/", 2)[0]
    else:
        return None
    try:
        return logdir if FileSystems.exists(FileSystems.join(logdir, MANIFEST_NAME)) else None
    except Exception:  # noqa: BLE001 - unknown: read it as an image, as before
        return None


class _FileToRefFn(beam.DoFn):
    """A listed file -> ImageRef; files without an image extension are
    skipped (and counted), as image_dataset_from_directory does, and so are
    the preview and sprites of a beam-projector logdir inside the folder."""

    def __init__(self, root: str, labelled: bool):
        self._root, self._labelled = root, labelled
        self._read = beam.metrics.Metrics.counter(METRICS_NAMESPACE, "read")
        self._skipped = beam.metrics.Metrics.counter(METRICS_NAMESPACE, "skipped_non_image")
        self._ours = beam.metrics.Metrics.counter(METRICS_NAMESPACE, "skipped_logdir_picture")

    def process(self, metadata):
        path = metadata.path
        if not is_image_path(path):
            self._skipped.inc()
            return
        if own_logdir_picture(path):
            self._ours.inc()
            return
        rel = relative_to(path, self._root)
        values = (rel,)
        if self._labelled:
            values += (rel.split("/", 1)[0] if "/" in rel else "",)
        self._read.inc()
        # The path relative to the folder: the same sample wherever the folder lives.
        yield ImageRef(uid=rel, ref=path, content=None, metadata=values)


class ReadImageFolder(beam.PTransform):
    """A folder (class sub-folders give ``label``) or a glob of image files ->
    (ImageRefs, errors). Listing happens on the workers (``MatchAll``), so a
    bucket of millions of images never passes through the launcher."""

    def __init__(self, spec: SourceSpec):
        super().__init__()
        self._spec = spec

    def expand(self, pbegin):
        from apache_beam.io import fileio
        spec = self._spec
        refs = (pbegin
                | "Pattern" >> beam.Create([spec.pattern])
                | "ListFiles" >> fileio.MatchAll()
                | "ImageFiles" >> beam.ParDo(_FileToRefFn(spec.root, spec.labelled)))
        # Listing has no per-item failure; unreadable images fail at decode.
        errors = pbegin | "NoListErrors" >> beam.Create([])
        return refs, errors
