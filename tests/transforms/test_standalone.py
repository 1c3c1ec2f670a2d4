"""--standalone: projector_config.json for the standalone Embedding Projector.

The browser test (test_browser.py) opens the export in the real projector;
these check the format and the writer's files directly.
"""
import json
import re

import numpy as np
import pytest
from beam_projector.transforms import standalone

import support


def test_config_json_has_the_standalone_projector_fields():
    text = standalone.config_json([("emb", (10, 4), "data-1/feature_vecs.bytes")],
                                  "data-1/metadata.tsv", "data-1/sprite.png", 32)
    assert json.loads(text) == {"embeddings": [{
        "tensorName": "emb", "tensorShape": [10, 4],
        "tensorPath": "data-1/feature_vecs.bytes", "metadataPath": "data-1/metadata.tsv",
        "sprite": {"imagePath": "data-1/sprite.png", "singleImageDim": [32, 32]}}]}
    no_sprite = json.loads(standalone.config_json(
        [("a", (2, 3), "a.bytes"), ("b", (2, 5), "b.bytes")], "m.tsv", None, 8))
    assert [e["tensorShape"] for e in no_sprite["embeddings"]] == [[2, 3], [2, 5]]
    assert all("sprite" not in e for e in no_sprite["embeddings"])


@pytest.mark.parametrize("tensor_path,metadata_path", [
    ("feature_vecs.tsv", "m.tsv"),          # read as float32 only when it ends in .bytes
    ("/abs/feature_vecs.bytes", "m.tsv"),
    ("../up/feature_vecs.bytes", "m.tsv"),
    ("https://elsewhere/t.bytes", "m.tsv"),
    ("t.bytes", "a/../../m.tsv"),
])
def test_config_json_refuses_paths_that_would_not_resolve_inside_the_export(tensor_path,
                                                                            metadata_path):
    with pytest.raises(ValueError):
        standalone.config_json([("t", (1, 1), tensor_path)], metadata_path, None, 8)


def test_index_html_loads_only_files_from_its_own_folder():
    page = standalone.index_html()
    assert standalone.INDEX_MARKER in page
    assert 'serving-mode="demo"' in page
    assert f'projector-config-json-path="{standalone.STANDALONE_CONFIG_NAME}"' in page
    assert re.findall(r'src="([^"]+)"', page) == [standalone.BUNDLE_NAME]
    assert "polymerSkipLoadingFontRoboto = true" in page


def run(digits, model_path, out, *flags, **kw):
    csv_path, _ = digits
    return support.run_pipeline(*flags, input=csv_path, model=model_path,
                                embedding_layer="embedding", output=out, max_items=25,
                                tile_size=16, **kw)


@pytest.mark.slow
def test_pipeline_standalone_export_matches_the_tensorboard_logdir(digits, model_path, tmp_path):
    out = tmp_path / "logdir"
    run(digits, model_path, out, "--standalone", tensor_format="tsv")
    config = json.loads((out / standalone.STANDALONE_CONFIG_NAME).read_text())
    (emb,) = config["embeddings"]
    assert emb["tensorName"] == "embedding" and emb["tensorShape"] == [25, 8]
    for key in (emb["tensorPath"], emb["metadataPath"], emb["sprite"]["imagePath"]):
        assert not key.startswith("/") and (out / key).is_file(), key
    assert emb["sprite"]["singleImageDim"] == [16, 16]
    data = (out / emb["tensorPath"]).read_bytes()
    assert len(data) == 25 * 8 * 4
    tsv = np.loadtxt(out / emb["tensorPath"].replace(".bytes", ".tsv"), delimiter="\t",
                     dtype=np.float32)
    np.testing.assert_array_equal(np.frombuffer(data, dtype="<f4").reshape(25, 8), tsv)
    pbtxt = (out / "projector_config.pbtxt").read_text()
    assert f'metadata_path: "{emb["metadataPath"]}"' in pbtxt
    assert f'image_path: "{emb["sprite"]["imagePath"]}"' in pbtxt
    assert standalone.INDEX_MARKER in (out / standalone.INDEX_NAME).read_text()
    assert (out / standalone.BUNDLE_NAME).stat().st_size > 100_000
    # TensorBoard is not disturbed by the extra files
    support.check_live_projector(out, 25, {"embedding": 8}, 16)


@pytest.mark.slow
def test_binary_format_reuses_the_bytes_file_and_a_plain_run_removes_the_export(
        digits, model_path, tmp_path):
    out = tmp_path / "logdir"
    run(digits, model_path, out, "--standalone", tensor_format="binary")
    emb = json.loads((out / standalone.STANDALONE_CONFIG_NAME).read_text())["embeddings"][0]
    folder = (out / emb["tensorPath"]).parent
    assert sorted(p.name for p in folder.iterdir()) == [
        "feature_vecs.bytes", "metadata.tsv", "sprite.png"]
    assert "bookmarksPath" not in emb   # no layout by default: no views to fetch
    assert f'tensor_path: "{emb["tensorPath"]}"' in (out / "projector_config.pbtxt").read_text()
    # a user's own index.html is never touched; ours goes with the export
    run(digits, model_path, out)
    for name in (standalone.STANDALONE_CONFIG_NAME, standalone.INDEX_NAME, standalone.BUNDLE_NAME):
        assert not (out / name).exists(), name
    (out / standalone.INDEX_NAME).write_text("<html>mine</html>")
    run(digits, model_path, out)
    assert (out / standalone.INDEX_NAME).read_text() == "<html>mine</html>"
