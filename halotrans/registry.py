"""Name → class tables of the pluggable parts (networks, training tasks), resolved lazily.

Entries are ``"package.module:Class"`` strings, imported on first use: ``--help`` and config
checks stay fast, a part's dependencies load only when it is used, and the core can list a
workflow's classes (SKATR's tasks) without importing that workflow.

    MODELS = Registry("model.name", {"vipr": "halotrans.models.vipr:ViPR"})
    MODELS.get("vipr")            # the class; an unknown name is a ConfigError naming model.name
    MODELS.register("mynet", "mypackage.mynet:MyNet")
"""

from __future__ import annotations

import importlib
from typing import Any, Iterator

from halotrans.yaml_config import ConfigError


def resolve(target: str) -> Any:
    """The object named by ``"package.module:attribute"``."""
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)


class Registry:
    """A table of ``name -> "module:Class"`` for the config key ``key`` (e.g. ``model.name``)."""

    def __init__(self, key: str, entries: dict[str, str]):
        self.key = key
        self.entries = dict(entries)

    def register(self, name: str, target: str) -> None:
        """Add (or replace) ``name`` → ``target`` = ``"package.module:Class"``, e.g. from a plug-in package."""
        self.entries[name] = target

    def get(self, name: str) -> Any:
        """The class registered as ``name``; :class:`ConfigError` naming the key if there is none."""
        if name not in self.entries:
            raise ConfigError(f"unknown {self.key} {name!r}; use one of {', '.join(self.entries)}")
        return resolve(self.entries[name])

    def __contains__(self, name: object) -> bool:
        return name in self.entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.entries)
