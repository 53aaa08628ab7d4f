"""``vipr``: UNETR (a ViT encoder with a CNN decoder) segmenting proto-halos (Alokda & Porciani 2025).

Figure, for the paper's patch 16 (N = crop side, M = base filters = 2 × classes, K = hidden size):

    x (C, N³) ──stem 5³ conv───────────────────────────────────────┐ M @ N
    ViT3D: z3 ──up,conv,up,conv,up────────────────────┐ 2M @ N/2   │
           z6 ──up,conv,up───────────────┐ 4M @ N/4   │            │
           z9 ──up──────────┐ 8M @ N/8   │            │            │
           z12 (final) ──up─⊕─conv×2──up─⊕─conv×2──up─⊕─conv×2──up─+─1×1─> logits (P, N³)

(⊕ = concatenate channels, then the first conv maps 2W -> W; up = 2³ transposed conv;
conv = 3³ conv -> instance norm -> LeakyReLU; + = FullResUpBlock: norm-act(conv₃(skip) + up(y)).)

Design against the MONAI UNETR peer (same ViT: 12 blocks, hidden 512, 8 heads, MLP 2048;
feature size 14). torch.profiler on the 2-core CPU, 64³, one fp32 step with AdamW (1.47 s):
with patch 16 the ViT sees 64 tokens and takes ~10 % (its GEMMs); convolutions take ~70 %,
and ~46 % of the step is at full resolution (encoder1 and decoder2 residual blocks: four 3³ and
two 1×1 convs, six instance norms, a 28-channel concatenation at N³); another ~11 % are the
16³ convs, which PyTorch runs through its slow im2col kernel at batch 1. MONAI's decoder does
~45k multiply-adds per output voxel. This decoder keeps the UNETR topology (skips from blocks
3/6/9/12, a full-resolution skip from the input, concatenation skips below full resolution,
progressive 2³ transposed-conv upsampling, instance norm, M = 2P) and:

- uses plain conv-norm-act pairs instead of residual blocks (no 1×1 residual convs, no third norm):
  two 3³ convs per stage at N/8, N/4, N/2, where voxels are cheap;
- at full resolution, one 5³ conv on the input (cheap on 2 channels, a wider view of the raw
  fields) and one 3³ conv on that skip, to which the upsampled path is added
  (:class:`~halotrans.models.blocks.FullResUpBlock`): no N³ concatenation is convolved or stored;
- projects z3/z6/z9 with transposed convs and a 3³ conv between them, none after the last one
  (the decoder stage convolves the concatenation right after);
- computes instance norm with GroupNorm so the in-place LeakyReLU does not make autograd copy
  volumes, keeps batch-1 CPU convs on oneDNN (channels-last at ≥ 32³, split batch for small
  volumes: :class:`~halotrans.models.blocks.Conv3d`), runs the 1³ head as a matrix product,
  embeds patches with one Linear, attends with SDPA.

Result (one thread, CPU seconds per step at 64³): ViT 0.24, stem 0.05, token projections 0.03,
stages N/8 0.04, N/4 0.07, N/2 0.17, N 0.18, head + loss 0.01, AdamW 0.03: 0.77 s against
MONAI's 1.8 s, ~24k multiply-adds per voxel in the decoder; activations stored for the backward
pass 544 against 1039 bytes per voxel. Most of that 2.3× is less work (34.7k against 56.7k
multiply-adds per voxel in the whole network); at equal work (``decoder="paper"``) vipr is 1.25×
MONAI (``benchmarks/bench_models.py`` prints both, with the work per voxel).

That is ``decoder="light"``. ``decoder="paper"`` is MONAI's UNETR decoder on our ViT, block for block,
so both do the same multiply-adds per voxel (:mod:`halotrans.models.macs`), with our instance norm
and CPU convolution paths:

    x (C, N³) ──ResBlock 3³ (encoder1)──────────────────────────────────────────┐ M @ N
    z3 ──up──up,Res──up,Res─────────────────────────────────────────┐ 2M @ N/2  │
    z6 ──up──up,Res─────────────────────────────────┐ 4M @ N/4      │           │
    z9 ──up──────────────────────┐ 8M @ N/8         │               │           │
    z12 ──up─⊕─Res(16M->8M)──up─⊕─Res(8M->4M)──up─⊕─Res(4M->2M)──up─⊕─Res(2M->M)─1×1─> logits

(up = 2³ transposed conv without norm; Res = :class:`~halotrans.models.blocks.ResBlock`: two 3³
conv-norms, a 1³ conv-norm on the residual where the width changes, LeakyReLU after the sum.)
``padding="circular"`` pads every 3³/5³ convolution periodically (whole periodic boxes).

    model = ViPR(in_channels=2, n_classes=7, img_size=64)      # (B, 2, 64, 64, 64) -> (B, 7, 64, 64, 64)
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

from halotrans.models.blocks import (
    DECODERS,
    ConvNormAct,
    FullResUpBlock,
    PointwiseConv,
    ResBlock,
    ResUpBlock,
    UpBlock,
    UpConv,
    set_padding,
)
from halotrans.models.config import ModelConfig
from halotrans.models.network import Network, patch_triple
from halotrans.models.vit import ViT3D


class TokenProjection(nn.Sequential):
    """Hidden tokens as a volume (B, K, g³) -> (B, C, (g·2^n_up)³): up, [conv, up] × (n_up - 1)."""

    def __init__(self, hidden_size: int, channels: int, n_up: int, norm: str):
        layers: list[nn.Module] = [UpConv(hidden_size, channels, norm)]
        for _ in range(n_up - 1):
            layers += [ConvNormAct(channels, channels, 3, norm=norm), UpConv(channels, channels, norm)]
        super().__init__(*layers)


class PaperTokenProjection(nn.Sequential):
    """MONAI UNETR's ``UnetrPrUpBlock``: (B, K, g³) -> (B, C, (g·2^n_up)³): up, [up, ResBlock] × (n_up - 1),
    the 2³ transposed convs without norm."""

    def __init__(self, hidden_size: int, channels: int, n_up: int, norm: str):
        layers: list[nn.Module] = [nn.ConvTranspose3d(hidden_size, channels, kernel_size=2, stride=2, bias=False)]
        for _ in range(n_up - 1):
            layers += [nn.ConvTranspose3d(channels, channels, kernel_size=2, stride=2, bias=False),
                       ResBlock(channels, channels, 3, norm)]
        super().__init__(*layers)


class ViPR(nn.Module, Network):
    """UNETR on :class:`ViT3D` for voxel-wise classification.

    Args:
        in_channels: input fields (density, tidal shear, ...). n_classes: P output classes.
        img_size: crop size in voxels (int or (D, H, W)); each side divisible by the patch.
        patch_size: cubic patch side, a power of two 2^n ≥ 2 (paper: 16); the decoder has n stages.
        hidden_size, depth, num_heads, mlp_dim, pos_embed, dropout, activation_checkpointing: see ViT3D.
        feature_size: base filters M of the decoder; ``None`` = 2 × n_classes (paper).
        skip_layers: n ViT blocks feeding the decoder, shallow to deep; the last must be ``depth``
            (its output, after the final LayerNorm, is the bottleneck). Paper: (3, 6, 9, 12).
        norm: ``instance`` (paper), ``batch`` or ``group``.
        decoder: ``light`` (conv-norm-act pairs, no convolved concatenation at full resolution) or
            ``paper`` (MONAI UNETR's residual blocks, the same multiply-adds as MONAI).
        padding: ``zeros`` or ``circular`` (periodic) for every stride-1 'same' convolution.

    ``forward``: (B, in_channels, *img_size) float -> logits (B, n_classes, *img_size).
    """

    slab_parallel = True  # Ulysses attention on the slab's tokens, halo exchange in the decoder
    checkpointable = True  # model.activation_checkpointing recomputes the ViT blocks

    @classmethod
    def from_config(cls, cfg: ModelConfig, in_channels: int, n_classes: int,
                    img_size: int | Sequence[int]) -> "ViPR":
        patch = patch_triple(cfg)
        if len(set(patch)) != 1:
            raise ValueError(f"model.patch_size must be cubic for vipr, got {list(patch)}")
        return cls(in_channels, n_classes, img_size, patch_size=patch[0], hidden_size=cfg.hidden_size, depth=cfg.depth,
                   num_heads=cfg.num_heads, mlp_dim=cfg.mlp_dim, feature_size=cfg.feature_size,
                   skip_layers=cfg.skip_layers, pos_embed=cfg.pos_embed, norm=cfg.norm, dropout=cfg.dropout,
                   activation_checkpointing=cfg.activation_checkpointing, decoder=cfg.decoder, padding=cfg.padding)

    @classmethod
    def token_patch(cls, cfg: ModelConfig) -> tuple[int, int, int]:
        return patch_triple(cfg)

    @classmethod
    def slab_split_error(cls, cfg: ModelConfig, side: int, sp: int) -> str | None:
        """Each slab must hold whole patch rows, and Ulysses splits the heads over the group."""
        patch = patch_triple(cfg)[0]
        if (side // patch) % sp:
            return (f"{side // patch} patch rows along axis 0 do not split into {sp} slabs of whole patches "
                    "(tokens must divide by train.sp)")
        if cfg.num_heads % sp:
            return f"model.num_heads = {cfg.num_heads} is not divisible by train.sp = {sp} (Ulysses splits the heads)"
        return None

    def __init__(self, in_channels: int, n_classes: int, img_size: int | Sequence[int], patch_size: int = 16,
                 hidden_size: int = 512, depth: int = 12, num_heads: int = 8, mlp_dim: int = 2048,
                 feature_size: int | None = None, skip_layers: Sequence[int] = (3, 6, 9, 12),
                 pos_embed: str = "learnable", norm: str = "instance", dropout: float = 0.0,
                 activation_checkpointing: bool = False, decoder: str = "light", padding: str = "zeros"):
        super().__init__()
        if decoder not in DECODERS:
            raise ValueError(f"decoder must be one of {list(DECODERS)}, got {decoder!r}")
        n_stages = int(math.log2(patch_size)) if patch_size >= 2 else 0
        if n_stages < 1 or 2**n_stages != patch_size:
            raise ValueError(f"vipr needs a cubic patch size that is a power of two >= 2, got {patch_size}")
        skip_layers = tuple(skip_layers)
        if len(skip_layers) != n_stages or skip_layers[-1] != depth or list(skip_layers) != sorted(set(skip_layers)):
            raise ValueError(f"skip_layers must be {n_stages} increasing block numbers ending at depth={depth} "
                             f"(one per decoder stage for patch {patch_size}), got {skip_layers}")
        m = feature_size or 2 * n_classes
        self.skip_layers = skip_layers
        self.vit = ViT3D(in_channels, img_size, patch_size, hidden_size, depth, num_heads, mlp_dim, pos_embed,
                         dropout, activation_checkpointing=activation_checkpointing)
        widths = [m * 2**j for j in range(n_stages)]  # decoder width at N, N/2, ..., N/2^(n-1)
        ins = [widths[j + 1] if j < n_stages - 1 else hidden_size for j in range(n_stages)]
        if decoder == "paper":
            self.stem = ResBlock(in_channels, m, 3, norm)
            self.projections = nn.ModuleList(PaperTokenProjection(hidden_size, widths[j], n_stages - j, norm)
                                             for j in range(1, n_stages))
            self.decoder = nn.ModuleList(ResUpBlock(ins[j], widths[j], 3, norm) for j in reversed(range(n_stages)))
        else:
            self.stem = ConvNormAct(in_channels, m, kernel_size=5, norm=norm)
            self.projections = nn.ModuleList(TokenProjection(hidden_size, widths[j], n_stages - j, norm)
                                             for j in range(1, n_stages))
            self.decoder = nn.ModuleList(
                UpBlock(ins[j], widths[j], n_convs=2, norm=norm) if j else FullResUpBlock(ins[0], m, norm=norm)
                for j in reversed(range(n_stages)))
        self.head = PointwiseConv(m, n_classes)
        set_padding(self, padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.vit.check_input(x)
        final, hidden = self.vit(x, layers=self.skip_layers[:-1])
        z = [self.vit.tokens_to_volume(h) for h in hidden]                # z3, z6, z9: shallow -> deep
        skips = [self.stem(x)] + [proj(zi) for proj, zi in zip(self.projections, z)]  # at N, N/2, N/4, N/8
        y = self.vit.tokens_to_volume(final)                              # z12 at N/16
        for up, skip in zip(self.decoder, reversed(skips)):
            y = up(y, skip)
        return self.head(y)
