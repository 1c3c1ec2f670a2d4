"""Neighbour columns and suspects.tsv (issue 15): the pure functions, and the
pipeline on planted faults (flipped labels, near-duplicate copies)."""
import csv
import io
import os

import numpy as np
import pytest
from beam_projector.pipeline.preflight import UsageError
from beam_projector.transforms import neighbors as nb
from beam_projector.transforms.records import Thumbnail
from beam_projector.transforms import suspects as sp
from beam_projector.transforms.suspects import SUSPECT_HEADER, suspects_tsv

from support import run_pipeline


def brute_force(z, count):
    s = z.astype(np.float64) @ z.T.astype(np.float64)
    np.fill_diagonal(s, -np.inf)
    n = len(z)
    return [np.lexsort((np.arange(n), -s[i]))[:min(count, n - 1)] for i in range(n)]


def rows_of(n, size):
    return [np.arange(a, min(n, a + size)) for a in range(0, n, size)]


@pytest.mark.parametrize("n,d,count", [(2, 3, 10), (30, 4, 10), (700, 5, 20), (2000, 16, 20)])
def test_search_is_exact_and_independent_of_the_batch(n, d, count):
    rng = np.random.default_rng(n)
    z = rng.standard_normal((n, d)).astype(np.float32)
    z[min(5, n - 1)] = z[0]          # exact ties: broken by row (= output order)
    z /= np.linalg.norm(z, axis=1, keepdims=True)
    whole = nb.search_block(z, np.arange(n), count)
    expected = brute_force(z, count)
    for i, (cand, _) in enumerate(whole):
        assert cand.tolist() == expected[i].tolist()
    for size in (1, 7, 64):
        parts = [r for rows in rows_of(n, size) for r in nb.search_block(z, rows, count)]
        for (c1, s1), (c2, s2) in zip(whole, parts):
            assert c1.tolist() == c2.tolist() and s1.tobytes() == s2.tobytes()


def test_projection_keeps_cosines_of_low_rank_vectors():
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((500, 8)) @ rng.standard_normal((8, 300)) + 5).astype(np.float32)
    proj = nb.fit_projection(x, dims=16)
    z = np.stack([nb.project(v, proj) for v in x])
    u = nb.centre_normalise(x, x.astype(np.float64).mean(0))
    assert np.allclose(z @ z.T, u @ u.T, atol=1e-5)
    # small embeddings are used as they are: an exact search
    small = nb.fit_projection(x[:, :10], dims=16)
    assert small.basis.shape == (10, 10) and np.array_equal(small.basis, np.eye(10))


def test_neighbour_pca_cost_does_not_grow_with_d_squared():
    """Issue 28: 30 rows of a flattened 16x16x64 map (16,384-d) formed a
    2 GiB D x D scatter and eigendecomposed it (1,000 s, 9.4 GB for a whole
    run); from the n x n Gram matrix it is a few MiB. A child process under
    a 3 GiB address-space cap, so the old code fails fast (MemoryError)."""
    from support import child_python

    code, out, err = child_python("""
        import numpy as np
        from beam_projector.transforms.neighbors import fit_projection
        x = np.random.default_rng(0).random((30, 16384), dtype=np.float32)
        reset_peak()
        p = fit_projection(x)
        print(peak_growth_mib(), p.basis.shape)
    """, address_space_gib=3, timeout=300)
    assert code == 0, err[-1500:]
    assert out.split()[1:] == ["(16384,", "128)"], out
    assert float(out.split()[0]) < 200, f"fit_projection grew the peak by {out.split()[0]} MiB"


@pytest.mark.parametrize("n,d", [(600, 1024), (40, 700)])
def test_the_gram_route_gives_the_scatters_neighbours(n, d):
    """D > n takes the Gram route: the same projected geometry (cosines
    within 1e-5) and the same neighbour sets as the D x D scatter's basis;
    with fewer rows than dims the missing directions are zero columns."""
    rng = np.random.default_rng(1)
    x = np.maximum(rng.standard_normal((n, 40)) @ rng.standard_normal((40, d)), 0)
    x = x.astype(np.float32)
    got = nb.fit_projection(x)
    mean = x.astype(np.float64).mean(axis=0)
    u = nb.centre_normalise(x, mean)
    values, vectors = np.linalg.eigh(u.T @ u)
    ref = nb.Projection(mean, vectors[:, np.argsort(-values, kind="stable")[:nb.PROJECTED_DIMS]])
    z0 = np.stack([nb.project(v, ref) for v in x])
    z1 = np.stack([nb.project(v, got) for v in x])
    assert got.basis.shape == (d, nb.PROJECTED_DIMS)
    assert np.abs(z0 @ z0.T - z1 @ z1.T).max() < 1e-5
    rows = np.arange(n)
    assert ([set(c.tolist()) for c, _ in nb.search_block(z0, rows, 10)]
            == [set(c.tolist()) for c, _ in nb.search_block(z1, rows, 10)])


