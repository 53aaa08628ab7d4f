"""Convolutional building blocks of the ``vipr`` decoder and the ``copra`` V-Net.

All blocks map (B, C, D, H, W) feature volumes. Normalisation is chosen by name:
``"instance"`` (the papers' choice), ``"batch"`` or ``"group"``.
Every norm is followed by an in-place LeakyReLU(0.01), and convolutions feeding a norm have no bias.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def norm_layer(kind: str, channels: int) -> nn.Module:
    """A 3D normalisation layer with a per-channel affine: ``instance``, ``batch`` or ``group``.

    Instance norm is GroupNorm with one channel per group (the same statistics): nn.InstanceNorm3d
    returns a view, so the in-place LeakyReLU after it makes autograd copy the whole volume twice
    in the backward pass; measured 2.4× slower (norm + activation, forward + backward, 14 × 64³).
    ``group`` uses groups of 8 channels (fewer for narrow layers).
    """
    if kind == "instance":
        return nn.GroupNorm(channels, channels)
    if kind == "batch":
        return nn.BatchNorm3d(channels)
    if kind == "group":
        return nn.GroupNorm(max(1, channels // 8), channels)
    raise ValueError(f"norm must be 'instance', 'batch' or 'group', got {kind!r}")


def norm_act(kind: str, channels: int) -> nn.Sequential:
    """Norm then in-place LeakyReLU(0.01)."""
    return nn.Sequential(norm_layer(kind, channels), nn.LeakyReLU(0.01, inplace=True))


class Conv3d(nn.Conv3d):
    """Bias-free stride-1 'same' Conv3d that picks the fast CPU kernels for our shapes (same result).

    On CPU (float32, no autocast, kernel at most 3 wide), measured on the 2-core test machine:

    - PyTorch sends a batch-1 convolution with C·D·H ≤ 20480 (e.g. 56 channels at 16³, 224 at 8³)
      to its im2col ``slow_conv3d`` kernel, 2× slower forward and backward than oneDNN: such inputs
      are cut in two halves along D, each with a halo of ``k // 2`` voxels, and run as a batch of two;
    - on volumes of 32³ voxels or more, oneDNN is 1.3-1.7× faster (forward + backward) on
      channels-last tensors than on the default layout at 14-28 channels: see :class:`_ChannelsLastConv`.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3):
        super().__init__(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, d, h, w = x.shape
        k = self.kernel_size[0]
        if x.device.type != "cpu" or x.dtype != torch.float32 or k > 3 or torch.is_autocast_enabled("cpu"):
            return super().forward(x)
        if b == 1 and c * d * h <= 20480 and d % 2 == 0:
            p = k // 2
            padded = F.pad(x, (p,) * 6)
            halves = torch.cat([padded[:, :, : d // 2 + 2 * p], padded[:, :, d // 2:]], dim=0)
            y = F.conv3d(halves, self.weight)
            return torch.cat([y[:1], y[1:]], dim=2)
        if d * h * w >= 32**3:
            return _ChannelsLastConv.apply(x, self.weight, k // 2)
        return super().forward(x)


class _ChannelsLastConv(torch.autograd.Function):
    """Convolution of a channels-last copy of ``x``, output in the default layout. The copy is made
    again in the backward pass instead of being stored: autograd keeps only ``x``, which the
    activation before the convolution keeps anyway."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, padding: int) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        ctx.padding = padding
        return F.conv3d(x.contiguous(memory_format=torch.channels_last_3d), weight, padding=padding).contiguous()

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None, None]:
        x, weight = ctx.saved_tensors
        cl = torch.channels_last_3d
        grad_x, grad_w, _ = torch.ops.aten.convolution_backward(
            grad.contiguous(memory_format=cl), x.contiguous(memory_format=cl), weight, None, [1] * 3,
            [ctx.padding] * 3, [1] * 3, False, [0] * 3, 1, [ctx.needs_input_grad[0], ctx.needs_input_grad[1], False])
        return (grad_x.contiguous() if grad_x is not None else None), grad_w, None


class ConvNormAct(nn.Sequential):
    """'Same' Conv3d (no bias) -> norm -> LeakyReLU."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, norm: str = "instance"):
        super().__init__(Conv3d(in_channels, out_channels, kernel_size), *norm_act(norm, out_channels))


class UpConv(nn.Sequential):
    """×2 upsampling by a 2³ transposed conv (each voxel -> its 8 children) -> norm -> LeakyReLU."""

    def __init__(self, in_channels: int, out_channels: int, norm: str = "instance"):
        super().__init__(nn.ConvTranspose3d(in_channels, out_channels, kernel_size=2, stride=2, bias=False),
                         *norm_act(norm, out_channels))


class UpBlock(nn.Module):
    """Decoder stage: ×2 transposed conv of ``x``, concatenate ``skip``, then ``n_convs`` ConvNormAct.

    ``x`` (B, in_channels, n³) and ``skip`` (B, out_channels, (2n)³) -> (B, out_channels, (2n)³).
    """

    def __init__(self, in_channels: int, out_channels: int, n_convs: int = 2, kernel_size: int = 3,
                 norm: str = "instance"):
        super().__init__()
        self.up = nn.ConvTranspose3d(in_channels, out_channels, kernel_size=2, stride=2, bias=False)
        self.convs = nn.Sequential(*(ConvNormAct(2 * out_channels if i == 0 else out_channels, out_channels,
                                                 kernel_size, norm) for i in range(n_convs)))

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.convs(torch.cat([self.up(x), skip], dim=1))


class FullResUpBlock(nn.Module):
    """Last decoder stage, at full resolution: norm-act(conv_k(skip) + up(x)).

    This is the UpBlock's conv over ``cat(up(x), skip)`` with its kernel on the upsampled channels
    cut to 1³ (the 2³ transposed conv and the coarser stages already mix them in space): the
    k³ conv then runs on ``out_channels`` instead of twice as many, and the concatenation, the
    largest tensor of the network, is never stored.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, norm: str = "instance"):
        super().__init__()
        self.up = nn.ConvTranspose3d(in_channels, out_channels, kernel_size=2, stride=2, bias=False)
        self.conv = Conv3d(out_channels, out_channels, kernel_size)
        self.norm_act = norm_act(norm, out_channels)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.norm_act(self.conv(skip) + self.up(x))


class PointwiseConv(nn.Conv3d):
    """1³ Conv3d (the class head) computed as one batched matrix product over the flattened volume:
    the same result, 1.7× faster forward + backward on CPU than the convolution kernel (14 -> 7
    channels at 64³, with the loss)."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(in_channels, out_channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c = x.shape[:2]
        weight = self.weight.view(1, self.out_channels, c).expand(b, -1, -1)
        out = torch.baddbmm(self.bias.view(1, -1, 1), weight, x.reshape(b, c, -1))
        return out.view(b, self.out_channels, *x.shape[2:])
