"""What a network declares about itself, so that the trainer, the parallel code and the memory model
never test its type or name.

A network class registered in :mod:`halotrans.models.registry` derives from :class:`Network` and
implements ``from_config``; the rest are capabilities with conservative defaults:

* ``from_config(cfg, in_channels, n_classes, img_size)``: the module for a ``model`` config section;
  a size or setting it cannot take raises ``ValueError`` (the registry turns it into a ConfigError);
* ``input_multiple(cfg)``: every side of an input must be a multiple of these (patches, halvings);
* ``slab_parallel``: the instance can be cut into slabs along axis 0 over a sequence-parallel group
  (:mod:`halotrans.parallel.shard`); ``slab_split_error(cfg, side, sp)`` says why a side of ``side``
  voxels does not split into ``sp`` slabs for this network (None if it does);
* ``checkpointable``: ``model.activation_checkpointing`` recomputes part of the network (a memory lever);
* ``token_patch(cfg)``: the patch of a network that attends over patch tokens (None for a CNN).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar, Sequence

if TYPE_CHECKING:
    from torch import nn

    from halotrans.models.config import ModelConfig


def patch_triple(cfg: "ModelConfig") -> tuple[int, int, int]:
    """``cfg.patch_size`` as three ints (one int means a cubic patch)."""
    patch = (cfg.patch_size,) if isinstance(cfg.patch_size, int) else tuple(cfg.patch_size)
    return (patch * 3 if len(patch) == 1 else patch)  # type: ignore[return-value]


class Network:
    """Mixin of the registered networks: construction from a config and declared capabilities."""

    slab_parallel: ClassVar[bool] = False
    checkpointable: ClassVar[bool] = False

    @classmethod
    def from_config(cls, cfg: "ModelConfig", in_channels: int, n_classes: int,
                    img_size: int | Sequence[int]) -> "nn.Module":
        raise NotImplementedError(f"{cls.__name__}.from_config")

    @classmethod
    def input_multiple(cls, cfg: "ModelConfig") -> tuple[int, int, int]:
        return (1, 1, 1)

    @classmethod
    def slab_split_error(cls, cfg: "ModelConfig", side: int, sp: int) -> str | None:
        return f"model.name={cfg.name} has no slab-parallel form (train.sp > 1 shards vipr and copra crops)"

    @classmethod
    def token_patch(cls, cfg: "ModelConfig") -> tuple[int, int, int] | None:
        return None
