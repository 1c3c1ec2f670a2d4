import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import pytest  # noqa: E402

import support  # noqa: E402

# Markers by place: the folders that exercise the whole product are slow as a
# whole, and three files need something beyond the venv. Single slow tests in
# the unit folders carry @pytest.mark.slow themselves. `make test-fast` runs
# everything else (pytest.ini lists the markers).
_SLOW_FOLDERS = ("e2e", "deploy")
_NEEDS = {"test_browser.py": "browser", "test_airflow.py": "airflow", "test_portable.py": "cluster"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        path = item.path
        if path.parent.name in _SLOW_FOLDERS:
            item.add_marker(pytest.mark.slow)
        if path.name in _NEEDS:
            item.add_marker(getattr(pytest.mark, _NEEDS[path.name]))


@pytest.fixture(scope="session")
def digits(tmp_path_factory):
    """60 real digits as PNG files with a path,label CSV."""
    folder = tmp_path_factory.mktemp("digits")
    csv_path, rows = support.write_digits(str(folder), count=60)
    return csv_path, rows


@pytest.fixture(scope="session")
def model_path(tmp_path_factory):
    return support.tiny_model(str(tmp_path_factory.mktemp("model") / "tiny.keras"))
