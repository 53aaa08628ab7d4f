"""Convolutional building blocks of the ``vipr`` decoder and the ``copra`` V-Net.

All blocks map (B, C, D, H, W) feature volumes. Normalisation is chosen by name:
``"instance"`` (the papers' choice), ``"batch"`` or ``"group"``.
Every norm is followed by an in-place LeakyReLU(0.01), and convolutions feeding a norm have no bias.
Blocks are built with zero padding; :func:`set_padding` makes every stride-1 'same' convolution of a
network pad periodically instead (``model.padding: circular``, for samples that are whole periodic boxes).

:class:`ResBlock` and :class:`ResUpBlock` are the residual blocks of MONAI's UNETR decoder
(``UnetResBlock``, ``UnetrUpBlock``), for ``model.decoder: paper``.
"""

from __future__ import annotations

import torch
from torch import nn

from halotrans.models import cpu_conv


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


#: the paddings of stride-1 'same' convolutions (``model.padding``)
PADDINGS = ("zeros", "circular")
#: the decoders of vipr and copra (``model.decoder``): MONAI's full-resolution blocks, or ours
DECODERS = ("paper", "light")


class Conv3d(nn.Conv3d):
    """Bias-free stride-1 'same' Conv3d, zero-padded or, with ``padding_mode="circular"``, periodic.
    On the CPU it runs through the measured fast kernel choices of :mod:`halotrans.models.cpu_conv`
    (same result) unless that switch is off; elsewhere it is plain (periodic: ``cpu_conv.periodic_conv3d``)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, padding_mode: str = "zeros"):
        if padding_mode not in PADDINGS:
            raise ValueError(f"padding must be one of {list(PADDINGS)}, got {padding_mode!r}")
        super().__init__(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False,
                         padding_mode=padding_mode)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        circular = self.padding_mode == "circular"
        y = cpu_conv.same_conv3d(x, self.weight, circular) if cpu_conv.applies(x, self.kernel_size[0]) else None
        if y is None:
            y = cpu_conv.periodic_conv3d(x, self.weight) if circular else super().forward(x)
        return y


def set_padding(module: nn.Module, padding: str) -> nn.Module:
    """Make every stride-1 'same' convolution inside ``module`` pad with ``zeros`` or periodically
    (``circular``), in place; returns ``module``. Parameters and state-dict keys are unchanged.
    A stride-1 convolution wider than 1³ that is not a :class:`Conv3d` is an error (it would keep its
    own padding)."""
    if padding not in PADDINGS:
        raise ValueError(f"padding must be one of {list(PADDINGS)}, got {padding!r}")
    for name, conv in module.named_modules():
        if isinstance(conv, Conv3d):
            conv.padding_mode = padding
        elif isinstance(conv, nn.Conv3d) and conv.stride == (1, 1, 1) and max(conv.kernel_size) > 1:
            raise TypeError(f"{name}: {conv} is not a halotrans Conv3d and cannot switch its padding")
    return module


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
    """1³ Conv3d (the class head, residual projections) computed as one batched matrix product over
    the flattened volume: the same result, 1.7× faster forward + backward on CPU than the convolution
    kernel (14 -> 7 channels at 64³, with the loss)."""

    def __init__(self, in_channels: int, out_channels: int, bias: bool = True):
        super().__init__(in_channels, out_channels, kernel_size=1, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c = x.shape[:2]
        weight = self.weight.view(1, self.out_channels, c).expand(b, -1, -1)
        flat = x.reshape(b, c, -1)
        out = torch.bmm(weight, flat) if self.bias is None else torch.baddbmm(self.bias.view(1, -1, 1), weight, flat)
        return out.view(b, self.out_channels, *x.shape[2:])


class ResBlock(nn.Module):
    """Residual block of MONAI's UNETR (``UnetResBlock``, stride 1): act(norm(conv(act(norm(conv(x))))) + r),
    r = x, or norm(1³ conv(x)) where the width changes. (B, in_channels, n³) -> (B, out_channels, n³)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, norm: str = "instance"):
        super().__init__()
        self.convs = nn.Sequential(ConvNormAct(in_channels, out_channels, kernel_size, norm),
                                   Conv3d(out_channels, out_channels, kernel_size), norm_layer(norm, out_channels))
        self.residual = (nn.Identity() if in_channels == out_channels else
                         nn.Sequential(PointwiseConv(in_channels, out_channels, bias=False),
                                       norm_layer(norm, out_channels)))
        self.act = nn.LeakyReLU(0.01, inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.convs(x) + self.residual(x))


class ResUpBlock(nn.Module):
    """Decoder stage of MONAI's UNETR (``UnetrUpBlock``): ×2 transposed conv of ``x`` (no norm),
    concatenate ``skip``, then a :class:`ResBlock` 2W -> W over the concatenation, at full width.

    ``x`` (B, in_channels, n³) and ``skip`` (B, out_channels, (2n)³) -> (B, out_channels, (2n)³).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, norm: str = "instance"):
        super().__init__()
        self.up = nn.ConvTranspose3d(in_channels, out_channels, kernel_size=2, stride=2, bias=False)
        self.block = ResBlock(2 * out_channels, out_channels, kernel_size, norm)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.block(torch.cat([self.up(x), skip], dim=1))
