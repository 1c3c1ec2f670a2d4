"""``--config FILE``: a YAML mapping of option names to values, merged into argv.

The file is turned into ordinary flags placed *before* the command line's, so
argparse (Beam's own parser, with every ``PipelineOptions`` subclass loaded)
checks types and choices exactly as it does for flags, the options travel to
workers like any flag, and a flag given on the command line wins: a config
key whose option also appears on the command line is dropped, which also
keeps repeatable options (``experiments``) and booleans from being merged.

Keys are the flag names without ``--`` (``max_items``, ``runner``,
``machine_type``). Any key Beam does not know fails at once, naming it.
"""
import argparse
import difflib
import json
from typing import Dict, List, Optional, Sequence

import yaml
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions

from beam_projector.pipeline.options import (
    UsageError,  # and registers ProjectorOptions with Beam
)

CONFIG_FLAG = "--config"


class ConfigError(UsageError):
    """A config file that cannot be used; one line naming the problem."""


def option_parser():
    """Beam's parser with every registered ``PipelineOptions`` subclass.

    ``get_all_options`` hands its fully populated parser to
    ``add_extra_args_fn``; that is the only public way to obtain the exact
    parser Beam itself uses (same classes, same ``allow_abbrev=False``).
    """
    captured = []
    PipelineOptions([]).get_all_options(add_extra_args_fn=captured.append)
    return captured[0]


def _actions(parser) -> Dict[str, object]:
    # argparse exposes no public listing of its actions; _option_string_actions
    # is the stable mapping it uses itself to parse "--flag". Beam's public
    # PipelineOptions.from_dictionary was weighed (issue 13) and does not
    # keep today's behaviour: it validates no key (no "did you mean"), turns
    # every list into repeated flags (wrong for comma-list and nargs options)
    # and silently drops a switch given a non-boolean; get_all_options() keys
    # are dests, not the flag names a config uses (--no_use_public_ips).
    return {flag: action for flag, action in parser._option_string_actions.items()
            if flag.startswith("--") and action.dest != "help"}


def config_path(argv: Sequence[str]) -> Optional[str]:
    """The value of the last ``--config`` in argv (before any ``--``), or None."""
    found = None
    for i, arg in enumerate(argv):
        if arg == "--":
            break
        if arg == CONFIG_FLAG:
            if i + 1 >= len(argv):
                raise ConfigError("--config needs a file")
            found = argv[i + 1]
        elif arg.startswith(CONFIG_FLAG + "="):
            found = arg.split("=", 1)[1]
    return found


def presets() -> Dict[str, str]:
    """The ready-made configs shipped as package data: name -> file path.
    They are the repository's ``configs/*.yaml``, installed with the
    package, so ``--config dataflow`` works from a wheel too."""
    import importlib.resources

    folder = importlib.resources.files("beam_projector.configs")
    return {entry.name[:-len(".yaml")]: str(entry) for entry in folder.iterdir()
            if entry.name.endswith(".yaml")}


def resolve_config(path: str) -> str:
    """``path`` itself when it exists (or is a URI), else the preset of that
    name (``dataflow`` or ``dataflow.yaml``), else ``path`` (whose read then
    fails, listing the presets)."""
    if "://" in path or FileSystems.exists(path):
        return path
    name = path[:-len(".yaml")] if path.endswith(".yaml") else path
    return presets().get(name, path) if "/" not in name else path


def load_config(path: str) -> dict:
    """Read a YAML mapping through FileSystems (local path or gs://, ...), or
    a preset by name (``resolve_config``)."""
    try:
        with FileSystems.open(resolve_config(path)) as f:
            data = yaml.safe_load(f.read().decode("utf-8"))
    except yaml.YAMLError as e:
        raise ConfigError(f"config {path} is not valid YAML: {e}") from None
    except Exception as e:  # noqa: BLE001 - missing file, bad scheme: one line
        raise ConfigError(f"cannot read config {path}: {e} (the presets, usable by name: "
                          f"{', '.join(sorted(presets()))})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config {path} must be a mapping of option: value, "
                          f"got {type(data).__name__}")
    return data


def _flags_on_command_line(argv: Sequence[str], actions) -> set:
    """The ``dest`` of every known option that argv sets."""
    dests = set()
    for arg in argv:
        if arg == "--":
            break
        if arg.startswith("--"):
            action = actions.get(arg.split("=", 1)[0])
            if action is not None:
                dests.add(action.dest)
    return dests


def _to_flags(key: str, value, action, path: str) -> List[str]:
    """One config entry -> the argv tokens argparse expects for its action."""
    flag = "--" + key
    if value is None:
        raise ConfigError(f"config {path}: {key!r} has no value")
    if action.nargs == 0:  # store_true / store_false / store_const
        if not isinstance(value, bool):
            raise ConfigError(f"config {path}: {key!r} is a switch, give true or false, "
                              f"got {value!r}")
        return [flag] if value else []
    if isinstance(value, dict):
        return [f"{flag}={json.dumps(value)}"]
    if isinstance(value, (list, tuple)):
        if type(action) is not argparse._StoreAction:
            # accumulating actions (append, Beam's comma lists): one flag per
            # item, so values holding commas (key=a,b) stay whole
            return [f"{flag}={_scalar(v)}" for v in value]
        if action.nargs in ("*", "+"):
            return [flag] + [_scalar(v) for v in value]
        if getattr(action.type, "__name__", "") == "loads":
            return [f"{flag}={json.dumps(value)}"]
        return [f"{flag}={','.join(_scalar(v) for v in value)}"]  # comma-list options
    return [f"{flag}={_scalar(value)}"]


def _scalar(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def config_to_flags(config: dict, path: str, skip_dests=frozenset(), parser=None) -> List[str]:
    """Validate the keys of ``config`` and turn it into argv flags."""
    actions = _actions(parser or option_parser())
    unknown = [k for k in config if not isinstance(k, str) or "--" + k not in actions]
    if unknown:
        hints = []
        for k in unknown:
            close = difflib.get_close_matches(str(k), [f[2:] for f in actions], n=1)
            hints.append(f"{k!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        raise ConfigError(f"config {path}: unknown option{'s' if len(unknown) > 1 else ''} "
                          f"{', '.join(hints)}")
    flags = []
    for key, value in config.items():
        action = actions["--" + key]
        if action.dest == "config":
            raise ConfigError(f"config {path}: a config cannot name another config")
        if action.dest in skip_dests:
            continue
        flags += _to_flags(key, value, action, path)
    return flags


def expand_config(argv: Optional[Sequence[str]]) -> List[str]:
    """argv with the ``--config`` file's options inserted before it.

    Command-line flags override the file; the ``--config`` flag itself stays,
    so the options used (and the run summary) record which file was read.
    """
    argv = list(argv or [])
    path = config_path(argv)
    if path is None:
        return argv
    parser = option_parser()
    given = _flags_on_command_line(argv, _actions(parser))
    return config_to_flags(load_config(path), path, given, parser) + argv
