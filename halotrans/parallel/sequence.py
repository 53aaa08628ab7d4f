"""Ulysses sequence parallelism of the shared ViT (DeepSpeed ``DistributedAttention``).

Every rank of a sequence-parallel (SP) group of ``sp`` ranks holds 1/sp of the tokens (B, L/sp, K).
Patch embedding, LayerNorms and MLPs act per token; attention is the one place where a token needs
the others: :class:`UlyssesAttention` replaces each block's ``attn.core`` and all-to-alls q, k, v
from [b, L/sp, heads, d] to [b, L, heads/sp, d] (whole sequence, 1/sp of the heads), attends, and
all-to-alls the result back. ``model.num_heads`` must therefore be a multiple of ``sp``.

Two ways to hand a :class:`~halotrans.models.vit.ViT3D` its tokens:

* :func:`shard_slab_tokens` (vipr): the ViT gets this rank's slab of the crop along axis 0,
  (B, C, D/sp, H, W); as tokens are in C order over the patch grid, the slab's patches are the
  contiguous token range ``[r·L/sp, (r+1)·L/sp)``. Outputs stay sharded: the vipr decoder works
  on the same slabs (:mod:`halotrans.parallel.halo`), so the skips need no gather at all.
* :func:`shard_sequence` (bare ViT, JEPA encoders): the ViT takes whole inputs and returns whole
  outputs on every rank; inside, the embedded tokens are padded to a multiple of ``sp`` (padding
  keys are masked out of attention, so any token count works, e.g. JEPA contexts) and split,
  and the outputs are put back together with a differentiable all-gather (:func:`gather_tokens`).

Gradient convention (all collectives here): the objective is the SUM of the ranks' losses, each
collective's backward pass is its exact adjoint (all-gather → reduce-scatter, all-to-all → the
reverse all-to-all). DeepSpeed sums gradients over the SP ranks (it divides by the DP size only),
so the losses of one SP group must add up to the sample's loss: a loss computed from gathered,
replicated outputs is divided by ``sp``; a loss over this rank's slab is normalised by the
group's total weight (:mod:`halotrans.parallel.shard`).
"""

from __future__ import annotations

import math
from functools import partial
from typing import Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from halotrans.parallel import traffic
from halotrans.parallel.groups import SequenceParallel
from halotrans.yaml_config import ConfigError


class _AllGather(torch.autograd.Function):
    """Concatenate every rank's equal-shaped ``x`` along ``dim``; backward: sum the gradients, keep our part."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, dim: int, group) -> torch.Tensor:
        size = dist.get_world_size(group)
        parts = [torch.empty_like(x) for _ in range(size)]
        dist.all_gather(parts, x.contiguous(), group=group)
        traffic.count("gather", x, fraction=size - 1)
        ctx.dim, ctx.group, ctx.size, ctx.rank = dim, group, size, dist.get_rank(group)
        return torch.cat(parts, dim=dim)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        grad = grad.contiguous()
        dist.all_reduce(grad, group=ctx.group)
        traffic.count("gather", grad, fraction=2 * (ctx.size - 1) / ctx.size)
        return grad.chunk(ctx.size, dim=ctx.dim)[ctx.rank].contiguous(), None, None


def all_gather(x: torch.Tensor, dim: int, group) -> torch.Tensor:
    """Differentiable all-gather: every rank's ``x`` (same shape) concatenated along ``dim`` in rank order."""
    return _AllGather.apply(x, dim, group)


def split_tokens(tokens: torch.Tensor, sp: SequenceParallel) -> torch.Tensor:
    """This rank's contiguous part of a sequence (B, L, K) zero-padded to a multiple of the group size."""
    size, (b, length, k) = sp.size, tokens.shape
    padded = math.ceil(length / size) * size
    if padded != length:
        tokens = torch.cat([tokens, tokens.new_zeros(b, padded - length, k)], dim=1)
    n = padded // size
    return tokens[:, sp.rank * n:(sp.rank + 1) * n]


def gather_tokens(local: torch.Tensor, length: int, sp: SequenceParallel) -> torch.Tensor:
    """Inverse of :func:`split_tokens` (differentiable): the whole sequence (B, length, K) on every rank."""
    return all_gather(local, 1, sp.group)[:, :length]


class KeyPadding:
    """How many keys of the padded sequence are real tokens (None: no padding), read by the attention
    of the block that runs now; set again before every block call, including checkpoint recomputes."""

    valid: int | None = None


class _KeyMaskedAttention(nn.Module):
    """The ViT's local attention core on the whole (padded) sequence, ignoring padding keys."""

    def __init__(self, local: nn.Module, padding: KeyPadding | None):
        super().__init__()
        self.local = local
        self.padding = padding

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        valid = self.padding.valid if self.padding is not None else None
        if valid is None:
            return self.local(q, k, v)
        keep = torch.arange(k.shape[1], device=k.device) < valid
        p = self.local.dropout if self.training else 0.0
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                             attn_mask=keep[None, None, None, :], dropout_p=p)
        return out.transpose(1, 2)


class _CountGrad(torch.autograd.Function):
    """Identity whose backward pass counts the all-to-all its gradient goes through."""

    @staticmethod
    def forward(ctx, t: torch.Tensor, fraction: float) -> torch.Tensor:
        ctx.fraction = fraction
        return t.view_as(t)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        traffic.count("all_to_all", grad, fraction=ctx.fraction)
        return grad, None


