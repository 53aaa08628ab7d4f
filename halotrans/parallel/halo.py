"""Slab-sharded convolutions: periodic halo exchange and group norm synchronised over the slabs.

A volume (B, C, D, H, W) is cut along axis 0 (D) into one slab per rank of a process group, rank
``r`` holding rows ``[r·D/R, (r+1)·D/R)``. A stride-1 convolution of kernel ``k`` needs ``k // 2``
rows of each neighbour (its halo): :func:`halo_exchange` sends this rank's first rows to the
previous rank and its last rows to the next (point-to-point, periodic ring; at the two outer faces of
a non-periodic volume the halo is zeros, the convolution's own zero padding). Its backward pass
sends the halo gradients back and adds them to the rows they came from, so the gradient of a
sharded network is exact. Group (and instance) norm statistics are sums over the whole volume:
:class:`SyncGroupNorm` all-reduces them over the group (two passes, as exact as one process).

A convolution that pads periodically (``padding_mode="circular"``, ``model.padding: circular``) always
wraps its halo around the ring, whatever ``periodic`` says: the slabs then equal the unsharded
network, whose padding treats the volume as a periodic box. (Along axis 0 such a convolution also
pads its halo-extended slab periodically; the rows computed from that padding are dropped.)

Strided 2³ convolutions, 2³ transposed convolutions and 1×1 convolutions act on each slab alone
when the slab boundaries fall on even rows, which
:meth:`halotrans.models.copra.CoPRA.slab_split_error` verifies.

Communication per halo exchange: 2·(k//2)·B·C·H·W values out of each rank (and the same back in
the backward pass), independent of the number of ranks.

    shard_convolutions(model.decoder, group, periodic=False)   # in place; parameters unchanged
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from halotrans.parallel import traffic
from halotrans.yaml_config import ConfigError


def _neighbours(group: Any) -> tuple[int, int, int, int]:
    """(rank in group, group size, global rank of the previous slab, of the next slab) on the ring."""
    size, rank = dist.get_world_size(group), dist.get_rank(group)
    prev = dist.get_global_rank(group, (rank - 1) % size)
    nxt = dist.get_global_rank(group, (rank + 1) % size)
    return rank, size, prev, nxt


def _swap_edges(low: torch.Tensor, high: torch.Tensor, group: Any, periodic: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Send ``low`` (this slab's first rows) to the previous rank and ``high`` (last rows) to the next;
    return (rows received from the previous rank, rows received from the next rank).

    Without ``periodic``, the first rank has no previous and the last no next neighbour: zeros.
    Messages to one peer are posted in a fixed order (low first), so two ranks that are each
    other's previous and next (2 slabs, periodic) pair them correctly, also on NCCL.
    """
    rank, size, prev, nxt = _neighbours(group)
    from_prev, from_next = torch.zeros_like(high), torch.zeros_like(low)
    has_prev, has_next = periodic or rank > 0, periodic or rank < size - 1
    ops = []
    if has_prev:
        ops.append(dist.P2POp(dist.isend, low.contiguous(), prev, group))
        traffic.count("halo", low)
    if has_next:
        ops.append(dist.P2POp(dist.isend, high.contiguous(), nxt, group))
        traffic.count("halo", high)
    if has_next:
        ops.append(dist.P2POp(dist.irecv, from_next, nxt, group))
    if has_prev:
        ops.append(dist.P2POp(dist.irecv, from_prev, prev, group))
    if ops:
        for req in dist.batch_isend_irecv(ops):
            req.wait()
    return from_prev, from_next


class _HaloExchange(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, width: int, group: Any, periodic: bool) -> torch.Tensor:
        if x.shape[2] < width:
            raise ValueError(f"a slab of {x.shape[2]} rows is thinner than the halo of {width} rows it must send")
        ctx.width, ctx.group, ctx.periodic = width, group, periodic
        from_prev, from_next = _swap_edges(x[:, :, :width], x[:, :, -width:], group, periodic)
        return torch.cat([from_prev, x, from_next], dim=2)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None, None, None]:
        w = ctx.width
        # the gradient of our lower halo belongs to the previous rank's last rows, and vice versa
        from_prev, from_next = _swap_edges(grad[:, :, :w], grad[:, :, -w:], ctx.group, ctx.periodic)
        grad_x = grad[:, :, w:-w].clone()
        grad_x[:, :, :w] += from_prev
        grad_x[:, :, -w:] += from_next
        return grad_x, None, None, None


def halo_exchange(x: torch.Tensor, width: int, group: Any, periodic: bool = False) -> torch.Tensor:
    """(B, C, d, H, W) slab → (B, C, d + 2·width, H, W): ``width`` rows of each neighbour slab on
    either side along axis 0 (zeros past a non-periodic face). Differentiable."""
    if width == 0:
        return x
    return _HaloExchange.apply(x, width, group, periodic)


