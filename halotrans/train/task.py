"""The task protocol: what the one training loop (:mod:`halotrans.train.loop`) needs from a workflow.

A task is a class derived from :class:`Task`, registered by name in :mod:`halotrans.train.registry`
(``train.task``). It turns the config into a model, batches and a loss; the loop does the rest
(DeepSpeed, schedule, checkpoints, resume, sequence parallelism). Every hook is listed here; the
optional ones have no-op defaults. :class:`halotrans.train.segment.SegmentTask` is the reference.

Required:

* ``build_model()``: the ``nn.Module`` (fp32, on CPU; DeepSpeed moves and wraps it). It depends on
  the config (and, after ``configure_from_meta``, on a checkpoint's meta) only: it is called
  before ``setup`` and by inference, without ``setup``;
* ``train_batch(step, micro, rank)``: a deterministic function of its arguments and the task's
  seed, so a resumed run sees the same batches; tensors on CPU; ``rank`` is the data-parallel rank;
* ``val_batches(rank, world_size)``: this DP rank's validation batches, the SAME number on every
  rank (ZeRO-3 gathers parameters collectively in every forward);
* ``loss(model, batch)`` → ``(loss, sums)``: runs the forward pass itself (JEPA needs several);
  ``sums`` are additive tensors that ``summarize(sums_over_all_ranks)`` turns into the metrics
  named by ``metric_names`` (logged as ``val_<name>``).

Optional (defaults below): ``setup(run_dir, resume)`` loads data on every rank; ``prepare_model(model)``
initialises what depends on those data (input statistics; called after ``setup``, before DeepSpeed;
a resumed run then loads its checkpoint over it); ``after_step``
(JEPA's EMA update); ``meta()`` (saved in every checkpoint: what inference needs);
``configure_from_meta(meta)`` (rebuild a trained run's model without its data); ``shard_slabs(sp)``
(feed slabs to a slab-parallel network; the default refuses); ``model_keys`` (config keys a
resumed run or an inference caller must share with the checkpoint).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Iterable

import torch
from torch import nn

from halotrans.yaml_config import ConfigError

if TYPE_CHECKING:
    from halotrans.config import Config
    from halotrans.parallel.groups import SequenceParallel


class Task:
    """Base of every training task (see the module docstring for the hooks)."""

    #: ``train.task`` name
    name: ClassVar[str] = ""
    #: validation metrics returned by ``summarize``
    metric_names: ClassVar[tuple[str, ...]] = ("loss",)
    #: config keys (dotted, a section or one key) that fix the network and its inputs
    model_keys: ClassVar[tuple[str, ...]] = ("model",)

    def __init__(self, cfg: "Config"):
        self.cfg = cfg
        self.micro_batch_size = 1

    # --- required ------------------------------------------------------------------------------
    def build_model(self) -> nn.Module:
        raise NotImplementedError(f"{type(self).__name__}.build_model")

    def train_batch(self, step: int, micro: int, rank: int) -> Any:
        raise NotImplementedError(f"{type(self).__name__}.train_batch")

    def val_batches(self, rank: int, world_size: int) -> Iterable[Any]:
        raise NotImplementedError(f"{type(self).__name__}.val_batches")

    def loss(self, model: nn.Module, batch: Any) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        raise NotImplementedError(f"{type(self).__name__}.loss")

    def summarize(self, sums: dict[str, float]) -> dict[str, float]:
        raise NotImplementedError(f"{type(self).__name__}.summarize")

    # --- optional ------------------------------------------------------------------------------
    def setup(self, run_dir: Path, resume: bool) -> None:
        """Load data (every rank; collectives allowed). Default: nothing to load."""

    def prepare_model(self, model: nn.Module) -> None:
        """Initialise data-dependent parts of ``model`` from the data ``setup`` loaded. Default: none."""

    def after_step(self, model: nn.Module, step: int) -> None:
        """Work after each optimizer step. Default: none."""

    def meta(self) -> dict:
        """What inference needs to rebuild and feed the model (saved with every checkpoint)."""
        return {"task": self.name, "model": self.cfg.model.name}

    def configure_from_meta(self, meta: dict) -> None:
        """Take the sizes ``build_model`` needs from a checkpoint's meta instead of the data. Default: none."""

    def shard_slabs(self, sp: "SequenceParallel") -> None:
        """Cut every batch into this rank's slab along axis 0 (for slab-parallel networks, ``train.sp > 1``)."""
        raise ConfigError(f"train.task={self.name} cannot feed slabs to model.name={self.cfg.model.name} "
                          "(train.sp > 1)")
