"""Gaussian initial conditions and Lagrangian perturbation theory (1LPT/2LPT) displacements.

Fields are (n,n,n) in C order on a periodic ``box_size`` Mpc/h cube, axis 0 = x, grid point (i,j,k)
at Lagrangian position q = (i,j,k)·L/n. The white noise is drawn with numpy from the seed alone
(``numpy.random.default_rng(seed).standard_normal((n,n,n))``), so a seed gives the same field on any
device; the Fourier work runs in float64 torch on the requested device.

Conventions (Crocce, Pueblas & Scoccimarro 2006): δ is the linear overdensity at z=0 (D1 = 1);
x(q, a) = q + D1(a) Ψ1(q) + D2(a) Ψ2(q) with
Ψ1 = −∇φ1, ∇²φ1 = δ, and Ψ2 = ∇φ2, ∇²φ2 = Σ_{i<j} [φ1,ii φ1,jj − (φ1,ij)²]; D2 ≈ −3/7 D1².
"""

from __future__ import annotations

import numpy as np
import torch

from halotrans.sims.cosmology import Cosmology
from halotrans.sims.fourier import rfft_k2, rfft_wavevectors

_PAIRS = ((0, 0), (1, 1), (2, 2), (0, 1), (0, 2), (1, 2))


def white_noise(seed: int, n: int) -> np.ndarray:
    """Unit-variance Gaussian white noise, float64 (n,n,n), from ``numpy.random.default_rng(seed)``."""
    return np.random.default_rng(int(seed)).standard_normal((n, n, n))


def linear_density_k(cosmo: Cosmology, noise: np.ndarray, box_size: float,
                     device: torch.device | str = "cpu") -> torch.Tensor:
    """Fourier modes (``torch.fft.rfftn`` convention, complex128 (n,n,n//2+1)) of the z=0 linear δ.

    δ_k = FFT(noise) · sqrt(P(k) / V_cell), so ⟨|δ_k|²⟩ V_cell / n³ = P(k); the k=0 mode is zero.
    """
    n = noise.shape[0]
    k = torch.sqrt(rfft_k2(n, box_size, device="cpu", dtype=torch.float64)).numpy()
    cell_volume = (box_size / n) ** 3
    amplitude = torch.from_numpy(np.sqrt(cosmo.linear_power(k) / cell_volume)).to(device)
    delta_k = torch.fft.rfftn(torch.from_numpy(noise).to(device))
    delta_k *= amplitude
    return delta_k


def linear_density(delta_k: torch.Tensor, n: int) -> torch.Tensor:
    """Real-space (n,n,n) field of ``delta_k``."""
    return torch.fft.irfftn(delta_k, s=(n, n, n))


def lpt_displacements(delta_k: torch.Tensor, box_size: float, order: int = 2
                      ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Ψ1 and (for ``order=2``) Ψ2 in Mpc/h, each (3,n,n,n) float64, from the z=0 δ modes.

    Ψ1_k = i k δ_k / k²; Ψ2_k = −i k S_k / k² with S the 2LPT source Σ_{i<j}[φ,ii φ,jj − φ,ij²],
    φ,ij = IFFT(k_i k_j δ_k / k²). Nyquist planes carry no gradient.
    """
    n = delta_k.shape[0]
    kw = dict(device=delta_k.device, dtype=torch.float64)
    kvec = _gradient_wavevectors(n, box_size, **kw)
    k2 = rfft_k2(n, box_size, **kw)
    k2[0, 0, 0] = 1.0
    phi_k = delta_k / k2  # = −(Fourier potential) ; φ,ij = IFFT(k_i k_j phi_k)
    psi1 = torch.stack([torch.fft.irfftn(1j * kv * phi_k, s=(n, n, n)) for kv in kvec])
    if order == 1:
        return psi1, None
    full = rfft_wavevectors(n, box_size, **kw)
    hess = {(i, j): torch.fft.irfftn(full[i] * full[j] * phi_k, s=(n, n, n)) for i, j in _PAIRS}
    source = (hess[0, 0] * hess[1, 1] + hess[0, 0] * hess[2, 2] + hess[1, 1] * hess[2, 2]
              - hess[0, 1] ** 2 - hess[0, 2] ** 2 - hess[1, 2] ** 2)
    source_k = torch.fft.rfftn(source)
    source_k /= k2
    source_k[0, 0, 0] = 0.0
    psi2 = torch.stack([torch.fft.irfftn(-1j * kv * source_k, s=(n, n, n)) for kv in kvec])
    return psi1, psi2


def _gradient_wavevectors(n: int, box_size: float, **kw) -> tuple[torch.Tensor, ...]:
    """k_x, k_y, k_z for a spectral gradient: like :func:`rfft_wavevectors` with Nyquist set to 0."""
    kvec = [k.clone() for k in rfft_wavevectors(n, box_size, **kw)]
    if n % 2 == 0:
        kvec[0][n // 2] = 0.0
        kvec[1][:, n // 2] = 0.0
        kvec[2][..., n // 2] = 0.0
    return tuple(kvec)


def lagrangian_grid(n: int, box_size: float, device: torch.device | str = "cpu",
                    dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Particle positions q (3, n³) in Mpc/h, particle index = (i·n + j)·n + k."""
    axis = torch.arange(n, device=device, dtype=dtype) * (box_size / n)
    return torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij")).reshape(3, -1)


def lpt_particles(cosmo: Cosmology, a: float, psi1: torch.Tensor, psi2: torch.Tensor | None,
                  box_size: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Positions (3, n³) in [0, L) Mpc/h and momenta p = a³E dx/da (3, n³) at scale factor ``a``.

    Returned as float32 for the particle-mesh run (the LPT sums are done in float64).
    """
    n = psi1.shape[1]
    disp = cosmo.growth(a) * psi1.reshape(3, -1)
    mom = cosmo.momentum_factor(a, 1) * psi1.reshape(3, -1)
    if psi2 is not None:
        disp = disp + cosmo.growth2(a) * psi2.reshape(3, -1)
        mom = mom + cosmo.momentum_factor(a, 2) * psi2.reshape(3, -1)
    pos = torch.remainder(lagrangian_grid(n, box_size, psi1.device) + disp, box_size)
    return pos.to(torch.float32), mom.to(torch.float32)
