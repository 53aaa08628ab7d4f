"""The optimisation recipe: warmup + cosine learning rate, and which parameters get weight decay.

    lr = lr_at(step, lr=3e-4, min_lr=1e-6, warmup=50, total=1000)
    groups = param_groups(model, weight_decay=0.05)   # for deepspeed.initialize(model_parameters=...)
"""

from __future__ import annotations

import math

from torch import nn

#: parameter-name fragments that never get weight decay (besides every 0-d/1-d tensor: norms, biases)
NO_DECAY_NAMES = ("pos_embed", "position_embed", "pos_emb", "cls_token", "mask_token")


def lr_at(step: int, lr: float, min_lr: float, warmup: int, total: int) -> float:
    """Learning rate of optimizer step ``step`` (0-based): linear warmup from lr/warmup to ``lr``
    over ``warmup`` steps, then half a cosine from ``lr`` to ``min_lr`` at step ``total``."""
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_lr + 0.5 * (lr - min_lr) * (1.0 + math.cos(math.pi * progress))


def no_weight_decay(name: str, param: nn.Parameter) -> bool:
    """Norm weights, biases, position embeddings and special tokens are not decayed."""
    return param.ndim < 2 or any(k in name for k in NO_DECAY_NAMES)


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups over the trainable parameters: decayed weights, and the rest without decay (empty ones dropped)."""
    decay, plain = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (plain if no_weight_decay(name, p) else decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": plain, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]
