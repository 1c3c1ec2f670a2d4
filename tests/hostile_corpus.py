"""A hostile image collection, generated in the test: every kind of bad input
the issue names, and every odd-but-valid image that must still be embedded.

``build(folder)`` writes the files and a CSV and returns (csv_path, bad, good):
``bad`` maps CSV path value -> expected (stage, reason fragment); ``good``
maps CSV path value -> a short description (also its ``kind`` label).
"""
import csv
import io
import os
import struct
import zlib

import numpy as np
from PIL import Image


def _chunk(kind: bytes, data: bytes) -> bytes:
    return (struct.pack(">I", len(data)) + kind + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))


def bomb_png(width: int, height: int) -> bytes:
    """A valid 1-bit PNG of ``width`` x ``height`` white pixels, streamed
    through zlib so neither this test nor the file is large (a few hundred KB
    for 400 megapixels)."""
    row = b"\x00" + b"\xff" * ((width + 7) // 8)
    comp = zlib.compressobj(9)
    parts = []
    block = row * 256
    for _ in range(height // 256):
        parts.append(comp.compress(block))
    parts.append(comp.compress(row * (height % 256)))
    parts.append(comp.flush())
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr)
            + _chunk(b"IDAT", b"".join(parts)) + _chunk(b"IEND", b""))


