"""Task registry: ``train.task`` → the :class:`~halotrans.train.task.Task` class that gives the loop its
model, batches and loss. Adding a task is one module and one line here.

Entries are ``"module:Class"`` strings, imported on first use, so the core never imports a
workflow package (SKATR's tasks live in :mod:`halotrans.skatr.tasks`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from halotrans.registry import Registry

if TYPE_CHECKING:
    from halotrans.config import Config
    from halotrans.train.task import Task

#: train.task -> "module:Class" of a :class:`~halotrans.train.task.Task`
TASKS = Registry("train.task", {
    "segment": "halotrans.train.segment:SegmentTask",
    "jepa": "halotrans.skatr.tasks:JEPATask",
    "regress": "halotrans.skatr.tasks:RegressTask",
    "npe": "halotrans.skatr.tasks:NPETask",
})


def make_task(cfg: "Config") -> "Task":
    """Build the task named by ``cfg.train.task`` (its data are loaded later, in ``setup``)."""
    return TASKS.get(cfg.train.task)(cfg)
