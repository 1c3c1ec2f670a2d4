"""A layout of every written point, computed offline: the pure part (no Beam).

The projector runs t-SNE on 10,000 sampled points and UMAP on 5,000, so at
N = 100,000 the browser shows a tenth of the data. This module makes a 2-D
(or 3-D) layout of all N: UMAP fitted on a deterministic sample of S rows,
then every other row placed from its nearest sample rows.

    model = fit_layout(sample_keys, sample_vectors, sample_labels)
    coords, clusters = place(model, vectors)          # any rows, any batch

Steps, with the measurements behind each choice in BENCHMARKS.md:

- prepare: L2-normalise each row, centre on the sample's mean and project
  on the sample's 50 principal axes (float64, fixed signs). This approximates
  cosine distance, suits pooled CNN features, and made UMAP's fit both faster
  and better than raw vectors;
- fit: ``umap.UMAP(n_neighbors=15, min_dist=0.1, random_state=seed)`` on the
  S prepared sample rows (the library's defaults: sweeps of both moved
  trustworthiness by less than 0.002);
- place: each row's 15 nearest sample rows (exact, float64), UMAP's own
  membership weights, a start at the weighted mean of their layout
  positions, then 30 epochs of UMAP's own optimisation of that one point
  against the fixed sample layout (attraction to its neighbours, repulsion
  from 5 random sample points an edge). ``UMAP.transform`` does the same,
  but its result for a row depends on the other rows of the same call (its
  epochs, its edge pruning and pynndescent's random state are per batch), so
  a runner's bundle sizes would change the bytes; it also recompiles numba
  code on every worker. Here every random draw is a counter-based hash of
  (the row's key, epoch, edge, draw) and every array operation is row by
  row over fixed block shapes, so a row's position is bitwise the same
  whatever it is batched with, in numpy alone. The epochs matter on hard
  data: the weighted mean alone lands a row between the islands of its
  neighbours (on 100,000 noisy digits, 10-NN label share 0.55 placed vs
  0.67 in the fitted sample; with the epochs 0.64, BENCHMARKS.md);
- clusters: scikit-learn's HDBSCAN on the sample's layout, at most 50 named
  values (the projector drops a text column with more from "Color by"):
  the largest 50 clusters, every other sample point in the cluster of its
  nearest point in them; every other row takes the weighted vote of the
  sample rows it was placed with.
"""
import math
import os
import sys
import tempfile
import warnings
from typing import Dict, NamedTuple, Optional, Sequence, Tuple

import numpy as np

METHODS = ("none", "umap")
# The method a layout uses when one is asked for (LayoutColumns, fit_layout)
DEFAULT_METHOD = "umap"
# The CLI's and ImagesToProjector's default: no layout. Measured at N = 6,000
# MobileNetV2 (BENCHMARKS.md, "Offline layout"), the layout adds about 7 s
# and 160 MiB of peak RSS, which would break the 1.5 GiB bound a default run
# keeps there; --layout umap (the demo's choice) opts in.
DEFAULT_LAYOUT = "none"
# Rows the layout is fitted on: the first S in output order (a uniform
# sample). 10,000 matched a fit on all 100,000 (trustworthiness 0.9903 vs
# 0.9911); 20,000 gained 0.0007 for twice the placement cost.
DEFAULT_SAMPLE = 10_000
PCA_DIMS = 50
N_NEIGHBORS = 15
MIN_DIST = 0.1
# UMAP's own default above 10,000 rows; below, it takes 500, which cost
# 3 s more at 6,000 rows for a layout the quality tests cannot tell apart
FIT_EPOCHS = 200
# Rows per BLAS call while placing and projecting: always this shape
# (zero-padded), so the arithmetic never depends on a caller's batch.
BLOCK = 512
# "Color by" lists a text column only with at most 50 distinct values.
MAX_CLUSTERS = 50
# HDBSCAN's smallest cluster: this share of the sample (at least 5 points).
# On 10,000 digits laid out, 1/100 found 3 clusters for 10 classes and
# 1/500 found 122 with a quarter of the points as noise; 1/200 found 70.
MIN_CLUSTER_SHARE = 1 / 200
# A cluster is named after a label carried by at least this share of it.
NAME_SHARE = 0.5
# Epochs of UMAP's optimisation for each placed row (UMAP.transform's
# default for large batches), negative samples per edge and the starting
# learning rate (UMAP's transform uses a quarter of the fit's 1.0).
PLACE_EPOCHS = 30
NEGATIVE_SAMPLES = 5
PLACE_LEARNING_RATE = 0.25
# Below this many rows UMAP's spectral start has nothing to work on: the
# layout is the first principal axes of the prepared rows instead.
MIN_UMAP_ROWS = 16
# Coordinates are written with about this many significant digits of the
# layout's extent (1e-4 of it): the bookmark stays small, and the last bits
# of a float, which another CPU may round differently, are dropped.
EXTENT_DIGITS = 4


