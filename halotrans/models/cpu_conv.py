"""CPU kernel choices for the stride-1 'same' 3D convolutions of vipr and copra, behind one switch.

PyTorch picks a convolution kernel from the tensor shapes; on CPUs some of its choices are slow for
our shapes. :class:`halotrans.models.blocks.Conv3d` routes through :func:`same_conv3d` when
:func:`applies` (a CPU, float32, no autocast, kernel at most 3 wide, and :data:`ENABLED`); the
result equals ``F.conv3d(x, w, padding=k // 2)`` (forward and backward, tested). Measured on the
2-core test machine:

- PyTorch sends a batch-1 convolution with C·D·H ≤ 20480 (e.g. 56 channels at 16³, 224 at 8³)
  to its im2col ``slow_conv3d`` kernel, 2× slower forward and backward than oneDNN: such inputs
  are cut in two halves along D, each with a halo of ``k // 2`` voxels, and run as a batch of two;
- on volumes of 32³ voxels or more, oneDNN is 1.3-1.7× faster (forward + backward) on
  channels-last tensors than on the default layout at 14-28 channels: see :class:`_ChannelsLastConv`.

GPUs never take these paths. Switch them off to compare with plain PyTorch kernels:
``HALOTRANS_CPU_CONV=0`` in the environment, or ``with cpu_conv.disabled(): ...``.

Periodic ('circular') padding, for networks whose samples are whole periodic boxes, goes through
the same routes: the input is padded circularly and convolved without padding
(:func:`pad_periodic`; :func:`same_conv3d` with ``circular=True``, :func:`periodic_conv3d` elsewhere,
on any device).
Autograd then keeps only the unpadded input: the padded copy is made again in the backward pass,
and the gradient of the wrapped rows is added back to the rows they copy (:func:`fold_periodic`).
"""

from __future__ import annotations

import contextlib
import os
from typing import Iterator

import torch
import torch.nn.functional as F

#: the switch: use the measured CPU kernel choices (environment ``HALOTRANS_CPU_CONV=0`` turns it off)
ENABLED = os.environ.get("HALOTRANS_CPU_CONV", "1") != "0"


@contextlib.contextmanager
def disabled() -> Iterator[None]:
    """Plain PyTorch convolutions inside the block."""
    global ENABLED
    kept, ENABLED = ENABLED, False
    try:
        yield
    finally:
        ENABLED = kept


def applies(x: torch.Tensor, kernel_size: int) -> bool:
    """Whether :func:`same_conv3d` may take this convolution (CPU, fp32, no autocast, k ≤ 3, switch on)."""
    return (ENABLED and x.device.type == "cpu" and x.dtype == torch.float32 and kernel_size <= 3
            and not torch.is_autocast_enabled("cpu"))


