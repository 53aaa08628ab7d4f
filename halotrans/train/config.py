"""Settings of the one DeepSpeed training loop shared by every task."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class TrainConfig:
    """Optimisation, checkpointing and parallelism of the one DeepSpeed loop.

    ``task``: a task of :data:`halotrans.train.registry.TASKS` (segment, jepa, regress, npe).

    ``steps`` counts optimizer steps (each of ``grad_accum`` micro-batches per rank);
    ``time_budget_s`` (wall-clock seconds since the job started training, set-up included)
    stops earlier, at the same step on every rank, with a checkpoint and ``model.pt``.
    Learning rate: linear warmup over ``warmup_steps`` then cosine to ``min_lr``; AdamW with
    ``weight_decay`` on weights only (not on norms, biases, position embeddings). ``grad_clip``
    is the global gradient-norm clip (0 = off). ``zero_stage`` 0-3 is the ZeRO stage; ``bf16``
    trains in bfloat16 with fp32 master weights (needs ZeRO >= 1; for GPUs: ~60x slower on CPUs
    without AVX-512 BF16); ``torch_adam`` uses torch's AdamW instead of DeepSpeed's fused one.
    Every ``checkpoint_every`` steps (and at the end) a DeepSpeed checkpoint is written to
    ``<out_dir>/checkpoints`` (the newest ``keep_checkpoints`` are kept; 0 keeps all); validation
    runs every ``eval_every`` steps (and at step 0 and the end; 0 = never); metrics are logged
    every ``log_every`` steps. ``sp`` is the sequence-parallel (Ulysses) group size.

    Best checkpoint: with ``keep_best`` every validation whose ``val_loss`` is the lowest so far
    (from step 1 on) is kept as checkpoint ``best_<step>`` and ``model.pt`` is written from it,
    not from the last step; ``patience`` > 0 then stops the run after that many validations
    without a new lowest ``val_loss`` (early stopping; 0 = never).
    """

    task: str = "segment"
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
    keep_checkpoints: int = 3
    eval_every: int = 100
    log_every: int = 10
    seed: int = 0
    sp: int = 1
    torch_adam: bool = True
    keep_best: bool = False
    patience: int = 0

    def __post_init__(self) -> None:
        from halotrans.train.registry import TASKS

        if self.task not in TASKS:
            raise ValueError(f"task: {self.task!r} is not one of {list(TASKS)} (halotrans.train.registry)")
        if self.steps < 1 or self.grad_accum < 1 or self.log_every < 1 or self.checkpoint_every < 1:
            raise ValueError("steps, grad_accum, log_every and checkpoint_every must be >= 1")
        if self.zero_stage not in (0, 1, 2, 3):
            raise ValueError(f"zero_stage must be 0, 1, 2 or 3, got {self.zero_stage}")
        if self.warmup_steps < 0 or self.eval_every < 0 or self.keep_checkpoints < 0 or self.seed < 0:
            raise ValueError("warmup_steps, eval_every, keep_checkpoints and seed must be >= 0")
        if not 0 <= self.min_lr <= self.lr:
            raise ValueError(f"need 0 <= min_lr <= lr, got min_lr={self.min_lr}, lr={self.lr}")
        if self.time_budget_s is not None and self.time_budget_s <= 0:
            raise ValueError(f"time_budget_s must be positive seconds, got {self.time_budget_s}")
        if self.bf16 and self.zero_stage == 0:
            raise ValueError("bf16 needs zero_stage >= 1 (its checkpoints then hold the fp32 master weights)")
        if self.patience < 0 or (self.patience and not (self.keep_best and self.eval_every)):
            raise ValueError(f"patience ({self.patience}) must be >= 0 and needs keep_best and eval_every > 0")
        if self.grad_clip < 0 or self.sp < 1:
            raise ValueError("grad_clip must be >= 0 and sp >= 1")