class UlyssesAttention(nn.Module):
    """Drop-in ``block.attn.core``: q, k, v [b, L/sp, heads, d] of this rank → [b, L/sp, heads, d],
    exact softmax attention over the whole sequence of the SP group (DeepSpeed ``DistributedAttention``)."""

    def __init__(self, local: nn.Module, sp: SequenceParallel, padding: KeyPadding | None = None):
        super().__init__()
        from deepspeed.sequence.layer import DistributedAttention

        self.sp = sp
        self.attention = DistributedAttention(_KeyMaskedAttention(local, padding), sp.group, scatter_idx=2,
                                              gather_idx=1)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        f = (self.sp.size - 1) / self.sp.size
        traffic.count("all_to_all", q, k, v, fraction=f)
        q, k, v = (_CountGrad.apply(t, f) for t in (q, k, v))
        out = self.attention(q, k, v, 0)
        traffic.count("all_to_all", out, fraction=f)
        return _CountGrad.apply(out, f)


def _install_attention(vit: nn.Module, sp: SequenceParallel, padding: KeyPadding | None) -> None:
    heads = vit.blocks[0].attn.num_heads if len(vit.blocks) else sp.size
    if heads % sp.size:
        raise ConfigError(f"model.num_heads = {heads} is not divisible by train.sp = {sp.size}: "
                          "Ulysses gives every rank whole attention heads")
    for block in vit.blocks:
        block.attn.core = UlyssesAttention(block.attn.core, sp, padding)


def _run_block(padding: KeyPadding, valid: int | None, block: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    padding.valid = valid
    return block(tokens)


def shard_sequence(vit: nn.Module, sp: SequenceParallel) -> None:
    """Sequence-parallel ``vit`` (a :class:`~halotrans.models.vit.ViT3D`, in place) that takes whole
    inputs and returns whole outputs (tokens and hidden states, gathered) on every rank of the group.

    Its ``forward`` is ViT3D's with the tokens split after the embedding and gathered at the end;
    each block call carries the padding of its own sequence, so checkpoint recomputes in the
    backward pass see the right one even after other forward passes (JEPA's context and target).
    """
    padding = KeyPadding()
    _install_attention(vit, sp, padding)

    def forward(x: torch.Tensor, keep_idx: torch.Tensor | None = None,
                layers: Sequence[int] = ()) -> tuple[torch.Tensor, list[torch.Tensor]]:
        if any(not 1 <= i <= vit.depth for i in layers):
            raise ValueError(f"layers must be in 1..{vit.depth}, got {tuple(layers)}")
        whole = vit.embed(x, keep_idx)
        length = whole.shape[1]
        tokens = split_tokens(whole, sp)
        run = partial(_run_block, padding, length if tokens.shape[1] * sp.size != length else None)
        recompute = vit.activation_checkpointing and vit.training and torch.is_grad_enabled()
        hidden = []
        for i, block in enumerate(vit.blocks, start=1):
            tokens = checkpoint(run, block, tokens, use_reentrant=False) if recompute else run(block, tokens)
            if i in layers:
                hidden.append(gather_tokens(tokens, length, sp))
        return gather_tokens(vit.norm(tokens), length, sp), hidden

    vit.forward = forward


def shard_slab_tokens(vit: nn.Module, sp: SequenceParallel) -> None:
    """Sequence-parallel ``vit`` (in place) that takes this rank's slab (B, C, D/sp, H, W) of the input
    along axis 0 and returns the slab's tokens (B, L/sp, K), its hidden states, and their volume."""
    g0, g1, g2 = vit.grid_size
    if g0 % sp.size:
        raise ConfigError(f"the crop has {g0} patch rows along axis 0 ({vit.img_size[0]} voxels / patch "
                          f"{vit.patch_size[0]}), not divisible by train.sp = {sp.size}: every rank must hold "
                          "whole patch rows; change data.crop or train.sp")
    _install_attention(vit, sp, None)
    local_grid = (g0 // sp.size, g1, g2)
    n = math.prod(local_grid)
    start = sp.rank * n
    slab = (vit.img_size[0] // sp.size, *vit.img_size[1:])

    def check_input(x: torch.Tensor) -> None:
        if x.ndim != 5 or x.shape[1] != vit.in_channels or tuple(x.shape[2:]) != slab:
            raise ValueError(f"expected this rank's slab (B, {vit.in_channels}, {', '.join(map(str, slab))}) of "
                             f"a {vit.img_size} crop split over {sp.size} ranks, got {tuple(x.shape)}")

    def embed(x: torch.Tensor, keep_idx: torch.Tensor | None = None) -> torch.Tensor:
        if keep_idx is not None:
            raise ValueError("a slab-sharded ViT embeds whole slabs (no keep_idx)")
        check_input(x)
        return vit.patch_embed(x) + vit.pos_embed[:, start:start + n]

    def tokens_to_volume(tokens: torch.Tensor) -> torch.Tensor:
        return tokens.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], *local_grid)

    vit.check_input, vit.embed, vit.tokens_to_volume = check_input, embed, tokens_to_volume
