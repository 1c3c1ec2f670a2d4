import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import pytest  # noqa: E402

import support  # noqa: E402


@pytest.fixture(scope="session")
def digits(tmp_path_factory):
    """60 real digits as PNG files with a path,label CSV."""
    folder = tmp_path_factory.mktemp("digits")
    csv_path, rows = support.write_digits(str(folder), count=60)
    return csv_path, rows


@pytest.fixture(scope="session")
def model_path(tmp_path_factory):
    return support.tiny_model(str(tmp_path_factory.mktemp("model") / "tiny.keras"))
