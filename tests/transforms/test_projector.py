"""The projector's file-format rules, tested without a pipeline."""
import io

import numpy as np
import pytest
from beam_projector.transforms import png, projector
from beam_projector.transforms.records import Thumbnail
from google.protobuf import text_format
from PIL import Image
from tensorboard.plugins.projector.projector_config_pb2 import ProjectorConfig


@pytest.mark.parametrize("n,per_side", [(1, 1), (2, 2), (4, 2), (5, 3), (9, 3), (10, 4),
                                        (1500, 39), (10000, 100), (10001, 101)])
def test_tiles_per_side_is_ceil_sqrt(n, per_side):
    assert projector.tiles_per_side(n) == per_side


def test_tiles_per_side_rejects_zero():
    with pytest.raises(ValueError):
        projector.tiles_per_side(0)


@pytest.mark.parametrize("n,requested,tile", [
    (1, 100, 100),          # one image: tile as asked
    (1500, 100, 100),       # 39 x 100 = 3900 px fits
    (10000, 100, 81),       # 100 tiles a side: 8192 // 100
    (100000, 100, 25),      # 317 a side: 8192 // 317
    (6724, 100, 99),        # 82 a side: 8192 // 82 = 99
    (6561, 100, 100),       # 81 a side: 8100 px, fits exactly
])
def test_tile_shrinks_to_keep_sprite_within_8192(n, requested, tile):
    per_side, got_tile, side = projector.sprite_geometry(n, requested)
    assert got_tile == tile
    assert side == per_side * tile <= projector.MAX_SPRITE_SIDE


def test_tile_origin_row_major_from_top_left():
    assert projector.tile_origin(0, 3, 10) == (0, 0)
    assert projector.tile_origin(2, 3, 10) == (20, 0)
    assert projector.tile_origin(3, 3, 10) == (0, 10)
    assert projector.tile_origin(8, 3, 10) == (20, 20)


@pytest.mark.parametrize("w,h,box,expect", [(200, 100, 50, (50, 25)), (100, 200, 50, (25, 50)),
                                             (1, 20, 10, (1, 10)), (3, 3, 9, (9, 9))])
def test_fit_within_keeps_aspect(w, h, box, expect):
    assert projector.fit_within(w, h, box) == expect


def test_assemble_sprite_centres_tiles_with_transparent_padding():
    red = Thumbnail.from_rgb(4, 2, bytes([255, 0, 0]) * 8)
    blue = Thumbnail.from_rgb(2, 4, bytes([0, 0, 255]) * 8)
    sprite = projector.assemble_sprite([red, blue, red], tile=4)
    assert sprite.size == (8, 8) and sprite.mode == "RGBA"
    px = np.asarray(sprite)
    # tile 0: red band in rows 1-2, transparent rows 0 and 3
    assert (px[1:3, 0:4] == [255, 0, 0, 255]).all()
    assert (px[0, 0:4, 3] == 0).all() and (px[3, 0:4, 3] == 0).all()
    # tile 1 (top right): blue band in columns 5-6
    assert (px[0:4, 5:7] == [0, 0, 255, 255]).all()
    assert (px[0:4, 4, 3] == 0).all()
    # tile 2 (second row, first column), tile 3 empty and transparent
    assert (px[5:7, 0:4] == [255, 0, 0, 255]).all()
    assert (px[4:8, 4:8, 3] == 0).all()


def test_png_roundtrip_is_lossless():
    sprite = projector.assemble_sprite([Thumbnail.from_rgb(2, 2, bytes(range(12)))], 2)
    back = Image.open(io.BytesIO(png.png_bytes(sprite)))
    assert np.array_equal(np.asarray(back), np.asarray(sprite))


@pytest.mark.parametrize("raw,expect", [
    ("cat", "cat"), ("a\tb", "a b"), ("a\nb", "a b"), ("a\r\nb", "a b"), ("a\rb", "a b"),
    ("", projector.EMPTY_PLACEHOLDER), ("  ", projector.EMPTY_PLACEHOLDER),
    (None, projector.EMPTY_PLACEHOLDER), (7, "7"), ("日本", "日本")])
def test_escape_metadata_value(raw, expect):
    assert projector.escape_metadata_value(raw) == expect


def test_single_column_metadata_has_no_header_and_no_blank_line():
    text = projector.metadata_tsv(["label"], [["a"], [""], ["b\nc"]])
    assert text == f"a\n{projector.EMPTY_PLACEHOLDER}\nb c\n"
    assert len(text.splitlines()) == 3


