"""Seeded bottom-k sampling: deterministic, uniform, mergeable."""
import collections
import json
import os
import subprocess
import sys

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.testing.test_pipeline import TestPipeline as BeamTestPipeline
from apache_beam.testing.util import assert_that, equal_to
from beam_projector.transforms.records import ImageRef
from beam_projector.transforms.sampling import SampleItems, sample_key


def test_sample_key_is_deterministic_and_seeded():
    assert sample_key("a.png", 0) == sample_key("a.png", 0)
    assert sample_key("a.png", 0) != sample_key("a.png", 1)
    assert sample_key("a.png", 0) != sample_key("b.png", 0)
    assert 0 <= sample_key("x", 3) < 2 ** 64


@pytest.mark.parametrize("hash_seed", ["0", "12345"])
def test_sample_key_is_the_same_in_another_process(hash_seed):
    """Workers are other processes, with Python's per-process hash salt: a
    key computed there must equal the one computed here."""
    uids = ["a.png", "b/c.jpg", "ü.png", "x" * 300]
    probe = ("import json, sys; from beam_projector.transforms.sampling import sample_key;"
             "print(json.dumps([sample_key(u, 7) for u in json.loads(sys.argv[1])]))")
    out = subprocess.run([sys.executable, "-c", probe, json.dumps(uids)], check=True,
                         capture_output=True, text=True,
                         env={**os.environ, "PYTHONHASHSEED": hash_seed}).stdout
    assert json.loads(out) == [sample_key(u, 7) for u in uids]


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


@pytest.mark.parametrize("parts", [1, 3, 17])
def test_pipeline_sample_matches_bottom_k_however_the_input_is_split(parts):
    """The input arrives as 1, 3 or 17 PCollections, reshuffled: other
    bundles, other partial combines, the same sample."""
    refs = _refs(500)
    expected = _bottom_k([r.uid for r in refs], 37, 11)
    with BeamTestPipeline("FnApiRunner") as p:
        pieces = [p | f"Part{i}" >> beam.Create(refs[i::parts], reshuffle=True)
                  for i in range(parts)]
        got = (pieces | beam.Flatten()
               | SampleItems(37, seed=11) | beam.Map(lambda r: r.uid))
        assert_that(got, equal_to(expected))


def test_the_sample_combiner_gives_one_answer_for_any_partition_and_merge_order():
    """What a runner may do with a CombineFn: accumulate any partition of the
    input, merge the partial results in any grouping and order."""
    from apache_beam.transforms.combiners import TopCombineFn

    from beam_projector.transforms.records import order_key
    from beam_projector.transforms.sampling import with_key

    refs = [with_key(r, 11) for r in _refs(300)]
    fn = TopCombineFn(37, key=order_key, reverse=True)
    want = None
    rng = np.random.default_rng(0)
    for _ in range(20):
        order = rng.permutation(len(refs))
        cuts = sorted(rng.choice(np.arange(1, len(refs)), size=rng.integers(0, 12), replace=False))
        accs = []
        for part in np.split(order, cuts):
            acc = fn.create_accumulator()
            for i in part:
                acc = fn.add_input(acc, refs[i])
            accs.append(acc)
        while len(accs) > 1:   # merge random pairs until one is left
            i, j = sorted(rng.choice(len(accs), size=2, replace=False))
            merged = fn.merge_accumulators([accs[i], accs[j]])
            accs = [a for k, a in enumerate(accs) if k not in (i, j)] + [merged]
        got = [r.uid for r in fn.extract_output(accs[0])]
        want = want or got
        assert got == want
    assert want == _bottom_k([r.uid for r in refs], 37, 11)


def test_sample_smaller_input_keeps_everything():
    with BeamTestPipeline("FnApiRunner") as p:
        got = p | beam.Create(_refs(5)) | SampleItems(10, seed=0) | beam.Map(lambda r: r.uid)
        assert_that(got, equal_to([f"img_{i}" for i in range(5)]))


def test_per_label_quota():
    refs = [ImageRef(f"u{i}", f"u{i}", None, (f"u{i}", "cat" if i < 90 else "dog")) for i in range(100)]
    with BeamTestPipeline("FnApiRunner") as p:
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
    summary = run_pipeline(neighbors=0, layout="none", input=str(folder / "images.csv"), model=model_path,
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


# --- the cut to N, planned before any decode and recomputed after failures --------

def _oracle(pairs, failed, n, per_label):
    """What checking every image before the cut keeps: the first per_label of
    each label among those that decode, then the first n of those."""
    ok = [(label, key) for label, key in pairs if key[0] not in failed]
    by_label = collections.defaultdict(list)
    for label, key in sorted(ok, key=lambda p: p[1]):
        by_label[label].append(key)
    allowed = {k for keys in by_label.values() for k in keys[:per_label or len(keys)]}
    return sorted(k for _, k in ok if k in allowed)[:n]


def test_plan_then_refill_keeps_exactly_what_checking_everything_first_keeps():
    """The pipeline embeds the plan's first N without checking them first,
    then refills each read/decode failure from the margin by the cut
    recomputed without the failures. Whatever fails, that must keep the same
    images as checking every image before the cut: the plan's survivors all
    stay kept (a failure only moves others up), and the refills are exactly
    the rest."""
    from beam_projector.transforms.sampling import cut_without, first_cut, within_cut

    rng = np.random.default_rng(3)
    for trial in range(300):
        size = int(rng.integers(1, 60))
        labels = [f"l{int(x)}" for x in rng.integers(0, 4, size)]
        pairs = [(labels[i], (int(k), f"u{i}")) for i, k in
                 enumerate(rng.choice(10 ** 6, size, replace=False))]
        n = int(rng.integers(1, 40))
        per_label = None if trial % 2 else int(rng.integers(1, 12))
        failed = {key[0] for _, key in pairs if rng.random() < 0.2}
        plan = first_cut(pairs, n, per_label)
        planned = [(lb, k) for lb, k in pairs if within_cut(k, lb, plan)]
        final = cut_without(failed, pairs, n, per_label)
        survivors = sorted(k for lb, k in planned if k[0] not in failed)
        refills = sorted(k for lb, k in pairs if not within_cut(k, lb, plan)
                         and k[0] not in failed and within_cut(k, lb, final))
        expected = _oracle(pairs, failed, n, per_label)
        assert plan.count == len(_oracle(pairs, set(), n, per_label))
        assert all(within_cut(k, lb, final) for lb, k in planned if k[0] not in failed)
        assert sorted(survivors + refills) == expected, (trial, n, per_label)


def test_the_cut_combiner_merges_bounded_partials_to_the_same_cut():
    from beam_projector.transforms.sampling import FirstCutFn, first_cut

    rng = np.random.default_rng(5)
    pairs = [(f"l{i % 3}", (int(k), f"u{i}")) for i, k in enumerate(rng.permutation(5000))]
    for per_label in (None, 7):
        fn = FirstCutFn(25, per_label)
        parts = []
        for chunk in np.array_split(np.arange(len(pairs)), 6):
            acc = fn.create_accumulator()
            for i in chunk:
                acc = fn.add_input(acc, pairs[i])
            assert sum(len(v) for v in acc.values()) <= 3 * 2 * (per_label or 25)  # bounded
            parts.append(acc)
        got = fn.extract_output(fn.merge_accumulators(parts))
        assert got == first_cut(pairs, 25, per_label)
        assert got.count == (21 if per_label else 25)


def test_an_empty_cut_keeps_nothing():
    from beam_projector.transforms.sampling import first_cut, within_cut

    cut = first_cut([], 10)
    assert cut.count == 0 and not within_cut((1, "a"), None, cut)
