"""Sweep files: a base config and a grid over dotted config keys, expanded into runs.

A sweep YAML (``configs/sweeps/*.yaml``)::

    name: segment_ablation
    config: segment/vipr.yaml          # base config (a path, or a name in configs/)
    out_dir: runs/sweeps/segment_ablation  # one sub-directory per run, plus sweep.json
    set: {train.steps: 2000}           # fixed overrides for every run (optional)
    grid:                              # cartesian product over these keys
      model.name: [vipr, copra]
      data.inputs: [[delta], [T], [delta, T]]
    resources: {nodes: 1, tasks_per_node: 4, gpus_per_node: 4, timeout_min: 720}

``resources`` are submitit's per-job parameters (``timeout_min``, ``nodes``, ``tasks_per_node``
= ranks per node, ``gpus_per_node``, ``cpus_per_task``, ``mem_gb``, and ``slurm_*`` ones such as
``slurm_partition`` or ``slurm_account``).

Every run's full config is built (and so checked key by key by :func:`halotrans.config.load_config`)
when the sweep is expanded, before anything is submitted: a misspelt key fails the whole sweep
with a :class:`~halotrans.config.ConfigError`.
"""

from __future__ import annotations

import copy
import itertools
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from halotrans.config import (
    Config,
    ConfigError,
    config_from_dict,
    config_to_dict,
    load_config,
    parse_override,
    resolve_config_path,
)

SWEEP_KEYS = {"name", "config", "out_dir", "set", "grid", "resources"}


@dataclass
class Run:
    """One point of the grid: its name, run directory, grid values and full config."""

    name: str
    run_dir: Path
    values: dict[str, Any]
    config: Config


@dataclass
class Sweep:
    """A parsed sweep file (see the module docstring)."""

    name: str
    config: str | None
    out_dir: Path
    grid: dict[str, list[Any]]
    fixed: dict[str, Any] = field(default_factory=dict)
    resources: dict[str, Any] = field(default_factory=dict)
    source: str = "<sweep>"

    def runs(self) -> list[Run]:
        """Expand the grid (cartesian product, keys in file order); build and check every config."""
        base = config_to_dict(load_config(self.config))
        keys = list(self.grid)
        runs = []
        for i, combo in enumerate(itertools.product(*(self.grid[k] for k in keys))):
            values = dict(zip(keys, combo))
            name = run_name(i, combo)
            run_dir = self.out_dir.resolve() / name
            d = copy.deepcopy(base)
            for key, value in {**self.fixed, **values, "train.out_dir": str(run_dir)}.items():
                _set_key(d, key, value, self.source)
            cfg = config_from_dict(d, f"sweep {self.source}, run {name}")
            runs.append(Run(name=name, run_dir=run_dir, values=values, config=cfg))
        return runs


def _set_key(d: dict, key: str, value: Any, source: str) -> None:
    """Set the dotted ``key`` of the nested config dict ``d`` (the values keep their YAML types)."""
    *sections, last = key.split(".")
    for s in sections:
        if not isinstance(d.get(s), dict):
            raise ConfigError(f"sweep {source}: '{key}': no config section '{s}'")
        d = d[s]
    d[last] = value


def run_name(index: int, values: tuple[Any, ...], max_len: int = 80) -> str:
    """``"003_copra_delta-T_13-13.5-14"``: index, then the grid values, safe as a file name."""

    def text(v: Any) -> str:
        if isinstance(v, (list, tuple)):
            return "-".join(text(x) for x in v)
        if isinstance(v, float) and v.is_integer():
            v = int(v)
        return re.sub(r"[^A-Za-z0-9.+-]+", "-", str(v)).strip("-")

    return f"{index:03d}_" + "_".join(text(v) for v in values)[:max_len] if values else f"{index:03d}"


def sweep_from_dict(d: dict, source: str = "<dict>", base_dir: Path | None = None) -> Sweep:
    """Check the top-level keys and types of a sweep mapping; ``config`` is resolved against
    ``base_dir`` (the sweep file's folder) first, then the current directory and ``configs/``."""
    if not isinstance(d, dict):
        raise ConfigError(f"{source}: a sweep file must be a mapping, got {type(d).__name__}")
    unknown = sorted(set(d) - SWEEP_KEYS)
    if unknown:
        raise ConfigError(f"{source}: unknown key '{unknown[0]}'; valid keys: {', '.join(sorted(SWEEP_KEYS))}")
    grid = d.get("grid") or {}
    if not isinstance(grid, dict) or not grid:
        raise ConfigError(f"{source}: 'grid' must be a non-empty mapping of dotted keys to lists")
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            raise ConfigError(f"{source}: grid.{key} must be a non-empty list of values, got {values!r}")
    fixed = d.get("set") or {}
    resources = d.get("resources") or {}
    for what, m in (("set", fixed), ("resources", resources)):
        if not isinstance(m, dict):
            raise ConfigError(f"{source}: '{what}' must be a mapping, got {m!r}")
    for key in [*grid, *fixed]:
        if not isinstance(key, str) or "." not in key:
            raise ConfigError(f"{source}: '{key}' is not a dotted config key like train.lr")
        if key == "train.out_dir":
            raise ConfigError(f"{source}: train.out_dir is set by the sweep (use 'out_dir')")
    config = d.get("config")
    if config is not None:
        config = str(config)
        if base_dir is not None and (base_dir / config).exists():
            config = str(base_dir / config)
        else:
            config = str(resolve_config_path(config))
    name = str(d.get("name") or Path(source).stem)
    return Sweep(name=name, config=config, out_dir=Path(d.get("out_dir") or f"runs/sweeps/{name}"),
                 grid=grid, fixed=fixed, resources=dict(resources), source=source)


def load_sweep(path: str | Path, overrides: list[str] = ()) -> Sweep:
    """Read a sweep YAML; ``overrides`` (``key=value``) are added to its fixed ``set:`` keys,
    except ``out_dir=...`` and ``name=...``, which replace the sweep's own."""
    path = resolve_config_path(path)
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if isinstance(raw, dict):
        for text in overrides:
            key, value = parse_override(text)
            if key in ("out_dir", "name"):
                raw[key] = value
            else:
                raw["set"] = {**(raw.get("set") or {}), key: value}
    return sweep_from_dict(raw, str(path), path.parent)
