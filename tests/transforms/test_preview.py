"""preview.png: PCA, the grid layout, the rendered image, and the writer's file."""
import numpy as np
import pytest
from beam_projector.transforms import preview
from beam_projector.transforms.records import Thumbnail
from PIL import Image

import support


def solid(rgb, w=16, h=16):
    return Thumbnail.from_rgb(w, h, bytes(rgb) * (w * h))


# --- PCA ---------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(200, 12), (6, 40)])  # N > D and N <= D
def test_pca_matches_scikit_learn_up_to_sign(shape):
    from sklearn.decomposition import PCA

    rng = np.random.default_rng(1)
    x = rng.normal(size=shape) * np.linspace(5, 0.5, shape[1])
    ours = preview.pca_2d(x)
    ref = PCA(n_components=2, svd_solver="full").fit_transform(x)
    for j in range(2):
        sign = np.sign(ours[:, j] @ ref[:, j])
        np.testing.assert_allclose(ours[:, j], sign * ref[:, j], rtol=1e-5, atol=1e-6)


def test_pca_is_deterministic_and_sign_fixed():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(50, 6)).astype(np.float32)
    coords = preview.pca_2d(x)
    np.testing.assert_allclose(preview.pca_2d(x + 7.0), coords, atol=1e-4)
    # negating the data negates the map rather than flipping an axis at random
    np.testing.assert_allclose(preview.pca_2d(-x), -coords, atol=1e-4)


def test_pca_degenerate_inputs_give_zeros_not_noise():
    assert preview.pca_2d(np.ones((1, 4))).tolist() == [[0.0, 0.0]]
    assert np.all(preview.pca_2d(np.full((5, 3), 2.5)) == 0)
    line = preview.pca_2d(np.arange(6, dtype=np.float32)[:, None])
    assert np.all(line[:, 1] == 0) and np.all(np.diff(line[:, 0]) > 0)
    with pytest.raises(ValueError):
        preview.pca_2d(np.zeros((0, 3)))


# --- layout ------------------------------------------------------------------

def test_geometry_stays_within_4096_px_for_any_sample_size():
    for n in (1, 40, 1797, 10_000, 100_000):
        grid, cell = preview.preview_geometry(n, 100)
        assert grid * grid >= n
        assert grid * cell <= preview.MAX_PREVIEW_SIDE
        assert cell >= 1
    assert preview.preview_geometry(4, 20) == (4, 20)  # never larger than the tile


def test_grid_layout_gives_every_point_its_own_cell_in_projected_order():
    rng = np.random.default_rng(3)
    coords = rng.normal(size=(300, 2))
    coords[:50] *= 0.01                   # a dense knot that must spread out
    grid, _ = preview.preview_geometry(len(coords), 10)
    cells, order = preview.grid_layout(coords, grid)
    assert len({tuple(c) for c in cells}) == len(coords)
    assert cells.min() >= 0 and cells.max() < grid
    assert sorted(order) == list(range(len(coords)))
    # positions keep their order along both axes (rows grow downwards)
    assert np.corrcoef(coords[50:, 0], cells[50:, 0])[0, 1] > 0.9
    assert np.corrcoef(coords[50:, 1], -cells[50:, 1])[0, 1] > 0.9


def test_far_out_points_are_placed_and_drawn_last_at_the_edge():
    coords = np.array([[0.0, 0.0], [0.1, 0.0], [0.0, 0.1], [-0.1, 0.0], [0.0, -0.1],
                       [0.05, 0.05], [50.0, 0.0]])
    cells, order = preview.grid_layout(coords, 5)
    assert order[-1] == 6
    assert cells[6, 0] == 4               # clipped to the right edge, not lost


# --- rendering ----------------------------------------------------------------

def test_preview_puts_each_cluster_where_pca_puts_it():
    rng = np.random.default_rng(4)
    n = 60
    matrix = rng.normal(scale=0.1, size=(n, 5))
    matrix[n // 2:, 0] += 10.0            # second half far along +dim 0
    thumbs = [solid((220, 30, 30))] * (n // 2) + [solid((30, 30, 220))] * (n // 2)
    img = preview.render_preview(thumbs, matrix, tile=16)
    a = np.asarray(img).astype(int)
    red = (a[..., 0] > 150) & (a[..., 2] < 100)
    blue = (a[..., 2] > 150) & (a[..., 0] < 100)
    half = a.shape[1] // 2
    # the sign rule puts the +dim-0 cluster on the right
    assert red[:, :half].sum() > 20 * max(1, red[:, half:].sum())
    assert blue[:, half:].sum() > 20 * max(1, blue[:, :half].sum())


def test_preview_shows_every_thumbnail_on_a_plain_background():
    rng = np.random.default_rng(5)
    n = 200
    colours = [(int(c[0]), int(c[1]), int(c[2]))
               for c in rng.choice(np.arange(64, 256), size=(n, 3), replace=True)]
    assert len(set(colours)) == n
    matrix = rng.normal(size=(n, 8))
    matrix[:40] *= 0.001                  # many points on top of each other
    img = preview.render_preview([solid(c, 10, 6) for c in colours], matrix, tile=12)
    assert img.mode == "RGB" and img.width == img.height <= preview.MAX_PREVIEW_SIDE
    seen = {tuple(p) for p in np.asarray(img).reshape(-1, 3)}
    assert set(colours) <= seen           # no thumbnail is hidden by another
    assert seen - set(colours) == {preview.BACKGROUND}
    assert img.getpixel((0, 0)) == preview.BACKGROUND or img.getpixel((img.width - 1, 0)) \
        == preview.BACKGROUND


def test_large_sample_preview_is_capped_at_4096_px():
    n = 20_000
    rng = np.random.default_rng(6)
    img = preview.render_preview([solid((200, 200, 0), 4, 4)] * n,
                                 rng.normal(size=(n, 4)).astype(np.float32), tile=100)
    assert max(img.size) <= preview.MAX_PREVIEW_SIDE


def test_preview_needs_one_thumbnail_per_row():
    with pytest.raises(ValueError):
        preview.render_preview([solid((1, 2, 3))], np.zeros((2, 3)), tile=8)


# --- in the pipeline -------------------------------------------------------------

def test_pipeline_writes_preview_at_the_root_and_no_preview_removes_it(digits, model_path,
                                                                       tmp_path):
    csv_path, _ = digits
    out = tmp_path / "logdir"
    support.run_pipeline(input=csv_path, model=model_path, embedding_layer="embedding",
                         output=out, max_items=30, tile_size=24)
    path = out / "preview.png"
    img = Image.open(path)
    assert img.format == "PNG" and max(img.size) <= preview.MAX_PREVIEW_SIDE
    a = np.asarray(img.convert("RGB")).reshape(-1, 3)
    drawn = np.any(a != preview.BACKGROUND, axis=1)
    # 30 digit thumbnails of up to 24 px a side (mostly white paper)
    assert drawn.sum() > 30 * 12 * 12
    assert [p.name for p in out.glob("data-*/preview.png")] == []
    support.run_pipeline("--no_preview", input=csv_path, model=model_path,
                         embedding_layer="embedding", output=out, max_items=30, tile_size=24)
    assert not path.exists()
    assert (out / "projector_config.pbtxt").exists()
