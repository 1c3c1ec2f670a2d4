"""The offline layout (issue 27): the pure steps (prepare, fit, place,
clusters) and the ``LayoutColumns`` stage. Placement must not depend on how
rows are batched (runners bundle differently), the fit must give the same
bytes every time, and the layout must be a good one."""
import subprocess
import sys

import numpy as np
import pytest
from beam_projector.transforms import layout
from beam_projector.transforms.layout_stage import LayoutColumns


@pytest.fixture(scope="module")
def pixels():
    """scikit-learn's 1,797 real digits, 64 grey levels each, with labels."""
    from sklearn.datasets import load_digits

    d = load_digits()
    return d.data.astype(np.float32), d.target.astype(str)


@pytest.fixture(scope="module")
def fitted(pixels):
    x, labels = pixels
    return layout.fit_layout(list(range(800)), x[:800], list(labels[:800]))


def test_placement_is_bitwise_independent_of_the_batch(pixels, fitted):
    """The same rows placed all at once, one by one, in odd chunks and in
    reverse give the same bits (UMAP.transform does not: its epochs, its
    pruning and its random state are per call)."""
    x, _ = pixels
    rows = x[800:1000]
    whole, cl = layout.place(fitted, rows)
    assert whole.shape == (200, 2) and np.isfinite(whole).all()
    for size, count in ((1, 12), (7, 200), (133, 200)):
        parts = [layout.place(fitted, rows[a:a + size]) for a in range(0, count, size)]
        assert np.concatenate([p[0] for p in parts]).tobytes() == whole[:count].tobytes(), size
        assert np.concatenate([p[1] for p in parts]).tolist() == cl[:count].tolist(), size
    rev = layout.place(fitted, rows[::-1])
    assert rev[0][::-1].tobytes() == whole.tobytes()


def test_a_sample_row_keeps_its_fitted_position(pixels, fitted):
    x, _ = pixels
    values = dict(layout.layout_values(fitted, [3, 900], x[[3, 900]]))
    assert values[3][1:] == tuple(layout.format_coordinate(v, fitted.decimals)
                                  for v in fitted.y[3])
    assert values[3][0] == fitted.names[fitted.cluster[3]]
    placed, cl = layout.place(fitted, x[[900]], layout.row_ids([900]))
    assert values[900][1:] == tuple(layout.format_coordinate(v, fitted.decimals)
                                    for v in placed[0])


def test_placed_points_land_among_the_sample_layout(pixels, fitted):
    """Placed points stay on the sample's map (the optimisation moves them
    from the weighted mean of their neighbours, not off the plot), and the
    draws are keyed by the row, not its place: another key moves a point."""
    x, _ = pixels
    y, _ = layout.place(fitted, x[800:])
    lo, hi = fitted.y.min(axis=0), fitted.y.max(axis=0)
    span = hi - lo
    assert (y >= lo - 0.1 * span).all() and (y <= hi + 0.1 * span).all()
    ids = layout.row_ids([(7, "a"), (7, "b"), (8, "a")])
    assert ids[0] == ids[1] == 7 and ids[2] == 8
    a, _ = layout.place(fitted, x[800:801], np.array([1], np.uint64))
    b, _ = layout.place(fitted, x[800:801], np.array([2], np.uint64))
    assert a.tobytes() != b.tobytes() and np.abs(a - b).max() < 0.5 * span.max()


_FIT_IN_CHILD = r"""
import hashlib, sys
import numpy as np
from sklearn.datasets import load_digits
from beam_projector.transforms import layout
x = load_digits().data.astype(np.float32)[:600]
m = layout.fit_layout(list(range(600)), x)
print(hashlib.sha256(m.y.tobytes() + m.cluster.tobytes()).hexdigest())
"""


@pytest.mark.slow
def test_the_fit_gives_the_same_bytes_in_every_process(pixels):
    """Seeded UMAP: two fresh processes and this one agree bit for bit."""
    import hashlib

    x, _ = pixels
    m = layout.fit_layout(list(range(600)), x[:600])
    here = hashlib.sha256(m.y.tobytes() + m.cluster.tobytes()).hexdigest()
    for _ in range(2):
        out = subprocess.run([sys.executable, "-c", _FIT_IN_CHILD], capture_output=True,
                             text=True, check=True).stdout.split()[-1]
        assert out == here


