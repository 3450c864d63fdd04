"""Configuration: the dataclasses are the one source of truth, presets are instances of them, flags are derived.

A run's configuration is a dataclass whose fields are sections (dataclasses themselves, e.g. `model`, `loop`).
Every field of a section marked with `option(...)` is a flag of the same name (`num_clusters` -> `--num-clusters`);
a field declared with plain `dataclasses.field` / a default is derived by the code (a vocabulary size, a seed
copied from the run's) and has no flag. Flag names are unique across sections.

    parser = ConfigParser("pretraining", PretrainConfig, PRESETS)
    config = parser.parse(argv)       # --config NAME|FILE, then any flag given explicitly wins
    write_config(out_dir, config)     # <out_dir>/config.json; `--config <out_dir>/config.json` reproduces the run

`--help` is built after `--config` is read, so it shows every flag's value under the chosen preset or file.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import types
import typing
from pathlib import Path
from typing import Any, Callable, Sequence

from cgns.io import atomic_write_json

CONFIG_FILE = "config.json"


def option(default=dataclasses.MISSING, help: str = "", *, choices: Sequence | None = None,
           parse: Callable[[str], Any] | None = None, metavar: str | None = None,
           show: Callable[[Any], str] | None = None, default_factory=dataclasses.MISSING) -> Any:
    """A dataclass field that is also a command-line flag (`--name-with-dashes`).

    `parse` converts one command-line word (default: from the field's type); a list / tuple field takes one or more
    words; a bool field becomes `--name` / `--no-name`. `show` writes one value as --help shows it (default: str,
    None as "none").
    """
    metadata = {"flag": True, "help": help, "choices": choices, "parse": parse, "metavar": metavar, "show": show}
    if default_factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def flag_fields(section_cls: type) -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(section_cls) if f.metadata.get("flag")]


def sections(config_cls: type) -> dict[str, type]:
    """{section name: section dataclass} of a run configuration class."""
    hints = typing.get_type_hints(config_cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(config_cls)}


def to_dict(config) -> dict:
    return dataclasses.asdict(config)


def from_dict(cls: type, values: dict, where: str = "configuration"):
    """Build `cls` (a run configuration or a section) from a dict, naming any unknown or malformed field."""
    if not isinstance(values, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(values).__name__}")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"{where}: unknown field(s) {', '.join(unknown)}")
    kwargs = {}
    for name, value in values.items():
        kind = hints[name]
        if dataclasses.is_dataclass(kind):
            value = from_dict(kind, value, f"{where}: {name}")
        elif _container(kind) is tuple and isinstance(value, list):
            value = tuple(value)
        kwargs[name] = value
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{where}: {error}") from None


def load_config(path: str | os.PathLike, cls: type):
    """A run configuration from a config.json that a run wrote (or one written by hand in the same layout)."""
    path = Path(path)
    try:
        values = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"--config {path}: cannot be read as JSON ({error})") from None
    return from_dict(cls, values, where=f"--config {path}")


def write_config(output_dir: str | os.PathLike, config) -> Path:
    """<output_dir>/config.json: the resolved configuration of this run (written atomically)."""
    return atomic_write_json(Path(output_dir) / CONFIG_FILE, to_dict(config))


def _container(kind) -> type | None:
    origin = typing.get_origin(kind)
    return origin if origin in (list, tuple) else None


def _scalar_type(kind):
    """int / float / str / bool from an annotation such as `int`, `str | None`, `tuple[float, ...]`."""
    if _container(kind):
        kind = typing.get_args(kind)[0]
    if typing.get_origin(kind) in (typing.Union, types.UnionType):
        kind = next(arg for arg in typing.get_args(kind) if arg is not type(None))
    return kind


class ConfigParser:
    """Command-line parser of a run configuration class with presets (`--config NAME|FILE`)."""

    def __init__(self, description: str, config_cls: type, presets: dict[str, Any], *, default: str = "demo",
                 extra: Callable[[argparse.ArgumentParser], None] | None = None, prog: str | None = None):
        self.description, self.config_cls, self.presets, self.default = description, config_cls, presets, default
        self.extra, self.prog = extra, prog
        seen: dict[str, str] = {}
        for section, cls in sections(config_cls).items():
            for f in flag_fields(cls):
                if f.name in seen:
                    raise TypeError(f"flag --{f.name} is declared in both {seen[f.name]} and {section}")
                seen[f.name] = section

    def base(self, name: str):
        """The preset called `name`, or the configuration in the file `name`."""
        if name in self.presets:
            return self.presets[name]
        if Path(name).is_file():
            return load_config(name, self.config_cls)
        raise SystemExit(f"--config {name}: neither a preset ({', '.join(sorted(self.presets))}) nor a file")

    def build(self, base) -> argparse.ArgumentParser:
        parser = argparse.ArgumentParser(prog=self.prog, description=self.description,
                                         formatter_class=argparse.ArgumentDefaultsHelpFormatter)
        parser.add_argument("--config", default=self.default, metavar="NAME|FILE",
                            help=f"preset ({', '.join(sorted(self.presets))}) or a config.json a run wrote; every "
                                 f"default below is this configuration's, any flag given explicitly wins")
        for section, cls in sections(self.config_cls).items():
            group = parser.add_argument_group(section)
            values = getattr(base, section)
            hints = typing.get_type_hints(cls)
            for f in flag_fields(cls):
                self._add(group, f, hints[f.name], getattr(values, f.name))
        if self.extra is not None:
            self.extra(parser)
        return parser

    @staticmethod
    def _add(group, f: dataclasses.Field, kind, value) -> None:
        meta = f.metadata
        flag = "--" + f.name.replace("_", "-")
        # default=SUPPRESS: only flags given on the command line appear in the namespace; --help shows `value`
        kwargs: dict[str, Any] = dict(dest=f.name, default=argparse.SUPPRESS,
                                      help=f"{meta['help']} (default: {_show(value, meta['show'])})".strip())
        scalar = _scalar_type(kind)
        if scalar is bool:
            group.add_argument(flag, action=argparse.BooleanOptionalAction, **kwargs)
            return
        kwargs["type"] = meta["parse"] or scalar
        if meta["choices"] is not None:
            kwargs["choices"] = list(meta["choices"])
        if meta["metavar"]:
            kwargs["metavar"] = meta["metavar"]
        if _container(kind):
            kwargs["nargs"] = "+"
        group.add_argument(flag, **kwargs)

    def parse(self, argv: Sequence[str] | None = None, *, namespace: bool = False):
        """The resolved configuration (and, with namespace=True, the argparse namespace of the extra flags)."""
        argv = list(sys.argv[1:] if argv is None else argv)
        pre = argparse.ArgumentParser(add_help=False)
        pre.add_argument("--config", default=self.default)
        known, _ = pre.parse_known_args(argv)
        base = self.base(known.config)
        parser = self.build(base)
        args = parser.parse_args(argv)
        config = override(base, vars(args))
        return (config, args) if namespace else config


def override(config, values: dict):
    """A copy of a run configuration with the flag values in `values` (field name -> value) set."""
    changed = {}
    for section, cls in sections(type(config)).items():
        names = {f.name for f in flag_fields(cls)}
        given = {k: (tuple(v) if isinstance(getattr(getattr(config, section), k), tuple) else v)
                 for k, v in values.items() if k in names}
        if given:
            try:
                changed[section] = dataclasses.replace(getattr(config, section), **given)
            except ValueError as error:
                raise SystemExit(f"{section}: {error}") from None
    return dataclasses.replace(config, **changed) if changed else config


def _show(value, show: Callable[[Any], str] | None = None) -> str:
    if isinstance(value, (list, tuple)):
        return " ".join(_show(v, show) for v in value)
    if show is not None:
        return show(value)
    return "none" if value is None else str(value)