def projection_keys(dims: int, method: str = DEFAULT_METHOD) -> Tuple[str, ...]:
    """The projector's point keys a ``method`` layout fills (``umap-0`` ...)."""
    return tuple(f"{method}-{i}" for i in range(dims))


# --- prepare ---------------------------------------------------------------

def normalise_rows(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length in float64 (a zero row stays zero)."""
    a = np.asarray(x, dtype=np.float64)
    norm = np.sqrt((a * a).sum(axis=1, keepdims=True))
    return np.divide(a, norm, out=np.zeros_like(a), where=norm > 0)


def fit_pca(sample: np.ndarray, dims: int = PCA_DIMS) -> Tuple[np.ndarray, np.ndarray]:
    """(mean, basis D x p) of the normalised sample: the top ``dims`` principal
    axes, largest component of each positive; all axes when D <= dims."""
    u = normalise_rows(sample)
    mean = u.mean(axis=0)
    d = u.shape[1]
    if d <= dims:
        return mean, np.eye(d)
    c = u - mean
    values, vectors = np.linalg.eigh(c.T @ c)   # D x D: cheaper than an SVD of S x D
    top = vectors[:, np.argsort(-values, kind="stable")[:dims]]
    signs = np.sign(top[np.abs(top).argmax(axis=0), np.arange(top.shape[1])])
    signs[signs == 0] = 1
    return mean, top * signs


def project(x: np.ndarray, mean: np.ndarray, basis: np.ndarray) -> np.ndarray:
    """Rows -> prepared rows (float64), in zero-padded BLOCK-row products."""
    x = np.asarray(x)
    out = np.empty((len(x), basis.shape[1]))
    for a in range(0, len(x), BLOCK):
        n = min(BLOCK, len(x) - a)
        block = np.zeros((BLOCK, x.shape[1]))
        block[:n] = normalise_rows(x[a:a + n])
        out[a:a + n] = ((block - mean) @ basis)[:n]
    return out


# --- numba and umap --------------------------------------------------------

def numba_cache_dir() -> str:
    """Where numba keeps compiled code: $NUMBA_CACHE_DIR, else a folder in
    the user's cache directory (a temporary one when that is not writable)."""
    if os.environ.get("NUMBA_CACHE_DIR"):
        return os.environ["NUMBA_CACHE_DIR"]
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    for folder in (os.path.join(base, "beam-projector", "numba"),
                   os.path.join(tempfile.gettempdir(), f"beam-projector-numba-{os.getuid()}")):
        try:
            os.makedirs(folder, exist_ok=True)
            if os.access(folder, os.W_OK):
                return folder
        except OSError:
            continue
    return ""


def import_umap():
    """``umap`` with numba's on-disk cache switched on for its functions.

    umap-learn 0.5.12 compiles its hot functions without ``cache=True``, so
    every process paid about 20 s of JIT; enabling the cache on those
    dispatchers before the first fit brought a warm process's compile time
    to 0.1 s, with bitwise the same layout (BENCHMARKS.md). The cache is
    keyed to the source and the CPU, so a new machine compiles once.
    ``umap`` imports TensorFlow for ParametricUMAP, which is not used here:
    that import is skipped when TensorFlow is not loaded already.
    """
    if "umap" in sys.modules:
        return sys.modules["umap"]
    folder = numba_cache_dir()
    if folder and not os.environ.get("NUMBA_CACHE_DIR"):
        os.environ["NUMBA_CACHE_DIR"] = folder
        if "numba" in sys.modules:
            from numba.core import config
            config.reload_config()
    blocked = "tensorflow" not in sys.modules and "umap.parametric_umap" not in sys.modules
    if blocked:
        sys.modules["umap.parametric_umap"] = None   # its ImportError is caught by umap
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import umap
    finally:
        if blocked and sys.modules.get("umap.parametric_umap", 0) is None:
            del sys.modules["umap.parametric_umap"]
    if folder:
        from numba.core.caching import NullCache
        from numba.core.dispatcher import Dispatcher
        for name, module in list(sys.modules.items()):
            if module is None or not name.startswith(("umap", "pynndescent")):
                continue
            for value in list(vars(module).values()):
                if isinstance(value, Dispatcher) and isinstance(value._cache, NullCache):
                    value.enable_caching()
    return umap


def fit_umap(z: np.ndarray, dims: int = 2, seed: int = 0) -> Tuple[np.ndarray, float, float]:
    """(UMAP of the prepared sample rows, S x dims float64, and UMAP's curve
    parameters a, b); seeded, so the same rows give the same bytes (UMAP
    then runs single-threaded)."""
    n = len(z)
    if n < MIN_UMAP_ROWS:
        return principal_axes(z, dims), 1.577, 0.895   # UMAP's a, b at min_dist 0.1
    umap = import_umap()
    k = min(N_NEIGHBORS, n - 1)
    reducer = umap.UMAP(n_neighbors=k, min_dist=MIN_DIST, n_epochs=FIT_EPOCHS,
                        n_components=dims, metric="euclidean", init="spectral",
                        random_state=seed, low_memory=True, verbose=False,
                        precomputed_knn=(*sample_knn(z, k), None))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # "n_jobs overridden by random_state", and the like
        y = reducer.fit_transform(np.ascontiguousarray(z, dtype=np.float32))
    return np.asarray(y, dtype=np.float64), float(reducer._a), float(reducer._b)


def sample_knn(z: np.ndarray, k: int) -> Tuple[np.ndarray, np.ndarray]:
    """(indices, distances) of each sample row's k nearest sample rows, itself
    first, as UMAP's own search returns them, but exact (``nearest``).

    UMAP searches with pynndescent above 4,096 rows, whose numba functions
    are compiled in every process (umap's caching does not reach them):
    about 10 s of a 16 s fit at 6,000 rows, against well under a second
    for this blocked product on 50 columns."""
    zz = np.asarray(z, dtype=np.float64)
    idx, dist = nearest(zz, _rowsum(zz * zz), zz, k)
    rows = np.arange(len(zz))
    for i in np.nonzero(idx[:, 0] != rows)[0]:   # a duplicate row tied ahead of itself
        others = [j for j in idx[i] if j != i][:k - 1]
        idx[i] = [i] + others
        dist[i] = [0.0] + [float(np.sqrt(max(0.0, np.sum((zz[i] - zz[j]) ** 2))))
                           for j in others]
    dist[:, 0] = 0.0
    return idx.astype(np.int32), dist.astype(np.float32)


def principal_axes(z: np.ndarray, dims: int) -> np.ndarray:
    """The first ``dims`` coordinates of z on its principal axes (fixed
    signs), zero where there is no such axis: the layout of a tiny sample."""
    z = np.asarray(z, dtype=np.float64)
    out = np.zeros((len(z), dims))
    if len(z) < 2:
        return out
    c = z - z.mean(axis=0)
    values, vectors = np.linalg.eigh(c.T @ c)
    order = np.argsort(-values, kind="stable")[:dims]
    axes = vectors[:, order]
    signs = np.sign(axes[np.abs(axes).argmax(axis=0), np.arange(axes.shape[1])])
    signs[signs == 0] = 1
    k = axes.shape[1]
    out[:, :k] = c @ (axes * signs)
    out[:, :k][:, values[order] <= max(values.max(), 0) * 1e-12] = 0.0
    return out


# --- place -----------------------------------------------------------------

def _rowsum(a: np.ndarray) -> np.ndarray:
    """Sum along rows in a fixed column order (np.sum may pair differently
    for different shapes)."""
    s = a[:, 0].copy()
    for j in range(1, a.shape[1]):
        s += a[:, j]
    return s


def nearest(reference: np.ndarray, ref_sq: np.ndarray, q: np.ndarray,
            k: int) -> Tuple[np.ndarray, np.ndarray]:
    """(rows, distances) of each query's k nearest reference rows: exact
    squared euclidean in float64, ties broken by reference row, computed in
    zero-padded BLOCK-row products so a query's answer never depends on its
    companions."""
    k = min(k, len(reference))
    idx = np.empty((len(q), k), np.int64)
    dist = np.empty((len(q), k))
    for a in range(0, len(q), BLOCK):
        n = min(BLOCK, len(q) - a)
        block = np.zeros((BLOCK, reference.shape[1]))
        block[:n] = q[a:a + n]
        d2 = (ref_sq[None, :] - 2.0 * (block @ reference.T))[:n] + _rowsum(block[:n] ** 2)[:, None]
        d2 = np.maximum(d2, 0.0)
        part = (np.argpartition(d2, k, axis=1)[:, :k + 1] if k < d2.shape[1]
                else np.tile(np.arange(d2.shape[1]), (n, 1)))
        pd = np.take_along_axis(d2, part, 1)
        order = np.lexsort((part, pd), axis=1)[:, :k]
        idx[a:a + n] = np.take_along_axis(part, order, 1)
        dist[a:a + n] = np.sqrt(np.take_along_axis(pd, order, 1))
    return idx, dist


def membership_weights(dist: np.ndarray) -> np.ndarray:
    """UMAP.transform's weights: exp(-d / sigma) with sigma found by
    bisection so that a row's weights sum to log2(k) (rho = 0 there)."""
    k = dist.shape[1]
    if k == 1:
        return np.ones_like(dist)
    target = math.log2(k)
    lo = np.zeros(len(dist))
    hi = np.full(len(dist), np.inf)
    mid = np.ones(len(dist))
    for _ in range(64):
        s = _rowsum(np.exp(-dist / mid[:, None]))
        big = s > target
        hi = np.where(big, mid, hi)
        lo = np.where(big, lo, mid)
        mid = np.where(np.isinf(hi), mid * 2.0, (lo + hi) / 2.0)
    w = np.exp(-dist / mid[:, None])
    w[~np.isfinite(w) | (w <= 0)] = 0.0
    w[_rowsum(w) <= 0, 0] = 1.0          # all weight underflowed: the nearest one
    return w


_M64 = np.uint64(0xFFFFFFFFFFFFFFFF)


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: a counter-based random number per uint64."""
    with np.errstate(over="ignore"):
        x = (x + np.uint64(0x9E3779B97F4A7C15)) & _M64
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def refine(y: np.ndarray, idx: np.ndarray, w: np.ndarray, sample_y: np.ndarray,
           ids: np.ndarray, a: float, b: float, epochs: int = PLACE_EPOCHS,
           seed: int = 0) -> np.ndarray:
    """UMAP's optimisation of each placed row against the fixed sample layout.

    As umap's ``optimize_layout_euclidean`` with ``move_other=False`` (what
    ``UMAP.transform`` runs): an edge of weight w is sampled every
    max(w)/w epochs, pulls the row towards its neighbour and pushes it from
    NEGATIVE_SAMPLES sample points drawn at random; gradients clipped at 4,
    the learning rate falling linearly. Row by row: each draw is
    ``_mix(key hash + counter)``, so nothing depends on the batch.
    """
    y = y.copy()
    n_sample = np.uint64(len(sample_y))
    k = idx.shape[1]
    every = 1.0 / np.maximum(w / w.max(axis=1, keepdims=True), 1e-12)
    due = every.copy()
    base = _mix(np.asarray(ids, dtype=np.uint64) ^ np.uint64(seed))
    for e in range(epochs):
        alpha = PLACE_LEARNING_RATE * (1.0 - e / epochs)
        for j in range(k):
            active = (due[:, j] <= e + 1)[:, None]
            diff = y - sample_y[idx[:, j]]
            d2 = _rowsum(diff * diff)
            with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
                g = np.where(d2 > 0, -2.0 * a * b * d2 ** (b - 1.0) / (a * d2 ** b + 1.0), 0.0)
            y = np.where(active, y + np.clip(g[:, None] * diff, -4.0, 4.0) * alpha, y)
            for s in range(NEGATIVE_SAMPLES):
                r = _mix(base + np.uint64(((e * k + j) * 64 + s + 1)))
                diff = y - sample_y[(r % n_sample).astype(np.int64)]
                d2 = _rowsum(diff * diff)
                with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
                    g = np.where(d2 > 0, 2.0 * b / ((0.001 + d2) * (a * d2 ** b + 1.0)), 0.0)
                step = np.where(g[:, None] > 0, np.clip(g[:, None] * diff, -4.0, 4.0), 0.0)
                y = np.where(active, y + step * alpha, y)
            due[:, j] = np.where(active[:, 0], due[:, j] + every[:, j], due[:, j])
    return y


class LayoutModel(NamedTuple):
    """The fitted layout, broadcast to the workers that place the rows (a few
    MB: S x 50 float64 plus the sample's positions)."""
    method: str
    mean: np.ndarray              # (D,) centre of the normalised sample
    basis: np.ndarray             # (D, p) principal axes
    z: np.ndarray                 # (S, p) prepared sample rows
    z_sq: np.ndarray              # (S,) their squared norms
    y: np.ndarray                 # (S, dims) the sample's fitted positions
    cluster: np.ndarray           # (S,) cluster code of each sample row
    names: Tuple[str, ...]        # cluster code -> the column's value
    decimals: int                 # decimals the coordinates are written with
    rows: Dict[object, int]       # sample key -> sample row
    a: float = 1.577              # UMAP's curve parameters (min_dist 0.1)
    b: float = 0.895
    seed: int = 0


def row_ids(keys: Sequence) -> np.ndarray:
    """A uint64 per row for the placement's random draws: the order key's
    seeded hash (an int), else a hash of the key's text."""
    import hashlib

    out = np.empty(len(keys), dtype=np.uint64)
    for i, key in enumerate(keys):
        head = key[0] if isinstance(key, tuple) and key else key
        if isinstance(head, (int, np.integer)) and not isinstance(head, bool):
            out[i] = np.uint64(int(head) & 0xFFFFFFFFFFFFFFFF)
        else:
            text = key if isinstance(key, bytes) else repr(key).encode()
            out[i] = np.uint64(int.from_bytes(
                hashlib.blake2b(text, digest_size=8).digest(), "little"))
    return out


def place(model: LayoutModel, vectors: np.ndarray,
          ids: Optional[np.ndarray] = None) -> Tuple[np.ndarray, np.ndarray]:
    """(positions Q x dims, cluster codes) of rows that are not in the sample;
    ``ids`` (uint64 per row, ``row_ids``) key their random draws (default: a
    hash of each row's values, so never its place in the batch)."""
    z = project(vectors, model.mean, model.basis)
    idx, dist = nearest(model.z, model.z_sq, z, N_NEIGHBORS)
    w = membership_weights(dist)
    wn = w / _rowsum(w)[:, None]
    y = np.zeros((len(z), model.y.shape[1]))
    for j in range(idx.shape[1]):
        y += wn[:, j:j + 1] * model.y[idx[:, j]]
    if ids is None:
        ids = row_ids([np.asarray(v, dtype=np.float32).tobytes() for v in vectors])
    if len(model.y) >= MIN_UMAP_ROWS:
        y = refine(y, idx, w, model.y, ids, model.a, model.b, seed=model.seed)
    votes = np.zeros((len(z), len(model.names)))
    rows = np.arange(len(z))
    for j in range(idx.shape[1]):
        votes[rows, model.cluster[idx[:, j]]] += w[:, j]
    return y, votes.argmax(axis=1)     # a tied vote: the lower code


def layout_values(model: LayoutModel, keys: Sequence, vectors: np.ndarray):
    """(key, (cluster name, coordinate texts...)) for each row: a sample row
    keeps its fitted position, any other is placed."""
    vectors = np.asarray(vectors)
    out = [None] * len(keys)
    todo = [i for i, key in enumerate(keys) if key not in model.rows]
    for i, key in enumerate(keys):
        if key in model.rows:
            s = model.rows[key]
            out[i] = (key, (model.names[model.cluster[s]],)
                      + tuple(format_coordinate(v, model.decimals) for v in model.y[s]))
    if todo:
        y, cl = place(model, vectors[todo], row_ids([keys[i] for i in todo]))
        for i, pos, c in zip(todo, y, cl):
            out[i] = (keys[i], (model.names[c],)
                      + tuple(format_coordinate(v, model.decimals) for v in pos))
    return out


# --- clusters ---------------------------------------------------------------

def sample_clusters(y: np.ndarray, labels: Optional[Sequence[str]] = None,
                    max_clusters: int = MAX_CLUSTERS) -> Tuple[np.ndarray, Tuple[str, ...]]:
    """(code per sample row, name per code) from the sample's layout.

    HDBSCAN (scikit-learn) finds the clusters; the largest max_clusters keep
    a code (0 = largest). A point HDBSCAN calls noise, or that is in a
    smaller cluster, joins the cluster of its nearest point in those, so no
    catch-all value hides part of the map. A cluster is named "07 cat" when
    at least half of it carries the label cat, "07 mixed" otherwise, "07"
    without labels.
    """
    n = len(y)
    if n == 0:
        return np.zeros(0, np.int64), ("00",)
    found = np.full(n, -1)
    if n >= 10:
        from sklearn.cluster import HDBSCAN
        found = HDBSCAN(min_cluster_size=max(5, round(n * MIN_CLUSTER_SHARE)), min_samples=10,
                        copy=True).fit_predict(y)
    if (found < 0).all():
        found = np.zeros(n, np.int64)
    ids, first, counts = np.unique(found[found >= 0], return_index=True, return_counts=True)
    ranked = ids[np.lexsort((first, -counts))][:max_clusters]   # largest first; ties: first seen
    code = np.full(found.max() + 1, -1)
    code[ranked] = np.arange(len(ranked))
    cluster = np.where(found >= 0, code[np.maximum(found, 0)], -1)
    loose = np.nonzero(cluster < 0)[0]
    if len(loose):
        kept = np.nonzero(cluster >= 0)[0]
        ref = y[kept]
        idx, _ = nearest(ref, _rowsum(ref * ref), y[loose], 1)
        cluster[loose] = cluster[kept[idx[:, 0]]]
    names = []
    for c in range(int(cluster.max()) + 1):
        tag = f"{c:02d}"
        if labels is not None:
            members = [labels[i] for i in np.nonzero(cluster == c)[0]]
            values, counts = np.unique(members, return_counts=True)
            best = int(np.argmax(counts)) if len(counts) else -1
            tag += (f" {values[best]}" if best >= 0 and counts[best] >= NAME_SHARE * len(members)
                    else " mixed")
        names.append(tag)
    return cluster.astype(np.int64), tuple(names)


# --- the fit, end to end ---------------------------------------------------

def coordinate_decimals(y: np.ndarray) -> int:
    """Decimals that keep EXTENT_DIGITS significant digits of the extent."""
    span = float(np.max(y.max(axis=0) - y.min(axis=0))) if len(y) else 0.0
    if not span > 0 or not math.isfinite(span):
        return 0
    return max(0, EXTENT_DIGITS - math.floor(math.log10(span)))


def format_coordinate(value: float, decimals: int) -> str:
    """A coordinate as the JSON number the bookmark carries: fixed decimals,
    trailing zeros dropped, no "-0"."""
    text = f"{float(value):.{decimals}f}"
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


def fit_layout(keys: Sequence, vectors: np.ndarray, labels: Optional[Sequence[str]] = None,
               dims: int = 2, seed: int = 0, method: str = DEFAULT_METHOD) -> LayoutModel:
    """The layout model from the sample rows (in output order)."""
    if method not in METHODS[1:]:
        raise ValueError(f"layout must be one of {', '.join(METHODS)}, got {method!r}")
    if dims not in (2, 3):
        raise ValueError(f"layout_dims must be 2 or 3, got {dims}")
    x = np.asarray(vectors)
    mean, basis = fit_pca(x)
    z = project(x, mean, basis)
    y, a, b = fit_umap(z, dims, seed)
    cluster, names = sample_clusters(y, labels)
    return LayoutModel(method, mean, basis, z, _rowsum(z * z), y, cluster, names,
                       coordinate_decimals(y), {key: i for i, key in enumerate(keys)},
                       a, b, seed)