def _nn_share(pos, labels, k=10):
    d = ((pos[:, None, :] - pos[None, :, :]) ** 2).sum(-1)
    np.fill_diagonal(d, np.inf)
    idx = np.argsort(d, axis=1, kind="stable")[:, :k]
    return float((labels[idx] == labels[:, None]).mean())


def test_the_layout_keeps_neighbours_far_better_than_pca(pixels, fitted):
    """A quality floor on real data: fitted on 800 of the 1,797 digits, the
    rest placed. Measured here: trustworthiness@10 0.98, 10-NN label share
    0.96 (a 2-D PCA: 0.83 and 0.57)."""
    from sklearn.manifold import trustworthiness

    from beam_projector.transforms.preview import pca_2d

    x, labels = pixels
    y = np.concatenate([fitted.y, layout.place(fitted, x[800:])[0]])
    pca = pca_2d(x)
    trust, trust_pca = (trustworthiness(x, p, n_neighbors=10) for p in (y, pca))
    share, share_pca = _nn_share(y, labels), _nn_share(pca, labels)
    print(f"trust10 {trust:.3f} (pca {trust_pca:.3f}), nn10 label share {share:.3f} "
          f"(pca {share_pca:.3f})")
    assert trust >= 0.95 and share >= 0.9
    assert trust > trust_pca + 0.05 and share > share_pca + 0.2


def test_clusters_fit_color_by_and_are_named_after_their_majority(pixels, fitted):
    _, labels = pixels
    names = fitted.names
    assert 2 <= len(names) <= layout.MAX_CLUSTERS
    assert len(set(names)) == len(names)
    assert set(fitted.cluster.tolist()) == set(range(len(names)))
    for c, name in enumerate(names):
        members = labels[:800][fitted.cluster == c]
        values, counts = np.unique(members, return_counts=True)
        if counts.max() >= 0.5 * len(members):
            assert name == f"{c:02d} {values[counts.argmax()]}"
        else:
            assert name == f"{c:02d} mixed"
    # the digits' classes come out as clusters: most are named after one digit
    assert len({n.split()[1] for n in names if n.split()[1].isdigit()}) >= 8


def test_more_clusters_than_color_by_shows_are_capped():
    rng = np.random.default_rng(0)
    centres = rng.uniform(-100, 100, (70, 2))
    y = np.repeat(centres, 12, axis=0) + rng.standard_normal((840, 2)) * 0.1
    cluster, names = layout.sample_clusters(y)
    assert len(names) == layout.MAX_CLUSTERS == len(set(cluster.tolist()))
    # a point of a dropped cluster joins the kept cluster nearest to it
    sizes = np.bincount(cluster)
    assert sizes.min() >= 12 and sizes.sum() == 840


@pytest.mark.parametrize("n", [1, 2, 5, 15, 40])
def test_tiny_samples_still_give_a_layout(n):
    rng = np.random.default_rng(n)
    x = rng.standard_normal((n, 6)).astype(np.float32)
    m = layout.fit_layout(list(range(n)), x, ["a"] * n, dims=2)
    assert m.y.shape == (n, 2) and np.isfinite(m.y).all()
    values = layout.layout_values(m, list(range(n)) + ["new"], np.concatenate([x, x[:1]]))
    assert len(values) == n + 1 and all(len(v) == 3 for _, v in values)


def test_a_3d_layout_has_three_coordinates(pixels):
    x, _ = pixels
    m = layout.fit_layout(list(range(300)), x[:300], dims=3)
    assert m.y.shape == (300, 3)
    assert layout.place(m, x[300:310])[0].shape == (10, 3)
    assert LayoutColumns(dims=3).columns == ("cluster", "umap-0", "umap-1", "umap-2")


@pytest.mark.parametrize("value,decimals,text", [
    (1.5, 3, "1.5"), (-0.0001, 3, "0"), (12.34567, 2, "12.35"), (3.0, 4, "3")])
