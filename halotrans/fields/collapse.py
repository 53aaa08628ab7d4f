"""Ellipsoidal collapse time of every voxel from the eigenvalues of its (smoothed) tidal tensor.

This is the quantity PINOCCHIO computes from δ (Monaco 1995, ApJ 447, 23; Monaco, Theuns & Taffoni
2002, MNRAS 331, 587; its ``ell_classic`` with ``-DELL_CLASSIC``, src/collapse_times.c), written here
in torch for whole boxes.

Inputs: λ1 ≥ λ2 ≥ λ3, the eigenvalues of T_ij = ∂_i∂_j φ, ∇²φ = δ (so λ1+λ2+λ3 = δ), of the
density LINEARLY EXTRAPOLATED TO z = 0 (δ0 = δ(z_init)/D(z_init), D(z=0) = 1) and smoothed on a
scale R. They are dimensionless.

Third-order Lagrangian perturbation theory for a homogeneous ellipsoid gives the stretch of its
first (fastest) axis as a function of the linear growth factor D (Monaco 1995):

    1 − λ1 D − (3/14) λ1 (δ − λ1) D² − [λ1λ2λ3/126 + 5 λ1 δ (δ − λ1)/84] D³ = 0,   δ = λ1+λ2+λ3,

and the axis collapses (orbit crossing) at the smallest positive root D = b_c. PINOCCHIO then
corrects it so that the spherical case gives δ0·b_c = 1.686 (δ > 0 only):

    b_c ← b_c − 0.364/δ · exp(−6.5 (λ1−λ2)/δ − 2.8 (λ2−λ3)/δ).

The channel stored is the inverse collapse time **F = 1/b_c** [dimensionless]: the voxel collapses,
on scale R, when the linear growth factor reaches D(z_c) = 1/F, so F ≥ 1 means "collapsed by z = 0"
(in an Einstein–de Sitter universe F = 1 + z_c, PINOCCHIO's variable). For λ1 = λ2 = λ3 = δ0/3 it
reduces to F = δ0/δ_c with δ_c = 1.686, the spherical threshold. PINOCCHIO's Fmax is the maximum of
F over smoothing radii.

No collapse is explicit: where the cubic has no positive root (the first axis never turns around,
e.g. λ1 ≤ 0) or the correction pushes b_c to ≤ 0, F = 0 — as in PINOCCHIO, which returns 0 there.
F is clipped to [0, ``F_MAX``]; it is finite wherever the λ are.

Numerics: with u = 1/D the cubic becomes the monic u³ − λ1 u² − (3/14)λ1(δ−λ1) u − c = 0
(c the D³ coefficient), whose LARGEST real root is 1/b_c before the correction (the smallest
positive D is the largest positive u; where c = 0 the cubic is u·(u² − λ1 u − (3/14)λ1(δ−λ1)), whose
other roots are those of PINOCCHIO's separate second-order and Zel'dovich branches). It is solved in
closed form (trigonometric or Cardano) and polished with two Newton steps, in float64.

    tij = tidal_tensor(delta0, box_size=64.0, smoothing=4.0)      # δ0 at z = 0
    lam = tidal_eigenvalues(tij)                                    # (3,N,N,N), λ1 ≥ λ2 ≥ λ3
    F = inverse_collapse_time(*lam)                                 # (N,N,N), 0 = never collapses
"""

from __future__ import annotations

import torch

#: δ_c of spherical collapse (EdS), the value the correction reproduces
DELTA_C = 1.686
#: largest stored inverse collapse time (b_c ≥ 1e-3: collapse at D(z) = 0.001, z ≈ 1000 in EdS)
F_MAX = 1000.0


