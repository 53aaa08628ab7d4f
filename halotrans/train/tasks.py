"""Task registry: ``train.task`` → the object that gives the loop its model, batches and loss.

Tasks implement the protocol :class:`halotrans.train.loop.Task`: ``segment`` (proto-halo
segmentation), and the SKATR tasks ``jepa`` (pretraining), ``regress`` and ``npe`` on light cones.
"""

from __future__ import annotations

from halotrans.config import Config, ConfigError


def make_task(cfg: Config):
    """Build the task named by ``cfg.train.task`` (its data are loaded later, in ``setup``)."""
    if cfg.train.task == "segment":
        from halotrans.train.segment import SegmentTask

        return SegmentTask(cfg)
    if cfg.train.task == "jepa":
        from halotrans.train.jepa import JEPATask

        return JEPATask(cfg)
    if cfg.train.task == "regress":
        from halotrans.train.regress import RegressTask

        return RegressTask(cfg)
    if cfg.train.task == "npe":
        from halotrans.train.npe import NPETask

        return NPETask(cfg)
    raise ConfigError(f"unknown train.task {cfg.train.task!r} (have: segment, jepa, regress, npe)")
