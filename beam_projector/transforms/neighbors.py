"""Neighbour-based metadata columns: where a person should look first.

For every kept image, from its K nearest neighbours (cosine distance on
centred, L2-normalised embeddings): the share of neighbours that carry its
label, their majority label, the distance to the K-th neighbour (the outlier
score) and whether the image is a near-duplicate of an earlier one (judged by
the pictures themselves, among its embedding neighbours).

The Beam shape: a ``Top`` combiner takes a deterministic sample (the first
items in output order) from which the centre and a PCA basis are fitted;
every vector is projected to a few dozen dimensions; the small projected
matrix (N x dims, sorted by the output order key) is broadcast as a side
input; its rows are cut into blocks that are reshuffled across workers, and
each block's neighbours are found with matrix products, in parallel.
Candidates are re-scored in float64 with a per-pair reduction and sorted by
(similarity, order key), so the columns do not depend on how a runner
bundles the work.

Only (order key, column values) pairs come out (``NeighborColumns``): the
writer joins them by key, so the items themselves (thumbnails, every
tensor) never wait for the search. ``AddNeighborColumns`` does the join in
the pipeline, for graphs that want the items back.
"""
import collections
from typing import List, NamedTuple, Optional, Sequence, Tuple

import apache_beam as beam
import numpy as np
from PIL import Image

from beam_projector.transforms.records import Thumbnail, order_key
from beam_projector.transforms.staging import readable
from beam_projector.transforms.timing import StageTimer

# The centre and PCA basis come from the first PCA_SAMPLE items in output
# order: exact when N <= PCA_SAMPLE, a deterministic sample beyond.
PCA_SAMPLE = 4096
# Projected dimensions (recall vs exact in BENCHMARKS.md). Embeddings with at
# most this many dimensions are used as they are (centred and normalised):
# the search is then exact.
PROJECTED_DIMS = 128
# How many embedding neighbours are checked for near-duplicate pictures
# (at least K).
DUPLICATE_CANDIDATES = 20
# Near-duplicate pictures are compared as SIGNATURE_SIDE^2 grey thumbnails.
SIGNATURE_SIDE = 16
# Mean absolute grey difference (0-255) at or below which two pictures are the
# same picture; measured on scikit-learn digits (BENCHMARKS.md).
DEFAULT_DUPLICATE_THRESHOLD = 3.0
# Quantile cuts of nn_distance for its colourable bucket column, estimated on
# the first CUT_SAMPLE items in output order.
CUT_SAMPLE = 4096
DISTANCE_QUANTILES = (0.5, 0.8, 0.95, 0.99)
# The bucket columns hold integer codes, not text: the projector sorts
# integer values (and gives colour i to the i-th), whatever the row order,
# while text values take their colours in order of first appearance, which
# changes from run to run (docs/output.md, "Colours"). Code 0 is the bulk
# (blue), code 1 the strongest signal (red), then pink, cyan, green.
# nn_distance buckets: code -> (quantile range, meaning), by increasing cut.
DISTANCE_BINS = ("0", "4", "3", "2", "1")          # nearest 50%, 50-80%, 80-95%, 95-99%, top 1%
DISTANCE_BIN_NAMES = {"0": "nearest 50%", "1": "most isolated 1%", "2": "95-99%",
                      "3": "80-95%", "4": "50-80%"}
# nn_label_agreement buckets: (lower bound of the weighted agreement, code).
AGREEMENT_BINS = ((0.9, "0"), (0.6, "3"), (0.3, "2"), (0.0, "1"))
AGREEMENT_BIN_NAMES = {"0": "agree >=90%", "1": "disagree <30%", "2": "mixed 30-60%",
                       "3": "most 60-90%"}
DUPLICATE_ROLES = ("none", "first", "copy")
# Block size of the blocked top-K search (see search_block).
_BLOCK = 512
# Queries per search_block call: 256 x 100,000 float32 scores are 100 MB.
QUERY_BLOCK = 256
# Query rows per unit of work spread across workers.
WORK_ROWS = 4096
# float32 scores are only used to pick candidates; anything within this of
# the cut is re-scored in float64, so runners that round the float32 product
# differently still end with the same neighbours.
_SLACK = 1e-4

