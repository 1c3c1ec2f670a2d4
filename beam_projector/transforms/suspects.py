"""Where a person should look first: suspects.tsv, the ``suspect`` column and
the order of the rows that keeps its colours.

Read from the neighbour columns ``neighbors`` computes, by their names. One
ranking (``rank_suspects``) feeds all three, and the bookmark views.
"""
import collections
from typing import List, NamedTuple, Optional, Sequence, Tuple

from beam_projector.transforms import projector

SUSPECT_HEADER = ("kind", "rank", "image", "label", "score", "reason")
SUSPECT_COLUMN = "suspect"
# The suspect column's values, in the order their exemplar rows come first
# (so the projector gives them blue, red, pink, cyan: see order_rows). Kinds
# that are present most reliably come first, since a missing kind moves
# every later kind to the next colour: a label column gives label errors on
# any real data, the most isolated 1 % always exist, copies often do not.
OK, LABEL, OUTLIER, COPY = "ok", "label?", "outlier", "copy"
SUSPECT_KINDS = (OK, LABEL, OUTLIER, COPY)
# An item is "label?" in the suspect column when its neighbours' majority
# label is another and its weighted agreement is below this ("disagree"
# bucket): the clear cases, not every item on a class border.
LABEL_SUSPECT_BELOW = 0.3


class Ranking(NamedTuple):
    """Row indices of the suspects of each kind, likeliest first."""
    mislabelled: List[int]          # majority label is another; lowest agreement first
    isolated: List[int]             # the most isolated 1 % (at least 10), farthest first
    groups: List[List[int]]         # duplicate groups: the first in output order, then copies
    agreement: dict                 # row -> weighted agreement, for the mislabelled


def rank_suspects(columns: Sequence[str], rows: Sequence[Sequence[str]],
                  label_column: str = "") -> Optional[Ranking]:
    """The ranking, or None when the neighbour columns are absent."""
    col = {c: i for i, c in enumerate(columns)}
    if "nn_distance" not in col or "duplicate_of" not in col:
        return None
    dist = col["nn_distance"]
    flagged, agreement = [], {}
    if label_column in col and "nn_label_agreement" in col:
        lab, agr, maj = col[label_column], col["nn_label_agreement"], col["nn_majority_label"]
        flagged = [i for i, r in enumerate(rows) if r[agr] and r[maj] != r[lab]]
        agreement = {i: float(rows[i][agr]) for i in flagged}
        flagged.sort(key=lambda i: (agreement[i], float(rows[i][dist] or 0), i))
    scored = [i for i, r in enumerate(rows) if r[dist]]
    isolated = sorted(scored, key=lambda i: (-float(rows[i][dist]), i))
    isolated = isolated[:max(10, -(-len(scored) // 100))]
    # duplicate groups: union of the duplicate_of links, in output order
    first_row = {}
    for i, r in enumerate(rows):
        first_row.setdefault(r[0], i)
    parent = list(range(len(rows)))

    def root(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    of = col["duplicate_of"]
    for i, r in enumerate(rows):
        j = first_row.get(r[of])
        if r[of] and j is not None:
            a, b = root(i), root(j)
            parent[max(a, b)] = min(a, b)
    groups = collections.defaultdict(list)
    for i in range(len(rows)):
        groups[root(i)].append(i)
    groups = [g for _, g in sorted(groups.items()) if len(g) > 1]
    return Ranking(flagged, isolated, groups, agreement)


def suspects_tsv(columns: Sequence[str], rows: Sequence[Sequence[str]],
                 label_column: str = "",
                 ranking: Optional[Ranking] = None) -> Tuple[Optional[bytes], dict]:
    """suspects.tsv from the kept rows' neighbour columns, and its counts.

    Top-down: likely mislabelled items (their neighbours' majority label is
    another; lowest agreement first, then nearest), the most isolated items
    (largest K-th neighbour distance), then duplicate groups (the first item
    in output order, then its copies). None when the columns are absent.
    """
    ranking = ranking or rank_suspects(columns, rows, label_column)
    if ranking is None:
        return None, {}
    col = {c: i for i, c in enumerate(columns)}
    out = ["\t".join(SUSPECT_HEADER)]

    def emit(kind, rank, row, score, reason):
        label = row[col[label_column]] if label_column in col else ""
        out.append("\t".join(projector.escape_metadata_value(v) for v in
                             (kind, rank, row[0], label, score, reason)))

    if ranking.mislabelled:
        lab, agr, maj = col[label_column], col["nn_label_agreement"], col["nn_majority_label"]
        for rank, i in enumerate(ranking.mislabelled, 1):
            r = rows[i]
            emit("mislabelled", rank, r, r[agr],
                 f"label {r[lab]!r} is carried by {float(r[agr]):.0%} of its nearest "
                 f"neighbours (nearer ones weigh more); most of them are {r[maj]!r}")
    dist = col["nn_distance"]
    scored = sum(1 for r in rows if r[dist])
    for rank, i in enumerate(ranking.isolated, 1):
        r = rows[i]
        emit("isolated", rank, r, r[dist],
             f"K-th nearest neighbour at cosine distance {r[dist]} "
             f"(rank {rank} of {scored} by isolation)")
    for rank, members in enumerate(ranking.groups, 1):
        first = rows[members[0]]
        emit("duplicate", rank, first, len(members),
             f"first of {len(members)} near-identical pictures")
        for i in members[1:]:
            emit("duplicate", rank, rows[i], len(members), f"same picture as {first[0]}")
    counts = {"suspects_mislabelled": len(ranking.mislabelled),
              "suspects_isolated": len(ranking.isolated),
              "duplicate_groups": len(ranking.groups),
              "duplicates": sum(len(g) - 1 for g in ranking.groups)}
    return ("\n".join(out) + "\n").encode("utf-8"), counts


def suspect_values(ranking: Ranking, n: int) -> List[str]:
    """The ``suspect`` column: one kind per row. A copy (any member of a
    duplicate group) is a fact about the pictures, so it wins; then a clear
    label error, then an outlier."""
    values = [OK] * n
    for i in ranking.isolated:
        values[i] = OUTLIER
    for i in ranking.mislabelled:
        if ranking.agreement[i] < LABEL_SUSPECT_BELOW:
            values[i] = LABEL
    for group in ranking.groups:
        for i in group:
            values[i] = COPY
    return values


def order_rows(values: Sequence[str], ranking: Ranking) -> List[int]:
    """The row order that fixes the suspect column's colours: one exemplar row
    of each present kind first, in SUSPECT_KINDS order (the first ok row, the
    likeliest label error, the most isolated outlier, the first group's
    copy), then every other row in output order.

    The projector gives the i-th distinct value of a text column the i-th
    palette colour, in order of first appearance in metadata.tsv, so these
    rows make ok blue, label? red, outlier pink and copy cyan whenever all
    four are present (docs/output.md, "Colours")."""
    exemplar = {OK: next((i for i, v in enumerate(values) if v == OK), None),
                LABEL: next((i for i in ranking.mislabelled if values[i] == LABEL), None),
                OUTLIER: next((i for i in ranking.isolated if values[i] == OUTLIER), None),
                COPY: next((i for g in ranking.groups for i in g[1:] if values[i] == COPY),
                           None)}
    first = [exemplar[k] for k in SUSPECT_KINDS if exemplar[k] is not None]
    chosen = set(first)
    return first + [i for i in range(len(values)) if i not in chosen]
