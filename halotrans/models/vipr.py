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
pass 544 against 1039 bytes per voxel. ``benchmarks/bench_models.py`` measures it on all cores.

    model = ViPR(in_channels=2, n_classes=7, img_size=64)      # (B, 2, 64, 64, 64) -> (B, 7, 64, 64, 64)
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

from halotrans.models.blocks import ConvNormAct, FullResUpBlock, PointwiseConv, UpBlock, UpConv
from halotrans.models.vit import ViT3D


class TokenProjection(nn.Sequential):
    """Hidden tokens as a volume (B, K, g³) -> (B, C, (g·2^n_up)³): up, [conv, up] × (n_up - 1)."""

    def __init__(self, hidden_size: int, channels: int, n_up: int, norm: str):
        layers: list[nn.Module] = [UpConv(hidden_size, channels, norm)]
        for _ in range(n_up - 1):
            layers += [ConvNormAct(channels, channels, 3, norm=norm), UpConv(channels, channels, norm)]
        super().__init__(*layers)


class ViPR(nn.Module):
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

    ``forward``: (B, in_channels, *img_size) float -> logits (B, n_classes, *img_size).
    """

    def __init__(self, in_channels: int, n_classes: int, img_size: int | Sequence[int], patch_size: int = 16,
                 hidden_size: int = 512, depth: int = 12, num_heads: int = 8, mlp_dim: int = 2048,
                 feature_size: int | None = None, skip_layers: Sequence[int] = (3, 6, 9, 12),
                 pos_embed: str = "learnable", norm: str = "instance", dropout: float = 0.0,
                 activation_checkpointing: bool = False):
        super().__init__()
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
        self.stem = ConvNormAct(in_channels, m, kernel_size=5, norm=norm)
        self.projections = nn.ModuleList(TokenProjection(hidden_size, widths[j], n_stages - j, norm)
                                         for j in range(1, n_stages))
        ins = [widths[j + 1] if j < n_stages - 1 else hidden_size for j in range(n_stages)]
        self.decoder = nn.ModuleList(
            UpBlock(ins[j], widths[j], n_convs=2, norm=norm) if j else FullResUpBlock(ins[0], m, norm=norm)
            for j in reversed(range(n_stages)))
        self.head = PointwiseConv(m, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.vit.check_input(x)
        final, hidden = self.vit(x, layers=self.skip_layers[:-1])
        z = [self.vit.tokens_to_volume(h) for h in hidden]                # z3, z6, z9: shallow -> deep
        skips = [self.stem(x)] + [proj(zi) for proj, zi in zip(self.projections, z)]  # at N, N/2, N/4, N/8
        y = self.vit.tokens_to_volume(final)                              # z12 at N/16
        for up, skip in zip(self.decoder, reversed(skips)):
            y = up(y, skip)
        return self.head(y)