def test_label_and_distance_columns():
    assert nb.majority(["3", "8", "8", "3"]) == "3"          # tie: the nearest wins
    assert nb.majority(["3", "8", "8"]) == "8"
    # buckets are integer codes (sorted by the projector, so their colours
    # hold between runs): 0 the bulk, 1 the strongest signal
    assert nb.agreement_bin(1.0) == nb.agreement_bin(0.9) == "0"
    assert nb.agreement_bin(0.29) == "1" and nb.agreement_bin(0.0) == "1"
    assert nb.agreement_bin(0.5) == "2" and nb.agreement_bin(0.7) == "3"
    assert set(nb.AGREEMENT_BIN_NAMES) == {c for _, c in nb.AGREEMENT_BINS}
    cuts = nb.distance_cuts(np.arange(100) / 100)
    assert cuts == (0.5, 0.8, 0.95, 0.99)
    assert nb.distance_bin(0.1, cuts) == "0"
    assert nb.distance_bin(0.995, cuts) == "1"          # the most isolated 1 %: red
    assert sorted(nb.DISTANCE_BINS) == ["0", "1", "2", "3", "4"] == sorted(nb.DISTANCE_BIN_NAMES)
    # nearer neighbours weigh more; all or none agreeing is 1 or 0
    assert nb.weighted_agreement([True] * 10) == 1.0 and nb.weighted_agreement([False] * 3) == 0
    assert nb.weighted_agreement([True, False]) > 0.5 > nb.weighted_agreement([False, True])


@pytest.mark.parametrize("value,decimals,text", [
    (1.0, 3, "1"), (0.7, 3, "0.7"), (0.0, 4, "0"), (-0.00001, 4, "0"), (0.12345, 4, "0.1235"),
    (0.1, 2, "0.1"), (12.5, 0, "12"), (-3.25, 1, "-3.2"), (0.0001, 4, "0.0001")])
def test_numbers_are_written_as_javascript_writes_them(value, decimals, text):
    """The projector colours a categorical point by its number and labels the
    legend by the text: "1.00" was drawn in another colour than its legend
    entry. A canonical text is String(Number(text)) (here: Python's repr
    without a trailing ".0", which agrees with JavaScript in this range)."""
    got = nb.js_number(value, decimals)
    assert got == text
    assert got == repr(float(got)).removesuffix(".0")


def test_signatures_match_copies_and_not_other_pictures():
    from PIL import Image

    rng = np.random.default_rng(1)
    a = Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8))
    b = Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8))

    def sig(img):
        t = img.resize((32, 32), Image.BILINEAR)
        return np.frombuffer(nb.signature(Thumbnail.from_image(t)), np.uint8)

    assert nb.pixel_distance(sig(a), sig(a)) == 0
    assert nb.pixel_distance(sig(a), sig(a.resize((80, 80)))) <= nb.DEFAULT_DUPLICATE_THRESHOLD
    assert nb.pixel_distance(sig(a), sig(b)) > 3 * nb.DEFAULT_DUPLICATE_THRESHOLD


