"""Periodic smoothing of a density field on a scale R (serial, torch FFT; CPU or GPU).

δ_R = IFFT(W(kR) · δ_k) on a cube of side ``box_size`` Mpc/h, R in Mpc/h, with one of two windows:

* ``"gaussian"`` (default): W = exp(−k²R²/2), enclosing M = (2π)^{3/2} ρ̄ R³. It is the window of
  PINOCCHIO's collapse times (``compute_derivative`` in its fmax-fftw.c), of ``shear.smoothing``
  and of the logistic baseline (:mod:`halotrans.eval.baseline`, where δ at R = 2 Mpc/h gives the
  per-voxel AUC 0.90 of DESIGN.md), so our channels and PINOCCHIO's Fmax measure the same thing.
  It is positive in real and Fourier space: no ringing around a peak.
* ``"tophat"``: W = 3(sin x − x cos x)/x³ with x = kR, the real-space sphere of radius R enclosing
  M = 4π/3 ρ̄ R³ (the excursion-set mass filter). Its Fourier lobes change sign, so the smoothed
  field rings at ~1/R; offered for comparison. A Gaussian R_G holds the mass of a top-hat with
  R_TH ≈ 1.56 R_G ((9π/2)^{1/6}).

The k = 0 mode is kept (W(0) = 1), so δ_R has the mean of δ. R = 0 returns δ unchanged.

    d4 = smoothed_density(delta, box_size=64.0, radius=4.0)                  # (N,N,N), δ's dtype
    d4 = smoothed_density(delta, 64.0, 4.0, window="tophat")
"""

from __future__ import annotations

import torch

from halotrans.io import require_cubic
from halotrans.sims.fourier import rfft_k2

WINDOWS = ("gaussian", "tophat")


def window_function(k2: torch.Tensor, radius: float, window: str = "gaussian") -> torch.Tensor:
    """W(kR) at squared wavenumbers ``k2`` [(h/Mpc)²] for a radius in Mpc/h (see the module docstring)."""
    if window not in WINDOWS:
        raise ValueError(f"unknown smoothing window '{window}'; use one of {list(WINDOWS)}")
    if radius < 0:
        raise ValueError(f"smoothing radius must be >= 0 (Mpc/h), got {radius}")
    if radius == 0:
        return torch.ones_like(k2)
    if window == "gaussian":
        return torch.exp(-0.5 * radius**2 * k2)
    x = torch.sqrt(k2) * radius
    small = x < 1e-3  # 3(sin x − x cos x)/x³ = 1 − x²/10 + O(x⁴): the closed form cancels badly here
    xs = torch.where(small, torch.ones_like(x), x)
    exact = 3.0 * (torch.sin(xs) - xs * torch.cos(xs)) / xs**3
    return torch.where(small, 1.0 - x * x / 10.0, exact)


def smoothed_density(delta: torch.Tensor, box_size: float, radius: float, window: str = "gaussian") -> torch.Tensor:
    """δ (N,N,N) on a periodic ``box_size`` Mpc/h cube convolved with ``window`` of ``radius`` Mpc/h.

    Computed in δ's floating dtype and on its device; returns a new (N,N,N) tensor.
    """
    delta = torch.as_tensor(delta)
    n = require_cubic(delta.shape, "delta")
    if not delta.is_floating_point():
        delta = delta.to(torch.get_default_dtype())
    w = window_function(rfft_k2(n, box_size, device=delta.device, dtype=delta.dtype), radius, window)
    if radius == 0:
        return delta.clone()
    return torch.fft.irfftn(torch.fft.rfftn(delta) * w, s=(n, n, n))