def test_two_columns_means_header_row():
    text = projector.metadata_tsv(["path", "label"], [["x.png", "1"], ["y\t.png", ""]])
    lines = text.split("\n")
    assert lines[0] == "path\tlabel"
    assert lines[1] == "x.png\t1"
    assert lines[2] == f"y .png\t{projector.EMPTY_PLACEHOLDER}"
    assert text.endswith("\n") and "\r" not in text


def test_metadata_row_width_must_match_columns():
    with pytest.raises(ValueError):
        projector.metadata_tsv(["a", "b"], [["only-one"]])


def test_tensor_tsv_is_the_text_numpy_savetxt_writes():
    """The rows TensorBoard has always been given, byte for byte, special
    values included."""
    m = np.random.default_rng(3).standard_normal((7, 5)).astype(np.float32) * 1e3
    m[0, :] = [np.nan, np.inf, -np.inf, -0.0, 1e-45]
    m[1, :] = [3.4028235e38, -1.1754944e-38, 1.0, 0.1, 123456789.0]
    buf = io.StringIO()
    np.savetxt(buf, m, fmt="%.9g", delimiter="\t", newline="\n")
    assert projector.tensor_tsv(m) == buf.getvalue().encode("ascii")
    assert projector.tensor_tsv(m[:0]) == b""


def test_tensor_tsv_no_header_no_empty_field_and_exact_floats():
    m = np.array([[0.1, -2.5e-8, 3.0], [1e30, 0.0, -1.0]], dtype=np.float32)
    text = projector.tensor_tsv(m).decode()
    lines = text.rstrip("\n").split("\n")
    assert len(lines) == 2
    for line in lines:
        fields = line.split("\t")
        assert len(fields) == 3 and all(fields)
    back = np.array([[float(v) for v in line.split("\t")] for line in lines], dtype=np.float32)
    assert np.array_equal(back, m)


def test_tensor_binary_little_endian_row_major():
    m = np.arange(6, dtype=np.float32).reshape(2, 3) + 0.5
    data = projector.tensor_binary(m)
    assert len(data) == 24
    assert np.array_equal(np.frombuffer(data, "<f4").reshape(2, 3), m)


def test_binary_readability_check_matches_tensorboard_fallback():
    # TensorBoard reads the first line as UTF-8 text and only falls back to
    # binary on a decode error: all-zero vectors would be parsed as text.
    assert not projector.binary_tensor_is_readable(projector.tensor_binary(np.zeros((3, 4))))
    assert projector.binary_tensor_is_readable(projector.tensor_binary(np.ones((3, 4))))


def test_config_uses_tensorboard_proto_and_relative_paths():
    text = projector.projector_config_text(
        [("emb", (10, 4), "d/feature_vecs.tsv"), ("pool", (10, 2), "d/pool.tsv")],
        "d/metadata.tsv", "d/sprite.png", 32)
    config = text_format.Parse(text, ProjectorConfig())
    assert [e.tensor_name for e in config.embeddings] == ["emb", "pool"]
    emb = config.embeddings[0]
    assert list(emb.tensor_shape) == [10, 4]
    assert emb.tensor_path == "d/feature_vecs.tsv"
    assert emb.metadata_path == "d/metadata.tsv"
    assert emb.sprite.image_path == "d/sprite.png"
    assert list(emb.sprite.single_image_dim) == [32, 32]
    assert not any(p.startswith("/") for p in (emb.tensor_path, emb.metadata_path, emb.sprite.image_path))


def test_streamed_sprite_png_has_the_pixels_of_the_assembled_sprite():
    rng = np.random.default_rng(0)
    thumbs = [Thumbnail.from_rgb(int(w), int(h), rng.integers(0, 256, int(w) * int(h) * 3,
                                                              dtype=np.uint8).tobytes())
              for w, h in rng.integers(1, 12, (23, 2))]
    tile = 9
    side = projector.tiles_per_side(len(thumbs)) * tile
    buf = io.BytesIO()
    png.write_png_rows(buf, side, side, projector.sprite_rows(thumbs, tile))
    streamed = Image.open(io.BytesIO(buf.getvalue()))
    assert streamed.format == "PNG" and streamed.mode == "RGBA" and streamed.size == (side, side)
    np.testing.assert_array_equal(np.asarray(streamed),
                                  np.asarray(projector.assemble_sprite(thumbs, tile)))


