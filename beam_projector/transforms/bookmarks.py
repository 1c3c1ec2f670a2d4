"""bookmarks.json: the projector's saved views, one click each in its Bookmarks panel.

Pure functions (no Beam). The file is a JSON list of the projector's
``State`` objects (``vz_projector/data.ts``). TensorBoard's projector (2.21)
restores them as plain parsed objects, without the class defaults, so every
field its restore code reads is written (a state without
``pcaComponentDimensions`` fails to restore and leaves an empty view), and
``shuffledDataIndices`` is left out (an empty list there breaks the next
t-SNE/UMAP/PCA run). A ``umap`` view is drawn at exactly the coordinates it
carries, with no sample cap; a ``tsne`` view would resume optimising on 10,000
points, so the offline layout is saved as ``umap``. Every view carries the
coordinates of every point: a point past the end keeps whatever it had.

What a view can and cannot set (measured in Chromium, docs/output.md):
colour-by (``selectedColorOptionName``, by exact column name), the selection
(``selectedPoints``: the Inspector lists the first 100, in the given order,
and every other point turns grey), the projection. Label-by cannot be
restored (the projector keeps its default, the first text column).
"""
import json
from typing import List, NamedTuple, Optional, Sequence

# The Inspector lists this many selected points; a view selects no more, so
# its ranking is what the Inspector shows.
MAX_SELECTED = 100
_PROJECTIONS = "\0projections\0"


class View(NamedTuple):
    label: str
    selected: Sequence[int]        # row indices, in the order the Inspector lists them
    color_by: str                  # a metadata column name ("" leaves colour-by as it is)


def _state(view: View, n: int, d: int, dims: int, method: str, label_option: str,
           search_option: str) -> dict:
    """One State with every field restore reads, in data.ts's order."""
    return {
        "label": view.label, "isSelected": False, "selectedProjection": method,
        "dataSetDimensions": [n, d], "tSNEIteration": 0, "tSNEPerplexity": 30,
        "tSNELearningRate": 10, "tSNEis3d": dims == 3, "umapIs3d": dims == 3,
        "umapNeighbors": 15, "umapMinDist": 0.1,
        "pcaComponentDimensions": list(range(dims)),
        "customSelectedSearchByMetadataOption": search_option,
        "customXLeftText": "", "customXLeftRegex": False,
        "customXRightText": "", "customXRightRegex": False,
        "customYUpText": "", "customYUpRegex": False,
        "customYDownText": "", "customYDownRegex": False,
        "projections": _PROJECTIONS, "selectedPoints": [int(i) for i in view.selected],
        "cameraDef": None, "selectedColorOptionName": view.color_by,
        "forceCategoricalColoring": False, "selectedLabelOption": label_option,
    }


def projections_json(keys: Sequence[str], coordinates: Sequence[Sequence[str]]) -> str:
    """``[{"umap-0": x, "umap-1": y}, ...]`` from coordinates already written
    as JSON numbers (``layout.format_coordinate``), built as text: at
    100,000 points json.dumps of the dicts is several times slower."""
    names = [json.dumps(k) for k in keys]
    parts = ["{" + ",".join(f"{k}:{v}" for k, v in zip(names, row)) + "}" for row in coordinates]
    return "[" + ",".join(parts) + "]"


def bookmarks_json(views: Sequence[View], shape: Sequence[int], keys: Sequence[str],
                   coordinates: Sequence[Sequence[str]], method: str = "umap",
                   label_option: str = "", search_option: str = "") -> bytes:
    """The bookmarks file: one State per view, each with every point's
    coordinates (``keys``: the projector's point keys, ``umap-0`` ...)."""
    n, d = (int(v) for v in shape)
    if len(coordinates) != n:
        raise ValueError(f"{len(coordinates)} coordinates for {n} points")
    dims = len(keys)
    if dims not in (2, 3):
        raise ValueError(f"a layout has 2 or 3 coordinates, got {dims}")
    projections = projections_json(keys, coordinates)
    states = []
    for view in views:
        if len(view.selected) > MAX_SELECTED or any(not 0 <= i < n for i in view.selected):
            raise ValueError(f"view {view.label!r} selects rows outside 0..{n - 1} "
                             f"or more than {MAX_SELECTED}")
        text = json.dumps(_state(view, n, d, dims, method, label_option, search_option),
                          separators=(",", ":"), allow_nan=False, ensure_ascii=False)
        states.append(text.replace(json.dumps(_PROJECTIONS), projections, 1))
    return ("[" + ",\n".join(states) + "]\n").encode("utf-8")


def case_views(ranking, n: int, color_by: str) -> List[View]:
    """"Likely label errors", "Duplicates", "Outliers" from a
    ``suspects.Ranking`` (row indices in the written order): each selects the
    likeliest cases, at most MAX_SELECTED, ranked; a kind with no case gets
    no view."""
    views = []
    if ranking.mislabelled:
        top = ranking.mislabelled[:MAX_SELECTED]
        views.append(View(f"Likely label errors: the {len(top):,} likeliest of "
                          f"{len(ranking.mislabelled):,} (ranked in the Inspector)",
                          top, color_by))
    if ranking.groups:
        copies, firsts, groups = [], [], 0
        for g in ranking.groups:
            if len(copies) + len(firsts) + len(g) > MAX_SELECTED:
                break
            copies += g[1:]
            firsts.append(g[0])
            groups += 1
        if groups:
            total = sum(len(g) - 1 for g in ranking.groups)
            views.append(View(f"Duplicates: {len(copies):,} of {total:,} copies, then the "
                              f"pictures they copy ({groups:,} of {len(ranking.groups):,} groups)",
                              copies + firsts, color_by))
    if ranking.isolated:
        top = ranking.isolated[:MAX_SELECTED]
        views.append(View(f"Outliers: the {len(top):,} most isolated of {n:,} "
                          f"(ranked in the Inspector)", top, color_by))
    return views


def layout_view(n: int, method: str, color_by: str, tensor: Optional[str] = None) -> View:
    what = f" of {tensor}" if tensor else ""
    return View(f"Layout of all {n:,} points ({method.upper()}{what}, computed offline)",
                (), color_by)
