"""Tidal tensor and scalar shear of a periodic density field (serial, torch FFT; CPU or GPU).

The tidal tensor of δ is T_ij = ∂_i∂_j φ with ∇²φ = δ, i.e. T_ij = IFFT(k_i k_j / k² · δ_k), with the
k = 0 mode set to 0 (so tr T = δ − mean δ). Components are stored as (6,N,N,N) in the order
``COMPONENTS`` = xx, yy, zz, xy, xz, yz; fields are (N,N,N), C order, axis 0 = x, on a cube of side
``box_size`` Mpc/h. T_ij is dimensionless.

Nyquist convention (even N), shared by this module and the MPI path: a mixed derivative ∂_i∂_j is
a product of first derivatives, and each first-derivative factor k_i is 0 on its Nyquist plane
(k_i = ±πN/L, where its sign is undefined), so the off-diagonal components vanish there; the
diagonal ones keep k_i² (the usual spectral second derivative), so tr T = δ − mean holds exactly.
The result is real-valued and exact on the grid for a Nyquist cosine
(∂_x∂_y cos(πN x/L)cos(k_y y) ∝ sin(πN x/L) = 0 at every grid point).

The scalar shear ``"q"`` is q = √(½[(λ1−λ2)²+(λ2−λ3)²+(λ1−λ3)²]) of the eigenvalues of T_ij, computed
without an eigen solve from the invariant q² = 1.5·T̃_ij T̃_ij of the traceless part
T̃ = T − (tr T/3)·1, written as ½[(Txx−Tyy)²+(Tyy−Tzz)²+(Tzz−Txx)²] + 3(Txy²+Txz²+Tyz²);
``"q2"`` is q².

    tij = tidal_tensor(delta, box_size=64.0)                         # (6,N,N,N)
    q = tidal_shear(delta, 64.0, definition="q", smoothing=1.0)      # (N,N,N)
"""

from __future__ import annotations

from typing import Iterator

import torch

from halotrans.io import require_cubic
from halotrans.sims.fourier import rfft_wavevectors

COMPONENTS = ("xx", "yy", "zz", "xy", "xz", "yz")
#: axis pairs (i, j) of COMPONENTS
PAIRS = ((0, 0), (1, 1), (2, 2), (0, 1), (0, 2), (1, 2))
DEFINITIONS = ("q", "q2")


def tidal_multipliers(
    n: int,
    box_size: float,
    smoothing: float = 0.0,
    *,
    local: tuple[slice, slice, slice] = (slice(None),) * 3,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float64,
) -> Iterator[torch.Tensor]:
    """Yield, in ``COMPONENTS`` order, the real Fourier multipliers W(k)·k_i k_j / k² on the rfftn grid.

    ``local`` selects a block of the (n, n, n//2+1) rfftn grid (an MPI rank's slab); each multiplier
    has that block's shape. W(k) = exp(−k²R²/2) with R = ``smoothing`` Mpc/h (1 when R = 0).
    Nyquist planes follow the module's convention.
    """
    k = list(rfft_wavevectors(n, box_size, device=device, dtype=dtype))
    kd = [ki.clone() for ki in k]  # first-derivative wavenumbers: 0 on the Nyquist plane
    if n % 2 == 0:
        for ki in kd:
            ki.view(-1)[n // 2] = 0.0
    k = [ki[tuple(local[a] if b == a else slice(None) for b in range(3))] for a, ki in enumerate(k)]
    kd = [ki[tuple(local[a] if b == a else slice(None) for b in range(3))] for a, ki in enumerate(kd)]
    k2 = k[0] ** 2 + k[1] ** 2 + k[2] ** 2
    weight = torch.exp(-0.5 * smoothing**2 * k2) if smoothing > 0 else torch.ones_like(k2)
    weight = torch.where(k2 > 0, weight / torch.where(k2 > 0, k2, 1.0), 0.0)
    for i, j in PAIRS:
        yield weight * (k[i] ** 2 if i == j else kd[i] * kd[j])


def _as_field(delta: torch.Tensor) -> torch.Tensor:
    delta = torch.as_tensor(delta)
    require_cubic(delta.shape, "delta")
    return delta if delta.is_floating_point() else delta.to(torch.get_default_dtype())


def tidal_tensor(delta: torch.Tensor, box_size: float, smoothing: float = 0.0) -> torch.Tensor:
    """T_ij of a periodic (N,N,N) δ on a ``box_size`` Mpc/h cube → (6,N,N,N) xx,yy,zz,xy,xz,yz.

    Computed in δ's dtype and on its device; ``smoothing`` is a Gaussian radius in Mpc/h applied to δ.
    """
    delta = _as_field(delta)
    n = delta.shape[0]
    delta_k = torch.fft.rfftn(delta)
    out = delta.new_empty((6, n, n, n))
    for c, mult in enumerate(tidal_multipliers(n, box_size, smoothing, device=delta.device, dtype=delta.dtype)):
        out[c] = torch.fft.irfftn(delta_k * mult, s=(n, n, n))
    return out


def scalar_shear(tij: torch.Tensor, definition: str = "q") -> torch.Tensor:
    """Scalar shear of (6, ...) tidal components (``COMPONENTS`` order) → (...): ``"q"`` or ``"q2"`` = q²."""
    if definition not in DEFINITIONS:
        raise ValueError(f"unknown shear definition '{definition}'; use one of {list(DEFINITIONS)}")
    if tij.shape[0] != 6:
        raise ValueError(f"tidal components must have shape (6, ...), got {tuple(tij.shape)}")
    xx, yy, zz, xy, xz, yz = tij
    q2 = (xx - yy) ** 2
    q2 += (yy - zz) ** 2
    q2 += (zz - xx) ** 2
    q2 *= 0.5
    for off in (xy, xz, yz):
        q2 += 3.0 * off**2
    return q2 if definition == "q2" else q2.sqrt_()


def tidal_shear(delta: torch.Tensor, box_size: float, definition: str = "q", smoothing: float = 0.0) -> torch.Tensor:
    """Scalar tidal shear (N,N,N) of δ: ``scalar_shear(tidal_tensor(delta, box_size, smoothing), definition)``."""
    return scalar_shear(tidal_tensor(delta, box_size, smoothing), definition)
