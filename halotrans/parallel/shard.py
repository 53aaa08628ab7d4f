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

from halotrans.config import ConfigError
from halotrans.parallel.groups import SequenceParallel
from halotrans.parallel.halo import check_slab_levels, shard_convolutions
from halotrans.parallel.sequence import shard_sequence, shard_slab_tokens

Mode = Literal["slab", "sequence"]


def slab_parallel(model: nn.Module) -> bool:
    """True for the networks that shard into slabs (vipr, copra)."""
    from halotrans.models.copra import CoPRA
    from halotrans.models.vipr import ViPR

    return isinstance(model, (ViPR, CoPRA))


def sequence_parallel(task, model: nn.Module, sp: SequenceParallel) -> float:
    """Shard ``model`` (in place) for a training ``task`` → this rank's share of the task's loss.

    Slab models need a task that cuts its batches into slabs (``task.shard_slabs(sp)``, which also
    checks the crop) and normalises each slab's loss by the group: share 1. Other models keep whole
    outputs on every rank: share 1/sp.
    """
    if slab_parallel(model):
        if not hasattr(task, "shard_slabs"):
            raise ConfigError(f"train.task={task.name} cannot feed slabs to {type(model).__name__} (train.sp > 1)")
        task.shard_slabs(sp)
    mode = parallelize(model, sp)
    return 1.0 if mode == "slab" else 1.0 / sp.size


def parallelize(model: nn.Module, sp: SequenceParallel, periodic: bool = False) -> Mode:
    """Shard ``model`` in place over ``sp`` (before ``deepspeed.initialize``; state-dict keys unchanged).

    ``periodic``: the slabs of the group tile a periodic box (halo exchange wraps around) instead
    of a crop whose outer faces are zero-padded. Returns ``"slab"`` (the model now maps this
    rank's slab to its logits) or ``"sequence"`` (whole inputs and outputs on every rank).
    """
    from halotrans.models.vipr import ViPR
    from halotrans.models.vit import ViT3D

    if slab_parallel(model):
        if isinstance(model, ViPR):
            shard_slab_tokens(model.vit, sp)
        shard_convolutions(model, sp.group, periodic)
        return "slab"
    vits = [m for m in model.modules() if isinstance(m, ViT3D)]
    if not vits:
        raise ConfigError(f"{type(model).__name__} has no sequence-parallel form (train.sp > 1 needs vipr, copra "
                          "or a model with the shared ViT)")
    for vit in vits:
        shard_sequence(vit, sp)
    return "sequence"


def check_slab_config(model_cfg, crop: int, sp: int) -> None:
    """Raise :class:`ConfigError` unless a ``crop``³ crop splits into ``sp`` slabs that ``model_cfg``'s
    network can run (whole patch rows per slab, slabs even through every halving, halos fit)."""
    what = f"model.name={model_cfg.name}, data.crop={crop}, train.sp={sp}"
    if model_cfg.name == "vipr":
        patch = model_cfg.patch_size if isinstance(model_cfg.patch_size, int) else model_cfg.patch_size[0]
        if (crop // patch) % sp:
            raise ConfigError(f"{what}: {crop // patch} patch rows along axis 0 do not split into {sp} slabs of "
                              "whole patches (tokens must divide by train.sp)")
    elif model_cfg.name == "copra":
        check_slab_levels(4, crop, sp, model_cfg.kernel_size // 2, what)
    else:
        raise ConfigError(f"{what}: train.sp > 1 shards vipr and copra crops (the MONAI peers have no sharded form)")


def slab_of(t: torch.Tensor, sp: SequenceParallel, dim: int) -> torch.Tensor:
    """This rank's slab of ``t`` along ``dim`` (the volume's axis 0): rows [r·n/sp, (r+1)·n/sp)."""
    n = t.shape[dim]
    if n % sp.size:
        raise ValueError(f"axis of {n} voxels does not split into {sp.size} slabs")
    return t.narrow(dim, sp.rank * (n // sp.size), n // sp.size).contiguous()
