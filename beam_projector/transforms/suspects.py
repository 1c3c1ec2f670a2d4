"""suspects.tsv: the likeliest label errors, outliers and duplicate groups, ranked.

Read from the neighbour columns ``neighbors`` computes, by their names.
"""
import collections
from typing import Optional, Sequence, Tuple

from beam_projector.transforms import projector

SUSPECT_HEADER = ("kind", "rank", "image", "label", "score", "reason")


def suspects_tsv(columns: Sequence[str], rows: Sequence[Sequence[str]],
                 label_column: str = "") -> Tuple[Optional[bytes], dict]:
    """suspects.tsv from the kept rows' neighbour columns, and its counts.

    Top-down: likely mislabelled items (their neighbours' majority label is
    another; lowest agreement first, then nearest), the most isolated items
    (largest K-th neighbour distance), then duplicate groups (the first item
    in output order, then its copies). None when the columns are absent.
    """
    col = {c: i for i, c in enumerate(columns)}
    if "nn_distance" not in col or "duplicate_of" not in col:
        return None, {}
    out = ["\t".join(SUSPECT_HEADER)]

    def emit(kind, rank, row, score, reason):
        label = row[col[label_column]] if label_column in col else ""
        out.append("\t".join(projector.escape_metadata_value(v) for v in
                             (kind, rank, row[0], label, score, reason)))

    counts = {"suspects_mislabelled": 0, "suspects_isolated": 0,
              "duplicate_groups": 0, "duplicates": 0}
    if label_column in col and "nn_label_agreement" in col:
        lab, agr, maj = col[label_column], col["nn_label_agreement"], col["nn_majority_label"]
        dist = col["nn_distance"]
        flagged = [i for i, r in enumerate(rows) if r[agr] and r[maj] != r[lab]]
        flagged.sort(key=lambda i: (float(rows[i][agr]), float(rows[i][dist]), i))
        for rank, i in enumerate(flagged, 1):
            r = rows[i]
            emit("mislabelled", rank, r, r[agr],
                 f"label {r[lab]!r} is carried by {float(r[agr]):.0%} of its nearest "
                 f"neighbours; most of them are {r[maj]!r}")
        counts["suspects_mislabelled"] = len(flagged)
    dist = col["nn_distance"]
    scored = [i for i, r in enumerate(rows) if r[dist]]
    isolated = sorted(scored, key=lambda i: (-float(rows[i][dist]), i))
    isolated = isolated[:max(10, -(-len(scored) // 100))]
    for rank, i in enumerate(isolated, 1):
        r = rows[i]
        emit("isolated", rank, r, r[dist],
             f"K-th nearest neighbour at cosine distance {r[dist]} "
             f"(rank {rank} of {len(scored)} by isolation)")
    counts["suspects_isolated"] = len(isolated)
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

    for i, r in enumerate(rows):
        j = first_row.get(r[col["duplicate_of"]])
        if r[col["duplicate_of"]] and j is not None:
            a, b = root(i), root(j)
            parent[max(a, b)] = min(a, b)
    groups = collections.defaultdict(list)
    for i in range(len(rows)):
        groups[root(i)].append(i)
    groups = [g for _, g in sorted(groups.items()) if len(g) > 1]
    for rank, members in enumerate(groups, 1):
        first = rows[members[0]]
        emit("duplicate", rank, first, len(members),
             f"first of {len(members)} near-identical pictures")
        for i in members[1:]:
            emit("duplicate", rank, rows[i], len(members), f"same picture as {first[0]}")
    counts["duplicate_groups"] = len(groups)
    counts["duplicates"] = sum(len(g) - 1 for g in groups)
    return ("\n".join(out) + "\n").encode("utf-8"), counts