COLUMNS_WITH_LABEL = ("nn_label_agreement", "nn_label_agreement_bin", "nn_majority_label")
COLUMNS = ("nn_distance", "nn_distance_bin", "duplicate", "duplicate_of")


def neighbor_columns(has_label: bool) -> Tuple[str, ...]:
    """The column names AddNeighborColumns appends, in order."""
    return (COLUMNS_WITH_LABEL if has_label else ()) + COLUMNS


# --- pure numpy -------------------------------------------------------------

class Projection(NamedTuple):
    mean: np.ndarray      # (D,) float64
    basis: np.ndarray     # (D, dims) float64; identity when D <= dims


def centre_normalise(x: np.ndarray, mean: np.ndarray) -> np.ndarray:
    """Rows minus the centre, scaled to unit length (a zero row stays zero)."""
    c = np.asarray(x, dtype=np.float64) - mean
    norm = np.sqrt((c * c).sum(axis=-1, keepdims=True))
    return np.divide(c, norm, out=np.zeros_like(c), where=norm > 0)


def fit_projection(sample: np.ndarray, dims: int = PROJECTED_DIMS) -> Projection:
    """Centre and PCA basis from a sample (rows in a fixed order), in float64.

    The basis spans the top ``dims`` principal directions of the centred,
    normalised sample, so dot products of projected rows approximate cosines.
    Eigenvector signs are fixed (largest component positive) for determinism.

    The cost never grows with D squared: with more dimensions than sample
    rows (``--pool flatten``: 16,384-d and more) the D x D scatter would be
    gigabytes and its eigendecomposition O(D^3), so the basis comes from the
    n x n Gram matrix of the sample instead (``_gram_basis``), the same
    directions at O(n^2 D) time and O(n^2 + n D) memory.
    """
    x = np.asarray(sample)
    n, d = x.shape
    if d <= dims:
        return Projection(x.astype(np.float64).mean(axis=0), np.eye(d))
    if d > n:
        return _gram_basis(x, dims)
    x = x.astype(np.float64)
    mean = x.mean(axis=0)
    u = centre_normalise(x, mean)
    values, vectors = np.linalg.eigh(u.T @ u)
    return Projection(mean, _fixed_signs(vectors[:, np.argsort(-values, kind="stable")[:dims]]))


# Columns of the sample converted to float64 at once by _gram_basis: at most
# 4,096 x 1,024 x 8 B = 32 MiB, whatever D is.
_GRAM_CHUNK = 1024


def _gram_basis(x: np.ndarray, dims: int) -> Projection:
    """``fit_projection`` for D > n, through the Gram matrix G = u u^T.

    The scatter u^T u has rank at most n, and its nonzero eigenpairs come
    from G: G v = l v gives (u^T u)(u^T v) = l (u^T v) with |u^T v| = sqrt(l),
    so each principal direction is u^T v / sqrt(l), the same vector as the
    scatter's eigenvector up to sign (fixed below as there). Directions with
    a zero eigenvalue (fewer sample rows than ``dims``) carry nothing and
    are zero columns. Two passes over column chunks of the sample, so no
    n x D float64 copy is made.
    """
    n, d = x.shape
    mean = x.mean(axis=0, dtype=np.float64)
    gram = np.zeros((n, n))
    for a in range(0, d, _GRAM_CHUNK):
        c = x[:, a:a + _GRAM_CHUNK].astype(np.float64) - mean[a:a + _GRAM_CHUNK]
        gram += c @ c.T
    # G of the centred rows scaled to unit length: diag(1/|c|) (c c^T) diag(1/|c|)
    norm = np.sqrt(np.diag(gram).copy())
    inv = np.divide(1.0, norm, out=np.zeros_like(norm), where=norm > 0)
    gram *= inv[:, None]
    gram *= inv[None, :]
    values, vectors = np.linalg.eigh(gram)
    order = np.argsort(-values, kind="stable")[:dims]
    lam = values[order]
    keep = lam > lam.max(initial=0) * 1e-12
    scale = np.divide(1.0, np.sqrt(np.where(keep, lam, 1.0)), where=keep,
                      out=np.zeros_like(lam))
    v = vectors[:, order] * scale * inv[:, None]     # u^T v = c^T (v / |c|)
    top = np.zeros((d, dims))
    for a in range(0, d, _GRAM_CHUNK):
        c = x[:, a:a + _GRAM_CHUNK].astype(np.float64) - mean[a:a + _GRAM_CHUNK]
        top[a:a + _GRAM_CHUNK, :len(order)] = c.T @ v
    return Projection(mean, _fixed_signs(top))


