"""One way to configure every command: a config dataclass from a TOML (or JSON) file, flags and `--set` overrides.

A run's settings are a dataclass whose fields may themselves be dataclasses (the sections of the file:
`[data]`, `[trainer]`). Each default is written once, in the dataclass; a file, then the command's flags, then
`--set key=value` / `--set section.key=value` (the last one wins) change what they name:

    config = load_config(PPOConfig, "ppo.toml", [("lr", 1e-4)], ["beta=0.1"])

A value must fit its field's type (an int where a float is expected is fine); an unknown key or a bad value is
refused in one line that names the key and the keys it could have been. A field typed `dict` is a free table,
taken as it is (e.g. `PretrainConfig.model`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import tomllib
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any


def read_config_file(path: str | Path) -> dict[str, Any]:
    """The table of settings in a TOML (`.toml`) or JSON (`.json`) file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no config file at {str(path)!r}")
    kind = "JSON" if path.suffix == ".json" else "TOML"
    try:
        values = json.loads(path.read_text()) if kind == "JSON" else tomllib.loads(path.read_text())
    except ValueError as error:  # JSONDecodeError, TOMLDecodeError
        raise ValueError(f"{path} is not valid {kind}: {error}") from None
    if not isinstance(values, dict):
        raise ValueError(f"{path} must hold a table of settings, not a {type(values).__name__}")
    return values


