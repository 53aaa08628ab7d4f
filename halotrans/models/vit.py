"""One 3D vision transformer (ViT) shared by the proto-halo segmenter (``vipr``) and SKATR.

A volume (B, C, D, H, W) (axis 0 of the box = D) is cut into non-overlapping patches of
``patch_size`` voxels (cubic, e.g. 16, or anisotropic, e.g. (4, 4, 10) for light cones whose
last axis is the line of sight). Each patch becomes one token of ``hidden_size`` features; tokens
are ordered in C order over the patch grid (token ``(i*g1 + j)*g2 + k`` is patch ``(i, j, k)``).
A position embedding (learnable, or fixed sin/cos features of the patch-grid coordinates) is
added, then ``depth`` pre-norm transformer blocks run, then a final LayerNorm.

    vit = ViT3D(in_channels=2, img_size=64, patch_size=16, hidden_size=512, depth=12)
    tokens, (z3, z6, z9) = vit(x, layers=(3, 6, 9))   # tokens (B, 64, 512), hidden states before the final norm
    ctx, _ = vit(x, keep_idx=idx)                     # JEPA context: only the tokens idx (B, K)

Attention calls ``F.scaled_dot_product_attention`` (flash / memory-efficient kernels on GPU, also
under bf16 autocast). Its core, :class:`LocalAttention`, takes q, k, v as [b, s, heads, head_dim]
and returns [b, s, heads, head_dim]: exactly the callable that DeepSpeed Ulysses
``DistributedAttention(local_attn, group, scatter_idx=2, gather_idx=1)`` wraps, so sequence
parallelism replaces ``block.attn.core`` and nothing else.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from halotrans.models.config import ModelConfig
from halotrans.models.network import Network, patch_triple


def as_triple(value: int | Sequence[int], name: str) -> tuple[int, int, int]:
    """``16 -> (16, 16, 16)``; a 3-sequence is returned as a tuple of ints; anything else is a ValueError."""
    if isinstance(value, int):
        value = (value,) * 3
    value = tuple(int(v) for v in value)
    if len(value) == 1:
        value = value * 3
    if len(value) != 3 or min(value) < 1:
        raise ValueError(f"{name} must be a positive int or three positive ints, got {value}")
    return value  # type: ignore[return-value]


def fourier_position_embedding(grid: Sequence[int], dim: int, temperature: float = 10000.0) -> torch.Tensor:
    """Fixed sin/cos features of the patch-grid coordinates, (prod(grid), dim) float32, C order.

    Each of the three axes gets ``dim // 6`` frequencies ``temperature**(-f/F)`` applied to the
    integer patch index along that axis, as a sin and a cos (the 2D MAE scheme extended to 3D);
    the ``dim % 6`` remaining features are zero.
    """
    if dim < 6:
        raise ValueError(f"Fourier position embedding needs dim >= 6, got {dim}")
    n_freq = dim // 6
    omega = temperature ** (-torch.arange(n_freq, dtype=torch.float64) / n_freq)
    axes = [torch.arange(g, dtype=torch.float64) for g in grid]
    coords = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, len(grid))
    angles = coords[:, :, None] * omega  # (L, 3, F)
    emb = torch.cat([angles.sin(), angles.cos()], dim=-1).reshape(coords.shape[0], -1)
    return F.pad(emb, (0, dim - emb.shape[1])).float()


class PatchEmbed(nn.Module):
    """(B, C, D, H, W) -> (B, L, hidden): one Linear per flattened patch (= a Conv3d with stride = kernel
    = patch, whose weight it stores in the same (C, p0, p1, p2) order; 2× faster on CPU)."""

    def __init__(self, in_channels: int, patch_size: tuple[int, int, int], hidden_size: int):
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Linear(in_channels * math.prod(patch_size), hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, d, h, w = x.shape
        (p0, p1, p2), (g0, g1, g2) = self.patch_size, (d // self.patch_size[0], h // self.patch_size[1],
                                                        w // self.patch_size[2])
        patches = x.view(b, c, g0, p0, g1, p1, g2, p2).permute(0, 2, 4, 6, 1, 3, 5, 7)
        return self.proj(patches.reshape(b, g0 * g1 * g2, c * p0 * p1 * p2))


class LocalAttention(nn.Module):
    """Softmax attention of one rank's heads: q, k, v [b, s, heads, head_dim] -> [b, s, heads, head_dim]."""

    def __init__(self, dropout: float = 0.0):
        super().__init__()
        self.dropout = dropout

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        p = self.dropout if self.training else 0.0
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), dropout_p=p)
        return out.transpose(1, 2)