def test_coordinates_are_short_json_numbers(value, decimals, text):
    assert layout.format_coordinate(value, decimals) == text
    assert layout.coordinate_decimals(np.array([[0, 0], [20, 5]])) == 3
    assert layout.coordinate_decimals(np.array([[0, 0], [0.5, 0.1]])) == 5


def test_numba_cache_goes_to_a_writable_folder(tmp_path, monkeypatch):
    monkeypatch.delenv("NUMBA_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert layout.numba_cache_dir() == str(tmp_path / "beam-projector" / "numba")
    monkeypatch.setenv("NUMBA_CACHE_DIR", "/somewhere/else")
    assert layout.numba_cache_dir() == "/somewhere/else"


# --- the Beam stage ----------------------------------------------------------

def _items(x, labels, seed=0):
    from beam_projector.transforms.records import Embedded, ImageRef, Thumbnail

    rng = np.random.default_rng(seed)
    keys = rng.integers(0, 2 ** 62, len(x))
    return [Embedded(ImageRef(f"{i:05d}", f"img/{i}.png", None, (f"img/{i}.png", labels[i]),
                              int(keys[i])), Thumbnail.from_rgb(1, 1, b"\0\0\0"), (x[i],))
            for i in range(len(x))]



def _run(transform, items):
    from support import run_collected
    return dict(run_collected(transform, items))


def test_layout_columns_do_not_depend_on_batches_and_fit_the_first_in_order(pixels,
                                                                             monkeypatch):
    """One (key, values) row per item; the same bytes with tiny batches; the
    fit sees the first S items in output order (by key), so a row among them
    keeps its fitted position."""
    from beam_projector.transforms import layout_stage
    from beam_projector.transforms.records import order_key

    x, labels = pixels
    items = _items(x[:400], labels[:400])
    whole = _run(LayoutColumns(label_index=1, sample=300), items)
    assert len(whole) == 400 and all(len(v) == 3 for v in whole.values())
    monkeypatch.setattr(layout_stage, "MIN_BATCH", 1)
    monkeypatch.setattr(layout_stage, "MAX_BATCH", 3)
    assert _run(LayoutColumns(label_index=1, sample=300), items) == whole
    first = sorted(items, key=lambda e: order_key(e.item))[:300]
    model = layout.fit_layout([order_key(e.item) for e in first],
                              np.stack([e.vectors[0] for e in first]),
                              [e.item.metadata[1] for e in first])
    for i, e in enumerate(first[:20]):
        assert whole[order_key(e.item)][1:] == tuple(
            layout.format_coordinate(v, model.decimals) for v in model.y[i])
    assert len({v[0] for v in whole.values()}) <= layout.MAX_CLUSTERS


def test_bad_layout_arguments_are_refused():
    with pytest.raises(ValueError, match="layout must be"):
        LayoutColumns(method="tsne")
    with pytest.raises(ValueError, match="layout_dims"):
        LayoutColumns(dims=4)
    with pytest.raises(ValueError, match="layout_sample"):
        LayoutColumns(sample=0)


def test_the_fit_runs_in_a_child_process_and_its_failure_is_one_line():
    """The fit's child process (numba, LLVM and UMAP stay out of the worker):
    it returns the model an in-process fit gives, and a failure there is a
    RuntimeError carrying the child's own last line, not a hang or a pickle
    error."""
    import os
    import tempfile

    from beam_projector.transforms.layout_child import fit_in_child, fit_sample

    rng = np.random.default_rng(1)
    sample = [((i,), rng.normal(size=8).astype(np.float32), None) for i in range(40)]
    child = fit_in_child(sample, 2, 0, "umap")
    here = fit_sample(sample, 2, 0, "umap")
    assert np.array_equal(child.y, here.y) and child.names == here.names
    assert child.y.shape == (40, 2)
    with pytest.raises(RuntimeError, match="child process .*layout must be one of"):
        fit_in_child(sample, 2, 0, "tsne")
    assert not [n for n in os.listdir(tempfile.gettempdir())
                if n.startswith("beam-projector-layout-")]
