"""Sequence-parallel (SP) and data-parallel (DP) process groups of a run.

The world of ``R`` ranks is cut into ``R / sp`` groups of ``sp`` consecutive ranks (DeepSpeed's
``parallel_state_sp``: ranks 0..sp-1 form the first group, so a group stays inside a node when
``sp`` divides the GPUs per node). The ranks of one SP group work on the SAME samples, each on
1/sp of the tokens (and of the volume, as slabs along axis 0); the SP groups are the data-parallel
replicas. ``parallel_state_sp`` is also the ``mpu`` handed to ``deepspeed.initialize``: DeepSpeed
then reduces gradients over all ranks and divides by the DP size only (it sums over the SP ranks).

    sp = init_sequence_parallel(2)        # under torchrun --nproc_per_node 4: dp 2 x sp 2
    batch = task.train_batch(step, micro, sp.dp_rank)
    engine, *_ = deepspeed.initialize(..., mpu=sp.mpu)
"""

from __future__ import annotations

from dataclasses import dataclass
from types import ModuleType
from typing import Any

import torch
import torch.distributed as dist

from halotrans.yaml_config import ConfigError


@dataclass(frozen=True)
class SequenceParallel:
    """This rank's place in the (dp × sp) layout; ``group`` is its SP process group."""

    group: Any
    size: int
    rank: int
    dp_size: int
    dp_rank: int
    mpu: ModuleType

    def all_reduce(self, t: torch.Tensor) -> torch.Tensor:
        """Sum of ``t`` over the SP group (a new tensor; no gradient)."""
        t = t.detach().clone()
        dist.all_reduce(t, group=self.group)
        return t


def init_sequence_parallel(sp: int) -> SequenceParallel:
    """Build the SP groups of ``sp`` ranks over the joined default process group.

    Raises :class:`ConfigError` (``train.sp``) if the world size is not a multiple of ``sp``.
    """
    from deepspeed.runtime.sequence_parallel import parallel_state_sp as psp

    world = dist.get_world_size()
    if sp < 2:
        raise ConfigError(f"train.sp = {sp}: sequence parallelism needs groups of at least 2 ranks")
    if world % sp:
        raise ConfigError(f"train.sp = {sp} does not divide the {world} ranks of this job "
                          f"(start a multiple of {sp} processes, e.g. torchrun --nproc_per_node {sp})")
    psp._release_sequence_parallel_groups()  # a previous run in this process left its groups behind
    psp.initialize_sequence_parallel(sp)
    rank = dist.get_rank()
    return SequenceParallel(group=psp.get_sequence_parallel_group(), size=sp, rank=rank % sp, dp_size=world // sp,
                            dp_rank=rank // sp, mpu=psp)