def tiff_12bit_rgb(width=4, height=4) -> bytes:
    """A well-formed uncompressed TIFF with 12 bits per RGB sample: a valid
    file in a pixel mode Pillow does not support."""
    data = bytes(((width * 3 * 12 + 7) // 8) * height)
    bps_off, data_off = 8, 14
    ifd_off = data_off + len(data) + (len(data) % 2)
    tags = [(256, 3, 1, width), (257, 3, 1, height), (258, 3, 3, bps_off), (259, 3, 1, 1),
            (262, 3, 1, 2), (273, 4, 1, data_off), (277, 3, 1, 3), (278, 3, 1, height),
            (279, 4, 1, len(data)), (284, 3, 1, 1)]
    ifd = struct.pack("<H", len(tags))
    for tag, typ, count, value in tags:
        packed = struct.pack("<HH", value, 0) if typ == 3 and count == 1 else struct.pack("<I", value)
        ifd += struct.pack("<HHI", tag, typ, count) + packed
    ifd += struct.pack("<I", 0)
    body = b"II*\x00" + struct.pack("<I", ifd_off) + struct.pack("<3H", 12, 12, 12) + data
    return body.ljust(ifd_off, b"\0") + ifd


def _gradient(w, h):
    """A colourful image whose orientation is easy to check: red grows to the
    right, green grows downwards."""
    x = np.linspace(0, 255, w, dtype=np.float32)[None, :].repeat(h, 0)
    y = np.linspace(0, 255, h, dtype=np.float32)[:, None].repeat(w, 1)
    return np.stack([x, y, np.full_like(x, 96)], -1).astype(np.uint8)


def _save(img, fmt, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def exif_rotated_jpeg() -> bytes:
    """Stored 40 wide x 20 high, left half red, right half blue, with EXIF
    Orientation 6 (rotate 90 degrees clockwise to display): drawn upright it
    is 20 wide x 40 high, red on top, blue at the bottom."""
    px = np.zeros((20, 40, 3), np.uint8)
    px[:, :20] = (255, 0, 0)
    px[:, 20:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6
    return _save(Image.fromarray(px), "JPEG", quality=95, exif=exif.tobytes())


def _good_images():
    g = _gradient(48, 32)
    rgb = Image.fromarray(g)
    frames = [Image.fromarray(_gradient(24, 24)), Image.new("RGB", (24, 24), (0, 200, 0))]
    pal = Image.fromarray(g).convert("P", palette=Image.ADAPTIVE, colors=16)
    pal.info["transparency"] = 0
    la = Image.fromarray(np.stack([g[..., 0], g[..., 1]], -1), mode="LA")
    sixteen = Image.fromarray((np.linspace(0, 65535, 32 * 24).reshape(24, 32)).astype(np.uint16))
    return {
        "cmyk.jpg": ("CMYK JPEG", _save(rgb.convert("CMYK"), "JPEG", quality=90)),
        "ycbcr.jpg": ("YCbCr JPEG", _save(rgb.convert("YCbCr"), "JPEG", quality=90)),
        "gray16.png": ("16-bit grayscale PNG", _save(sixteen, "PNG")),
        "la.png": ("grayscale with alpha", _save(la, "PNG")),
        "palette_transparent.png": ("palette with transparency", _save(pal, "PNG")),
        "palette_transparent.gif": ("GIF palette with transparency", _save(pal, "GIF")),
        "exif_rotated.jpg": ("EXIF-rotated JPEG", exif_rotated_jpeg()),
        "animated.gif": ("animated GIF", _save(frames[0], "GIF", save_all=True,
                                               append_images=frames[1:], duration=100, loop=0)),
        "animated.webp": ("animated WebP", _save(frames[0], "WEBP", save_all=True,
                                                 append_images=frames[1:], duration=100,
                                                 lossless=True)),
        "still.webp": ("WebP", _save(rgb, "WEBP", quality=90)),
        "image.tiff": ("TIFF", _save(rgb, "TIFF", compression="tiff_lzw")),
        "image.bmp": ("BMP", _save(rgb, "BMP")),
        "one_pixel.png": ("1x1", _save(Image.new("RGB", (1, 1), (10, 200, 30)), "PNG")),
        "tall_1x20.png": ("1:20 aspect", _save(Image.fromarray(_gradient(5, 100)), "PNG")),
        "wide_20x1.jpg": ("20:1 aspect", _save(Image.fromarray(_gradient(200, 10)), "JPEG")),
        "really_a_png.jpg": ("PNG named .jpg", _save(rgb, "PNG")),
        "really_a_jpeg.png": ("JPEG named .png", _save(rgb, "JPEG")),
        "no_extension": ("JPEG without extension", _save(rgb, "JPEG")),
        "name with spaces, commas.png": ("path with spaces and commas", _save(rgb, "PNG")),
        'quote "double" \'single\'.png': ("path with quotes", _save(rgb, "PNG")),
        "ünïcødé-画像.png": ("non-ASCII path", _save(rgb, "PNG")),
        "tab\tin name.png": ("path with a tab", _save(rgb, "PNG")),
        "lab.tiff": ("CIELab TIFF", _save(Image.new("LAB", (16, 12), (60, 40, -20)), "TIFF")),
    }


def build(folder: str):
    """Write the hostile collection under ``folder``; see the module docstring."""
    img_dir = os.path.join(folder, "imgs")
    os.makedirs(img_dir, exist_ok=True)
    good = {}
    for name, (kind, data) in _good_images().items():
        with open(os.path.join(img_dir, name), "wb") as f:
            f.write(data)
        good["imgs/" + name] = kind

    jpeg = _save(Image.fromarray(_gradient(64, 64)), "JPEG", quality=90)
    png = _save(Image.fromarray(_gradient(64, 64)), "PNG")
    bad_files = {
        "zero.png": (b"", ("decode", "empty file")),
        "text.png": (b"this is not an image\n" * 10, ("decode", "not an image Pillow can identify")),
        "truncated.jpg": (jpeg[: len(jpeg) // 2], ("decode", "truncated")),
        "truncated.png": (png[: len(png) // 2], ("decode", "truncated")),
        "corrupt.png": (png[:40] + bytes(range(256)) * 4 + png[-12:], ("decode", "corrupt")),
        "corrupt.jpg": (jpeg[:200] + bytes(range(256)) * 8 + jpeg[-200:], ("decode", "corrupt")),
        "bomb.png": (bomb_png(20000, 20000), ("decode", "decompression bomb")),
        "bomb_warning_band.png": (bomb_png(10000, 10000), ("decode", "decompression bomb")),
        "rgb12.tiff": (tiff_12bit_rgb(), ("decode", "unknown pixel mode")),
    }
    bad = {}
    for name, (data, expect) in bad_files.items():
        with open(os.path.join(img_dir, name), "wb") as f:
            f.write(data)
        bad["imgs/" + name] = expect
    os.makedirs(os.path.join(img_dir, "a_directory.png"), exist_ok=True)
    bad["imgs/a_directory.png"] = ("read", "is a directory")
    bad["imgs/missing.png"] = ("read", "file not found")

    labels = ["tab\tinside", "line\nbreak", "", "cr\r\nlf", "plain"]
    csv_path = os.path.join(folder, "hostile.csv")
    with open(csv_path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["path", "kind", "label"])
        for i, (rel, kind) in enumerate(sorted(good.items())):
            w.writerow([rel, kind, labels[i % len(labels)]])
        for rel in sorted(bad):
            w.writerow([rel, "bad", ""])
    return csv_path, bad, good
