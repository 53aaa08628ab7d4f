"""MONAI's UNETR and VNet built at our networks' size: the peers of the benchmarks.

UNETR: the same hidden/MLP/heads/feature size as ``vipr``, MONAI's fixed 12 blocks and patch 16,
SDPA attention switched on in every block; VNet: MONAI's fixed 16 base filters, 5³ kernels.
Both are MONAI's own decoders (``model.decoder`` does not apply).

``model.padding: circular`` is our adaptation, so that the peers train on the same periodic samples
(whole boxes) as vipr and copra: MONAI has no periodic padding option, so after construction every
stride-1 'same' ``nn.Conv3d`` of the network (3³ in UNETR, 5³ in VNet) gets
``padding_mode="circular"`` (:func:`set_peer_padding`); weights and state-dict keys are unchanged.
VNet then commutes with periodic shifts by its total stride (16), and UNETR with shifts by whole
patches up to its learned position embedding (tested). torch's circular pad wraps at most once, so a
circular MONAI VNet needs crops of at least 32³ (its N/16 bottom is then at least 2³ under 5³ convs).
"""

from __future__ import annotations

from typing import Sequence

from torch import nn

from halotrans.models.config import ModelConfig
from halotrans.models.network import Network, patch_triple


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


def set_peer_padding(net: nn.Module, padding: str) -> nn.Module:
    """Make every stride-1 'same' ``nn.Conv3d`` of a MONAI network (odd kernel wider than 1, padding
    ``k // 2``) pad with ``zeros`` or periodically (``circular``), in place; returns ``net``.
    Patch embeddings, strided down-convolutions, transposed convolutions and 1³ convolutions have no
    padding and are left alone."""
    if padding not in ("zeros", "circular"):
        raise ValueError(f"padding must be 'zeros' or 'circular', got {padding!r}")
    for conv in net.modules():
        if (type(conv) is nn.Conv3d and conv.stride == (1, 1, 1) and max(conv.kernel_size) > 1
                and conv.padding == tuple(k // 2 for k in conv.kernel_size)):
            conv.padding_mode = padding
    return net


class _MonaiPeer(Network):
    @classmethod
    def input_multiple(cls, cfg: ModelConfig) -> tuple[int, int, int]:
        return (16, 16, 16)

    @classmethod
    def slab_split_error(cls, cfg: ModelConfig, side: int, sp: int) -> str | None:
        return "train.sp > 1 shards vipr and copra crops (the MONAI peers have no sharded form)"


class MonaiUNETR(_MonaiPeer):
    """``monai_unetr``: MONAI's UNETR at the size of the ``model`` section."""

    @classmethod
    def from_config(cls, cfg: ModelConfig, in_channels: int, n_classes: int, img_size: int | Sequence[int]) -> nn.Module:
        net = monai_unetr(in_channels, n_classes, img_size, cfg.feature_size or 2 * n_classes, cfg.hidden_size,
                          cfg.num_heads, cfg.mlp_dim, cfg.norm, cfg.dropout, patch=patch_triple(cfg), depth=cfg.depth)
        return set_peer_padding(net, cfg.padding)

    @classmethod
    def token_patch(cls, cfg: ModelConfig) -> tuple[int, int, int]:
        return (16, 16, 16)


class MonaiVNet(_MonaiPeer):
    """``monai_vnet``: MONAI's VNet (16 base filters, 4 halvings)."""

    @classmethod
    def from_config(cls, cfg: ModelConfig, in_channels: int, n_classes: int, img_size: int | Sequence[int]) -> nn.Module:
        from monai.networks.nets import VNet

        if 16 % in_channels:
            raise ValueError(f"MONAI VNet needs 16 divisible by the input channels, got {in_channels}")
        size = (img_size,) * 3 if isinstance(img_size, int) else tuple(img_size)
        if cfg.padding == "circular" and min(size) < 32:
            raise ValueError(f"model.padding: circular for monai_vnet needs every side >= 32 (torch's circular pad "
                             f"wraps at most once, and the 5³ convs of the N/16 bottom pad by 2), got {list(size)}")
        net = VNet(3, in_channels, n_classes, dropout_prob_down=cfg.dropout or None,
                   dropout_prob_up=(cfg.dropout or None, cfg.dropout))
        return set_peer_padding(net, cfg.padding)