def _fixed_signs(top: np.ndarray) -> np.ndarray:
    """Each column's sign fixed so its largest component is positive."""
    signs = np.sign(top[np.abs(top).argmax(axis=0), np.arange(top.shape[1])])
    signs[signs == 0] = 1
    return top * signs


def project(vector: np.ndarray, proj: Projection) -> np.ndarray:
    """One vector -> its float32 row in the neighbour matrix.

    Divided by the full centred norm, so a row's length is the share of the
    vector the basis keeps and dot products approximate full cosines. One
    vector at a time: the result never depends on a batch's shape.
    """
    u = centre_normalise(np.asarray(vector)[None, :], proj.mean)[0]
    return (u @ proj.basis).astype(np.float32)


def signature(thumb: Thumbnail, side: int = SIGNATURE_SIDE) -> bytes:
    """A small grey version of the sprite thumbnail, to compare pictures."""
    img = thumb.image().convert("L")
    return img.resize((side, side), Image.BOX).tobytes()


def pixel_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Mean absolute grey difference (0-255) between signatures (last axis)."""
    return np.abs(a.astype(np.int16) - b.astype(np.int16)).mean(axis=-1)


def search_block(z: np.ndarray, rows: np.ndarray, count: int) -> List[Tuple[np.ndarray, np.ndarray]]:
    """Top ``count`` neighbours of ``z[rows]`` among all rows of ``z`` (self excluded).

    Returns per query (neighbour rows, float64 similarities), sorted by
    similarity descending then row (= output order). Exact over ``z``:
    float32 products pick a candidate superset via block maxima (the
    count-th largest block maximum is a lower bound of the count-th score),
    then candidates are re-scored in float64 pair by pair.
    """
    n = z.shape[0]
    count = min(count, n - 1)
    if count <= 0:
        return [(np.zeros(0, np.int64), np.zeros(0)) for _ in rows]
    q = z[rows]
    # about 4 * count blocks, so the count-th block maximum is a tight bound
    size = int(min(_BLOCK, max(1, n // (4 * count))))
    blocks = -(-n // size)
    scores = np.full((len(rows), blocks * size), -np.inf, dtype=np.float32)
    np.matmul(q, z.T, out=scores[:, :n])
    scores[np.arange(len(rows)), rows] = -np.inf
    by_block = scores.reshape(len(rows), blocks, size)
    maxima = by_block.max(axis=2)
    if blocks >= count:
        bound = np.partition(maxima, blocks - count, axis=1)[:, blocks - count]
    else:  # tiny N: the count-th score itself
        bound = np.partition(scores, scores.shape[1] - count, axis=1)[:, scores.shape[1] - count]
    bound = bound - _SLACK
    qi, bi = np.nonzero(maxima >= bound[:, None])
    hit_q, hit_c = np.nonzero(by_block[qi, bi] >= bound[qi, None])
    query = qi[hit_q]
    cand = bi[hit_q] * size + hit_c
    keep = (cand < n) & (cand != rows[query])
    query, cand = query[keep], cand[keep]
    exact = (z[cand].astype(np.float64) * q[query].astype(np.float64)).sum(axis=1)
    order = np.lexsort((cand, -exact, query))
    query, cand, exact = query[order], cand[order], exact[order]
    starts = np.searchsorted(query, np.arange(len(rows) + 1))
    return [(cand[a:a + count], exact[a:a + count]) for a, b in zip(starts[:-1], starts[1:])]


def majority(labels: Sequence[str]) -> str:
    """Most common label; a tie goes to the one met first (the nearest)."""
    counts = collections.Counter(labels)
    best = max(counts.values())
    return next(lab for lab in labels if counts[lab] == best)


def rank_weights(k: int) -> np.ndarray:
    """Weights of the 1st ... k-th neighbour in nn_label_agreement: 1/rank."""
    return 1.0 / np.arange(1, k + 1)


def weighted_agreement(same: Sequence[bool]) -> float:
    """Share of the neighbours (nearest first) carrying the item's label,
    each weighted 1/rank: nearer neighbours count more, and the value takes
    hundreds of distinct values instead of K + 1, so the projector draws
    the column as a gradient (a numeric column needs more than 50 distinct
    values for that) and suspects rank without ties."""
    w = rank_weights(len(same))
    return float(w[np.asarray(same, dtype=bool)].sum() / w.sum()) if len(same) else 0.0


def agreement_bin(agreement: float) -> str:
    for lower, code in AGREEMENT_BINS:
        if agreement >= lower:
            return code
    return AGREEMENT_BINS[-1][1]


def js_number(value: float, decimals: int) -> str:
    """``value`` rounded to ``decimals``, written as JavaScript writes that
    number (``String(Number(text)) == text``): "0.7", "1", never "0.70".
    The projector colours a point by the number but labels the legend by
    the text, so "1.00" got one colour in the legend and another on the
    points (docs/output.md, "Colours")."""
    text = f"{float(value):.{decimals}f}"
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


def distance_bin(distance: float, cuts: Sequence[float]) -> str:
    return DISTANCE_BINS[sum(distance > c for c in cuts)]


def distance_cuts(distances: Sequence[float]) -> Tuple[float, ...]:
    """Quantile cuts of the K-th neighbour distances (values that occur)."""
    if not len(distances):
        return ()
    d = np.sort(np.asarray(distances, dtype=np.float64))
    return tuple(float(d[min(len(d) - 1, int(q * len(d)))]) for q in DISTANCE_QUANTILES)


def format_distance(sim: float) -> str:
    return js_number(max(0.0, 1.0 - sim), 4)


class NeighborIndex(NamedTuple):
    """The broadcast side input: every kept item's row, sorted by order key."""
    z: np.ndarray                  # (N, dims) float32
    keys: Tuple[tuple, ...]        # order key per row (ascending)
    labels: Tuple[str, ...]        # empty when there is no label column
    images: Tuple[str, ...]        # image column value per row
    signatures: np.ndarray         # (N, SIGNATURE_SIDE^2) uint8
    cuts: Tuple[float, ...]        # nn_distance quantile cuts


