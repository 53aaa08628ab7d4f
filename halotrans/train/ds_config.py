"""The DeepSpeed config dict, built from :class:`TrainConfig` (printed once per run and saved with it).

    cfg = deepspeed_config(train_cfg, micro_batch_size=2)
    engine, *_ = deepspeed.initialize(model=model, model_parameters=groups, config=cfg)

The learning rate in the dict is only the initial value: the loop sets it every step
(:func:`halotrans.train.optim.lr_at`), so a resumed run continues on the same curve.
"""

from __future__ import annotations

from halotrans.train.config import TrainConfig
from halotrans.train.optim import lr_at


def deepspeed_config(train: TrainConfig, micro_batch_size: int) -> dict:
    """ZeRO stage, bf16, explicit gradient clipping, accumulation and the AdamW optimizer."""
    return {
        "train_micro_batch_size_per_gpu": micro_batch_size,
        "gradient_accumulation_steps": train.grad_accum,
        # DeepSpeed's default is now 1.0: always state it.
        "gradient_clipping": train.grad_clip,
        "zero_optimization": {"stage": train.zero_stage},
        "bf16": {"enabled": train.bf16},
        "optimizer": {
            "type": "AdamW",
            "params": {
                "lr": lr_at(0, train.lr, train.min_lr, train.warmup_steps, train.steps),
                "betas": list(train.betas),
                "eps": 1e-8,
                "weight_decay": train.weight_decay,
                "torch_adam": train.torch_adam,
            },
        },
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }
