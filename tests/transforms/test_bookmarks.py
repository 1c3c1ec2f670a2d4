"""bookmarks.json (issue 27): the projector's State list, and the writer's
views of the ranked suspects (``write/views.py``)."""
import json

import numpy as np
import pytest
from beam_projector.transforms import bookmarks, suspects
from beam_projector.transforms.neighbors import neighbor_columns
from beam_projector.transforms.records import Embedded, ImageRef, Thumbnail
from beam_projector.transforms.write.config import WriterConfig
from beam_projector.transforms.write.views import written_rows

# Every field of vz_projector/data.ts's State but shuffledDataIndices and
# filteredPoints: the restore code reads them from a plain parsed object
# (no class defaults), and a missing one breaks the view.
STATE_FIELDS = {
    "label", "isSelected", "selectedProjection", "dataSetDimensions", "tSNEIteration",
    "tSNEPerplexity", "tSNELearningRate", "tSNEis3d", "umapIs3d", "umapNeighbors", "umapMinDist",
    "pcaComponentDimensions", "customSelectedSearchByMetadataOption", "customXLeftText",
    "customXLeftRegex", "customXRightText", "customXRightRegex", "customYUpText",
    "customYUpRegex", "customYDownText", "customYDownRegex", "projections", "selectedPoints",
    "cameraDef", "selectedColorOptionName", "forceCategoricalColoring", "selectedLabelOption"}


def check_states(data: bytes, n: int, dims: int = 2):
    """bookmarks.json parses as the projector's State list, each view with n
    projections carrying the umap keys; returns the states."""
    states = json.loads(data)
    assert isinstance(states, list) and states
    keys = {f"umap-{i}" for i in range(dims)}
    for s in states:
        assert set(s) == STATE_FIELDS, set(s) ^ STATE_FIELDS
        assert s["selectedProjection"] == "umap" and s["umapIs3d"] == (dims == 3)
        assert len(s["pcaComponentDimensions"]) == dims
        assert len(s["projections"]) == n
        assert all(set(p) == keys and all(isinstance(v, (int, float)) for v in p.values())
                   for p in s["projections"])
        assert len(s["selectedPoints"]) <= bookmarks.MAX_SELECTED
        assert all(0 <= i < n for i in s["selectedPoints"])
        assert s["dataSetDimensions"][0] == n
    assert all(s["projections"] == states[0]["projections"] for s in states)
    return states


def test_bookmarks_json_is_the_projectors_state_list():
    coords = [("1.5", "-2"), ("0", "3.25"), ("-7.125", "0.5")]
    views = [bookmarks.layout_view(3, "umap", "label"),
             bookmarks.View("Outliers", [2, 0], "suspect")]
    data = bookmarks.bookmarks_json(views, (3, 32), ("umap-0", "umap-1"), coords,
                                    label_option="label", search_option="label")
    states = check_states(data, 3)
    assert states[0]["label"] == "Layout of all 3 points (UMAP, computed offline)"
    assert states[0]["projections"][2] == {"umap-0": -7.125, "umap-1": 0.5}
    assert states[1]["selectedPoints"] == [2, 0]
    assert states[1]["selectedColorOptionName"] == "suspect"
    assert states[0]["dataSetDimensions"] == [3, 32]
    assert b"NaN" not in data and b"shuffledDataIndices" not in data


def test_bookmarks_refuse_what_the_projector_would_draw_wrong():
    with pytest.raises(ValueError, match="coordinates for"):
        bookmarks.bookmarks_json([], (3, 2), ("umap-0", "umap-1"), [("0", "0")])
    with pytest.raises(ValueError, match="selects rows"):
        bookmarks.bookmarks_json([bookmarks.View("x", [5], "")], (1, 2), ("umap-0", "umap-1"),
                                 [("0", "0")])
    with pytest.raises(ValueError, match="selects rows"):
        bookmarks.bookmarks_json([bookmarks.View("x", list(range(101)), "")], (200, 2),
                                 ("umap-0", "umap-1"), [("0", "0")] * 200)


def test_case_views_select_the_likeliest_and_skip_kinds_without_cases():
    ranking = suspects.Ranking(list(range(150)), [7, 3], [[10, 11, 12], [20, 21]], {})
    views = {v.label.split(":")[0]: v for v in bookmarks.case_views(ranking, 1000, "suspect")}
    assert list(views) == ["Likely label errors", "Duplicates", "Outliers"]
    assert views["Likely label errors"].selected == list(range(100))   # the Inspector's limit
    assert "100 likeliest of 150" in views["Likely label errors"].label
    assert views["Duplicates"].selected == [11, 12, 21, 10, 20]          # copies, then originals
    assert views["Outliers"].selected == [7, 3]
    none = bookmarks.case_views(suspects.Ranking([], [1], [], {}), 10, "suspect")
    assert [v.label.split(":")[0] for v in none] == ["Outliers"]


def _kept(n, rng):
    """n items with a label and every neighbour column, plus the layout's
    cluster and coordinate columns, in output (key) order."""
    rows = []
    for i in range(n):
        agree = "1" if i % 9 else "0.1"
        dist = str(round(0.01 + (i % 37) / 100, 4))
        dup, of = ("copy", f"img/{i - 1}.png") if i in (41, 77) else (
            ("first", "") if i in (40, 76) else ("none", ""))
        majority = str(i % 3) if agree == "1" else str((i + 1) % 3)
        rows.append((f"img/{i}.png", str(i % 3), agree, "0", majority, dist, "0",
                     dup, of, "00 x", f"{i / 10:g}", f"{-i / 10:g}"))
    return [Embedded(ImageRef(f"{i:04d}", r[0], None, r, i), Thumbnail.from_rgb(1, 1, b"\0" * 3),
                     (rng.standard_normal(4).astype(np.float32),))
            for i, r in enumerate(rows)]


def test_writer_views_move_coordinates_to_bookmarks_and_exemplars_first():
    rng = np.random.default_rng(0)
    n = 120
    kept = _kept(n, rng)
    columns = (("path", "label") + neighbor_columns(True) + ("cluster", "umap-0", "umap-1"))
    cfg = WriterConfig("out", columns, ("t",), None, label_column="label",
                       layout_columns=("umap-0", "umap-1"))
    w = written_rows(kept, cfg)
    assert w.columns == (("path", "label") + neighbor_columns(True)
                         + ("cluster", suspects.SUSPECT_COLUMN))
    rows = [e.item.metadata for e in w.kept]
    assert all(len(r) == len(w.columns) for r in rows)
    values = [r[-1] for r in rows]
    # one exemplar of each kind first, in the canonical order; then key order
    assert values[:4] == list(suspects.SUSPECT_KINDS)
    rest = [e.item.key for e in w.kept[4:]]
    assert rest == sorted(rest) and sorted(e.item.key for e in w.kept) == list(range(n))
    assert {rows[i][0] for i, v in enumerate(values) if v == suspects.COPY} == {
        "img/40.png", "img/41.png", "img/76.png", "img/77.png"}
    # the coordinates follow their rows into the bookmarks and the preview
    states = check_states(w.bookmarks, n)
    for i, e in enumerate(w.kept):
        key = e.item.key
        assert states[0]["projections"][i] == {"umap-0": key / 10, "umap-1": -key / 10}
        assert tuple(w.coordinates[i]) == (key / 10, -key / 10)
    # each case view selects rows of its own kind, by their written positions
    by = {s["label"].split(":")[0]: s for s in states}
    assert {values[i] for i in by["Duplicates"]["selectedPoints"]} == {suspects.COPY}
    flagged = by["Likely label errors"]["selectedPoints"]
    assert all(rows[i][2] == "0.1" and rows[i][4] != rows[i][1] for i in flagged)
    far = max(range(n), key=lambda i: (float(rows[i][5]), -w.kept[i].item.key))
    assert by["Outliers"]["selectedPoints"][0] == far
    assert states[0]["selectedColorOptionName"] == "label"      # 3 labels: colourable
    assert w.suspects.startswith(b"kind\trank")


def test_writer_views_without_a_layout_or_neighbours():
    rng = np.random.default_rng(1)
    kept = _kept(12, rng)
    cfg = WriterConfig("out", ("path", "label") + neighbor_columns(True)
                       + ("cluster", "umap-0", "umap-1"), ("t",), None, label_column="label")
    w = written_rows(kept, cfg)          # no layout_columns: no bookmarks, columns kept
    assert w.bookmarks is None and w.coordinates is None and "umap-0" in w.columns
    plain = [e._replace(item=e.item._replace(metadata=e.item.metadata[:2])) for e in kept]
    w = written_rows(plain, WriterConfig("out", ("path", "label"), ("t",), None))
    assert w.suspects is None and w.columns == ("path", "label")
    assert [e.item.key for e in w.kept] == list(range(12))
