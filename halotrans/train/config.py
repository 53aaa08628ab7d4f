"""Settings of the one DeepSpeed training loop shared by every task."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass
class TrainConfig:
    """Optimisation, checkpointing and parallelism of the one DeepSpeed loop.

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
    keep_checkpoints: int = 3
    eval_every: int = 100
    log_every: int = 10
    seed: int = 0
    sp: int = 1
    torch_adam: bool = True

    def __post_init__(self) -> None:
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
        if self.grad_clip < 0 or self.sp < 1:
            raise ValueError("grad_clip must be >= 0 and sp >= 1")


@dataclass
class SkatrConfig:
    """SKATR tasks on light cones (``jepa``, ``regress``, ``npe``) and their summaries.

    ``batch_size``: light cones (or summaries) per micro-batch and rank, every SKATR task.
    ``summary``: what ``regress``/``npe`` see: ``frozen`` = the cached mean-pooled summaries of
    the encoder of ``encoder_run`` (a ``jepa`` run, or a ``regress`` run with ``summary: scratch``,
    whose ViT then is the regression-pretrained summary), or ``scratch`` = a ViT (``model``
    section) trained end to end with the head. ``encoder_weights``: which encoder of a JEPA run
    summarises (``target`` = the EMA encoder, I-JEPA's choice, or ``context``).
    ``summary_cache``: the summaries file (default ``<encoder_run>/summaries/<data set>.h5``); it
    records the encoder checkpoint and the data set it was made from and is recomputed when
    either changed. ``noise_seed``: thermal-noise seed of cached summaries, validation and test
    (fixed noise per light cone); training light cones get fresh noise every step.
    ``train_fraction``: use this fraction of the training split (nested subsets; data-efficiency curves).
    Heads: MLP of ``head_depth`` hidden layers of ``head_hidden`` features (regression, sigmoid
    output in the prior-normalised [0, 1] units), and a rational-quadratic spline autoregressive
    flow of ``flow_transforms`` layers (``flow_hidden`` features, ``flow_bins`` bins) on the
    logit of the normalised parameters, conditioned on an MLP embedding of the summary.
    ``posterior_samples``: samples per test light cone in ``skatr report``.
    """

    batch_size: int = 16
    summary: Literal["frozen", "scratch"] = "frozen"
    encoder_run: str = ""
    encoder_weights: Literal["target", "context"] = "target"
    summary_cache: str = ""
    noise_seed: int = 0
    train_fraction: float = 1.0
    head_hidden: int = 256
    head_depth: int = 2
    flow_transforms: int = 4
    flow_hidden: int = 64
    flow_bins: int = 8
    posterior_samples: int = 1000

    def __post_init__(self) -> None:
        if min(self.batch_size, self.head_hidden, self.flow_transforms, self.flow_hidden, self.flow_bins,
               self.posterior_samples) < 1 or self.head_depth < 0 or self.noise_seed < 0:
            raise ValueError("batch_size, head_hidden, flow_transforms, flow_hidden, flow_bins and "
                             "posterior_samples must be >= 1; head_depth and noise_seed >= 0")
        if not 0 < self.train_fraction <= 1:
            raise ValueError(f"train_fraction must be in (0, 1], got {self.train_fraction}")