def parse_override(text: str) -> tuple[str, Any]:
    """(`section.key`, value) of one `--set section.key=value`: the value read as TOML, a bare word as a string."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ValueError(f"--set {text!r} must look like key=value or section.key=value, e.g. trainer.lr=3e-4")
    try:
        value = tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()
    return key.strip(), value


def set_value(values: dict[str, Any], key: str, value: Any) -> None:
    """Set dotted `key` (`section.key`) in the nested table `values`."""
    *sections, name = key.split(".")
    table = values
    for section in sections:
        table = table.setdefault(section, {})
        if not isinstance(table, dict):
            raise ValueError(f"{key}: {section} is a value, not a section")
    table[name] = value


def config_values(
    path: str | Path | None = None, settings: Sequence[tuple[str, Any]] = (), overrides: Sequence[str] = ()
) -> dict[str, Any]:
    """The nested table of a config file (if any), then `settings` ((key, value) pairs, e.g. from flags), then
    `--set` `overrides` applied in order."""
    values = read_config_file(path) if path is not None else {}
    for key, value in [*settings, *map(parse_override, overrides)]:
        set_value(values, key, value)
    return values


def _section_type(kind: Any) -> type | None:
    return kind if isinstance(kind, type) and dataclasses.is_dataclass(kind) else None


def _check(value: Any, kind: Any, key: str) -> Any:
    """`value` as field type `kind` (a float from an int, a tuple from a list), or a ValueError naming `key`."""
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if kind is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for option in (arg for arg in args if arg is not type(None)):
            try:
                return _check(value, option, key)
            except ValueError as error:
                errors.append(error)
        raise errors[0]
    if origin in (list, tuple) or kind in (list, tuple):
        if not isinstance(value, list | tuple):
            raise ValueError(f"{key}={value!r} must be a list")
        item = args[0] if args else Any
        items = [_check(element, item, key) for element in value]
        if origin is tuple and len(args) > 1 and args[-1] is not Ellipsis:
            if len(items) != len(args):
                raise ValueError(f"{key}={value!r} must hold {len(args)} values")
            items = [_check(element, arg, key) for element, arg in zip(value, args, strict=True)]
        return tuple(items) if tuple in (origin, kind) else items
    if origin is dict or kind is dict:
        if not isinstance(value, dict):
            raise ValueError(f"{key}={value!r} must be a table of keys")
        return dict(value)
    if kind is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            if not math.isfinite(value):
                raise ValueError(f"{key}={value!r} is not a finite number")
            return float(value)
    elif kind is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif isinstance(kind, type) and isinstance(value, kind):
        return value
    raise ValueError(f"{key}={value!r} must be of type {getattr(kind, '__name__', kind)}")


def build_config(cls: type, values: Mapping[str, Any], *, defaults: Any = None, prefix: str = "") -> Any:
    """The dataclass `cls` from a nested table: `defaults` (an instance; by default `cls()`) with `values` set.

    A field whose type is a dataclass is a section, built the same way from its sub-table over the default's
    section. Unknown keys and values that do not fit their field's type are refused by name.
    """
    defaults = cls() if defaults is None else defaults
    if not isinstance(values, Mapping):
        raise ValueError(f"[{prefix.rstrip('.')}] must be a table of keys, got {values!r}")
    hints = typing.get_type_hints(cls)
    fields = {field.name: hints[field.name] for field in dataclasses.fields(cls) if field.init}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        where = f" in [{prefix.rstrip('.')}]" if prefix else ""
        raise ValueError(f"unknown config key{'s' if len(unknown) > 1 else ''} "
                         f"{', '.join(prefix + name for name in unknown)}{where}; the keys are "
                         f"{', '.join(prefix + name for name in fields)}")
    changes = {}
    for name, value in values.items():
        section = _section_type(fields[name])
        if section is not None:
            changes[name] = build_config(section, value, defaults=getattr(defaults, name), prefix=f"{prefix}{name}.")
        else:
            changes[name] = _check(value, fields[name], prefix + name)
    return dataclasses.replace(defaults, **changes)


def load_config(cls: type, path: str | Path | None = None, settings: Sequence[tuple[str, Any]] = (),
                overrides: Sequence[str] = (), *, defaults: Any = None) -> Any:
    """`build_config(cls, config_values(path, settings, overrides))`: file, then settings, then `--set`."""
    return build_config(cls, config_values(path, settings, overrides), defaults=defaults)


def config_keys(defaults: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """(dotted key, default value) of every setting of the config instance `defaults`, sections flattened."""
    keys = []
    for field in dataclasses.fields(defaults):
        value = getattr(defaults, field.name)
        if dataclasses.is_dataclass(value):
            keys += config_keys(value, f"{prefix}{field.name}.")
        elif field.init:
            keys.append((prefix + field.name, value))
    return keys


def _toml(value: Any) -> str:
    if isinstance(value, tuple):
        value = list(value)
    return "(not set)" if value is None else json.dumps(value)


def add_config_arguments(parser: argparse.ArgumentParser, defaults: Any, *, name: str = "config",
                         skip: Sequence[str] = (), notes: Mapping[str, str] | None = None) -> None:
    """`--config FILE` and `--set KEY=VALUE` on `parser`, and an epilog listing every key of the config instance
    `defaults` (but `skip`) with its default and its note in `notes`, if any."""
    keys = [(key, value) for key, value in config_keys(defaults) if key not in skip]
    numbers = [(key, value) for key, value in keys if isinstance(value, int | float) and not isinstance(value, bool)]
    example = min(numbers or keys, key=lambda item: "." not in item[0])  # a section's key if there is one
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("--config", type=Path, metavar="FILE",
                        help=f"a TOML (or JSON) file of {name} keys (listed below); flags and --set override it")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help=f"set any config key, e.g. --set {example[0]}={_toml(example[1])} (repeatable; "
                             "overrides the file and the flags)")
    notes = notes or {}
    lines = [f"  {key} = {_toml(value)}" + (f"  ({notes[key]})" if key in notes else "") for key, value in keys]
    parser.epilog = f"{name} keys (a TOML file's [section] for a dotted key), with defaults:\n" + "\n".join(lines)


def flag_settings(args: argparse.Namespace, keys: Mapping[str, str]) -> list[tuple[str, Any]]:
    """(config key, value) of each flag in `keys` (flag dest -> dotted key) that was given (is not None)."""
    settings = []
    for dest, key in keys.items():
        value = getattr(args, dest, None)
        if value is not None:
            settings.append((key, list(value) if isinstance(value, tuple) else value))
    return settings


def add_config_flag(parser: argparse.ArgumentParser, defaults: Any, key: str, *, help: str | None = None,
                    **kwargs: Any) -> None:
    """A `--key` flag (dashes for underscores) setting the field `key` of the config instance `defaults`. It is
    None unless given, so that a config file's value stands; its help states the dataclass's default."""
    default = f"default {_toml(getattr(defaults, key))}"
    parser.add_argument(f"--{key.replace('_', '-')}", dest=key, default=None,
                        help=f"{help} ({default})" if help else default, **kwargs)


def add_config_flags(parser: argparse.ArgumentParser, defaults: Any, kind: type, keys: Sequence[str]) -> None:
    """`add_config_flag` of type `kind` for each of `keys`, without further help."""
    for key in keys:
        add_config_flag(parser, defaults, key, type=kind)


def config_settings(args: argparse.Namespace, defaults: Any) -> list[tuple[str, Any]]:
    """(key, value) of each flag named after a field of the config instance `defaults` that was given."""
    return flag_settings(args, {key: key for key, _ in config_keys(defaults)})
