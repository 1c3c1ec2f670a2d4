"""What the writer adds once every row is joined: the layout's coordinates
taken out of the metadata, suspects.tsv, the ``suspect`` column, the row
order that keeps its colours, and the bookmarks.

Pure: kept rows in output order in, the rows as written out. Everything here
needs all rows at once (the most isolated 1 %, the likeliest label errors),
which only the writer stage holds.
"""
from typing import List, NamedTuple, Optional, Sequence, Tuple

import numpy as np

from beam_projector.transforms import bookmarks, suspects
from beam_projector.transforms.projector import MAX_COLOR_VALUES
from beam_projector.transforms.records import Embedded
from beam_projector.transforms.write.config import WriterConfig


class Written(NamedTuple):
    kept: List[Embedded]                  # in the order they are written
    columns: Tuple[str, ...]              # metadata.tsv's columns
    coordinates: Optional[np.ndarray]     # N x dims layout positions (float64), or None
    suspects: Optional[bytes]             # suspects.tsv
    counts: dict                          # its counters
    bookmarks: Optional[bytes]            # bookmarks.json


def _split_layout(columns: Sequence[str], rows: List[tuple], names: Sequence[str]):
    """(columns, rows) without the coordinate columns, and the coordinates
    (texts) per row. A name is taken at its last position: the layout stage's
    columns come after the input's."""
    pos = [len(columns) - 1 - list(reversed(columns)).index(n) for n in names]
    keep = [i for i in range(len(columns)) if i not in pos]
    coords = [tuple(r[p] for p in pos) for r in rows]
    return (tuple(columns[i] for i in keep), [tuple(r[i] for i in keep) for r in rows], coords)


def _remap(ranking: suspects.Ranking, new_index: Sequence[int]) -> suspects.Ranking:
    return suspects.Ranking([new_index[i] for i in ranking.mislabelled],
                            [new_index[i] for i in ranking.isolated],
                            [[new_index[i] for i in g] for g in ranking.groups],
                            {new_index[i]: a for i, a in ranking.agreement.items()})


def layout_color(columns: Sequence[str], rows: Sequence[tuple], label_column: str) -> str:
    """The layout view's colour-by: the label when "Color by" can show it
    (at most 50 values), else the cluster column."""
    if label_column in columns:
        i = columns.index(label_column)
        if len({r[i] for r in rows}) <= MAX_COLOR_VALUES:
            return label_column
    return "cluster" if "cluster" in columns else ""


def written_rows(kept: Sequence[Embedded], cfg: WriterConfig) -> Written:
    columns = tuple(cfg.columns)
    rows = [tuple(e.item.metadata) for e in kept]
    n = len(rows)
    coords = None
    if cfg.layout_columns:
        columns, rows, coords = _split_layout(columns, rows, cfg.layout_columns)
    ranking = suspects.rank_suspects(columns, rows, cfg.label_column)
    tsv, counts = suspects.suspects_tsv(columns, rows, cfg.label_column, ranking)
    order = list(range(n))
    if ranking is not None:
        values = suspects.suspect_values(ranking, n)
        rows = [r + (v,) for r, v in zip(rows, values)]
        columns += (suspects.SUSPECT_COLUMN,)
        order = suspects.order_rows(values, ranking)
        new_index = [0] * n
        for new, old in enumerate(order):
            new_index[old] = new
        ranking = _remap(ranking, new_index)
    rows = [rows[i] for i in order]
    kept = [kept[i]._replace(item=kept[i].item._replace(metadata=rows[j]))
            for j, i in enumerate(order)]
    positions, marks = None, None
    if coords is not None:
        coords = [coords[i] for i in order]
        if all(v != "" for c in coords for v in c):
            positions = np.array([[float(v) for v in c] for c in coords])
            label = cfg.label_column if cfg.label_column in columns else columns[0]
            method = cfg.layout_columns[0].rsplit("-", 1)[0]
            views = [bookmarks.layout_view(n, method,
                                           layout_color(columns, rows, cfg.label_column))]
            if ranking is not None:
                views += bookmarks.case_views(ranking, n, suspects.SUSPECT_COLUMN)
            d = len(kept[0].vectors[0])
            marks = bookmarks.bookmarks_json(
                views, (n, d), cfg.layout_columns, coords, method=method,
                label_option=label, search_option=label)
    return Written(kept, columns, positions, tsv, counts, marks)
