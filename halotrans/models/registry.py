"""Network registry: ``model.name`` → the class that builds it. Adding a network is one module and one line here.

    model = build_model(cfg.model, in_channels=2, n_classes=5, img_size=cfg.data.crop)

Entries are ``"module:Class"`` strings, imported on first use (``--help`` and config checks stay
fast, and a network's dependencies, e.g. MONAI, load only when it is built). Each class derives
from :class:`~halotrans.models.network.Network`: ``from_config`` builds it, and it declares its
input multiple and whether it shards into slabs. A size the network cannot take raises
:class:`~halotrans.yaml_config.ConfigError` naming the key.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

from halotrans.registry import Registry
from halotrans.yaml_config import ConfigError

if TYPE_CHECKING:
    from torch import nn

    from halotrans.models.config import ModelConfig

#: model.name -> "module:Class" of a :class:`~halotrans.models.network.Network`
MODELS = Registry("model.name", {
    "vipr": "halotrans.models.vipr:ViPR",
    "copra": "halotrans.models.copra:CoPRA",
    "vit": "halotrans.models.vit:ViT3D",
    "monai_unetr": "halotrans.models.monai_peers:MonaiUNETR",
    "monai_vnet": "halotrans.models.monai_peers:MonaiVNet",
})


def build_model(model_cfg: "ModelConfig", in_channels: int, n_classes: int,
                img_size: int | Sequence[int]) -> "nn.Module":
    """The network named ``model_cfg.name``: (B, in_channels, *img_size) -> logits (B, n_classes, *img_size)
    (``vit``: -> (tokens (B, L, hidden), hidden states))."""
    cls = MODELS.get(model_cfg.name)
    size = (img_size,) * 3 if isinstance(img_size, int) else tuple(img_size)
    multiple = cls.input_multiple(model_cfg)
    if any(s % m for s, m in zip(size, multiple)):
        raise ConfigError(f"model.name={model_cfg.name}: data.crop {list(size)} must be divisible by "
                          f"{list(multiple) if len(set(multiple)) > 1 else multiple[0]}")
    try:
        return cls.from_config(model_cfg, in_channels, n_classes, img_size)
    except ValueError as e:
        raise ConfigError(f"model.name={model_cfg.name}, data.crop {list(size)}: {e}") from None