def test_neighbor_values_mark_the_later_copy():
    z = np.array([[1, 0], [1, 0], [0, 1], [0.9, 0.1]], np.float32)
    z /= np.linalg.norm(z, axis=1, keepdims=True)
    sigs = np.array([[10] * 4, [11] * 4, [200] * 4, [90] * 4], np.uint8)
    index = nb.NeighborIndex(z, ((0, "0"), (1, "1"), (2, "2"), (3, "3")), ("a", "a", "b", "b"), ("p0", "p1", "p2", "p3"), sigs,
                             (0.1, 0.2, 0.3, 0.4))
    got = {}
    for row, (cand, sims) in enumerate(nb.search_block(z, np.arange(4), 3)):
        got[row] = nb.neighbor_values(row, cand, sims, index, 2, 3.0)
    # row 1: its neighbours are row 0 (same picture, its label) and row 3:
    # the nearer one weighs twice the other
    assert got[1][:3] == ("0.667", "3", "a")
    assert got[1][-2:] == ("copy", "p0")
    assert got[0][-2:] == ("first", "")
    assert got[2][-2:] == ("none", "")
    assert len(got[0]) == len(nb.neighbor_columns(True))


def test_suspects_tsv_parses_and_reads_top_down():
    columns = ("path", "label") + nb.neighbor_columns(True)
    rows = [
        ("a.png", "1", "1.00", "x", "1", "0.0100", "x", "first", ""),
        ("b.png", "1", "0.10", "x", "7", "0.0500", "x", "none", ""),
        ("c.png", "7", "0.00", "x", "1", "0.0200", "x", "none", ""),
        ("d.png", "1", "0.90", "x", "1", "0.9000", "x", "copy", "a.png"),
        ("e.png", "1", "0.90", "x", "1", "0.0300", "x", "copy", "d.png"),
    ]
    data, counts = suspects_tsv(columns, rows, "label")
    got = list(csv.DictReader(io.StringIO(data.decode()), delimiter="\t"))
    assert tuple(got[0].keys()) == SUSPECT_HEADER
    kinds = [r["kind"] for r in got]
    assert kinds == sorted(kinds, key=["mislabelled", "isolated", "duplicate"].index)
    assert [r["image"] for r in got if r["kind"] == "mislabelled"] == ["c.png", "b.png"]
    assert [r["image"] for r in got if r["kind"] == "isolated"][0] == "d.png"
    dup = [(r["rank"], r["image"]) for r in got if r["kind"] == "duplicate"]
    assert dup == [("1", "a.png"), ("1", "d.png"), ("1", "e.png")]   # one group, chain resolved
    assert counts == {"suspects_mislabelled": 2, "suspects_isolated": 5,
                      "duplicate_groups": 1, "duplicates": 2}
    assert all(r["reason"] for r in got)
    assert suspects_tsv(("path", "label"), [("a", "1")], "label") == (None, {})


def test_bad_neighbor_options_fail_before_work(digits, model_path, tmp_path):
    csv_path, _ = digits
    with pytest.raises(UsageError, match="--neighbors_tensor"):
        run_pipeline(input=csv_path, model=model_path, output=tmp_path / "o", max_items=5,
                     neighbors_tensor="nope")
    with pytest.raises(UsageError, match="--neighbors must be"):
        run_pipeline(input=csv_path, model=model_path, output=tmp_path / "o", max_items=5,
                     neighbors=-1)


def test_neighbors_off_writes_no_columns_and_no_suspects(digits, model_path, tmp_path):
    """Without neighbours: no nn_* columns, no suspect column, no suspects.tsv;
    the layout still gives its cluster column and a single bookmark."""
    import json

    csv_path, _ = digits
    out = tmp_path / "off"
    run_pipeline(input=csv_path, model=model_path, embedding_layer="embedding", output=out,
                 max_items=12, neighbors=0, layout="umap")
    (meta,) = out.glob("data-*/metadata.tsv")
    assert meta.read_text().splitlines()[0] == "path\tlabel\tcluster"
    assert not (out / "suspects.tsv").exists()
    (marks,) = out.glob("data-*/bookmarks.json")
    assert [s["label"] for s in json.loads(marks.read_text())] == [
        "Layout of all 12 points (UMAP, computed offline)"]


# --- planted faults ---------------------------------------------------------

@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    from beam_projector.pipeline.demo import plant_faults, train_model

    folder = tmp_path_factory.mktemp("planted")
    faults = plant_faults(str(folder), flip_fraction=0.03, copies_per_kind=10, seed=0)
    # trained on the noisy labels, as a real model would be
    model = train_model(str(folder / "cnn.keras"), 8, labels=faults["labels"])
    out = folder / "logdir"
    n = 1797 + len(faults["copies"])
    summary = run_pipeline(input=faults["csv"], model=model, embedding_layer="embedding",
                           output=out, max_items=n, layout="umap")
    assert summary["written"] == n
    return faults, out


