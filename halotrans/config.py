"""YAML configs loaded into typed dataclasses.

A config file is a mapping of sections (``sim``, ``shear``, ``data``, ``model``, ``train``, ``eval``,
``lightcone``, ``jepa``, ``skatr``); each section is a dataclass defined next to the code that uses
it (``halotrans/<package>/config.py``). Every key is checked: an unknown key, or a value of the
wrong type, raises :class:`ConfigError` naming the key and the file. A file may start from another
one with ``base: other.yaml`` (resolved relative to the file). Command-line overrides use dotted
keys, ``--set train.lr=3e-4``, and the value is parsed as YAML.

    cfg = load_config("configs/vipr.yaml", overrides=["train.steps=10"])
    cfg.train.steps  # 10
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Iterable

from halotrans import yaml_config
from halotrans.data.config import DataConfig
from halotrans.eval.config import EvalConfig
from halotrans.fields.config import ShearConfig
from halotrans.models.config import ModelConfig
from halotrans.sims.config import SimConfig
from halotrans.skatr.config import JEPAConfig, LightConeConfig, SkatrConfig
from halotrans.train.config import TrainConfig
from halotrans.yaml_config import (  # noqa: F401  (re-exported: the commands' one import)
    CONFIG_DIR,
    ConfigError,
    config_to_dict,
    parse_override,
    resolve_config_path,
    save_config,
)


@dataclass
class Config:
    """The whole run configuration; each command reads the sections it needs."""

    sim: SimConfig = field(default_factory=SimConfig)
    shear: ShearConfig = field(default_factory=ShearConfig)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    lightcone: LightConeConfig = field(default_factory=LightConeConfig)
    jepa: JEPAConfig = field(default_factory=JEPAConfig)
    skatr: SkatrConfig = field(default_factory=SkatrConfig)


def config_from_dict(d: dict, source: str = "<dict>", cls: type = Config) -> Any:
    """Build ``cls`` (default the whole :class:`Config`) from a nested dict; errors name ``source`` and the key."""
    return yaml_config.config_from_dict(d, source, cls)


def load_config(path: str | os.PathLike | None = None, overrides: Iterable[str] = (), cls: type = Config) -> Any:
    """Load a YAML file (or only the defaults if ``path`` is None) and apply ``key=value`` overrides."""
    return yaml_config.load_config(path, overrides, cls)