def build_index(rows: Sequence[tuple], k: int) -> NeighborIndex:
    """(order key, z as float32 bytes, label, image, signature) rows -> the side input."""
    rows = sorted(rows, key=lambda r: r[0])
    n = len(rows)
    z = (np.frombuffer(b"".join(r[1] for r in rows), np.float32).reshape(n, -1).copy()
         if n else np.zeros((0, 1), np.float32))
    labels = tuple(r[2] for r in rows) if n and rows[0][2] is not None else ()
    sigs = (np.frombuffer(b"".join(r[4] for r in rows), np.uint8).reshape(n, -1)
            if n else np.zeros((0, SIGNATURE_SIDE ** 2), np.uint8))
    index = NeighborIndex(z, tuple(r[0] for r in rows), labels,
                          tuple(r[3] for r in rows), sigs, ())
    sample = np.arange(min(n, CUT_SAMPLE))
    dists = []
    for start in range(0, len(sample), 256):
        for cand, sims in search_block(z, sample[start:start + 256], k):
            if len(sims):
                dists.append(max(0.0, 1.0 - float(sims[-1])))
    return index._replace(cuts=distance_cuts(dists))


def neighbor_values(row: int, cand: np.ndarray, sims: np.ndarray, index: NeighborIndex,
                    k: int, threshold: float) -> Tuple[str, ...]:
    """The new column values of one item, in neighbor_columns order."""
    near = cand[:k]
    out: List[str] = []
    if index.labels:
        if len(near):
            own = index.labels[row]
            labs = [index.labels[j] for j in near]
            agreement = weighted_agreement([lab == own for lab in labs])
            text = js_number(agreement, 3)
            out += [text, agreement_bin(float(text)), majority(labs)]
        else:
            out += ["", "", ""]
    if len(near):
        dist = format_distance(float(sims[len(near) - 1]))
        out += [dist, distance_bin(float(dist), index.cuts)]
    else:
        out += ["", ""]
    dups = cand[pixel_distance(index.signatures[cand], index.signatures[row]) <= threshold] \
        if len(cand) else cand
    earlier = dups[dups < row]
    if len(earlier):
        out += ["copy", index.images[int(earlier.min())]]
    else:
        out += ["first" if len(dups) else "none", ""]
    return tuple(out)


