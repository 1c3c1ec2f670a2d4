"""Decoding one image (issue 28): bounded memory, the same bytes out.

A decode's memory is judged by a child process's peak RSS growth around the
one call (``support.child_python``), under an address-space cap so that code
taking gigabytes fails fast instead of taking the machine's memory.
"""
import io
import threading

import numpy as np
import pytest
from beam_projector.transforms import images, strips
from beam_projector.transforms.images import (DecodeBudget, ImageError, decode_image,
                                              resize_for_model, thumbnail_image, thumbnail_of)
from PIL import Image, ImageOps

from support import big_png, child_python


# --- memory ------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("kind,bound_mib", [("grey16", 300), ("rgba8", 500)])
def test_one_large_png_decodes_in_little_more_than_its_decoders_buffer(tmp_path, kind,
                                                                      bound_mib):
    """A 9400x9500 16-bit grey PNG (211 KB) took +2.2 GB to decode (float64
    copies of the whole image), an RGBA one +1.7 GB (four 4-byte-per-pixel
    copies). The floor is the decoder's own buffer: 170 / 341 MiB."""
    path = big_png(tmp_path / f"{kind}.png", bit_depth=16 if kind == "grey16" else 8,
                   colour_type=0 if kind == "grey16" else 6)
    code, out, err = child_python(f"""
        from beam_projector.transforms.images import decode_image
        data = open({path!r}, "rb").read()
        reset_peak()
        pixels, thumb = decode_image(data, (224, 224), 100)
        print(peak_growth_mib(), pixels.shape, thumb.width, thumb.height)
    """, address_space_gib=6, timeout=600)
    assert code == 0, err[-2000:]
    growth, *shape = out.split()
    assert shape == ["(224,", "224,", "3)", "99", "100"], out
    assert float(growth) < bound_mib, f"one decode grew the peak by {growth} MiB"


@pytest.mark.slow
def test_a_decode_thread_per_core_shares_one_budget(tmp_path):
    """The decode pool has a thread per core: 8 threads meeting 8 such files
    held 8 decodes at once (the issue: 16 cores, 35 GB, 'an SDK worker was
    lost'). They now take turns for the process's decode budget (1 GiB)."""
    path = big_png(tmp_path / "grey16.png")
    code, out, err = child_python(f"""
        from concurrent.futures import ThreadPoolExecutor
        from beam_projector.transforms.images import decode_image
        data = open({path!r}, "rb").read()
        reset_peak()
        with ThreadPoolExecutor(8) as pool:
            shapes = set(pool.map(lambda _: decode_image(data, (224, 224), 100)[0].shape,
                                  range(8)))
        print(peak_growth_mib(), len(shapes))
    """, address_space_gib=8, timeout=900)
    assert code == 0, err[-2000:]
    growth, distinct = out.split()
    assert distinct == "1"
    assert float(growth) < 1300, f"8 threads grew the peak by {growth} MiB"


def test_a_decode_larger_than_the_budget_is_one_clear_error(tmp_path):
    """Refused from the image's header, before a byte is decoded."""
    data = open(big_png(tmp_path / "grey16.png"), "rb").read()
    with pytest.raises(ImageError, match=r"^decoded image too large: 9400x9500 I;16 needs about "
                                         r"\d+ MiB to decode, more than the decode budget of "
                                         r"64 MiB per worker process$"):
        decode_image(data, (224, 224), 100, budget=DecodeBudget(64 * 2 ** 20))
    with pytest.raises(ImageError, match="decode budget of 64 MiB"):
        images.check_decodes(data, 100, budget=DecodeBudget(64 * 2 ** 20))


def test_large_decodes_wait_their_turn_and_small_ones_do_not():
    budget = DecodeBudget(100)
    holding, release, second = threading.Event(), threading.Event(), threading.Event()

    def first():
        with budget.reserve(80):
            holding.set()
            release.wait(30)

    def other():
        with budget.reserve(50):
            second.set()

    a = threading.Thread(target=first)
    a.start()
    assert holding.wait(30)
    b = threading.Thread(target=other)
    b.start()
    assert not second.wait(0.5)        # 80 + 50 > 100: waits for the first
    release.set()
    assert second.wait(30)
    a.join(30)
    b.join(30)
    with budget.reserve(150):          # alone, even more than the total may go
        pass


# --- the same bytes as the whole-image conversion --------------------------------------