def tidal_eigenvalues(tij: torch.Tensor, chunk: int = 1 << 20) -> torch.Tensor:
    """Eigenvalues of (6, ...) tidal components (xx, yy, zz, xy, xz, yz) → (3, ...) with λ1 ≥ λ2 ≥ λ3.

    Symmetric 3×3 eigen solves (``torch.linalg.eigvalsh``), ``chunk`` voxels at a time, in float64.
    """
    if tij.shape[0] != 6:
        raise ValueError(f"tidal components must have shape (6, ...), got {tuple(tij.shape)}")
    flat = tij.reshape(6, -1).to(torch.float64)
    out = torch.empty((3, flat.shape[1]), dtype=torch.float64, device=tij.device)
    xx, yy, zz, xy, xz, yz = range(6)
    rows = ((xx, xy, xz), (xy, yy, yz), (xz, yz, zz))
    for start in range(0, flat.shape[1], chunk):
        part = flat[:, start:start + chunk]
        m = torch.stack([torch.stack([part[c] for c in row], dim=-1) for row in rows], dim=-2)
        out[:, start:start + chunk] = torch.linalg.eigvalsh(m).flip(-1).T  # ascending → descending
    return out.reshape(3, *tij.shape[1:])


def _real_cbrt(x: torch.Tensor) -> torch.Tensor:
    return torch.sign(x) * x.abs().pow(1.0 / 3.0)


def _largest_real_root(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """Largest real root of u³ − a u² − b u − c = 0 (elementwise, float64)."""
    p = -b - a * a / 3.0  # depressed cubic t³ + p t + q = 0 with u = t + a/3
    q = -c - a * b / 3.0 - 2.0 * a**3 / 27.0
    disc = (q / 2.0) ** 2 + (p / 3.0) ** 3
    three = (disc <= 0) & (p < 0)
    # three real roots: t_k = m cos(θ − 2πk/3), θ = ⅓ arccos(3q/(p m)); k = 0 is the largest
    m = 2.0 * torch.sqrt(torch.where(three, -p / 3.0, 1.0))
    cos_arg = torch.where(three, 3.0 * q / (torch.where(three, p, -1.0) * m), 0.0).clamp(-1.0, 1.0)
    t_three = m * torch.cos(torch.arccos(cos_arg) / 3.0)
    # one real root (Cardano): t = ∛(−q/2 + √disc) + ∛(−q/2 − √disc)
    s = torch.sqrt(torch.where(three, 0.0, disc).clamp(min=0.0))
    t_one = _real_cbrt(-q / 2.0 + s) + _real_cbrt(-q / 2.0 - s)
    u = torch.where(three, t_three, t_one) + a / 3.0
    for _ in range(2):  # Newton polish; skipped where f' vanishes (a double root)
        f = ((u - a) * u - b) * u - c
        df = (3.0 * u - 2.0 * a) * u - b
        ok = df.abs() > 1e-12 * (1.0 + u * u)
        u = torch.where(ok, u - f / torch.where(ok, df, 1.0), u)
    return u


def inverse_collapse_time(l1: torch.Tensor, l2: torch.Tensor, l3: torch.Tensor) -> torch.Tensor:
    """F = 1/b_c of eigenvalues λ1 ≥ λ2 ≥ λ3 of the z = 0 linear tidal tensor (see the module docstring).

    Returns float64 of the broadcast shape: F in (0, F_MAX] where the first axis collapses at
    D = 1/F, and 0 where it never does. Spherical limit: F = (λ1+λ2+λ3)/1.686.
    """
    l1, l2, l3 = (torch.as_tensor(x, dtype=torch.float64) for x in (l1, l2, l3))
    delta = l1 + l2 + l3
    a = l1
    b = (3.0 / 14.0) * l1 * (delta - l1)
    c = l1 * l2 * l3 / 126.0 + 5.0 * l1 * delta * (delta - l1) / 84.0
    u = _largest_real_root(a, b, c)
    collapses = u > 0
    b_c = 1.0 / torch.where(collapses, u, 1.0)
    pos = delta > 0
    safe = torch.where(pos, delta, 1.0)
    shape = -(6.5 * (l1 - l2) + 2.8 * (l2 - l3)) / safe
    correction = torch.where(pos, 0.364 / safe * torch.exp(shape.clamp(max=0.0)), 0.0)
    b_c = b_c - correction
    collapses &= b_c > 0
    f = torch.where(collapses, 1.0 / torch.where(collapses, b_c, 1.0), 0.0)
    return f.clamp(0.0, F_MAX)

