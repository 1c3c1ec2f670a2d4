"""The public source: ``ReadImages`` -> ``ReadResult`` (images and dead letters)."""
from typing import Optional, Sequence, Tuple

import apache_beam as beam

from beam_projector.transforms.records import DEFAULT_MAX_IMAGE_BYTES
from beam_projector.transforms.sources.csv_files import ReadCsv
from beam_projector.transforms.sources.detect import describe_input
from beam_projector.transforms.sources.folder import ReadImageFolder
from beam_projector.transforms.sources.spec import INPUT_KINDS, SourceSpec
from beam_projector.transforms.sources.tfrecords import ReadTFRecordExamples


class ReadImageRefs(beam.PTransform):
    """Any input kind -> (ImageRefs, errors): the reader ``spec.kind`` names."""

    def __init__(self, spec: SourceSpec, max_record_bytes: int = DEFAULT_MAX_IMAGE_BYTES):
        super().__init__()
        self._spec = spec
        self._max_record_bytes = max_record_bytes

    def expand(self, pbegin):
        spec = self._spec
        if spec.kind == "csv":
            return pbegin | "Csv" >> ReadCsv(spec.paths, spec.image_column)
        if spec.kind == "tfrecord":
            return pbegin | "TFRecord" >> ReadTFRecordExamples(spec, self._max_record_bytes)
        if spec.kind == "folder":
            return pbegin | "Folder" >> ReadImageFolder(spec)
        raise ValueError(f"unknown input kind {spec.kind!r}; expected one of {INPUT_KINDS}")


# the two outputs of a ReadResult
IMAGES, ERRORS = "images", "errors"


class ReadResult(dict):
    """What ``ReadImages`` returns: ``.images`` (ImageRefs) and ``.errors``
    (``ErrorRow`` dead letters), plus ``.columns`` (the metadata columns).

    ``|`` chains on: a transform with an ``accept_read_result(columns)``
    method (``ImagesToProjector``) takes both, learning the source's columns
    (the read errors land in errors.tsv); any other transform applies to
    ``.images``.
    """

    def __init__(self, outputs=(), columns: Tuple[str, ...] = ()):
        # Beam copies its inputs with type(result)(dict): keep that signature.
        super().__init__(outputs)
        self.columns = tuple(columns)

    @property
    def images(self):
        return self[IMAGES]

    @property
    def errors(self):
        return self[ERRORS]

    def __or__(self, transform):
        inner = getattr(transform, "transform", transform)   # "label" >> transform
        accept = getattr(inner, "accept_read_result", None)
        if accept is None:
            return self.images | transform
        # before Beam applies it: Beam hands expand a copy of this dict,
        # without the columns
        accept(self.columns)
        return transform.__ror__(self)


class ReadImages(beam.PTransform):
    """A CSV of image paths, TFRecord files of tf.Example (TFDS shards too), or a
    folder / glob of images -> ``ReadResult``; the kind is detected here, on
    the launcher, and every problem with the input raises ``ValueError`` now.

        read = p | ReadImages("images.csv", image_column="path")
    """

    def __init__(self, input: str = "", image_column: str = "path", image_feature: str = "",
                 metadata_features: Sequence[str] = (), compression: str = "auto",
                 max_record_bytes: int = DEFAULT_MAX_IMAGE_BYTES,
                 spec: Optional[SourceSpec] = None):
        super().__init__()
        self.spec = spec or describe_input(
            input, image_column=image_column, image_feature=image_feature,
            metadata_features=tuple(metadata_features), compression=compression)
        self._max_record_bytes = max_record_bytes

    @property
    def columns(self) -> Tuple[str, ...]:
        return self.spec.columns

    def expand(self, pbegin):
        images, errors = pbegin | "Read" >> ReadImageRefs(
            self.spec, max_record_bytes=self._max_record_bytes)
        return ReadResult({IMAGES: images, ERRORS: errors}, self.spec.columns)