class Attention(nn.Module):
    """Multi-head self-attention: fused qkv Linear -> ``core`` (replaceable, see module doc) -> output Linear."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, dropout: float = 0.0):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"hidden size {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.core: nn.Module = LocalAttention(dropout)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, s, dim = x.shape
        q, k, v = self.qkv(x).view(b, s, 3, self.num_heads, self.head_dim).unbind(2)
        out = self.core(q, k, v)
        return self.proj_drop(self.proj(out.reshape(b, s, dim)))


class MLP(nn.Sequential):
    """Linear -> GELU -> Linear, with dropout after each."""

    def __init__(self, dim: int, hidden: int, dropout: float = 0.0):
        super().__init__(nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, dim),
                         nn.Dropout(dropout))


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(LN(x)), then x + mlp(LN(x))."""

    def __init__(self, dim: int, num_heads: int, mlp_dim: int, qkv_bias: bool = True, dropout: float = 0.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, num_heads, qkv_bias, dropout)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = MLP(dim, mlp_dim, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class ViT3D(nn.Module, Network):
    """3D ViT encoder: patch embedding + position embedding + pre-norm blocks + final LayerNorm.

    Args:
        in_channels: input fields per voxel (e.g. 2 for density and tidal shear).
        img_size: spatial size (D, H, W) in voxels (one int = cube); each side divisible by the patch.
        patch_size: patch side(s) in voxels, e.g. 16 or (4, 4, 10).
        hidden_size: token features K. depth: number of blocks. num_heads: attention heads.
        mlp_dim: hidden features of each block's MLP.
        pos_embed: ``"learnable"`` (trained, init N(0, 0.02)) or ``"fourier"`` (fixed sin/cos of the patch grid).
        dropout: dropout in attention and MLP. qkv_bias: bias of the fused qkv Linear.
        activation_checkpointing: recompute each block in the backward pass (training only):
            activation memory of the blocks drops to one (B, L, K) tensor per block.

    Geometry: ``grid_size`` (g0, g1, g2) patches per axis, ``num_patches`` L = g0*g1*g2.
    """

    checkpointable = True  # model.activation_checkpointing recomputes each block

    @classmethod
    def from_config(cls, cfg: ModelConfig, in_channels: int, n_classes: int,
                    img_size: int | Sequence[int]) -> "ViT3D":
        """The bare encoder (``model.name: vit``); ``n_classes`` is unused (no head)."""
        return cls(in_channels, img_size, patch_triple(cfg), hidden_size=cfg.hidden_size, depth=cfg.depth,
                   num_heads=cfg.num_heads, mlp_dim=cfg.mlp_dim, pos_embed=cfg.pos_embed, dropout=cfg.dropout,
                   activation_checkpointing=cfg.activation_checkpointing)

    @classmethod
    def token_patch(cls, cfg: ModelConfig) -> tuple[int, int, int]:
        return patch_triple(cfg)

    def __init__(self, in_channels: int, img_size: int | Sequence[int], patch_size: int | Sequence[int] = 16,
                 hidden_size: int = 512, depth: int = 12, num_heads: int = 8, mlp_dim: int = 2048,
                 pos_embed: str = "learnable", dropout: float = 0.0, qkv_bias: bool = True,
                 activation_checkpointing: bool = False):
        super().__init__()
        self.img_size = as_triple(img_size, "img_size")
        self.patch_size = as_triple(patch_size, "patch_size")
        if any(s % p for s, p in zip(self.img_size, self.patch_size)):
            raise ValueError(f"img_size {self.img_size} is not divisible by patch_size {self.patch_size}")
        if pos_embed not in ("learnable", "fourier"):
            raise ValueError(f"pos_embed must be 'learnable' or 'fourier', got {pos_embed!r}")
        self.in_channels = in_channels
        self.hidden_size = hidden_size
        self.depth = depth
        self.grid_size = tuple(s // p for s, p in zip(self.img_size, self.patch_size))
        self.num_patches = math.prod(self.grid_size)
        self.activation_checkpointing = activation_checkpointing
        self.patch_embed = PatchEmbed(in_channels, self.patch_size, hidden_size)
        if pos_embed == "learnable":
            self.pos_embed = nn.Parameter(torch.zeros(1, self.num_patches, hidden_size))
            nn.init.trunc_normal_(self.pos_embed, std=0.02)
        else:
            self.register_buffer("pos_embed", fourier_position_embedding(self.grid_size, hidden_size)[None])
        self.blocks = nn.ModuleList(Block(hidden_size, num_heads, mlp_dim, qkv_bias, dropout) for _ in range(depth))
        self.norm = nn.LayerNorm(hidden_size)
        self.apply(init_weights)
        nn.init.xavier_uniform_(self.patch_embed.proj.weight)  # as a conv layer (MAE)

    def check_input(self, x: torch.Tensor) -> None:
        """Raise ValueError unless ``x`` is (B, in_channels, *img_size)."""
        if x.ndim != 5 or x.shape[1] != self.in_channels or tuple(x.shape[2:]) != self.img_size:
            raise ValueError(f"expected input (B, {self.in_channels}, {', '.join(map(str, self.img_size))}), "
                             f"got {tuple(x.shape)}")

    def embed(self, x: torch.Tensor, keep_idx: torch.Tensor | None = None) -> torch.Tensor:
        """Patch + position embedding: the input of the first block, (B, L, K), or (B, n, K) for ``keep_idx`` (B, n)."""
        self.check_input(x)
        tokens = self.patch_embed(x) + self.pos_embed
        if keep_idx is not None:
            if keep_idx.ndim != 2 or keep_idx.shape[0] != x.shape[0]:
                raise ValueError(f"keep_idx must be (B, n) with B={x.shape[0]}, got {tuple(keep_idx.shape)}")
            tokens = tokens.gather(1, keep_idx[..., None].expand(-1, -1, self.hidden_size))
        return tokens

    def forward(self, x: torch.Tensor, keep_idx: torch.Tensor | None = None,
                layers: Sequence[int] = ()) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Encode ``x`` (B, C, D, H, W): final tokens (B, L or n, K) after the last LayerNorm, and the
        outputs of the blocks numbered ``layers`` (1 = first block; before any final norm)."""
        if any(not 1 <= i <= self.depth for i in layers):
            raise ValueError(f"layers must be in 1..{self.depth}, got {tuple(layers)}")
        tokens = self.embed(x, keep_idx)
        hidden = []
        recompute = self.activation_checkpointing and self.training and torch.is_grad_enabled()
        for i, block in enumerate(self.blocks, start=1):
            tokens = checkpoint(block, tokens, use_reentrant=False) if recompute else block(tokens)
            if i in layers:
                hidden.append(tokens)
        return self.norm(tokens), hidden

    def tokens_to_volume(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, L, K) tokens of the full grid -> (B, K, g0, g1, g2) feature volume."""
        return tokens.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], *self.grid_size)


def init_weights(module: nn.Module) -> None:
    """ViT initialisation (MAE / I-JEPA): Linear weights truncated N(0, 0.02), zero biases, unit LayerNorms."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