# --- Beam plumbing ----------------------------------------------------------

def _sample_entry(e, t):
    # a copy: the vector may be a row of its whole batch's output, which the
    # PCA sample would otherwise keep alive for the rest of the stage
    return order_key(e.item), np.array(e.vectors[t], dtype=np.float32, copy=True)


def _fit(sample, dims):
    sample = sorted(sample, key=lambda kv: kv[0])
    if not sample:
        return None
    with StageTimer("neighbors", process_cpu=True).measure():
        return fit_projection(np.stack([v for _, v in sample]), dims)


def pack_vector(vector, dims: int = PROJECTED_DIMS) -> bytes:
    """A vector as it waits for the PCA: float32 bytes when it has at most
    ``dims`` dimensions (the search is then exact), else float16 bytes of
    vector / max|vector| behind a float32 scale: half the size, and the
    rounding (about 2.4e-4 of the largest component) is far below what the
    projection to ``dims`` dimensions loses."""
    v = np.asarray(vector, dtype=np.float32)
    if v.shape[0] <= dims:
        return b"f" + v.tobytes()
    scale = np.float32(np.abs(v).max()) if v.size else np.float32(0)
    if not np.isfinite(scale) or scale == 0:
        return b"f" + v.tobytes()
    return b"h" + scale.tobytes() + (v / scale).astype(np.float16).tobytes()


def unpack_vector(data: bytes) -> np.ndarray:
    """pack_vector's bytes -> the float32 vector (float16-rounded if packed so)."""
    if data[:1] == b"f":
        return np.frombuffer(data, np.float32, offset=1)
    scale = np.frombuffer(data, np.float32, count=1, offset=1)[0]
    return np.frombuffer(data, np.float16, offset=5).astype(np.float32) * scale


def _slim(e, t, label_index, image_index, dims):
    """What the index needs of one item, before the wait for the PCA: the
    thumbnail shrinks to its signature, the vector is packed (pack_vector),
    the other tensors are dropped. Plain bytes and strings, so a runner
    encodes it without pickling."""
    item = e.item
    label = item.metadata[label_index] if label_index is not None else None
    image = item.metadata[image_index] if image_index is not None else item.ref
    return (order_key(item), pack_vector(e.vectors[t], dims), label, image,
            signature(readable(e.thumbnail)))


def _index_row(slim, proj):
    key, packed, label, image, sig = slim
    return (key, project(unpack_vector(packed), proj).tobytes(), label, image, sig)


def _work_blocks(index: NeighborIndex):
    """The index's rows as (start, stop) units of work."""
    n = len(index.keys)
    return [(a, min(n, a + WORK_ROWS)) for a in range(0, n, WORK_ROWS)]