def _suspects(out):
    with open(out / "suspects.tsv", newline="") as f:
        return list(csv.DictReader(f, delimiter="\t"))


@pytest.mark.slow
def test_planted_label_errors_rank_among_the_top_suspects(planted):
    faults, out = planted
    flipped = set(faults["flipped"])
    ranked = [r["image"] for r in _suspects(out) if r["kind"] == "mislabelled"]
    top = ranked[:2 * len(flipped)]
    recall = len(flipped & set(top)) / len(flipped)
    recall_1x = len(flipped & set(ranked[:len(flipped)])) / len(flipped)
    print(f"planted flips: {len(flipped)}; recall at 2x: {recall:.3f}, at 1x: {recall_1x:.3f}")
    assert len(flipped) == 54
    assert recall >= 0.8, recall


def _views(out):
    import json

    (path,) = out.glob("data-*/bookmarks.json")
    (meta,) = out.glob("data-*/metadata.tsv")
    with open(meta, newline="") as f:
        paths = [r["path"] for r in csv.DictReader(f, delimiter="\t")]
    states = json.loads(path.read_text())
    # the projector's State list: every view carries every point's coordinates
    assert all(len(s["projections"]) == len(paths) and s["selectedProjection"] == "umap"
               for s in states)
    return {s["label"].split(":")[0]: [paths[i] for i in s["selectedPoints"]] for s in states}


@pytest.mark.slow
def test_the_label_errors_view_selects_most_flipped_labels(planted):
    """The "Likely label errors" bookmark selects at most 100 points, and most
    of the 54 flipped labels are among them (the likeliest first)."""
    faults, out = planted
    flipped = set(faults["flipped"])
    views = _views(out)
    selected = views["Likely label errors"]
    recall = len(flipped & set(selected)) / len(flipped)
    top = len(flipped & set(selected[:len(flipped)])) / len(flipped)
    print(f"label errors view: {len(selected)} selected, recall {recall:.3f}, "
          f"in its first {len(flipped)}: {top:.3f}")
    assert len(selected) <= 100
    assert recall >= 0.8, recall
    # the duplicates view: every planted copy and its original, copies first
    dup = views["Duplicates"]
    assert set(faults["copies"]) | set(faults["copies"].values()) <= set(dup)
    assert len(dup) <= 100
    assert "Outliers" in views
    assert any(k.startswith("Layout of all 1,837 points") for k in views)


def test_every_planted_duplicate_is_found_with_few_false_ones(planted):
    faults, out = planted
    rows = _suspects(out)
    groups = {}
    for r in rows:
        if r["kind"] == "duplicate":
            groups.setdefault(r["rank"], set()).add(r["image"])
    for copy, source in faults["copies"].items():
        assert any({copy, source} <= g for g in groups.values()), (copy, source)
    planted_pairs = {frozenset(p) for p in faults["copies"].items()}
    false = [g for g in groups.values() if len(g) != 2 or frozenset(g) not in planted_pairs]
    print(f"duplicate groups: {len(groups)}, planted: {len(planted_pairs)}, other: {len(false)}")
    assert len(false) <= 2, false


