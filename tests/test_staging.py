"""Staged thumbnails (transforms/staging.py): written per bundle, read back
byte for byte, hashed as before, and the folder removed afterwards."""
import os

import apache_beam as beam
import numpy as np

from transforms.items import Embedded, ImageRef, StagedThumbnail, Thumbnail
from transforms.staging import LocalCopies, StageThumbnails, delete_staging, staging_dir

_OUT = []


def _keep(actual):
    _OUT.extend(actual)


def _items(n):
    rng = np.random.default_rng(0)
    return [Embedded(ImageRef(str(i), f"{i}.png", None, (str(i),), i),
                     Thumbnail.from_rgb(5 + i % 3, 4, rng.integers(0, 256, (5 + i % 3) * 4 * 3,
                                                                    dtype=np.uint8).tobytes()),
                     (np.full(3, i, np.float32),))
            for i in range(n)]


def test_staged_thumbnails_read_back_identical(tmp_path):
    from apache_beam.testing.util import assert_that

    items = _items(40)
    folder = staging_dir(str(tmp_path), "run1")
    _OUT.clear()
    with beam.Pipeline("FnApiRunner") as p:
        assert_that(p | beam.Create(items, reshuffle=False) | StageThumbnails(folder), _keep)
    assert len(_OUT) == 40 and os.listdir(folder)
    by_uid = {e.item.uid: e for e in _OUT}
    for e in items:
        staged = by_uid[e.item.uid].thumbnail
        assert isinstance(staged, StagedThumbnail)
        assert staged.png == e.thumbnail.png and staged.digest() == e.thumbnail.digest()
        assert staged.image().tobytes() == e.thumbnail.image().tobytes()
        assert (staged.width, staged.height) == (e.thumbnail.width, e.thumbnail.height)
    with LocalCopies([e.thumbnail for e in _OUT]) as local:   # local files: read in place
        assert local == [e.thumbnail for e in _OUT]
    delete_staging(folder)
    assert not os.path.exists(folder)
    delete_staging(folder)   # gone already: no error
