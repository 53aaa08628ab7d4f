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


def power_spectrum(delta: torch.Tensor, box_size: float, n_bins: int | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Shell-averaged P(k) of an (n,n,n) overdensity: ``k`` (h/Mpc, mean per bin), ``P`` ((Mpc/h)³), ``modes``.

    Linear bins of width k_F = 2π/L from k_F/2 up to the Nyquist frequency (``n_bins`` of them by default
    n/2); each rfft mode is counted twice except the k_z = 0 and Nyquist planes (so ``modes`` is the
    number of independent complex modes times two). Empty bins give P = 0.
    """
    n = delta.shape[0]
    kf = 2.0 * math.pi / box_size
    n_bins = n // 2 if n_bins is None else n_bins
    delta_k = torch.fft.rfftn(delta.to(torch.float64))
    power = (delta_k.real**2 + delta_k.imag**2) * (box_size**3 / n**6)
    k = torch.sqrt(rfft_k2(n, box_size, device=delta.device, dtype=torch.float64))
    weight = torch.full_like(k, 2.0)
    weight[..., 0] = 1.0
    if n % 2 == 0:
        weight[..., -1] = 1.0
    index = torch.floor(k / kf - 0.5).long().clamp_(min=-1)
    keep = (index >= 0) & (index < n_bins)
    index, weight, k, power = index[keep], weight[keep], k[keep], power[keep]
    modes = torch.zeros(n_bins, dtype=torch.float64, device=delta.device).index_add_(0, index, weight)
    ksum = torch.zeros_like(modes).index_add_(0, index, weight * k)
    psum = torch.zeros_like(modes).index_add_(0, index, weight * power)
    safe = modes.clamp(min=1.0)
    return ksum / safe, psum / safe, modes
