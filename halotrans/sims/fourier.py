"""Wavevector grids for real FFTs of periodic (N,N,N) boxes in C order (axis 0 = x)."""

from __future__ import annotations

import math

import torch


def rfft_wavevectors(
    n: int, box_size: float, *, device: torch.device | str | None = None, dtype: torch.dtype = torch.float32
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Wavevectors (h/Mpc) matching ``torch.fft.rfftn`` of an (n,n,n) field on a ``box_size`` Mpc/h cube.

    Returns ``kx, ky, kz`` with shapes (n,1,1), (1,n,1), (1,1,n//2+1), ready to broadcast.
    """
    scale = 2.0 * math.pi / box_size
    full = torch.fft.fftfreq(n, d=1.0 / n, device=device, dtype=dtype) * scale
    half = torch.fft.rfftfreq(n, d=1.0 / n, device=device, dtype=dtype) * scale
    return full.view(n, 1, 1), full.view(1, n, 1), half.view(1, 1, -1)


def rfft_k2(n: int, box_size: float, **kw) -> torch.Tensor:
    """|k|² (h/Mpc)² on the rfftn grid, shape (n, n, n//2+1)."""
    kx, ky, kz = rfft_wavevectors(n, box_size, **kw)
    return kx**2 + ky**2 + kz**2
