"""preview.png: the sample's thumbnails laid out at a 2-D PCA of the embeddings,
or at the offline layout's positions when there is one (``layout``).

Pure functions (numpy + Pillow, no Beam) so a user sees the map in a bucket
listing or an Airflow artifact without starting TensorBoard. Thumbnails are
snapped to a grid with about three cells per image, so none overlaps another:
the centre of the cloud is placed first and far-out points last, each taking
the free cell nearest its projected position.

scikit-learn's PCA would do the projection, but it is only a demo/test extra
here; an SVD of the D x D scatter matrix in numpy is a few lines and keeps the
writer's memory at O(D^2) beyond the matrix it already holds.
"""
import math
from typing import Sequence, Tuple

import numpy as np
from PIL import Image

from beam_projector.transforms.projector import fit_within

MAX_PREVIEW_SIDE = 4096
# Grid cells per point: sparse enough that clusters keep their shape, dense
# enough that thumbnails stay large.
CELLS_PER_POINT = 3.0
BACKGROUND = (24, 24, 24)
# Values of the centred matrix (float64) handled at once: 8 MiB, whatever D is.
_CHUNK_VALUES = 1 << 20


def pca_2d(matrix) -> np.ndarray:
    """N x 2 coordinates on the first two principal components.

    The sign of each axis is fixed (largest loading positive, as
    scikit-learn's ``svd_flip``) so the same data always gives the same map.
    A missing component (N < 3, D == 1, constant data) is all zeros.
    """
    x = np.asarray(matrix, dtype=np.float32)
    if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"PCA needs an N x D matrix with N, D >= 1, got shape {x.shape}")
    n, d = x.shape
    chunk = max(1, _CHUNK_VALUES // d)
    mean = x.mean(axis=0, dtype=np.float64)
    if n <= d:
        centred = x.astype(np.float64) - mean
        _, s, vt = np.linalg.svd(centred, full_matrices=False)
    else:
        scatter = np.zeros((d, d))
        for i in range(0, n, chunk):
            c = x[i:i + chunk].astype(np.float64) - mean
            scatter += c.T @ c
        # The scatter matrix is symmetric PSD: its eigenvectors are the
        # principal axes. eigh is several times cheaper than an SVD here.
        w, v = np.linalg.eigh(scatter)
        order = np.argsort(w)[::-1]
        s, vt = np.clip(w[order], 0.0, None), v[:, order].T
    k = min(2, vt.shape[0])
    axes = vt[:k].copy()
    scale = s[0] if s.size and s[0] > 0 else 1.0
    for j in range(k):
        if s[j] <= scale * 1e-12:      # no variance along this axis
            axes[j] = 0.0
            continue
        if axes[j, np.argmax(np.abs(axes[j]))] < 0:
            axes[j] = -axes[j]
    coords = np.zeros((n, 2))
    for i in range(0, n, chunk):
        coords[i:i + chunk, :k] = (x[i:i + chunk].astype(np.float64) - mean) @ axes.T
    return coords


def preview_geometry(n: int, tile: int, max_side: int = MAX_PREVIEW_SIDE) -> Tuple[int, int]:
    """(grid cells a side, cell px): about CELLS_PER_POINT cells per point,
    cells no larger than the sprite tile, the image within ``max_side``."""
    if n < 1:
        raise ValueError("a preview needs at least one point")
    grid = max(1, math.ceil(math.sqrt(n * CELLS_PER_POINT)))
    grid = min(grid, max_side)  # one px per cell at worst
    cell = max(1, min(int(tile), max_side // grid))
    return grid, cell


def _normalise(coords: np.ndarray, grid: int) -> np.ndarray:
    """Continuous grid positions in [0, grid-1]; each axis scaled on its
    1st-99th percentile so a few outliers do not squash the cloud."""
    lo = np.percentile(coords, 1, axis=0)
    hi = np.percentile(coords, 99, axis=0)
    span = np.where(hi - lo > 0, hi - lo, 1.0)
    pos = (coords - lo) / span
    # centre an axis without spread (a single point, or no second component)
    pos[:, hi - lo <= 0] = 0.5
    return np.clip(pos, 0.0, 1.0) * (grid - 1)


def _nearest_free(free: np.ndarray, px: float, py: float) -> Tuple[int, int]:
    """The free cell nearest (px, py): a window grown by doubling, then one
    exact pass over the radius the best candidate proves sufficient."""
    grid = free.shape[0]
    cx, cy = int(round(px)), int(round(py))

    def best_in(r):
        x0, x1 = max(0, cx - r), min(grid, cx + r + 1)
        y0, y1 = max(0, cy - r), min(grid, cy + r + 1)
        ys, xs = np.nonzero(free[y0:y1, x0:x1])
        if xs.size == 0:
            return None
        xs, ys = xs + x0, ys + y0
        dist = (xs - px) ** 2 + (ys - py) ** 2
        i = np.lexsort((xs, ys, dist))[0]   # ties broken by position: deterministic
        return int(xs[i]), int(ys[i]), float(dist[i])

    r = 0
    while True:
        found = best_in(r)
        if found is not None:
            break
        if r >= grid:
            raise ValueError("no free cell left in the preview grid")
        r = max(1, r * 2)
    x, y, dist = found
    reach = math.ceil(math.sqrt(dist)) + 1
    if reach > r:  # a nearer free cell may lie just outside the window
        x, y, _ = best_in(reach)
    return x, y


def grid_layout(coords: np.ndarray, grid: int) -> Tuple[np.ndarray, np.ndarray]:
    """(cells, order): cell (col, row) of every point, and the order they were
    placed and are drawn in (nearest the centre first, far-out points last).

    Rows grow downwards, so the second component points up as in a plot.
    """
    n = len(coords)
    if n > grid * grid:
        raise ValueError(f"{n} points do not fit a {grid}x{grid} grid")
    pos = _normalise(np.asarray(coords, dtype=np.float64), grid)
    pos[:, 1] = (grid - 1) - pos[:, 1]
    centre = np.median(pos, axis=0)
    far = ((pos - centre) ** 2).sum(axis=1)
    order = np.lexsort((np.arange(n), far))
    free = np.ones((grid, grid), dtype=bool)
    cells = np.zeros((n, 2), dtype=np.int64)
    for i in order:
        x, y = _nearest_free(free, pos[i, 0], pos[i, 1])
        free[y, x] = False
        cells[i] = (x, y)
    return cells, order


def render_preview(thumbnails: Sequence, matrix, tile: int,
                   max_side: int = MAX_PREVIEW_SIDE,
                   background: Tuple[int, int, int] = BACKGROUND,
                   coords=None) -> Image.Image:
    """The preview image: ``thumbnails[i]`` (a ``Thumbnail``) at the PCA
    position of ``matrix[i]`` (or at ``coords[i]``, a 2-D layout, when
    given), on a plain background, at most ``max_side`` px."""
    n = len(thumbnails)
    if n != len(matrix):
        raise ValueError(f"{n} thumbnails for {len(matrix)} embedding rows")
    if coords is not None and len(coords) != n:
        raise ValueError(f"{n} thumbnails for {len(coords)} layout positions")
    grid, cell = preview_geometry(n, tile, max_side)
    cells, order = grid_layout(pca_2d(matrix) if coords is None
                               else np.asarray(coords, dtype=np.float64)[:, :2], grid)
    # a 1 px gap keeps neighbouring thumbnails apart once cells are big enough
    inner = cell - 1 if cell >= 6 else cell
    canvas = Image.new("RGB", (grid * cell, grid * cell), background)
    for i in order:
        th = thumbnails[i]
        if th is None:   # a row written without a picture
            continue
        im = th.image()
        size = fit_within(th.width, th.height, inner)
        if size != im.size:
            im = im.resize(size, Image.BILINEAR)
        x0, y0 = int(cells[i, 0]) * cell, int(cells[i, 1]) * cell
        canvas.paste(im, (x0 + (cell - im.width) // 2, y0 + (cell - im.height) // 2))
    return canvas