def reference(data, size, tile, mode):
    """Decoding as it was before strips: the whole image turned, converted
    (16-bit greys through float64) and resized at once."""
    img = Image.open(io.BytesIO(data))
    if img.format == "JPEG":
        long_side = max(img.size)
        need = max(max(size), tile)
        img.draft("RGB", (-(-need * img.width // long_side), -(-need * img.height // long_side))
                  if mode == "pad" else (need, need))
    img = ImageOps.exif_transpose(img)
    if img.mode in ("I;16", "I", "F"):
        a = np.nan_to_num(np.asarray(img, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
        hi = 65535.0 if img.mode.startswith("I;16") or a.max(initial=0) > 255 else 255.0
        img = Image.fromarray(np.clip(a / hi * 255.0 + 0.5, 0, 255).astype(np.uint8))
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA"):
        img = Image.alpha_composite(Image.new("RGBA", img.size, (255, 255, 255, 255)),
                                    img.convert("RGBA"))
    img = img.convert("RGB")
    return resize_for_model(img, size, mode), thumbnail_of(img, tile)


def encoded_variants():
    """Every kind of pixel the decoder meets, on a real photo, each encoded."""
    from sklearn.datasets import load_sample_images

    rgb = Image.fromarray(load_sample_images().images[1]).resize((300, 210))
    a, grey = np.asarray(rgb), np.asarray(rgb.convert("L"))
    alpha = ((np.indices(grey.shape).sum(0) * 3) % 256).astype(np.uint8)
    with_trns = rgb.convert("P")
    with_trns.info["transparency"] = 0
    floats = grey.astype(np.float32) * 1.7
    floats[0, :5] = [np.nan, np.inf, -np.inf, -3.0, 1e9]
    cases = [("RGB", rgb, "PNG"), ("L", rgb.convert("L"), "PNG"), ("1", rgb.convert("1"), "PNG"),
             ("P", rgb.convert("P"), "PNG"), ("P+trns", with_trns, "PNG"),
             ("RGBA", Image.fromarray(np.dstack([a, alpha])), "PNG"),
             ("LA", Image.merge("LA", [rgb.convert("L"), Image.fromarray(alpha)]), "PNG"),
             ("I;16", Image.fromarray(grey.astype(np.uint16) * 257 + 3), "PNG"),
             ("I;16 TIFF", Image.fromarray(grey.astype(np.uint16) * 200), "TIFF"),
             ("I", Image.fromarray(grey.astype(np.int32) * 300 - 5000), "TIFF"),
             ("F", Image.fromarray(floats), "TIFF"), ("CMYK", rgb.convert("CMYK"), "TIFF"),
             ("JPEG", rgb, "JPEG"), ("GIF", rgb, "GIF")]
    for orientation in (3, 6, 8):
        exif = Image.Exif()
        exif[0x0112] = orientation
        cases += [(f"EXIF {orientation} PNG", rgb, ("PNG", exif)),
                  (f"EXIF {orientation} JPEG", rgb, ("JPEG", exif))]
    for name, img, fmt in cases:
        exif = None
        if isinstance(fmt, tuple):
            fmt, exif = fmt
        buf = io.BytesIO()
        img.save(buf, fmt, **({"exif": exif} if exif is not None else {}))
        yield name, buf.getvalue()


@pytest.mark.parametrize("strip_bytes", [strips.STRIP_BYTES, 4000], ids=["default", "tiny"])
def test_strips_give_the_bytes_of_the_whole_image_conversion(monkeypatch, strip_bytes):
    """Every mode, EXIF orientations, each resize mode: the model input and
    the thumbnail equal the whole-image conversion's, bit for bit; with tiny
    strips every image goes through the strip path (and both pass orders)."""
    monkeypatch.setattr(strips, "STRIP_BYTES", strip_bytes)
    for name, data in encoded_variants():
        for size, tile, mode in (((224, 224), 100, "pad"), ((64, 96), 24, "crop"),
                                 ((16, 40), 100, "stretch")):
            pixels, thumb = decode_image(data, size, tile, mode)
            want_pixels, want_thumb = reference(data, size, tile, mode)
            assert np.array_equal(pixels, want_pixels) and thumb == want_thumb, (name, size, mode)
        assert thumbnail_image(data, 24) == reference(data, (24, 24), 24, "pad")[1], name


def test_strip_resize_is_pillows_resize_bit_for_bit():
    """StripResize follows Pillow's two-pass resize, including which pass
    runs first (Pillow 13: vertical first when the height shrinks by more
    than twice what the width does). A Pillow upgrade that changes either
    fails here before it changes a projector."""
    rng = np.random.default_rng(0)
    orders = set()
    for _ in range(300):
        w, h = (int(v) for v in rng.integers(2, 400, 2))
        size = tuple(int(v) for v in rng.integers(1, 260, 2))
        img = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        box = None
        if rng.random() < 0.4:   # a float box, as ImageOps.fit's crop gives
            x0, y0 = rng.random() * w / 3, rng.random() * h / 3
            box = (x0, y0, x0 + (w - x0) * (0.5 + rng.random() / 2),
                   y0 + (h - y0) * (0.5 + rng.random() / 2))
        resize = strips.StripResize((w, h), size, box)
        step = int(rng.integers(1, 40))
        extent = w if resize.by_columns else h
        for a in range(0, extent, step):
            b = min(extent, a + step)
            resize.feed(a, img.crop((a, 0, b, h) if resize.by_columns else (0, a, w, b)))
        want = img.resize(size, Image.BILINEAR, box=box)
        assert np.array_equal(np.asarray(resize.result()), np.asarray(want)), (w, h, size, box)
        orders.add(resize.by_columns)
    assert orders == {True, False}


def test_16_bit_greys_scale_as_the_float_formula_did():
    v = np.arange(65536, dtype=np.float64)
    float_formula = np.clip(v / 65535.0 * 255.0 + 0.5, 0, 255).astype(np.uint8)
    assert np.array_equal(strips.LUT_16_TO_8, float_formula)
