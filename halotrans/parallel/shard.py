"""Make a network sequence/slab parallel over an SP group, and cut batches into this rank's slab.

``vipr`` and ``copra`` become slab-parallel: each rank of the group gets the slab
``[r·N/sp, (r+1)·N/sp)`` along axis 0 of the crop (inputs and labels) and returns the logits of that
slab. The ViT of vipr runs Ulysses attention on the slab's tokens
(:func:`~halotrans.parallel.sequence.shard_slab_tokens`), the decoder exchanges halos and
synchronises its instance norms (:func:`~halotrans.parallel.halo.shard_convolutions`): the
concatenated slabs equal the unsharded forward pass, and activation memory per rank drops ~sp×.
The loss of a slab is normalised by the whole group's weight, so the group's losses add up to the
crop's loss (DeepSpeed sums gradients over the SP ranks).

Any other model with a :class:`~halotrans.models.vit.ViT3D` inside (the bare ViT, JEPA's encoders)
becomes token-parallel with whole inputs and outputs on every rank
(:func:`~halotrans.parallel.sequence.shard_sequence`); its loss, the same on every rank of the
group, is divided by ``sp``.

    mode = parallelize(model, sp)              # "slab" or "sequence"; in place, same parameters
    x_mine, y_mine = slab_of(x, sp, dim=2), slab_of(y, sp, dim=1)
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from halotrans.models.registry import MODELS
from halotrans.models.vit import ViT3D
from halotrans.parallel.groups import SequenceParallel
from halotrans.parallel.halo import shard_convolutions
from halotrans.parallel.sequence import shard_sequence, shard_slab_tokens
from halotrans.yaml_config import ConfigError

Mode = Literal["slab", "sequence"]


def slab_parallel(model: nn.Module) -> bool:
    """True for the networks that declare they shard into slabs (vipr, copra: ``Network.slab_parallel``)."""
    return bool(getattr(model, "slab_parallel", False))


def sequence_parallel(task, model: nn.Module, sp: SequenceParallel) -> float:
    """Shard ``model`` (in place) for a training ``task`` → this rank's share of the task's loss.

    Slab models need a task that cuts its batches into slabs (``task.shard_slabs(sp)``, which also
    checks the crop; the default hook refuses) and normalises each slab's loss by the group: share 1.
    Other models keep whole outputs on every rank: share 1/sp.
    """
    if slab_parallel(model):
        task.shard_slabs(sp)
    mode = parallelize(model, sp)
    return 1.0 if mode == "slab" else 1.0 / sp.size


def parallelize(model: nn.Module, sp: SequenceParallel, periodic: bool = False) -> Mode:
    """Shard ``model`` in place over ``sp`` (before ``deepspeed.initialize``; state-dict keys unchanged).

    ``periodic``: the slabs of the group tile a periodic box (halo exchange wraps around) instead
    of a crop whose outer faces are zero-padded. Returns ``"slab"`` (the model now maps this
    rank's slab to its logits) or ``"sequence"`` (whole inputs and outputs on every rank).
    """
    vits = [m for m in model.modules() if isinstance(m, ViT3D)]
    if slab_parallel(model):
        for vit in vits:  # vipr: Ulysses attention over the slab's tokens
            shard_slab_tokens(vit, sp)
        shard_convolutions(model, sp.group, periodic)
        return "slab"
    if not vits:
        raise ConfigError(f"{type(model).__name__} has no sequence-parallel form (train.sp > 1 needs vipr, copra "
                          "or a model with the shared ViT)")
    for vit in vits:
        shard_sequence(vit, sp)
    return "sequence"


def check_slab_config(model_cfg, crop: int, sp: int) -> None:
    """Raise :class:`ConfigError` unless a ``crop``³ crop splits into ``sp`` slabs that ``model_cfg``'s
    network can run (its ``slab_split_error``: whole patch rows per slab, slabs even through every
    halving, halos fit)."""
    error = MODELS.get(model_cfg.name).slab_split_error(model_cfg, crop, sp)
    if error:
        raise ConfigError(f"model.name={model_cfg.name}, data.crop={crop}, train.sp={sp}: {error}")


def slab_of(t: torch.Tensor, sp: SequenceParallel, dim: int) -> torch.Tensor:
    """This rank's slab of ``t`` along ``dim`` (the volume's axis 0): rows [r·n/sp, (r+1)·n/sp)."""
    n = t.shape[dim]
    if n % sp.size:
        raise ValueError(f"axis of {n} voxels does not split into {sp.size} slabs")
    return t.narrow(dim, sp.rank * (n // sp.size), n // sp.size).contiguous()
