"""Forward multiply-adds per output voxel of a segmentation network: the work a speed figure is per.

``torch.utils.flop_counter.FlopCounterMode`` counts the FLOPs of one forward pass on a batch of one
(convolutions, transposed convolutions, matrix products, attention); multiply-adds = FLOPs / 2, divided
by the output voxels. Norms, activations, additions and concatenations are not counted (they are
memory-bound, and both sides of a comparison have them). PyTorch counts no FLOPs for the CPU kernel
of ``scaled_dot_product_attention``; it is counted here with the formula of the GPU kernels.

Per voxel the count hardly depends on the input size: only attention grows with the number of tokens
(12 blocks of vipr at hidden 256, patch 16: ~100 multiply-adds per voxel at 64³).

    forward_macs_per_voxel(build_model(cfg.model, 2, 5, 64), in_channels=2, size=64)   # e.g. 16.0e3
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn


def _sdpa_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    from torch.utils.flop_counter import sdpa_flop_count

    return sdpa_flop_count(query_shape, key_shape, value_shape)


def forward_macs(model: nn.Module, in_channels: int, size: int | Sequence[int]) -> dict[str, float]:
    """Multiply-adds of one forward pass of ``model`` on a (1, in_channels, *size) input, by aten op
    (e.g. ``{"convolution": ..., "addmm": ...}``). The model runs in eval mode under ``no_grad`` on
    its own device and dtype; its training mode is restored after."""
    from torch.utils.flop_counter import FlopCounterMode

    size = (size,) * 3 if isinstance(size, int) else tuple(size)
    p = next(model.parameters())
    x = torch.randn(1, in_channels, *size, device=p.device, dtype=p.dtype)
    custom = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _sdpa_flops}
    training = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False, custom_mapping=custom) as counter:
            model(x)
    finally:
        model.train(training)
    return {str(op).removeprefix("aten."): flops / 2 for op, flops in counter.get_flop_counts()["Global"].items()}


def forward_macs_per_voxel(model: nn.Module, in_channels: int, size: int | Sequence[int]) -> float:
    """Forward multiply-adds of ``model`` per output voxel, on one (1, in_channels, *size) input."""
    size = (size,) * 3 if isinstance(size, int) else tuple(size)
    return sum(forward_macs(model, in_channels, size).values()) / math.prod(size)
