"""--config FILE: presets, precedence, unknown keys, every option settable."""
import argparse
import glob
import os

import pytest
import yaml
from apache_beam.options.pipeline_options import PipelineOptions
from beam_projector.pipeline.cli import main
from beam_projector.pipeline.config import (
    ConfigError,
    _actions,
    expand_config,
    option_parser,
)
from beam_projector.pipeline.options import ProjectorOptions
from beam_projector.pipeline.preflight import UsageError

from support import REPO_ROOT

REPO = REPO_ROOT
PRESETS = sorted(glob.glob(os.path.join(REPO, "configs", "*.yaml")))


def write_config(tmp_path, data, name="c.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data) if isinstance(data, dict) else data)
    return str(path)


def parsed(argv):
    return PipelineOptions(expand_config(argv)).get_all_options()


def test_presets_exist_and_parse():
    names = {os.path.basename(p) for p in PRESETS}
    assert {"local_demo.yaml", "local_multiprocess.yaml", "dataflow.yaml", "flink.yaml"} <= names
    for path in PRESETS:
        opts = parsed(["--config", path])
        assert opts["config"] == path
        assert opts["input"] and opts["model"] and opts["output"], path
    dataflow = parsed(["--config", os.path.join(REPO, "configs", "dataflow.yaml")])
    assert dataflow["runner"] == "DataflowRunner"
    assert dataflow["setup_file"] == "./setup.py"
    for key in ("project", "region", "temp_location", "machine_type", "max_num_workers"):
        assert dataflow[key], key
    assert dataflow["output"].startswith("gs://") and dataflow["temp_location"].startswith("gs://")
    flink = parsed(["--config", os.path.join(REPO, "configs", "flink.yaml")])
    assert flink["runner"] == "FlinkRunner"
    assert flink["flink_master"] and flink["environment_type"] and flink["flink_version"]
    multi = parsed(["--config", os.path.join(REPO, "configs", "local_multiprocess.yaml")])
    assert (multi["runner"], multi["direct_running_mode"], multi["direct_num_workers"]) == \
        ("FnApiRunner", "multi_processing", 2)


def test_command_line_overrides_config(tmp_path):
    path = write_config(tmp_path, {
        "max_items": 10, "seed": 3, "tile_size": 40, "runner": "FnApiRunner",
        "experiments": ["from_config_a", "from_config_b"], "save_main_session": True,
        "embedding_layer": ["a", "b"]})
    opts = parsed(["--max_items", "7", "--config", path, "--seed=5",
                   "--experiments", "from_flag"])
    assert opts["max_items"] == 7 and opts["seed"] == 5           # flags win, either side
    assert opts["tile_size"] == 40 and opts["runner"] == "FnApiRunner"  # the rest from the file
    assert opts["experiments"] == ["from_flag"]                    # replaced, not merged
    assert opts["save_main_session"] is True
    assert opts["embedding_layer"] == "a,b"
    # a switch set in the file is turned off by its opposite flag on the command line
    assert parsed(["--config", path, "--no_save_main_session"])["save_main_session"] is False


def test_without_config_argv_is_untouched():
    argv = ["--input", "x.csv", "--max_items", "3"]
    assert expand_config(argv) == argv


def test_unknown_keys_fail_naming_them(tmp_path):
    path = write_config(tmp_path, {"max_itemz": 5, "input": "a.csv", "colour": "red"})
    with pytest.raises(ConfigError) as e:
        expand_config(["--config", path])
    msg = str(e.value)
    assert "'max_itemz'" in msg and "'colour'" in msg and "did you mean 'max_items'" in msg
    assert "'input'" not in msg
    assert isinstance(e.value, UsageError)


@pytest.mark.parametrize("text, needle", [
    ("- a\n- b\n", "must be a mapping"),
    ("max_items: [1\n", "not valid YAML"),
    ("save_main_session: maybe\n", "is a switch"),
    ("seed:\n", "has no value"),
    ("config: other.yaml\n", "cannot name another config"),
])
def test_bad_config_files(tmp_path, text, needle):
    path = write_config(tmp_path, text)
    with pytest.raises(ConfigError, match=needle):
        expand_config(["--config", path])


def test_missing_config_is_a_usage_error_from_the_cli(tmp_path, capsys):
    assert main(["--config", str(tmp_path / "nope.yaml")]) == 2
    err = capsys.readouterr().err
    assert "cannot read config" in err and "nope.yaml" in err


def test_unknown_key_from_the_cli_exits_2(tmp_path, capsys):
    path = write_config(tmp_path, {"max_itemz": 5})
    assert main(["--config", path]) == 2
    assert "unknown option 'max_itemz'" in capsys.readouterr().err


def _value_for(action):
    """A valid value for ``action`` that differs from its default."""
    if action.nargs == 0:
        return True
    if action.choices:
        return ([c for c in action.choices if c != action.default] or list(action.choices))[0]
    kind = getattr(action.type, "__name__", None)
    if kind == "int":
        return 7 if action.default != 7 else 8
    if kind == "float":
        return 0.25 if action.default != 0.25 else 0.5
    if kind in ("loads", "<lambda>"):       # Beam's JSON-valued options
        return {"k": "v"}
    if type(action) is not argparse._StoreAction:
        return ["first=1", "second=2"]       # repeatable options
    return f"value-for-{action.dest}"


def test_every_projector_option_is_settable_from_a_config(tmp_path):
    parser = argparse.ArgumentParser()
    ProjectorOptions._add_argparse_args(parser)
    actions = [a for a in parser._actions if a.option_strings and a.dest not in ("help", "config")]
    assert len(actions) >= 14
    def key(a):  # the long flag (-v is also --verbose)
        return next(s for s in a.option_strings if s.startswith("--"))[2:]
    config = {key(a): _value_for(a) for a in actions}
    path = write_config(tmp_path, config)
    po = PipelineOptions(expand_config(["--config", path])).view_as(ProjectorOptions)
    for a in actions:
        expected = config[key(a)]
        got = getattr(po, a.dest)
        assert got == expected and got != a.default, a.dest


def test_every_beam_option_is_settable_from_a_config(tmp_path):
    """All ~180 options of every registered PipelineOptions class, one file."""
    actions, seen_dests = {}, set()
    every_flag = _actions(option_parser())
    assert {"runner", "project", "region", "temp_location", "setup_file", "machine_type",
            "max_num_workers", "dataflow_service_options", "flink_master", "environment_type",
            "direct_running_mode", "direct_num_workers", "max_items"} <= {f[2:] for f in every_flag}
    for flag, action in every_flag.items():
        if action.dest in seen_dests or action.dest == "config":
            continue
        seen_dests.add(action.dest)
        actions[flag[2:]] = action
    assert len(actions) > 150
    config = {key: _value_for(a) for key, a in actions.items()}
    path = write_config(tmp_path, config)
    got = PipelineOptions(expand_config(["--config", path])).get_all_options()
    defaults = PipelineOptions([]).get_all_options()
    # a switch whose default is already on, or an option with one possible value
    cannot_differ = {k for k, a in actions.items()
                     if (a.nargs == 0 and a.default is True and a.const is True)
                     or (a.choices and len(a.choices) == 1)}
    unchanged = [k for k, a in actions.items()
                 if k not in cannot_differ and got[a.dest] == defaults[a.dest]]
    assert not unchanged
    assert got["dataflow_service_options"] == ["first=1", "second=2"]
    assert got["direct_num_workers"] == 7 and got["max_num_workers"] == 7


def test_portable_local_preset():
    """configs/portable_local.yaml: the Job API rehearsal of README's "Rehearse
    a cluster run" (tests/test_portable.py runs it against live servers)."""
    opts = parsed(["--config", os.path.join(REPO, "configs", "portable_local.yaml")])
    assert opts["runner"] == "PortableRunner" and opts["environment_type"] == "EXTERNAL"
    assert opts["job_endpoint"] == "127.0.0.1:8099"
    assert opts["environment_config"] == "127.0.0.1:50000"
    assert opts["setup_file"] == "./setup.py"
