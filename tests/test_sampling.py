"""Seeded bottom-k sampling: deterministic, uniform, mergeable."""
import collections

import apache_beam as beam
import numpy as np
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from transforms.items import ImageRef
from transforms.sampling import SampleItems, sample_key


def test_sample_key_is_deterministic_and_seeded():
    assert sample_key("a.png", 0) == sample_key("a.png", 0)
    assert sample_key("a.png", 0) != sample_key("a.png", 1)
    assert sample_key("a.png", 0) != sample_key("b.png", 0)
    assert 0 <= sample_key("x", 3) < 2 ** 64


def test_sample_keys_are_uniform():
    keys = np.array([sample_key(f"img_{i}.jpg", 7) for i in range(20000)], dtype=np.float64) / 2 ** 64
    counts, _ = np.histogram(keys, bins=10, range=(0, 1))
    # chi-square with 9 dof: 27.9 is the 0.1% critical value
    expected = len(keys) / 10
    assert ((counts - expected) ** 2 / expected).sum() < 27.9


def _bottom_k(uids, n, seed):
    return sorted(uids, key=lambda u: (sample_key(u, seed), u))[:n]


def test_bottom_k_selection_is_uniform_over_items():
    # each of 20 items should be picked in about n/20 of seeds
    uids = [f"u{i}" for i in range(20)]
    hits = collections.Counter()
    for seed in range(2000):
        hits.update(_bottom_k(uids, 5, seed))
    freq = np.array([hits[u] for u in uids]) / 2000
    assert np.allclose(freq, 5 / 20, atol=0.04)


def _refs(n):
    return [ImageRef(uid=f"img_{i}", ref=f"img_{i}.png", content=None, metadata=(str(i),))
            for i in range(n)]


def test_pipeline_sample_matches_bottom_k_on_every_bundle_split():
    uids = [r.uid for r in _refs(500)]
    expected = _bottom_k(uids, 37, 11)
    with TestPipeline("FnApiRunner") as p:
        got = (p | beam.Create(_refs(500), reshuffle=True)
               | SampleItems(37, seed=11) | beam.Map(lambda r: r.uid))
        assert_that(got, equal_to(expected))


def test_sample_smaller_input_keeps_everything():
    with TestPipeline("FnApiRunner") as p:
        got = p | beam.Create(_refs(5)) | SampleItems(10, seed=0) | beam.Map(lambda r: r.uid)
        assert_that(got, equal_to([f"img_{i}" for i in range(5)]))


def test_per_label_quota():
    refs = [ImageRef(f"u{i}", f"u{i}", None, (f"u{i}", "cat" if i < 90 else "dog")) for i in range(100)]
    with TestPipeline("FnApiRunner") as p:
        got = (p | beam.Create(refs) | SampleItems(50, seed=0, per_label=5, label_index=1)
               | beam.Map(lambda r: r.metadata[1]) | beam.combiners.Count.PerElement())
        assert_that(got, equal_to([("cat", 5), ("dog", 5)]))


def test_per_label_quota_is_refilled_when_images_fail(digits, model_path, tmp_path):
    """Failed images inside a label's first K keys do not shrink that label."""
    import csv
    import os
    import shutil

    from support import run_pipeline

    csv_path, rows = digits
    base = os.path.dirname(csv_path)
    folder = tmp_path / "data"
    folder.mkdir()
    table = []
    for i, r in enumerate(rows[:20]):
        name = f"img_{i:02d}.png"
        shutil.copy(os.path.join(base, r["path"]), folder / name)
        table.append([name, "a" if i < 10 else "b"])
    uid = lambda row: "\x1f".join(row)  # noqa: E731 - the CSV source's uid
    a_rows = sorted((r for r in table if r[1] == "a"), key=lambda r: sample_key(uid(r), 0))
    for name, _ in a_rows[:2]:           # break label a's two first picks
        (folder / name).write_bytes(b"")
    with open(folder / "images.csv", "w", newline="") as f:
        csv.writer(f).writerows([["path", "label"]] + table)
    out = tmp_path / "out"
    summary = run_pipeline(neighbors=0, input=str(folder / "images.csv"), model=model_path,
                           output=str(out), max_items=100, max_per_label=3,
                           max_error_fraction=0.4, tile_size=16)
    assert summary["written"] == 6
    meta = [line.split("\t") for line in
            next(out.glob("data-*/metadata.tsv")).read_text().splitlines()[1:]]
    assert sorted(label for _, label in meta) == ["a"] * 3 + ["b"] * 3
    assert sorted(p for p, label in meta if label == "a") == sorted(r[0] for r in a_rows[2:5])
    errors = (out / "errors.tsv").read_text().splitlines()[1:]
    assert sorted(e.split("\t")[0].rsplit("/", 1)[-1] for e in errors) == sorted(
        r[0] for r in a_rows[:2])
