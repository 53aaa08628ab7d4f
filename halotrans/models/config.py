"""Settings of the networks. The trainer maps these to plain constructor arguments."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass
class ModelConfig:
    """Network choice and size.

    ``name``: ``vipr`` (UNETR on the shared ViT), ``copra`` (V-Net), the MONAI peers
    ``monai_unetr`` / ``monai_vnet``, or ``vit`` (the bare encoder, for SKATR).
    ``feature_size``: base filters of the CNN decoder / V-Net; ``None`` means 2 × classes (paper M=2P).
    ``patch_size``: one int (cubic) or three (anisotropic, e.g. 4,4,10 for light cones).
    """

    name: Literal["vipr", "copra", "monai_unetr", "monai_vnet", "vit"] = "vipr"
    hidden_size: int = 512
    depth: int = 12
    num_heads: int = 8
    mlp_dim: int = 2048
    patch_size: tuple[int, ...] = (16,)
    pos_embed: Literal["learnable", "fourier"] = "learnable"
    feature_size: int | None = None
    skip_layers: tuple[int, ...] = (3, 6, 9, 12)
    norm: Literal["instance", "batch", "group"] = "instance"
    dropout: float = 0.0
    activation_checkpointing: bool = False


@dataclass
class JEPAConfig:
    """JEPA pretraining (SKATR): predictor size, masks, EMA schedule and loss."""

    predictor_dim: int = 48
    predictor_depth: int = 4
    ema_start: float = 0.996
    ema_end: float = 1.0
    loss: Literal["l1", "smooth_l1"] = "l1"
