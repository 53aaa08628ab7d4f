"""Settings of the networks: the ``model`` section, from which each registered network builds itself (``from_config``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass
class ModelConfig:
    """Network choice and size.

    ``name``: a network of :data:`halotrans.models.registry.MODELS`: ``vipr`` (UNETR on the shared
    ViT), ``copra`` (V-Net), the MONAI peers ``monai_unetr`` / ``monai_vnet``, or ``vit`` (the bare
    encoder, for SKATR).
    ``hidden_size``, ``depth``, ``num_heads``, ``mlp_dim``: the ViT (vipr, vit; monai_unetr uses
    hidden/heads/mlp with MONAI's fixed 12 blocks and patch 16).
    ``patch_size``: one int (cubic) or three (anisotropic, e.g. [4, 4, 10] for light cones);
    vipr needs a cubic power of two. ``pos_embed``: ``learnable`` or ``fourier`` (fixed sin/cos).
    ``feature_size``: base filters of the CNN decoder / V-Net; ``None`` means 2 × classes (paper M=2P).
    ``skip_layers``: ViT blocks feeding the vipr decoder, the last one = ``depth``.
    ``kernel_size``: copra's conv kernel below full resolution (V-Net: 5; 3 is 2.5× faster).
    ``norm``: decoder / V-Net normalisation. ``dropout``: in the ViT (and MONAI VNet's dropout layers).
    ``activation_checkpointing``: recompute each ViT block in the backward pass (less memory).
    ``decoder`` (vipr, copra): ``light``, our decoders without convolved full-resolution
    concatenations, or ``paper``, the full-resolution blocks of MONAI's UNETR / VNet with the same
    multiply-adds per voxel (:mod:`halotrans.models.macs`). The MONAI peers are MONAI's own decoders.
    ``padding`` (vipr, copra): ``zeros``, or ``circular``: every stride-1 'same' convolution pads
    periodically, for samples that are whole periodic boxes (slab sharding then wraps its halos).
    The MONAI peers take ``circular`` through our adaptation (``padding_mode='circular'`` set on their
    stride-1 'same' convolutions after construction, :func:`halotrans.models.monai_peers.set_peer_padding`).
    """

    name: str = "vipr"
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
    decoder: Literal["paper", "light"] = "light"
    padding: Literal["zeros", "circular"] = "zeros"

    def __post_init__(self) -> None:
        from halotrans.models.registry import MODELS

        if self.name not in MODELS:
            raise ValueError(f"name: {self.name!r} is not one of {list(MODELS)} (halotrans.models.registry)")
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
        if self.decoder not in ("paper", "light"):
            raise ValueError(f"decoder must be 'paper' or 'light', got {self.decoder!r}")
        if self.padding not in ("zeros", "circular"):
            raise ValueError(f"padding must be 'zeros' or 'circular', got {self.padding!r}")
