"""Settings of the networks. The trainer maps these to plain constructor arguments."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass
class ModelConfig:
    """Network choice and size.

    ``name``: ``vipr`` (UNETR on the shared ViT), ``copra`` (V-Net), the MONAI peers
    ``monai_unetr`` / ``monai_vnet``, or ``vit`` (the bare encoder, for SKATR).
    ``hidden_size``, ``depth``, ``num_heads``, ``mlp_dim``: the ViT (vipr, vit; monai_unetr uses
    hidden/heads/mlp with MONAI's fixed 12 blocks and patch 16).
    ``patch_size``: one int (cubic) or three (anisotropic, e.g. [4, 4, 10] for light cones);
    vipr needs a cubic power of two. ``pos_embed``: ``learnable`` or ``fourier`` (fixed sin/cos).
    ``feature_size``: base filters of the CNN decoder / V-Net; ``None`` means 2 × classes (paper M=2P).
    ``skip_layers``: ViT blocks feeding the vipr decoder, the last one = ``depth``.
    ``kernel_size``: copra's conv kernel below full resolution (V-Net: 5; 3 is 2.5× faster).
    ``norm``: decoder / V-Net normalisation. ``dropout``: in the ViT (and MONAI VNet's dropout layers).
    ``activation_checkpointing``: recompute each ViT block in the backward pass (less memory).
    """

    name: Literal["vipr", "copra", "monai_unetr", "monai_vnet", "vit"] = "vipr"
    hidden_size: int = 512
    depth: int = 12
    num_heads: int = 8
    mlp_dim: int = 2048
    patch_size: int | tuple[int, ...] = (16,)
    pos_embed: Literal["learnable", "fourier"] = "learnable"
    feature_size: int | None = None
    skip_layers: tuple[int, ...] = (3, 6, 9, 12)
    kernel_size: int = 5
    norm: Literal["instance", "batch", "group"] = "instance"
    dropout: float = 0.0
    activation_checkpointing: bool = False

    def __post_init__(self) -> None:
        patch = (self.patch_size,) if isinstance(self.patch_size, int) else tuple(self.patch_size)
        if len(patch) not in (1, 3) or min(patch) < 1:
            raise ValueError(f"patch_size must be one or three positive ints, got {self.patch_size}")
        if min(self.hidden_size, self.depth, self.num_heads, self.mlp_dim) < 1 or self.hidden_size % self.num_heads:
            raise ValueError("hidden_size, depth, num_heads, mlp_dim must be >= 1 and heads must divide hidden_size")
        if self.feature_size is not None and self.feature_size < 1:
            raise ValueError(f"feature_size must be >= 1 or null, got {self.feature_size}")
        if self.kernel_size not in (3, 5):
            raise ValueError(f"kernel_size must be 3 or 5, got {self.kernel_size}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")


@dataclass
class JEPAConfig:
    """JEPA pretraining of the light-cone ViT (SKATR): predictor, masks, target EMA and loss.

    Predictor: ``predictor_dim`` features, ``predictor_depth`` pre-norm blocks of
    ``predictor_heads`` heads and ``predictor_mlp_dim`` MLP features, fixed Fourier positions.

    Masks (:mod:`halotrans.data.masks`), on the patch grid (g0, g1, g2), axis 2 = line of sight:
    ``mask_targets`` target blocks per light cone, each covering a fraction in ``target_scale`` of
    the transverse patch grid (aspect ratio g0:g1 in ``aspect``) and a fraction in ``target_los``
    of the line of sight ((1, 1) = tubes through the whole light cone, as SKATR). The context is
    one block covering a fraction in ``context_scale`` of the grid (full line of sight), minus
    every target token; block sizes are drawn once per batch, positions per light cone.

    Target encoder: exponential moving average of the context encoder, momentum rising linearly
    from ``ema_start`` to ``ema_end`` over ``train.steps`` (1 = frozen target). Loss ``l1`` or
    ``smooth_l1`` between predictions and layer-normed target tokens.
    """

    predictor_dim: int = 48
    predictor_depth: int = 4
    predictor_heads: int = 4
    predictor_mlp_dim: int = 96
    mask_targets: int = 4
    target_scale: tuple[float, float] = (0.15, 0.2)
    target_los: tuple[float, float] = (1.0, 1.0)
    aspect: tuple[float, float] = (0.75, 1.5)
    context_scale: tuple[float, float] = (0.85, 1.0)
    ema_start: float = 0.996
    ema_end: float = 1.0
    loss: Literal["l1", "smooth_l1"] = "l1"

    def __post_init__(self) -> None:
        if min(self.predictor_dim, self.predictor_depth, self.predictor_heads, self.predictor_mlp_dim) < 1:
            raise ValueError("predictor_dim, predictor_depth, predictor_heads and predictor_mlp_dim must be >= 1")
        if self.predictor_dim % self.predictor_heads or self.predictor_dim < 6:
            raise ValueError(f"predictor_dim ({self.predictor_dim}) must be >= 6 and divisible by "
                             f"predictor_heads ({self.predictor_heads})")
        if self.mask_targets < 1:
            raise ValueError(f"mask_targets must be >= 1, got {self.mask_targets}")
        for name in ("target_scale", "target_los", "context_scale"):
            lo, hi = getattr(self, name)
            if not 0 < lo <= hi <= 1:
                raise ValueError(f"{name} must be a range 0 < lo <= hi <= 1, got {[lo, hi]}")
        if not 0 < self.aspect[0] <= self.aspect[1]:
            raise ValueError(f"aspect must be a range 0 < lo <= hi, got {list(self.aspect)}")
        if not 0 <= self.ema_start <= self.ema_end <= 1:
            raise ValueError(f"need 0 <= ema_start <= ema_end <= 1, got {self.ema_start}, {self.ema_end}")
