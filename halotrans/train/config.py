"""Settings of the one DeepSpeed training loop shared by every task."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass
class TrainConfig:
    """Optimisation, checkpointing and parallelism.

    ``steps`` counts optimizer steps; ``time_budget_s`` (wall-clock seconds) stops earlier if set.
    Learning rate: linear warmup over ``warmup_steps`` then cosine to ``min_lr``.
    ``sp`` is the sequence-parallel (Ulysses) group size; data parallelism uses the rest.
    """

    task: Literal["segment", "jepa", "regress", "npe"] = "segment"
    out_dir: str = "runs/default"
    steps: int = 1000
    time_budget_s: float | None = None
    lr: float = 3e-4
    min_lr: float = 1e-6
    warmup_steps: int = 50
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.999)
    grad_clip: float = 1.0
    grad_accum: int = 1
    zero_stage: int = 1
    bf16: bool = False
    checkpoint_every: int = 100
    eval_every: int = 100
    log_every: int = 10
    seed: int = 0
    sp: int = 1
    torch_adam: bool = True


@dataclass
class SkatrConfig:
    """SKATR downstream: summaries of the frozen encoder, regression and NPE."""

    encoder_run: str = ""
    summary_cache: str = ""
