"""Map the ``model`` config section to a network: the only place the trainer turns config into constructor args.

    model = build_model(cfg.model, in_channels=2, n_classes=5, img_size=cfg.data.crop)

``vipr``, ``copra`` and ``vit`` are ours; ``monai_unetr`` and ``monai_vnet`` are the MONAI peers
built at the same size (UNETR: same hidden/MLP/heads/feature size, MONAI's fixed 12 blocks and
patch 16, SDPA attention switched on in every block; VNet: MONAI's fixed 16 base filters).
A size the network cannot take raises :class:`~halotrans.config.ConfigError` naming the key.
"""

from __future__ import annotations

from typing import Sequence

from torch import nn

from halotrans.models.config import ModelConfig


def build_model(model_cfg: ModelConfig, in_channels: int, n_classes: int, img_size: int | Sequence[int]) -> nn.Module:
    """The network named ``model_cfg.name``: (B, in_channels, *img_size) -> logits (B, n_classes, *img_size)
    (``vit``: -> (tokens (B, L, hidden), hidden states))."""
    from halotrans.config import ConfigError

    c = model_cfg
    patch = (c.patch_size,) if isinstance(c.patch_size, int) else tuple(c.patch_size)
    size = (img_size,) * 3 if isinstance(img_size, int) else tuple(img_size)
    if c.name in ("copra", "monai_vnet") and any(s % 16 for s in size):
        raise ConfigError(f"model.name={c.name} halves the crop 4 times: data.crop {list(size)} "
                          f"must be divisible by 16")
    try:
        if c.name == "vipr":
            if len(set(patch)) != 1:
                raise ValueError(f"model.patch_size must be cubic for vipr, got {list(patch)}")
            from halotrans.models.vipr import ViPR

            return ViPR(in_channels, n_classes, img_size, patch[0], c.hidden_size, c.depth, c.num_heads, c.mlp_dim,
                        c.feature_size, c.skip_layers, c.pos_embed, c.norm, c.dropout, c.activation_checkpointing)
        if c.name == "copra":
            from halotrans.models.copra import CoPRA

            return CoPRA(in_channels, n_classes, c.feature_size, kernel_size=c.kernel_size, norm=c.norm)
        if c.name == "vit":
            from halotrans.models.vit import ViT3D

            return ViT3D(in_channels, img_size, patch, c.hidden_size, c.depth, c.num_heads, c.mlp_dim, c.pos_embed,
                         c.dropout, activation_checkpointing=c.activation_checkpointing)
        if c.name == "monai_unetr":
            return monai_unetr(in_channels, n_classes, img_size, c.feature_size or 2 * n_classes, c.hidden_size,
                               c.num_heads, c.mlp_dim, c.norm, c.dropout, patch=patch, depth=c.depth)
        if c.name == "monai_vnet":
            from monai.networks.nets import VNet

            if 16 % in_channels:
                raise ValueError(f"MONAI VNet needs 16 divisible by the input channels, got {in_channels}")
            return VNet(3, in_channels, n_classes, dropout_prob_down=c.dropout or None,
                        dropout_prob_up=(c.dropout or None, c.dropout))
    except ValueError as e:
        raise ConfigError(f"model.name={c.name}, data.crop {list(size)}: {e}") from None
    raise ConfigError(f"unknown model.name {c.name!r}; use vipr, copra, vit, monai_unetr or monai_vnet")


def monai_unetr(in_channels: int, n_classes: int, img_size: int | Sequence[int], feature_size: int,
                hidden_size: int = 512, num_heads: int = 8, mlp_dim: int = 2048, norm: str = "instance",
                dropout: float = 0.0, flash: bool = True, patch: Sequence[int] = (16,), depth: int = 12) -> nn.Module:
    """MONAI UNETR (patch 16 and 12 blocks fixed by MONAI), with SDPA attention in every block if ``flash``."""
    from monai.networks.nets import UNETR

    if set(patch) != {16} or depth != 12:
        raise ValueError(f"MONAI UNETR has patch 16 and 12 blocks, got patch_size {list(patch)}, depth {depth}")
    if norm not in ("instance", "batch"):
        raise ValueError(f"the MONAI UNETR peer takes norm instance or batch, got {norm}")
    net = UNETR(in_channels, n_classes, img_size, feature_size=feature_size, hidden_size=hidden_size,
                mlp_dim=mlp_dim, num_heads=num_heads, norm_name=norm, dropout_rate=dropout)
    for block in net.vit.blocks:
        block.attn.use_flash_attention = flash
    return net
