"""Tidal tensor and scalar shear (serial torch path): analytic cases, identities, invariants."""

from __future__ import annotations

import math

import pytest
import torch

from halotrans.config import ConfigError, load_config
from halotrans.fields.tidal import PAIRS, scalar_shear, tidal_multipliers, tidal_shear, tidal_tensor
from halotrans.io import DataError

L = 32.0  # Mpc/h


def grid(n: int, dtype=torch.float64) -> tuple[torch.Tensor, ...]:
    x = torch.arange(n, dtype=dtype) * (L / n)
    return torch.meshgrid(x, x, x, indexing="ij")


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 2e-5)])
@pytest.mark.parametrize("mode", [(1, 0, 0), (1, 2, -3), (0, 5, 2)])
@pytest.mark.parametrize("n", [15, 16])
def test_plane_wave(mode, n, dtype, tol):
    """δ = cos(k·x) gives T_ij = k̂_i k̂_j δ (odd and even N)."""
    X, Y, Z = grid(n)
    k = torch.tensor(mode, dtype=torch.float64) * (2 * math.pi / L)
    delta = torch.cos(k[0] * X + k[1] * Y + k[2] * Z)
    tij = tidal_tensor(delta.to(dtype), L)
    assert tij.shape == (6, n, n, n) and tij.dtype == dtype
    khat = k / k.norm()
    for c, (i, j) in enumerate(PAIRS):
        torch.testing.assert_close(tij[c].double(), khat[i] * khat[j] * delta, atol=tol, rtol=0)


def test_smoothing_is_a_gaussian_window():
    n, radius = 16, 1.5
    X, Y, Z = grid(n)
    k = torch.tensor([2.0, 1.0, 1.0], dtype=torch.float64) * (2 * math.pi / L)
    delta = torch.sin(k[0] * X + k[1] * Y + k[2] * Z)
    window = math.exp(-0.5 * float(k.norm()) ** 2 * radius**2)
    tij = tidal_tensor(delta, L, smoothing=radius)
    torch.testing.assert_close(tij[3], window * float(k[0] * k[1] / k.dot(k)) * delta, atol=1e-12, rtol=0)
    q = tidal_shear(delta, L, smoothing=radius)
    torch.testing.assert_close(q, scalar_shear(tij), atol=0, rtol=0)


def test_trace_is_delta_minus_mean():
    torch.manual_seed(0)
    delta = torch.randn(24, 24, 24, dtype=torch.float64) + 0.3
    tij = tidal_tensor(delta, L)
    torch.testing.assert_close(tij[:3].sum(0), delta - delta.mean(), atol=1e-12, rtol=0)


def test_nyquist_convention():
    """A Nyquist cosine along x: off-diagonal components vanish (exact on the grid), diagonals keep k_i²."""
    n = 16
    X, Y, _ = grid(n)
    kn, ky = math.pi * n / L, 2 * math.pi * 2 / L
    delta = torch.cos(kn * X) * torch.cos(ky * Y)
    tij = tidal_tensor(delta, L)
    assert tij[3:].abs().max() < 1e-12
    torch.testing.assert_close(tij[0], kn**2 / (kn**2 + ky**2) * delta, atol=1e-12, rtol=0)
    torch.testing.assert_close(tij[1], ky**2 / (kn**2 + ky**2) * delta, atol=1e-12, rtol=0)


def test_symmetric_multipliers_keep_the_field_real():
    """Every multiplier is even in k on the periodic grid, so the tensor equals the full complex transform."""
    torch.manual_seed(1)
    n = 12
    delta = torch.randn(n, n, n, dtype=torch.float64)
    full = torch.fft.fftn(delta)
    f = torch.fft.fftfreq(n, d=1.0 / n, dtype=torch.float64) * (2 * math.pi / L)
    fd = f.clone()
    fd[n // 2] = 0.0
    k = torch.meshgrid(f, f, f, indexing="ij")
    kd = torch.meshgrid(fd, fd, fd, indexing="ij")
    k2 = sum(ki**2 for ki in k)
    k2[0, 0, 0] = math.inf
    tij = tidal_tensor(delta, L)
    for c, (i, j) in enumerate(PAIRS):
        mult = k[i] ** 2 / k2 if i == j else kd[i] * kd[j] / k2
        ref = torch.fft.ifftn(mult * full)
        assert ref.imag.abs().max() < 1e-12
        torch.testing.assert_close(tij[c], ref.real, atol=1e-12, rtol=0)


def test_local_multiplier_blocks_tile_the_full_grid():
    """The MPI path's slabs of the rfft grid (axis 1) see the same multipliers as the serial path."""
    n = 8
    full = list(tidal_multipliers(n, L, 1.0))
    for lo, hi in [(0, 4), (4, 8), (2, 6)]:
        local = (slice(None), slice(lo, hi), slice(None))
        for whole, part in zip(full, tidal_multipliers(n, L, 1.0, local=local)):
            torch.testing.assert_close(part, whole[:, lo:hi], atol=0, rtol=0)


def test_q_from_invariants_matches_eigenvalues():
    torch.manual_seed(2)
    a = torch.randn(4096, 3, 3, dtype=torch.float64)
    sym = a + a.transpose(1, 2)
    tij = torch.stack([sym[:, i, j] for i, j in PAIRS])
    lam = torch.linalg.eigvalsh(sym)
    l1, l2, l3 = lam.unbind(1)
    q_eig = torch.sqrt(0.5 * ((l1 - l2) ** 2 + (l2 - l3) ** 2 + (l1 - l3) ** 2))
    torch.testing.assert_close(scalar_shear(tij, "q"), q_eig, atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(scalar_shear(tij, "q2"), q_eig**2, atol=1e-12, rtol=1e-12)
    iso = torch.stack([torch.full((5,), 2.0)] * 3 + [torch.zeros(5)] * 3)
    assert scalar_shear(iso).abs().max() == 0  # an isotropic tensor has no shear


def test_shear_follows_axis_permutations():
    """Relabelling the axes of δ relabels the axes of q (no axis is special)."""
    torch.manual_seed(3)
    delta = torch.randn(16, 16, 16, dtype=torch.float64)
    q = tidal_shear(delta, L)
    for perm in [(1, 0, 2), (2, 0, 1), (0, 2, 1)]:
        torch.testing.assert_close(tidal_shear(delta.permute(perm).contiguous(), L), q.permute(perm),
                                   atol=1e-12, rtol=0)


def test_bad_input():
    with pytest.raises(DataError, match="cubic"):
        tidal_tensor(torch.zeros(8, 8, 4), L)
    with pytest.raises(ValueError, match="definition"):
        scalar_shear(torch.zeros(6, 2, 2, 2), "q3")
    with pytest.raises(ConfigError, match="smoothing"):
        load_config(None, ["shear.smoothing=-1"])
    with pytest.raises(ConfigError, match="definition"):
        load_config(None, ["shear.definition=lambda1"])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_matches_cpu():
    torch.manual_seed(4)
    delta = torch.randn(32, 32, 32, dtype=torch.float64)
    q = tidal_shear(delta.cuda(), L, smoothing=1.0)
    assert q.is_cuda
    torch.testing.assert_close(q.cpu(), tidal_shear(delta, L, smoothing=1.0), atol=1e-10, rtol=1e-10)
    q32 = tidal_shear(delta.float().cuda(), L)
    torch.testing.assert_close(q32.cpu().double(), tidal_shear(delta, L), atol=1e-4, rtol=1e-4)