class _NeighborsFn(beam.DoFn):
    """(start, stop) rows of the index -> (order key, column values) per row."""

    def __init__(self, k: int, threshold: float):
        self._k, self._threshold = k, threshold

    def setup(self):
        self._counter = beam.metrics.Metrics.counter("projector", "neighbors")
        self._timer = StageTimer("neighbors", process_cpu=True)

    def process(self, block, index: NeighborIndex):
        start, stop = block
        for a in range(start, stop, QUERY_BLOCK):
            rows = np.arange(a, min(stop, a + QUERY_BLOCK), dtype=np.int64)
            with self._timer.measure():
                found = search_block(index.z, rows, max(self._k, DUPLICATE_CANDIDATES))
                values = [neighbor_values(int(row), cand, sims, index, self._k, self._threshold)
                          for row, (cand, sims) in zip(rows, found)]
            for row, row_values in zip(rows, values):
                yield index.keys[row], row_values
            self._counter.inc(len(rows))


class NeighborColumns(beam.PTransform):
    """PCollection[Embedded] -> PCollection[(order key, values)], one per item.

    The values are those of ``columns`` (= neighbor_columns(label_index is not
    None)). ``tensor_index`` picks the embedding, ``label_index``/
    ``image_index`` are metadata positions (label None: no agreement columns;
    image None: the item's ref names it in duplicate_of). Give it to
    ``ImagesToProjector(column_stages=[...])``, whose writer joins the values
    by key.
    """

    def __init__(self, k: int, tensor_index: int = 0, label_index: Optional[int] = None,
                 image_index: Optional[int] = 0,
                 threshold: float = DEFAULT_DUPLICATE_THRESHOLD, dims: int = PROJECTED_DIMS):
        super().__init__()
        if k < 1:
            raise ValueError(f"neighbours need k >= 1, got {k}")
        self._k, self._t, self._label, self._image = k, tensor_index, label_index, image_index
        self._threshold, self._dims = threshold, dims
        self.columns = neighbor_columns(label_index is not None)

    def expand(self, embedded):
        t, k = self._t, self._k
        proj = (embedded
                | "SampleKeyed" >> beam.Map(_sample_entry, t)
                | "FirstInOrder" >> beam.combiners.Top.Of(PCA_SAMPLE, key=lambda kv: kv[0],
                                                          reverse=True)
                | "FitPCA" >> beam.Map(_fit, self._dims))
        index = (embedded
                 | "Slim" >> beam.Map(_slim, t, self._label, self._image, self._dims)
                 | "Project" >> beam.Map(_index_row, beam.pvalue.AsSingleton(proj))
                 | "AllRows" >> beam.combiners.ToList()
                 | "Index" >> beam.Map(build_index, k))
        return (index
                | "WorkBlocks" >> beam.FlatMap(_work_blocks)
                | "Spread" >> beam.Reshuffle()
                | "FindNeighbors" >> beam.ParDo(_NeighborsFn(k, self._threshold),
                                                beam.pvalue.AsSingleton(index)))


def _append_values(joined):
    _, grouped = joined
    (values,) = grouped["values"]
    for e in grouped["items"]:
        yield e._replace(item=e.item._replace(metadata=tuple(e.item.metadata) + values))


class AddNeighborColumns(beam.PTransform):
    """PCollection[Embedded] -> the same, metadata extended by neighbor_columns().

    ``NeighborColumns`` joined back onto the items by key (the arguments are
    the same). Inside ``ImagesToProjector`` prefer ``column_stages=
    [NeighborColumns(...)]``: the writer joins there, without this second wait
    for every item.
    """

    def __init__(self, k: int, tensor_index: int = 0, label_index: Optional[int] = None,
                 image_index: Optional[int] = 0,
                 threshold: float = DEFAULT_DUPLICATE_THRESHOLD, dims: int = PROJECTED_DIMS):
        super().__init__()
        self._columns = NeighborColumns(k, tensor_index, label_index, image_index, threshold,
                                        dims)
        self.columns = self._columns.columns

    def expand(self, embedded):
        values = embedded | "Columns" >> self._columns
        keyed = embedded | "KeyItems" >> beam.Map(lambda e: (order_key(e.item), e))
        return ({"items": keyed, "values": values}
                | "Join" >> beam.CoGroupByKey()
                | "Append" >> beam.FlatMap(_append_values))