def test_planted_columns_are_colourable_and_consistent(planted):
    faults, out = planted
    (meta,) = out.glob("data-*/metadata.tsv")
    with open(meta, newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    assert tuple(rows[0].keys()) == (("path", "label") + nb.neighbor_columns(True)
                                     + ("cluster", sp.SUSPECT_COLUMN))
    for col in ("nn_label_agreement_bin", "nn_distance_bin", "duplicate", "nn_majority_label",
                "cluster", sp.SUSPECT_COLUMN):
        assert 2 <= len({r[col] for r in rows}) <= 50, col   # the projector can colour them
    for col in ("nn_label_agreement", "nn_distance"):          # numeric gradients: > 50 values
        assert len({r[col] for r in rows}) > 50, col
        assert all(r[col] == nb.js_number(float(r[col]), 4) for r in rows), col
    for col in ("nn_label_agreement_bin", "nn_distance_bin"):  # integer codes: sorted, stable
        assert {r[col] for r in rows} <= set("01234"), col
    assert all(float(r["nn_distance"]) >= 0 for r in rows)
    # the suspect column's exemplar rows come first, in the canonical order
    first_seen = list(dict.fromkeys(r[sp.SUSPECT_COLUMN] for r in rows))
    assert first_seen == list(sp.SUSPECT_KINDS)
    by_path = {r["path"]: r for r in rows}
    for copy, source in faults["copies"].items():
        a, b = by_path[copy], by_path[source]
        assert a[sp.SUSPECT_COLUMN] == b[sp.SUSPECT_COLUMN] == sp.COPY
        later, earlier = (a, b) if a["duplicate"] == "copy" else (b, a)
        assert later["duplicate"] == "copy" and later["duplicate_of"] == earlier["path"]
        assert earlier["duplicate"] == "first"
    summary = __import__("json").loads((out / "run_summary.json").read_text())
    assert summary["all_counters"]["duplicate_groups"] >= len(faults["copies"])
    assert summary["all_counters"]["suspects_mislabelled"] > 0
    assert os.path.exists(out / "errors.tsv")


def _items(n, seed=0):
    """n Embedded items in 8 clusters, labels = cluster, random 4 px thumbnails."""
    from beam_projector.transforms.records import Embedded, ImageRef

    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((8, 24))
    out = []
    for i in range(n):
        c = i % 8
        v = (centres[c] + 0.3 * rng.standard_normal(24)).astype(np.float32)
        pixels = rng.integers(0, 256, 4 * 4 * 3, dtype=np.uint8).tobytes()
        ref = ImageRef(f"{i:05d}", f"img/{i}.png", None, (f"img/{i}.png", str(c)),
                       int(rng.integers(0, 2 ** 62)))
        out.append(Embedded(ref, Thumbnail.from_rgb(4, 4, pixels), (v,)))
    return out



def _run(transform, items):
    from support import run_collected
    return list(run_collected(transform, items))


def test_neighbor_columns_are_independent_of_the_work_split(monkeypatch):
    """The (key, values) table: one row per item, the same values whether
    the rows are searched as one unit of work or many small ones, and the
    same values AddNeighborColumns joins back onto the items."""
    items = _items(300)
    whole = dict(_run(nb.NeighborColumns(5, 0, 1, 0), items))
    monkeypatch.setattr(nb, "WORK_ROWS", 37)
    monkeypatch.setattr(nb, "QUERY_BLOCK", 5)
    split = dict(_run(nb.NeighborColumns(5, 0, 1, 0), items))
    assert len(whole) == 300 and whole == split
    assert all(len(v) == len(nb.neighbor_columns(True)) for v in whole.values())
    # clusters are tight: most items agree with their neighbours
    assert sum(v[0] == "1" for v in whole.values()) > 250
    joined = _run(nb.AddNeighborColumns(5, 0, 1, 0), items)
    from beam_projector.transforms.records import order_key
    assert len(joined) == 300
    for e in joined:
        assert e.item.metadata[2:] == whole[order_key(e.item)]


def test_writer_join_fills_rows_a_stage_did_not_give():
    from beam_projector.transforms.records import order_key
    from beam_projector.transforms.write.stage import join_columns

    items = _items(3)
    table = {order_key(items[0].item): ("x", "y")}
    out = join_columns(items, [table, {}], [2, 1])
    assert out[0].item.metadata[2:] == ("x", "y", "")
    assert out[1].item.metadata[2:] == ("", "", "")
    assert join_columns(items, [], []) == items


def test_packed_vectors_are_small_and_close():
    rng = np.random.default_rng(3)
    v = (rng.standard_normal(1280) * 40).astype(np.float32)
    packed = nb.pack_vector(v, 128)
    assert len(packed) == 1 + 4 + 2 * 1280             # float16 behind a scale
    back = nb.unpack_vector(packed)
    assert back.dtype == np.float32 and np.abs(back - v).max() <= np.abs(v).max() * 2 ** -11
    small = rng.standard_normal(64).astype(np.float32)  # <= dims: exact, untouched
    assert np.array_equal(nb.unpack_vector(nb.pack_vector(small, 128)), small)
    zero = np.zeros(1280, np.float32)
    assert np.array_equal(nb.unpack_vector(nb.pack_vector(zero, 128)), zero)
