"""A hostile collection through the whole pipeline: every bad kind lands in
errors.tsv with its stage and reason, every odd-but-valid image is embedded
(upright, first frame), and a live TensorBoard serves the result."""
import csv
import io
import math
import os

import numpy as np
import pytest
from beam_projector.transforms import projector
from beam_projector.transforms.images import ImageError, decode_image, read_bytes
from PIL import Image

import hostile_corpus
from support import check_live_projector, run_pipeline

TILE = 24
# Pillow warns when it opens the 100-megapixel bomb; decode refuses it.
pytestmark = pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")


def read_tsv(path):
    with open(path, encoding="utf-8", newline="") as f:
        return [line.split("\t") for line in f.read().split("\n")[:-1]]


@pytest.fixture(scope="module")
def hostile(tmp_path_factory, model_path):
    folder = str(tmp_path_factory.mktemp("hostile"))
    csv_path, bad, good = hostile_corpus.build(folder)
    out = os.path.join(folder, "logdir")
    summary = run_pipeline(input=csv_path, model=model_path, embedding_layer="embedding",
                           output=out, max_items=100, tile_size=TILE, max_error_fraction=0.5,
                           neighbors=0, layout="none")   # this run is about the input's own columns
    return folder, out, summary, bad, good


def metadata_rows(out):
    config = open(os.path.join(out, "projector_config.pbtxt")).read()
    data_dir = [d for d in os.listdir(out) if d.startswith("data-")]
    assert len(data_dir) == 1 and data_dir[0] in config
    return read_tsv(os.path.join(out, data_dir[0], "metadata.tsv")), os.path.join(out, data_dir[0])


def test_every_bad_item_is_a_dead_letter_with_stage_and_reason(hostile):
    folder, out, summary, bad, good = hostile
    rows = read_tsv(os.path.join(out, "errors.tsv"))
    assert rows[0] == ["input", "stage", "reason"]
    got = {r[0]: (r[1], r[2]) for r in rows[1:]}
    expect = {os.path.join(folder, rel): v for rel, v in bad.items()}
    assert set(got) == set(expect)
    for ref, (stage, fragment) in expect.items():
        assert got[ref][0] == stage, (ref, got[ref])
        assert fragment in got[ref][1], (ref, got[ref])
        assert got[ref][1].isprintable()
    assert summary["read"] == len(bad) + len(good)
    assert summary["failed"] == len(bad)
    assert summary["written"] == len(good)


def test_every_odd_but_valid_image_is_embedded(hostile):
    folder, out, summary, bad, good = hostile
    meta, _ = metadata_rows(out)
    assert meta[0] == ["path", "kind", "label"]
    paths = {r[0] for r in meta[1:]}
    assert paths == {projector.escape_metadata_value(rel) for rel in good}
    assert {r[1] for r in meta[1:]} == set(good.values())
    # labels with tabs, line breaks or nothing at all stay in their own row
    assert all(len(r) == 3 and r[2] for r in meta[1:])
    assert {r[2] for r in meta[1:]} == {"tab inside", "line break", "<empty>", "cr lf", "plain"}


def test_live_tensorboard_serves_the_hostile_run(hostile):
    folder, out, summary, bad, good = hostile
    meta, sprite = check_live_projector(out, n=len(good), dims={"embedding": 8}, tile=TILE)
    assert len(meta.rstrip("\n").split("\n")) == len(good) + 1


def tile_of(out, rel):
    """The sprite tile of CSV path ``rel``, cropped from the published sprite."""
    meta, data_dir = metadata_rows(out)
    index = [r[0] for r in meta[1:]].index(rel)
    sprite = Image.open(os.path.join(data_dir, "sprite.png"))
    per_side = math.ceil(math.sqrt(len(meta) - 1))
    x0, y0 = projector.tile_origin(index, per_side, TILE)
    return np.asarray(sprite.crop((x0, y0, x0 + TILE, y0 + TILE)))


def opaque_box(tile):
    ys, xs = np.nonzero(tile[..., 3] == 255)
    return tile[ys.min():ys.max() + 1, xs.min():xs.max() + 1, :3]