@pytest.mark.parametrize("threads", [1, 2, 5])
def test_the_sprite_compressed_on_a_pool_is_one_valid_png_whatever_the_threads(threads):
    """Strips compressed apart and joined (sync flushes, combined Adler-32)
    decode, by Pillow and by zlib's own check, to the assembled sprite; the
    bytes do not depend on the thread count."""
    import zlib

    rng = np.random.default_rng(1)
    thumbs = [Thumbnail.from_rgb(int(w), int(h), rng.integers(0, 256, int(w) * int(h) * 3,
                                                              dtype=np.uint8).tobytes())
              for w, h in rng.integers(1, 12, (40, 2))]
    thumbs[5] = None                            # a row without a picture: an empty tile
    tile = 9
    per_side = projector.tiles_per_side(len(thumbs))
    side = per_side * tile

    def write(n):
        buf = io.BytesIO()
        png.write_png_strips(buf, side, side, lambda r: projector.sprite_strip(thumbs, tile, r),
                             per_side, threads=n)
        return buf.getvalue()

    data = write(threads)
    assert data == write(1)
    pixels = np.asarray(Image.open(io.BytesIO(data)))
    np.testing.assert_array_equal(pixels, np.concatenate(list(projector.sprite_rows(thumbs, tile))))
    blank = [t if t is not None else Thumbnail.from_rgb(1, 1, b"\0\0\0") for t in thumbs]
    expected = np.asarray(projector.assemble_sprite(blank, tile)).copy()
    expected[tile * (5 // per_side):tile * (5 // per_side + 1),
             tile * (5 % per_side):tile * (5 % per_side + 1)] = 0    # tile 5: no picture
    np.testing.assert_array_equal(pixels, expected)
    # the concatenated IDAT payload is one zlib stream whose checksum holds
    idat, pos = b"", 8
    while pos < len(data):
        length = int.from_bytes(data[pos:pos + 4], "big")
        if data[pos + 4:pos + 8] == b"IDAT":
            idat += data[pos + 8:pos + 8 + length]
        pos += 12 + length
    assert len(zlib.decompress(idat)) == side * (side * 4 + 1)


def test_adler32_of_joined_pieces_is_combined_from_the_pieces():
    import zlib

    rng = np.random.default_rng(2)
    pieces = [rng.bytes(int(n)) for n in (0, 1, 65520, 65521, 100_000, 7)]
    adler = 1
    for piece in pieces:
        adler = png.adler32_combine(adler, zlib.adler32(piece), len(piece))
    assert adler == zlib.adler32(b"".join(pieces))


def test_thumbnails_round_trip_losslessly():
    rgb = bytes(range(256)) * 3
    th = Thumbnail.from_rgb(16, 16, rgb)
    assert (th.width, th.height, th.rgb) == (16, 16, rgb)


@pytest.mark.parametrize("shape", [(1, 1, 3), (7, 3, 3), (75, 100, 3), (9, 5, 4), (300, 2, 4)])
def test_own_png_codec_is_lossless_and_readable_by_pillow(shape):
    """Thumbnails and the preview use our encoder and decoder: what Pillow
    (and so the projector's browser) reads back must be the same pixels."""
    pixels = np.random.default_rng(sum(shape)).integers(0, 256, shape, dtype=np.uint8)
    data = png.encode_png(pixels)
    np.testing.assert_array_equal(png.decode_own_png(data), pixels)
    back = Image.open(io.BytesIO(data))
    assert back.mode == ("RGB" if shape[2] == 3 else "RGBA")
    np.testing.assert_array_equal(np.asarray(back), pixels)
    image = Image.fromarray(pixels)
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(
        png.png_bytes(image, strip_rows=2)))), pixels)


def test_a_png_from_elsewhere_is_left_to_pillow():
    pixels = np.random.default_rng(1).integers(0, 256, (6, 5, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).quantize(16).save(buf, format="PNG")   # a palette PNG
    assert png.decode_own_png(buf.getvalue()) is None
    assert png.decode_own_png(b"not a png") is None
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")   # Pillow's own filters
    np.testing.assert_array_equal(np.asarray(Thumbnail(5, 6, buf.getvalue()).image()), pixels)


def test_column_clash_names_the_columns_as_the_metadata_file_writes_them():
    assert projector.column_clash(["path", "label"], ["nn_distance"]) is None
    assert "'label' is column 2 and 4" in projector.column_clash(["path", "label", "x", "label"])
    # names compared as written: a tab becomes a space, an empty name a placeholder
    assert "'a b' is column 1 and 2" in projector.column_clash(["a\tb", "a b"])
    assert "'<empty>' is column 2 and 3" in projector.column_clash(["p", "", " "])
    both = projector.column_clash(["p", "duplicate", "nn_distance"], ["nn_distance", "duplicate"],
                                  "--neighbors", "--neighbors 0")
    assert both == ("the input's columns 'nn_distance', 'duplicate' would be written twice: "
                    "--neighbors adds columns of that name; rename them in the input, or run "
                    "with --neighbors 0")
