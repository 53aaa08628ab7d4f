"""``copra``: a V-Net (Milletari et al. 2016) segmenting proto-halos (Alokda & Porciani 2025).

Figure (M = base filters = 2 × classes, N = crop side; numbers = convolutions per stage):

    x ─stem(1)─────────────────────────────────────────────────────────────────┐ M @ N
       └down(1)─────────────────────────────────────────────────────┐ 2M @ N/2 │
            └down(2)─────────────────────────────────────┐ 4M @ N/4 │          │
                 └down(3)─────────────────────┐ 8M @ N/8 │          │          │
                      └down(2) 16M @ N/16 ─up─⊕─(2)───up─⊕─(2)───up─⊕─(1)───up─+─1×1─> logits (P, N³)

down = strided 2³ conv doubling the channels, then a residual stage act(h + convs(h));
up = 2³ transposed conv halving them, ⊕ = concatenate the skip, then a conv back to the
stage width and a residual stage; + = FullResUpBlock, norm-act(conv₃(skip) + up(y)).
Instance norm and LeakyReLU throughout.

Design against the MONAI VNet peer (same stage depths 1, 1, 2, 3, 2 down and 2, 2, 1, 1 up,
16 base filters, 5³ kernels, batch norm, ELU). torch.profiler on the 2-core CPU, 64³, one fp32
step with AdamW (5.5 s): 54 % of the time is at full resolution, 19 % at N/2 and 16 % at N/4,
almost all of it in 5³ convolutions on the up path, which MONAI runs on the concatenated,
2W-wide features (32 channels at N³): ~370k multiply-adds per output voxel. Here:

- each up stage first maps the concatenation 2W -> W with one conv, and its residual stage runs
  at width W (the V-Net skips and residual learning are kept);
- the V-Net 5³ kernels are kept in the stem and below full resolution (``kernel_size=3`` is a
  2.5× faster option: the coarse stages already see the whole crop);
- the full-resolution stage adds the upsampled path to one 3³ conv of the skip instead of
  convolving a concatenation (:class:`~halotrans.models.blocks.FullResUpBlock`): at N³ a 5³ conv
  on the concatenation alone would cost as much as all other stages together.

Result: ~3.5× less time per step than MONAI VNet at 64³ (single-thread CPU time), almost all of it
by doing less: ~99k multiply-adds per voxel against MONAI's 371k (per unit of work 0.95× MONAI's
speed), half the parameters. ``benchmarks/bench_models.py`` measures it, with the work per voxel.

That is ``decoder="light"``. ``decoder="paper"`` has MONAI VNet's up path: each up stage upsamples to
W/2 channels, concatenates the W/2-channel skip and runs its residual stage over the concatenated W
channels (W = 2× the skip's width, 2M at full resolution), and the output transition is a 5³ conv
2M -> P, norm, act, then the 1×1 head. With ``feature_size=16`` (MONAI's fixed base width) and
``kernel_size=5`` it does MONAI VNet's multiply-adds per voxel (:mod:`halotrans.models.macs`).
``padding="circular"`` pads every 3³/5³ convolution periodically (whole periodic boxes).

    model = CoPRA(in_channels=2, n_classes=7)     # (B, 2, 64, 64, 64) -> (B, 7, 64, 64, 64)
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from halotrans.models.blocks import (
    DECODERS,
    Conv3d,
    ConvNormAct,
    FullResUpBlock,
    PointwiseConv,
    norm_act,
    norm_layer,
    set_padding,
)
from halotrans.models.config import ModelConfig
from halotrans.models.network import Network


class ResidualStage(nn.Module):
    """V-Net residual stage: act(h + convs(h)); the last conv has no activation before the sum."""

    def __init__(self, channels: int, n_convs: int, kernel_size: int, norm: str):
        super().__init__()
        layers = [ConvNormAct(channels, channels, kernel_size, norm) for _ in range(n_convs - 1)]
        self.convs = nn.Sequential(*layers, Conv3d(channels, channels, kernel_size), norm_layer(norm, channels))
        self.act = nn.LeakyReLU(0.01, inplace=True)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.act(h + self.convs(h))


class DownStage(nn.Sequential):
    """Strided 2³ conv (C -> 2C, half the resolution) -> norm -> act, then a residual stage."""

    def __init__(self, in_channels: int, n_convs: int, kernel_size: int, norm: str):
        out = 2 * in_channels
        super().__init__(nn.Conv3d(in_channels, out, kernel_size=2, stride=2, bias=False), *norm_act(norm, out),
                         ResidualStage(out, n_convs, kernel_size, norm))


class UpStage(nn.Module):
    """2³ transposed conv (2W -> W) -> norm -> act, concatenate the skip (W), conv 2W -> W, residual stage."""

    def __init__(self, in_channels: int, n_convs: int, kernel_size: int, norm: str):
        super().__init__()
        out = in_channels // 2
        self.up = nn.Sequential(nn.ConvTranspose3d(in_channels, out, kernel_size=2, stride=2, bias=False),
                                *norm_act(norm, out))
        self.reduce = ConvNormAct(2 * out, out, kernel_size, norm)
        self.residual = ResidualStage(out, n_convs - 1, kernel_size, norm) if n_convs > 1 else nn.Identity()

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.residual(self.reduce(torch.cat([self.up(x), skip], dim=1)))


class ConcatUpStage(nn.Module):
    """MONAI VNet's up stage: 2³ transposed conv (in -> W/2) -> norm -> act, concatenate the skip (W/2),
    residual stage of ``n_convs`` convs over the W concatenated channels (``decoder="paper"``)."""

    def __init__(self, in_channels: int, out_channels: int, n_convs: int, kernel_size: int, norm: str):
        super().__init__()
        half = out_channels // 2
        self.up = nn.Sequential(nn.ConvTranspose3d(in_channels, half, kernel_size=2, stride=2, bias=False),
                                *norm_act(norm, half))
        self.residual = ResidualStage(out_channels, n_convs, kernel_size, norm)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.residual(torch.cat([self.up(x), skip], dim=1))


class CoPRA(nn.Module, Network):
    """V-Net for voxel-wise classification.

    Args:
        in_channels: input fields. n_classes: P output classes.
        feature_size: base filters M; ``None`` = 2 × n_classes (paper).
        down_convs: convolutions of the stem and of each down stage (V-Net/MONAI: 1, 1, 2, 3, 2);
            there are ``len(down_convs) - 1`` halvings, so crop sides must be divisible by 2 to that power.
        up_convs: convolutions of each up stage below full resolution, deepest first (MONAI: 2, 2, 1);
            the full-resolution stage is one conv (light: :class:`FullResUpBlock`; paper: a
            :class:`ConcatUpStage` at 2M channels, as MONAI's).
        kernel_size: conv kernel of the stages below full resolution (V-Net: 5), and of every paper up stage.
        norm: ``instance`` (paper), ``batch`` or ``group``.
        decoder: ``light`` (up stages reduce the concatenation 2W -> W first; no convolved concatenation
            at full resolution) or ``paper`` (MONAI VNet's up stages and output transition).
        padding: ``zeros`` or ``circular`` (periodic) for every stride-1 'same' convolution.

    ``forward``: (B, in_channels, D, H, W) float -> logits (B, n_classes, D, H, W).
    """

    slab_parallel = True  # halo exchange and synchronised instance norms (halotrans.parallel.halo)
    #: halvings of the default V-Net (down stages 1, 1, 2, 3, 2)
    HALVINGS = 4

    @classmethod
    def from_config(cls, cfg: ModelConfig, in_channels: int, n_classes: int,
                    img_size: int | Sequence[int]) -> "CoPRA":
        return cls(in_channels, n_classes, cfg.feature_size, kernel_size=cfg.kernel_size, norm=cfg.norm,
                   decoder=cfg.decoder, padding=cfg.padding)

    @classmethod
    def input_multiple(cls, cfg: ModelConfig) -> tuple[int, int, int]:
        return (2**cls.HALVINGS,) * 3

    @classmethod
    def slab_split_error(cls, cfg: ModelConfig, side: int, sp: int) -> str | None:
        """Slabs must stay whole through every halving and be at least one convolution halo thick."""
        unit, halo = sp * 2**cls.HALVINGS, cfg.kernel_size // 2
        if side % unit:
            return (f"axis 0 of {side} voxels does not split into {sp} slabs that halve {cls.HALVINGS} times "
                    f"(needs a multiple of {unit}); change data.crop or train.sp")
        if side // unit < halo:
            return (f"slabs of {side // unit} rows at the coarsest level are thinner than the {halo}-row convolution "
                    f"halo; use a larger data.crop or a smaller train.sp (at most {side // (2**cls.HALVINGS * halo)})")
        return None

    def __init__(self, in_channels: int, n_classes: int, feature_size: int | None = None,
                 down_convs: Sequence[int] = (1, 1, 2, 3, 2), up_convs: Sequence[int] = (2, 2, 1),
                 kernel_size: int = 5, norm: str = "instance", decoder: str = "light", padding: str = "zeros"):
        super().__init__()
        if decoder not in DECODERS:
            raise ValueError(f"decoder must be one of {list(DECODERS)}, got {decoder!r}")
        if len(down_convs) < 2 or len(up_convs) != len(down_convs) - 2 or min(down_convs, default=1) < 1 \
                or min(up_convs, default=1) < 1:
            raise ValueError(f"need >= 2 down stages, one up stage fewer than halvings and >= 1 conv each, "
                             f"got down {tuple(down_convs)}, up {tuple(up_convs)}")
        m = feature_size or 2 * n_classes
        self.in_channels = in_channels
        self.n_levels = len(down_convs) - 1
        widths = [m * 2**j for j in range(len(down_convs))]
        self.stem = ConvNormAct(in_channels, m, kernel_size=5, norm=norm)
        if down_convs[0] > 1:
            self.stem.append(ResidualStage(m, down_convs[0] - 1, kernel_size, norm))
        self.down = nn.ModuleList(DownStage(widths[j], down_convs[j + 1], kernel_size, norm)
                                  for j in range(self.n_levels))
        if decoder == "paper":  # up stage to level j: in (16M at the bottom, else 2·width) -> 2·width of level j
            self.up = nn.ModuleList(
                ConcatUpStage(widths[j + 1] * (1 if j == self.n_levels - 1 else 2), 2 * widths[j], n, kernel_size, norm)
                for j, n in zip(reversed(range(self.n_levels)), (*up_convs, 1)))
            self.full_res = None
            self.head = nn.Sequential(ConvNormAct(2 * m, n_classes, 5, norm), PointwiseConv(n_classes, n_classes))
        else:
            self.up = nn.ModuleList(UpStage(widths[j + 1], n, kernel_size, norm)
                                    for j, n in zip(reversed(range(1, self.n_levels)), up_convs))
            self.full_res = FullResUpBlock(widths[1], m, kernel_size=3, norm=norm)
            self.head = PointwiseConv(m, n_classes)
        set_padding(self, padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        factor = 2**self.n_levels
        if x.ndim != 5 or x.shape[1] != self.in_channels or any(s % factor for s in x.shape[2:]):
            raise ValueError(f"expected input (B, {self.in_channels}, D, H, W) with D, H, W divisible by {factor}, "
                             f"got {tuple(x.shape)}")
        skips = [self.stem(x)]                      # M @ N
        for down in self.down:                      # 2M @ N/2 ... 16M @ N/16
            skips.append(down(skips[-1]))
        y = skips.pop()
        for up in self.up:                          # 8M @ N/8 ... 2M @ N/2 (paper: 16M @ N/8 ... 2M @ N)
            y = up(y, skips.pop())
        if self.full_res is not None:               # light: M @ N, the upsampled path added to the skip
            y = self.full_res(y, skips.pop())
        return self.head(y)