def same_conv3d(x: torch.Tensor, weight: torch.Tensor, circular: bool = False) -> torch.Tensor | None:
    """Stride-1 'same' convolution of (B, C, D, H, W) ``x`` by a faster CPU route, or None where plain
    ``F.conv3d`` is already the fastest choice. ``circular``: pad periodically instead of with zeros."""
    b, c, d, h, w = x.shape
    k = weight.shape[-1]
    if b == 1 and c * d * h <= 20480 and d % 2 == 0:
        p = k // 2
        padded = pad_periodic(x, p) if circular else F.pad(x, (p,) * 6)
        halves = torch.cat([padded[:, :, : d // 2 + 2 * p], padded[:, :, d // 2:]], dim=0)
        y = F.conv3d(halves, weight)
        return torch.cat([y[:1], y[1:]], dim=2)
    if d * h * w >= 32**3:
        return _SameConv.apply(x, weight, k // 2, circular, True)
    return None


def periodic_conv3d(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Stride-1 convolution of (B, C, D, H, W) ``x`` padded periodically by ``k // 2`` on every face, on
    any device (= ``F.conv3d(pad_periodic(x, k // 2), weight)``, storing only ``x``).
    Under autocast it runs in the autocast dtype, as ``F.conv3d`` would."""
    device = x.device.type
    if torch.amp.is_autocast_available(device) and torch.is_autocast_enabled(device):  # (not on "meta")
        dtype = torch.get_autocast_dtype(device)
        x, weight = x.to(dtype), weight.to(dtype)
    return _SameConv.apply(x, weight, weight.shape[-1] // 2, True, False)


def pad_periodic(x: torch.Tensor, p: int) -> torch.Tensor:
    """(B, C, D, H, W) ``x`` extended periodically by ``p`` on each face of the last 3 axes. Unlike
    ``F.pad(mode="circular")`` it also wraps more than once (a side shorter than ``p``, e.g. the 1³
    bottom of a 16³ crop under a 5³ conv: the periodic signal is repeated)."""
    if p <= min(x.shape[2:]):
        return F.pad(x, (p,) * 6, mode="circular")
    for dim in (2, 3, 4):
        x = x.index_select(dim, _wrapped(x.shape[dim], p, x.device))
    return x


def fold_periodic(grad: torch.Tensor, p: int) -> torch.Tensor:
    """Adjoint of :func:`pad_periodic` by ``p`` (in place on ``grad``, which is returned narrowed, where
    no side wraps more than once): the gradient of each wrapped row is added to the row it copies."""
    for dim in (2, 3, 4):
        n = grad.shape[dim] - 2 * p
        if p <= n:
            grad.narrow(dim, p, p).add_(grad.narrow(dim, p + n, p))  # the rows after the far face copy the first
            grad.narrow(dim, n, p).add_(grad.narrow(dim, 0, p))       # the rows before the near face copy the last
            grad = grad.narrow(dim, p, n)
        else:
            shape = list(grad.shape)
            shape[dim] = n
            grad = grad.new_zeros(shape).index_add_(dim, _wrapped(n, p, grad.device), grad)
    return grad


def _wrapped(n: int, p: int, device: torch.device) -> torch.Tensor:
    """Indices of rows -p .. n + p - 1 of a periodic axis of n rows."""
    return torch.arange(-p, n + p, device=device) % n


class _SameConv(torch.autograd.Function):
    """'Same' convolution (zero or periodic padding ``padding``) that stores only ``x`` for the backward
    pass, optionally on a channels-last copy (output in the default layout). The copy and the periodic
    padding are made again in the backward pass instead of being stored: the activation before the
    convolution keeps ``x`` anyway."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, padding: int, circular: bool,
                channels_last: bool) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        ctx.padding, ctx.circular, ctx.channels_last = padding, circular, channels_last
        xp, pad = _padded(x, padding, circular, channels_last)
        return F.conv3d(xp, weight, padding=pad).contiguous()

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None, None, None, None]:
        x, weight = ctx.saved_tensors
        layout = torch.channels_last_3d if ctx.channels_last else torch.contiguous_format
        xp, pad = _padded(x, ctx.padding, ctx.circular, ctx.channels_last)
        grad_x, grad_w, _ = torch.ops.aten.convolution_backward(
            grad.contiguous(memory_format=layout), xp, weight, None, [1] * 3, [pad] * 3, [1] * 3, False, [0] * 3, 1,
            [ctx.needs_input_grad[0], ctx.needs_input_grad[1], False])
        if grad_x is not None:
            grad_x = (fold_periodic(grad_x, ctx.padding) if ctx.circular else grad_x).contiguous()
        return grad_x, grad_w, None, None, None


def _padded(x: torch.Tensor, padding: int, circular: bool, channels_last: bool) -> tuple[torch.Tensor, int]:
    """The input of the convolution and the padding it still needs: (x padded circularly, 0) or (x, padding)."""
    if circular:
        x, padding = pad_periodic(x, padding), 0
    return (x.contiguous(memory_format=torch.channels_last_3d) if channels_last else x), padding
