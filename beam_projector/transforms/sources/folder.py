"""A folder (class sub-folders give a label) or a glob of image files -> ImageRefs."""

import apache_beam as beam

from beam_projector.transforms.records import METRICS_NAMESPACE, ImageRef
from beam_projector.transforms.sources.spec import SourceSpec, is_image_path


def relative_to(path: str, root: str) -> str:
    return path[len(root):].lstrip("/") if root and path.startswith(root) else path


class _FileToRefFn(beam.DoFn):
    """A listed file -> ImageRef; files without an image extension are
    skipped (and counted), as image_dataset_from_directory does."""

    def __init__(self, root: str, labelled: bool):
        self._root, self._labelled = root, labelled
        self._read = beam.metrics.Metrics.counter(METRICS_NAMESPACE, "read")
        self._skipped = beam.metrics.Metrics.counter(METRICS_NAMESPACE, "skipped_non_image")

    def process(self, metadata):
        path = metadata.path
        if not is_image_path(path):
            self._skipped.inc()
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