def test_exif_rotated_jpeg_is_drawn_upright(hostile):
    folder, out, *_ = hostile
    # Stored 40x20 red|blue with Orientation 6: upright it is 20x40, red on top.
    box = opaque_box(tile_of(out, "imgs/exif_rotated.jpg"))
    h, w, _ = box.shape
    assert (w, h) == (TILE // 2, TILE)
    top, bottom = box[: h // 2 - 2].reshape(-1, 3).mean(0), box[h // 2 + 2:].reshape(-1, 3).mean(0)
    assert top[0] > 200 and top[2] < 60, top
    assert bottom[2] > 200 and bottom[0] < 60, bottom


@pytest.mark.parametrize("rel", ["imgs/animated.gif", "imgs/animated.webp"])
def test_animated_images_use_their_first_frame(hostile, rel):
    folder, out, *_ = hostile
    box = opaque_box(tile_of(out, rel)).reshape(-1, 3).astype(float)
    # frame 1 is the gradient (blue 96 everywhere), frame 2 is plain green
    assert abs(box[:, 2].mean() - 96) < 12 and box[:, 0].std() > 30


def test_extreme_aspect_ratios_keep_their_shape(hostile):
    folder, out, *_ = hostile
    tall = opaque_box(tile_of(out, "imgs/tall_1x20.png"))
    wide = opaque_box(tile_of(out, "imgs/wide_20x1.jpg"))
    assert tall.shape[:2] == (TILE, 1) and wide.shape[:2] == (1, TILE)


# --- decode unit checks for the odd-but-valid kinds -------------------------

def _decode(data, tile=TILE):
    return decode_image(data, (16, 16), tile)


def _thumb(thumb):
    return np.frombuffer(thumb.rgb, np.uint8).reshape(thumb.height, thumb.width, 3).astype(float)


def test_colour_conversions_keep_the_picture():
    src = hostile_corpus._gradient(48, 32)
    expect = np.asarray(Image.fromarray(src).resize((24, 16), Image.BILINEAR), float)
    images = hostile_corpus._good_images()
    for name in ("cmyk.jpg", "ycbcr.jpg", "image.tiff", "image.bmp", "still.webp",
                 "really_a_png.jpg", "really_a_jpeg.png"):
        _, thumb = _decode(images[name][1])
        got = _thumb(thumb)
        assert got.shape == expect.shape, name
        assert np.abs(got - expect).mean() < 12, name


def test_sixteen_bit_png_uses_its_full_range():
    _, thumb = _decode(hostile_corpus._good_images()["gray16.png"][1])
    got = _thumb(thumb)
    assert got.min() < 20 and got.max() > 235   # 0..65535 maps onto 0..255, not clipped


def test_transparency_is_composited_over_white():
    img = Image.new("RGBA", (10, 10), (0, 0, 0, 0))
    img.paste((255, 0, 0, 255), (0, 0, 5, 10))
    buf = io.BytesIO()
    img.save(buf, "PNG")
    _, thumb = decode_image(buf.getvalue(), (16, 16), 10)
    got = _thumb(thumb)
    assert (got[:, :5] == (255, 0, 0)).all() and (got[:, 5:] == 255).all()


def test_float_tiff_with_nan_decodes():
    arr = np.linspace(0, 1, 64, dtype=np.float32).reshape(8, 8)
    arr[0, 0] = np.nan
    buf = io.BytesIO()
    Image.fromarray(arr, mode="F").save(buf, "TIFF")
    pixels, _ = _decode(buf.getvalue())
    assert pixels.dtype == np.uint8 and pixels.shape == (16, 16, 3)


def test_bomb_is_refused_before_its_pixels_are_decoded():
    data = hostile_corpus.bomb_png(20000, 20000)
    assert len(data) < 1_000_000   # small on disk, 400 megapixels decoded
    with pytest.raises(ImageError, match="decompression bomb"):
        _decode(data)


def test_read_errors_are_one_line_reasons(tmp_path):
    with pytest.raises(ImageError, match="^file not found$"):
        read_bytes(str(tmp_path / "nope.png"))
    with pytest.raises(ImageError, match="^is a directory"):
        read_bytes(str(tmp_path))


def test_hostile_csv_paths_round_trip(hostile):
    folder, *_ , good = hostile
    with open(os.path.join(folder, "hostile.csv"), encoding="utf-8", newline="") as f:
        paths = {row["path"] for row in csv.DictReader(f)}
    assert set(good) <= paths
    assert any("\t" in p for p in paths) and any('"' in p for p in paths)


EPS = b"""%!PS-Adobe-3.0 EPSF-3.0
%%BoundingBox: 0 0 20 10
0.8 0.1 0.1 setrgbcolor 0 0 20 10 rectfill
showpage
%%EOF
"""


def test_eps_without_ghostscript_is_unsupported_here_not_corrupt(monkeypatch):
    from PIL import EpsImagePlugin
    monkeypatch.setattr(EpsImagePlugin, "gs_binary", False)  # a machine without gs
    with pytest.raises(ImageError) as e:
        decode_image(EPS, (16, 16), 8)
    assert str(e.value) == ("unsupported here: EPS needs Ghostscript (the gs program), "
                            "which is not installed on this machine")


@pytest.mark.parametrize("error,reason", [
    (OSError("decoder jpeg2k not available"),
     "unsupported here: JPEG2000 needs Pillow's jpeg2k decoder (OpenJPEG), which this Pillow "
     "build lacks"),
    (OSError("cannot find loader for this WMF file"),
     "unsupported here: JPEG2000 needs a decoder plugin registered with Pillow, which this "
     "machine lacks"),
    (ValueError("image file could not be identified because AVIF support not installed"),
     "unsupported here: AVIF support not installed in this Pillow build"),
    (OSError("broken data stream when reading image file"), None),
])
def test_missing_decoder_reasons_name_what_is_missing(error, reason):
    from beam_projector.transforms.images import missing_decoder_reason
    assert missing_decoder_reason("JPEG2000", error) == reason


def test_a_format_whose_plugin_is_missing_is_unsupported_here(monkeypatch):
    """Pillow's accept() returns a string when a format's library is absent
    (WebP/AVIF built without libwebp/libavif): the signature matched, the
    machine cannot decode it."""
    from PIL import Image
    Image.init()
    factory, _ = Image.OPEN["WEBP"]
    monkeypatch.setitem(Image.OPEN, "WEBP", (factory, lambda prefix: (
        "image file could not be identified because WEBP support not installed"
        if prefix[:4] == b"RIFF" else False)))
    data = io.BytesIO()
    Image.new("RGB", (8, 8), (1, 2, 3)).save(data, "WEBP")

    def no_webp(fp, *a, **k):  # Pillow without WebP cannot identify it at all
        raise Image.UnidentifiedImageError("cannot identify image file")
    monkeypatch.setattr(Image, "open", no_webp)
    with pytest.raises(ImageError, match="^unsupported here: WEBP support not installed"):
        decode_image(data.getvalue(), (16, 16), 8)


# --- late bad rows in a CSV: a row error each, the job goes on -------------------

def late_bad_csv(folder, digits, rows=1600):
    """A CSV whose bad rows come after the first 1,500 good ones (past any
    check the launcher makes). Returns (path, {line: reason fragment})."""
    csv_path, digit_rows = digits
    base = os.path.dirname(csv_path)
    lines, bad = [b"path,label\n"], {}
    while len(lines) < rows:
        line_no = sum(line.count(b"\n") for line in lines) + 1   # physical line
        path = os.path.join(base, digit_rows[line_no % len(digit_rows)]["path"]).encode()
        if line_no == 1501:
            lines.append(path + b",caf\xe9\n")                  # Latin-1, not UTF-8
            bad[line_no] = "row is not UTF-8 text (byte 0xE9)"
        elif line_no == 1520:
            lines.append(path + b"," + b"x" * 5_000_000 + b"\n")  # a 5 MB field
            bad[line_no] = "line longer than 1048576 bytes"
        elif line_no == 1540:
            lines.append(path + b"," + b"y" * 200_000 + b"\n")    # over csv's field limit
            bad[line_no] = "field larger than field limit"
        elif line_no == 1560:
            lines.append(path + b',"two\nlines"\n')              # one row on lines 1560-1561
        elif line_no == 1570:
            lines.append(b',no path\n')                          # physical line numbers
            bad[line_no] = "empty 'path' value"
        else:
            lines.append(path + b",row%d\n" % line_no)
    out = os.path.join(folder, "late_bad.csv")
    with open(out, "wb") as f:
        f.write(b"".join(lines))
    return out, bad


def test_late_bad_csv_rows_are_row_errors_naming_file_and_line(tmp_path, digits):
    from beam_projector.transforms.records import ERRORS_TAG
    from beam_projector.transforms.sources.csv_files import _ReadCsvFn
    path, bad = late_bad_csv(str(tmp_path), digits)
    out = list(_ReadCsvFn("path").process(path))
    errors = {e.value.ref: e.value for e in out if getattr(e, "tag", None) == ERRORS_TAG}
    refs = [r for r in out if not hasattr(r, "tag")]
    assert set(errors) == {f"{path}:{line}" for line in bad}
    for line, fragment in bad.items():
        row = errors[f"{path}:{line}"]
        assert row.stage == "read" and fragment in row.reason, row
        assert row.reason.isprintable() and len(row.reason) < 200
    # every other row is read, the two-line one included
    assert len(refs) == 1600 - 1 - len(bad)   # entries of late_bad_csv, less the header
    assert any(r.metadata[1] == "two\nlines" for r in refs)
    assert not any("\udce9" in v or len(v) > 1000 for r in refs for v in r.metadata)


def test_a_run_over_late_bad_csv_rows_goes_on_and_lists_them(tmp_path, digits, model_path):
    path, bad = late_bad_csv(str(tmp_path), digits)
    out = str(tmp_path / "logdir")
    summary = run_pipeline(input=path, model=model_path, embedding_layer="embedding",
                           output=out, max_items=20, tile_size=TILE)
    assert summary["written"] == 20
    rows = read_tsv(os.path.join(out, "errors.tsv"))[1:]
    assert {(r[0], r[1]) for r in rows} == {(f"{path}:{line}", "read") for line in bad}


# --- CPU-bound images: refused by structure before Pillow parses them ------------

def comment_gif(blocks):
    """A valid 4x4 GIF with one comment extension of ``blocks`` one-byte data
    blocks before its frame: Pillow joins them in quadratic time."""
    buf = io.BytesIO()
    Image.new("P", (4, 4), 1).save(buf, "GIF")
    data = buf.getvalue()
    flags = data[10]
    first_frame = 13 + (3 * 2 ** ((flags & 7) + 1) if flags & 0x80 else 0)
    assert data[first_frame] == 0x2C
    return data[:first_frame] + b"\x21\xfe" + b"\x01c" * blocks + b"\x00" + data[first_frame:]


def test_gif_with_millions_of_comment_blocks_is_refused_before_pillow(monkeypatch):
    from beam_projector.transforms import decode
    from beam_projector.transforms import images as image_decoding
    from beam_projector.transforms.records import ErrorRow, ImageRef

    data = comment_gif(2_000_000)
    assert len(data) > 4_000_000       # the hostile probe: 4 MB, ~49 s in Pillow
    # Refused before Pillow sees the bytes: parsing them is what takes the time.
    monkeypatch.setattr(image_decoding, "_open", lambda data: pytest.fail("Pillow was called"))
    row, _cpu_seconds = decode._check_one(ImageRef("u", "slow.gif", data, ("slow.gif",), key=7),
                                          TILE)
    assert isinstance(row, ErrorRow) and (row.ref, row.stage, row.key) == ("slow.gif", "decode", 7)
    assert f"more than {image_decoding.MAX_GIF_EXTENSION_BLOCKS} extension data blocks" in row.reason
    assert "stall a worker" in row.reason


def test_gifs_with_ordinary_comments_still_decode():
    from beam_projector.transforms.images import MAX_GIF_EXTENSION_BLOCKS
    for blocks in (0, 3, MAX_GIF_EXTENSION_BLOCKS):
        pixels, thumb = _decode(comment_gif(blocks))
        assert pixels.shape == (16, 16, 3) and (thumb.width, thumb.height) == (TILE, TILE)
    with pytest.raises(ImageError, match="extension data blocks"):
        _decode(comment_gif(MAX_GIF_EXTENSION_BLOCKS + 1))
    # the hostile corpus's animated GIF (several frames, each with its extensions)
    _decode(hostile_corpus._good_images()["animated.gif"][1])