class _SyncStandardize(torch.autograd.Function):
    """x̂ = (x − μ)/√(σ² + ε), μ and σ² (biased) over the last dim of x (S, n) and over every rank;
    statistics in float32 at least (float64 stays float64)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, eps: float, group: Any) -> torch.Tensor:
        xf = x.to(torch.promote_types(x.dtype, torch.float32))
        stats = torch.stack([xf.sum(-1), torch.full_like(xf[:, 0], xf.shape[-1])])
        dist.all_reduce(stats, group=group)
        traffic.count("norm", stats)
        count = stats[1].clamp_min(1.0)
        mean = (stats[0] / count)[:, None]
        sq = ((xf - mean) ** 2).sum(-1)
        dist.all_reduce(sq, group=group)
        traffic.count("norm", sq)
        rstd = torch.rsqrt(sq / count + eps)[:, None]
        xhat = ((xf - mean) * rstd).to(x.dtype)
        ctx.save_for_backward(xhat, rstd, count)
        ctx.group = group
        return xhat

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        xhat, rstd, count = ctx.saved_tensors
        acc = torch.promote_types(grad.dtype, torch.float32)
        g, xh = grad.to(acc), xhat.to(acc)
        sums = torch.stack([g.sum(-1), (g * xh).sum(-1)])
        dist.all_reduce(sums, group=ctx.group)
        traffic.count("norm", sums)
        mean_g, mean_gx = (sums[0] / count)[:, None], (sums[1] / count)[:, None]
        return (rstd * (g - mean_g - xh * mean_gx)).to(grad.dtype), None, None


class SyncGroupNorm(nn.Module):
    """``nn.GroupNorm`` whose statistics run over the slabs of every rank of ``group``.

    Holds the SAME ``weight``/``bias`` parameters as the norm it replaces (same state-dict keys).
    """

    def __init__(self, norm: nn.GroupNorm, group: Any):
        super().__init__()
        self.num_groups, self.num_channels, self.eps = norm.num_groups, norm.num_channels, norm.eps
        self.weight, self.bias = norm.weight, norm.bias
        self.group = group

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c = x.shape[:2]
        xhat = _SyncStandardize.apply(x.reshape(b * self.num_groups, -1), self.eps, self.group).view(x.shape)
        if self.weight is None:
            return xhat
        shape = (1, c) + (1,) * (x.ndim - 2)
        return torch.addcmul(self.bias.view(shape), xhat, self.weight.view(shape))


def _halo_hooks(conv: nn.Conv3d, width: int, group: Any, periodic: bool) -> None:
    """Give ``conv`` (stride 1, 'same' padding) its neighbours' rows before, and drop the rows
    computed from its own zero padding after: the module's forward (and its fast paths) is unchanged."""

    def add_halo(_module: nn.Module, args: tuple) -> tuple:
        return (halo_exchange(args[0], width, group, periodic), *args[1:])

    def drop_halo(_module: nn.Module, _args: tuple, out: torch.Tensor) -> torch.Tensor:
        return out[:, :, width:-width]

    conv.register_forward_pre_hook(add_halo)
    conv.register_forward_hook(drop_halo)


def shard_convolutions(module: nn.Module, group: Any, periodic: bool = False) -> int:
    """Make every convolution and norm inside ``module`` act on slabs of ``group`` (in place).

    Stride-1 'same' convolutions exchange halos (periodic ones always around the ring), ``GroupNorm``
    becomes :class:`SyncGroupNorm`;
    strided convolutions with kernel = stride and no padding (and transposed ones) stay local.
    Anything else (batch norm, other strides/paddings) raises :class:`ConfigError`.
    Returns the largest halo width (rows).
    """
    widest = 0
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.GroupNorm):
                setattr(parent, name, SyncGroupNorm(child, group))
            elif isinstance(child, (nn.BatchNorm3d, nn.InstanceNorm3d)):
                raise ConfigError(f"model.norm: {type(child).__name__} cannot be sharded across slabs; "
                                  "use norm: instance or group with train.sp > 1")
    for conv in module.modules():
        if isinstance(conv, nn.ConvTranspose3d):
            if conv.stride != conv.kernel_size or conv.padding != (0, 0, 0):
                raise ConfigError(f"cannot shard {conv}: only transposed convs with kernel = stride are local")
        elif isinstance(conv, nn.Conv3d):
            k, s = conv.kernel_size[0], conv.stride[0]
            if s == 1 and k > 1:
                if conv.padding[0] != k // 2 or conv.dilation[0] != 1 or k % 2 == 0:
                    raise ConfigError(f"cannot shard {conv}: needs an odd kernel with 'same' padding")
                _halo_hooks(conv, k // 2, group, periodic or conv.padding_mode == "circular")
                widest = max(widest, k // 2)
            elif s != k or conv.padding[0] != 0:
                raise ConfigError(f"cannot shard {conv}: strided convs need kernel = stride and no padding")
    return widest
