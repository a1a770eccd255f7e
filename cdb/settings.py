"""The one settings grammar of every cdb entry point (train, eval, data build, sweep, report).

Settings are frozen dataclasses whose every field carries a docstring. Values come from the
dataclass defaults, then entry-point defaults (a scale preset, a suite), then `--config FILE.yaml`,
then the entry point's own flags, then `--set key.path=value`, in that order. An unknown key, a
wrong type or a broken rule is a ConfigError that names the key and states the rule.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import functools
import inspect
import os
import textwrap
import typing
from pathlib import Path
from typing import Any, Literal

import yaml


class ConfigError(ValueError):
    """A configuration problem the user can fix; the message names the key or file."""


def add_arguments(parser: argparse.ArgumentParser, what: str) -> None:
    """The two flags every entry point shares: --config and --set."""
    parser.add_argument("--config", help=f"YAML file of {what} settings (the same keys as --set)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY.PATH=VALUE",
                        help="override any setting, e.g. --set a.b=1; repeatable; applied last")


def to_dict(settings) -> dict:
    """A settings dataclass as plain YAML-able values (tuples become lists)."""
    return _plain(dataclasses.asdict(settings))


def _plain(value):
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def flatten(values: dict, prefix: str = "") -> dict[str, Any]:
    """Nested mapping -> `a.b.c` keys."""
    out = {}
    for key, value in values.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


@functools.cache
def field_docs(cls) -> dict[str, str]:
    """Each field's docstring (the string literal written right under it), by field name."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        if "__field_docs__" in vars(klass):  # a class made by dataclasses.make_dataclass has no source
            docs.update(klass.__field_docs__)
            continue
        tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        body = tree.body[0].body
        for node, after in zip(body, body[1:]):
            if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and isinstance(after, ast.Expr)
                    and isinstance(after.value, ast.Constant) and isinstance(after.value.value, str)):
                docs[node.target.id] = " ".join(after.value.value.split())
    return docs


def undocumented(cls, prefix: str = "") -> list[str]:
    """Dotted names of fields without a docstring, nested sections included."""
    docs, hints, missing = field_docs(cls), typing.get_type_hints(cls), []
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            missing += undocumented(hints[f.name], f"{prefix}{f.name}.")
        elif f.name not in docs:
            missing.append(f"{prefix}{f.name}")
    return missing


def describe(cls, prefix: str = "") -> list[tuple[str, str, Any, str]]:
    """(key, type, default, docstring) of every field, nested sections flattened: for --help and docs."""
    docs, hints, rows = field_docs(cls), typing.get_type_hints(cls), []
    defaults = to_dict(cls())
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        if dataclasses.is_dataclass(hint):
            rows += describe(hint, f"{prefix}{f.name}.")
        else:
            rows.append((f"{prefix}{f.name}", _type_name(hint), defaults[f.name], docs.get(f.name, "")))
    return rows


def _type_name(hint) -> str:
    origin = typing.get_origin(hint)
    if origin is Literal:
        return "|".join(map(str, typing.get_args(hint)))
    if origin is tuple:
        return "list"
    return getattr(hint, "__name__", str(hint))


# --- reading values ----------------------------------------------------------------------------


def coerce(value, hint, key: str, from_text: bool):
    """Check (and, for `--set` text, convert) one value against its annotation."""
    origin = typing.get_origin(hint)
    if origin is Literal:
        choices = typing.get_args(hint)
        if value not in choices:
            raise ConfigError(f"{key}: {value!r} is not one of {', '.join(map(str, choices))}")
        return value
    if origin is tuple:
        args = typing.get_args(hint)
        if from_text and isinstance(value, str):
            # a YAML list `[a, b]`, or `a,b`
            value = yaml.safe_load(value) if value.strip().startswith("[") else [v.strip() for v in value.split(",") if v.strip()]
        if isinstance(value, str) and len(args) == 2 and args[1] is Ellipsis:
            value = [value]
        if len(args) == 2 and args[1] is Ellipsis:
            if not isinstance(value, (list, tuple)):
                raise ConfigError(f"{key}: expected a list, got {value!r}")
            return tuple(coerce(v, args[0], key, from_text) for v in value)
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise ConfigError(f"{key}: expected a list of {len(args)} values, got {value!r}")
        return tuple(coerce(v, a, key, from_text) for v, a in zip(value, args))
    if hint is bool:
        if from_text and isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
        return value
    if hint is int:
        if from_text and isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if hint is float:
        # YAML 1.1 reads 1e-4 (no dot) as a string; accept any numeric text.
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    raise TypeError(f"unsupported annotation {hint} for {key}")


def build(cls, values: dict, prefix: str = "", from_text: set[str] = frozenset()):
    """`cls` from a nested mapping; unknown keys and wrong types are ConfigErrors naming the key."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in values.items():
        dotted = f"{prefix}{key}"
        if key not in names:
            section = prefix.strip(".")
            where = f"known keys under '{section}'" if section else "known top-level keys"
            raise ConfigError(f"unknown setting '{dotted}'; {where}: {', '.join(names)}")
        hint = hints[key]
        if dataclasses.is_dataclass(hint):
            if not isinstance(value, dict):
                raise ConfigError(f"{dotted}: expected a mapping of {', '.join(f.name for f in dataclasses.fields(hint))}")
            kwargs[key] = build(hint, value, f"{dotted}.", from_text)
        else:
            kwargs[key] = coerce(value, hint, dotted, dotted in from_text)
    return cls(**kwargs)


def merge(base: dict, update: dict) -> dict:
    """`update` over `base`, section by section."""
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def set_dotted(tree: dict, dotted: str, value) -> None:
    *parents, leaf = dotted.split(".")
    node = tree
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"--set {dotted}: '{part}' is not a section")
    node[leaf] = value


def parse_sets(sets) -> list[tuple[str, str]]:
    """`key.path=value` strings -> (key, text) pairs."""
    pairs = []
    for item in sets:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected key.path=value")
        key, value = item.split("=", 1)
        pairs.append((key.strip(), value))
    return pairs


def yaml_problem(path: Path, exc: yaml.YAMLError) -> str:
    """`path:line:column: not valid YAML: what` from PyYAML's error (its own text names "<unicode string>")."""
    mark = getattr(exc, "problem_mark", None)
    if mark is None:
        return f"{path}: not valid YAML: {exc}"
    what = "; ".join(part for part in (getattr(exc, "context", None), getattr(exc, "problem", None)) if part)
    return f"{path}:{mark.line + 1}:{mark.column + 1}: not valid YAML: {what}"


def load_yaml(path: str | os.PathLike) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(yaml_problem(path, exc)) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of settings at the top level")
    return data


def resolve(cls, defaults: dict | None = None, config_file: str | None = None,
            flags: dict[str, Any] | None = None, sets=()):
    """`cls` from defaults <- YAML file <- flags (dotted keys, None = not given) <- `--set`."""
    values = merge(defaults or {}, load_yaml(config_file) if config_file else {})
    set_pairs = parse_sets(sets)
    for key, value in (flags or {}).items():
        if value is not None:
            set_dotted(values, key, value)
    for key, value in set_pairs:
        set_dotted(values, key, value)
    return build(cls, values, "", {key for key, _ in set_pairs})
