"""Typed YAML configs: a mapping of sections loaded into dataclasses, every key checked.

The generic machinery behind :mod:`halotrans.config` (which defines the whole run configuration),
kept in a leaf module so that any layer can raise :class:`ConfigError` or turn a dataclass into a
dict without importing every section. An unknown key, or a value of the wrong type, raises
:class:`ConfigError` naming the key and the file. A file may start from another one with
``base: other.yaml`` (resolved relative to the file). Command-line overrides use dotted keys,
``--set train.lr=3e-4``, and the value is parsed as YAML.

    cfg = load_config("configs/vipr.yaml", ["train.steps=10"], cls=Config)
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from pathlib import Path
from typing import Any, Iterable, Literal, Union

import yaml


class ConfigError(ValueError):
    """A config file or override that does not match the dataclasses."""


#: the repository's configs/ (a config name like ``segment/vipr`` is looked up there)
CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"


def resolve_config_path(path: str | os.PathLike) -> Path:
    """Return ``path`` if it exists, else the file of that name in the repository's ``configs/``."""
    p = Path(path)
    if p.exists():
        return p
    for cand in (CONFIG_DIR / p, CONFIG_DIR / f"{p}.yaml"):
        if cand.exists():
            return cand
    raise ConfigError(f"config file not found: {path} (also looked in {CONFIG_DIR})")


def _read_yaml(path: Path, seen: tuple[Path, ...] = ()) -> dict:
    path = path.resolve()
    if path in seen:
        raise ConfigError(f"circular 'base:' chain through {path}")
    try:
        with open(path) as f:
            raw = yaml.safe_load(f) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: top level must be a mapping of sections, got {type(raw).__name__}")
    base = raw.pop("base", None)
    if base is None:
        return raw
    merged = _read_yaml((path.parent / base), seen + (path,))
    return _deep_merge(merged, raw)


def _deep_merge(a: dict, b: dict) -> dict:
    out = dict(a)
    for k, v in b.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    """Nested mappings as one mapping of dotted keys to leaves: ``{"train": {"lr": 1}}`` -> ``{"train.lr": 1}``."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, f"{key}."))
        else:
            out[key] = v
    return out


def _set_dotted(d: dict, key: str, value: Any) -> None:
    parts = key.split(".")
    for p in parts[:-1]:
        nxt = d.setdefault(p, {})
        if not isinstance(nxt, dict):
            raise ConfigError(f"--set {key}: '{p}' is not a section")
        d = nxt
    d[parts[-1]] = value


def parse_override(text: str) -> tuple[str, Any]:
    """``"train.lr=3e-4"`` -> ``("train.lr", 0.0003)``; the value is parsed as YAML."""
    if "=" not in text:
        raise ConfigError(f"--set expects key=value, got '{text}'")
    key, val = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"--set expects key=value, got '{text}'")
    try:
        parsed = yaml.safe_load(val) if val.strip() else ""
    except yaml.YAMLError:
        parsed = val
    # YAML reads 3e-4 as a string (it wants 3.0e-4): accept plain floats too, unless quoted.
    if isinstance(parsed, str) and val.strip()[:1] not in ("'", '"'):
        try:
            parsed = float(parsed)
        except ValueError:
            pass
    return key, parsed


def _convert(tp: Any, value: Any, where: str) -> Any:
    """Check ``value`` against the annotation ``tp`` and convert it (lists to tuples etc.)."""
    if tp is Any:
        return value
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _convert(a, value, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{where}: {value!r} matches none of {tp}")
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{where}: {value!r} is not one of {list(args)}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(args[0], v, f"{where}[{i}]") for i, v in enumerate(value))
        if origin is tuple and args:
            if len(args) != len(value):
                raise ConfigError(f"{where}: expected {len(args)} items, got {len(value)}")
            return tuple(_convert(a, v, f"{where}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
        inner = args[0] if args else Any
        conv = [_convert(inner, v, f"{where}[{i}]") for i, v in enumerate(value)]
        return conv if origin is list else tuple(conv)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, where)
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true/false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return str(value)
    return value


def _build(cls: type, values: Any, where: str) -> Any:
    if not isinstance(values, dict):
        raise ConfigError(f"{where}: expected a mapping of keys, got {values!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ConfigError(
            f"{where}: unknown key '{unknown[0]}'"
            + (f" (and {unknown[1:]})" if len(unknown) > 1 else "")
            + f"; valid keys: {', '.join(sorted(fields))}"
        )
    kwargs = {k: _convert(hints[k], v, f"{where}.{k}" if where else k) for k, v in values.items()}
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{where}: {e}") from None


def config_from_dict(d: dict, source: str, cls: type) -> Any:
    """Build ``cls`` from a nested dict; errors name ``source`` and the dotted key."""
    try:
        return _build(cls, d, "")
    except ConfigError as e:
        msg = str(e).lstrip(": ")
        raise ConfigError(f"{source}: {msg}") from None


def load_config(path: str | os.PathLike | None, overrides: Iterable[str], cls: type) -> Any:
    """Load a YAML file (or only the defaults if ``path`` is None) and apply ``key=value`` overrides."""
    source = "<defaults>"
    d: dict = {}
    if path is not None:
        p = resolve_config_path(path)
        source = str(p)
        d = _read_yaml(p)
    overrides = list(overrides)
    for o in overrides:
        k, v = parse_override(o)
        _set_dotted(d, k, v)
    if overrides:
        source += f" (with --set {' '.join(overrides)})"
    return config_from_dict(d, source, cls)


def config_to_dict(cfg: Any) -> dict:
    """Plain nested dict (tuples as lists) suitable for YAML/JSON and HDF5 attrs."""

    def conv(x: Any) -> Any:
        if dataclasses.is_dataclass(x):
            return {f.name: conv(getattr(x, f.name)) for f in dataclasses.fields(x)}
        if isinstance(x, (list, tuple)):
            return [conv(v) for v in x]
        if isinstance(x, dict):
            return {k: conv(v) for k, v in x.items()}
        return x

    return conv(cfg)


def save_config(cfg: Any, path: str | os.PathLike) -> None:
    """Write ``cfg`` as YAML atomically (temp file, then rename)."""
    from halotrans.io import atomic_path

    with atomic_path(path) as tmp:
        with open(tmp, "w") as f:
            yaml.safe_dump(config_to_dict(cfg), f, sort_keys=False)
