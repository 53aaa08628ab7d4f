"""From particles of an external simulation to Lagrangian (N,N,N) grids, streamed in chunks.

A particle's Lagrangian voxel comes from its ID: ``index = ID − id_offset = (i·N + j)·N + k`` (C order,
axis 0 = x), the convention of PINOCCHIO (offset 1), N-GenIC and Gadget-4's built-in IC generator.
Grids are filled chunk by chunk from any iterator of particle arrays, so no per-particle array of the
whole box is ever held: the memory is the output grids (4 bytes per voxel each) plus one chunk.

* :class:`LagrangianGrid` scatters per-particle values onto the grid and checks that every voxel
  is written exactly once (IDs out of range, duplicated or missing raise :class:`DataError`).
* :class:`Divergence` turns displacement components ψ_a (one grid at a time) into δ = −∇·ψ with
  spectral derivatives, keeping one real and two half-complex float32 grids.
* :func:`cic_overdensity` deposits positions with cloud-in-cell onto an N³ mesh.
* :func:`halo_mass_grid` turns a halo-index grid and the halo masses into log10 M per voxel.
"""

from __future__ import annotations

import os
from typing import Iterable, Iterator

import numpy as np
import scipy.fft

from halotrans.io import DataError

#: particles per chunk when streaming (4 Mi: ~100 MB of temporaries for ID + 3 floats)
CHUNK = 1 << 22
_WORKERS = max(1, len(os.sched_getaffinity(0)))


def chunks(n_total: int, size: int = CHUNK) -> Iterator[tuple[int, int]]:
    """``(start, stop)`` ranges covering ``range(n_total)``."""
    for start in range(0, n_total, size):
        yield start, min(start + size, n_total)


def grid_size(n_particles: int, where: str = "") -> int:
    """N such that N³ = ``n_particles``, else :class:`DataError` (only full cubic grids map to voxels)."""
    n = round(n_particles ** (1.0 / 3.0))
    for cand in (n - 1, n, n + 1):
        if cand > 0 and cand**3 == n_particles:
            return cand
    raise DataError(f"{where}: {n_particles} particles is not a cube N³; only runs with N³ particles on a "
                    "Lagrangian grid can be turned into voxel maps")


def lagrangian_index(ids: np.ndarray, n: int, id_offset: int, where: str = "") -> np.ndarray:
    """Voxel index ``ID − id_offset`` (int64), checked to lie in [0, N³)."""
    idx = np.asarray(ids).astype(np.int64, copy=False) - int(id_offset)
    if idx.size:
        lo, hi = int(idx.min()), int(idx.max())
        if lo < 0 or hi >= n**3:
            raise DataError(
                f"{where}: particle IDs out of range for a {n}³ grid with id_offset={id_offset}: "
                f"found IDs {lo + id_offset}..{hi + id_offset}, expected {id_offset}..{n**3 - 1 + id_offset} "
                "(IDs must encode the Lagrangian position as offset + (i·N + j)·N + k)"
            )
    return idx


class LagrangianGrid:
    """An (N,N,N) grid written particle by particle, each voxel exactly once; floating values must be
    finite (NaN/±Inf particle data is a :class:`DataError` at :meth:`finish`, counted as they come).

    ``grid = LagrangianGrid(n, np.int32, fill=-2); grid.put(idx, values); arr = grid.finish(where)``
    """

    def __init__(self, n: int, dtype, fill):
        self.n = n
        self.fill = fill
        self.values = np.full((n, n, n), fill, dtype=dtype)
        self._flat = self.values.reshape(-1)
        self.count = 0
        self.non_finite = 0

    def put(self, idx: np.ndarray, values) -> None:
        values = np.asarray(values)
        if np.issubdtype(values.dtype, np.inexact):
            self.non_finite += values.size - int(np.count_nonzero(np.isfinite(values)))
        self._flat[idx] = values
        self.count += len(idx)

    def finish(self, where: str = "") -> np.ndarray:
        """The grid; :class:`DataError` unless N³ particles covered all N³ voxels."""
        n3 = self.n**3
        if self.count != n3:
            raise DataError(f"{where}: read {self.count} particles, a {self.n}³ grid needs {n3}")
        if self.non_finite:
            raise DataError(f"{where}: {self.non_finite} of {n3} particle values (positions, displacements or "
                            "densities) are not finite (NaN/±Inf): the file is corrupt; nothing written")
        isnan = np.issubdtype(self.values.dtype, np.floating) and np.isnan(self.fill)
        for x in range(self.n):  # slab by slab: no N³ temporary
            slab = self.values[x]
            hole = np.isnan(slab) if isnan else slab == self.fill
            if hole.any():
                raise DataError(f"{where}: duplicated particle IDs: voxel slab x={x} received no particle "
                                f"while {self.count} particles were read")
        return self.values


class Divergence:
    """Accumulate δ = −∇·ψ from displacement components given one at a time (units: grid cells).

    ``div = Divergence(n); div.add(0, psi_x); div.add(1, psi_y); div.add(2, psi_z); delta = div.result()``
    Derivatives are spectral; the Nyquist planes of an even N get zero derivative. A constant offset of
    ψ (e.g. a lattice shifted by half a cell) drops out.
    """

    def __init__(self, n: int):
        self.n = n
        self._acc: np.ndarray | None = None
        self._done: set[int] = set()

    def add(self, axis: int, psi: np.ndarray) -> None:
        if axis in self._done:
            raise ValueError(f"component {axis} added twice")
        n = self.n
        spec = scipy.fft.rfftn(np.asarray(psi, dtype=np.float32), workers=_WORKERS)
        freq = np.fft.rfftfreq(n, 1.0 / n) if axis == 2 else np.fft.fftfreq(n, 1.0 / n)
        k = (2 * np.pi / n) * freq
        if n % 2 == 0:
            k[np.abs(freq) == n // 2] = 0.0
        shape = [1, 1, 1]
        shape[axis] = -1
        spec *= (-1j * k).astype(np.complex64).reshape(shape)
        if self._acc is None:
            self._acc = spec
        else:
            self._acc += spec
            del spec
        self._done.add(axis)

    def result(self) -> np.ndarray:
        if self._done != {0, 1, 2}:
            raise ValueError(f"components {sorted({0, 1, 2} - self._done)} missing")
        delta = scipy.fft.irfftn(self._acc, s=(self.n,) * 3, workers=_WORKERS).astype(np.float32, copy=False)
        self._acc = None
        return delta


def cic_overdensity(positions: Iterable[np.ndarray], n: int, box_size: float) -> np.ndarray:
    """δ = ρ/ρ̄ − 1 on an (n,n,n) mesh from chunks of (m,3) positions in the units of ``box_size``."""
    rho = np.zeros(n**3, dtype=np.float32)
    count = 0
    for pos in positions:
        x = np.asarray(pos, dtype=np.float64) * (n / box_size)
        i0 = np.floor(x)
        frac = (x - i0).astype(np.float32)
        i0 = i0.astype(np.int64) % n
        i1 = (i0 + 1) % n
        for cx in (0, 1):
            wx = frac[:, 0] if cx else 1 - frac[:, 0]
            ix = (i1 if cx else i0)[:, 0]
            for cy in (0, 1):
                wy = frac[:, 1] if cy else 1 - frac[:, 1]
                iy = (i1 if cy else i0)[:, 1]
                for cz in (0, 1):
                    wz = frac[:, 2] if cz else 1 - frac[:, 2]
                    iz = (i1 if cz else i0)[:, 2]
                    np.add.at(rho, (ix * n + iy) * n + iz, wx * wy * wz)
        count += len(x)
    if count == 0:
        raise DataError("no particles to deposit")
    rho *= n**3 / count
    rho -= 1.0
    return rho.reshape(n, n, n)


def halo_mass_grid(halo_id: np.ndarray, halo_mass: np.ndarray) -> np.ndarray:
    """float32 (N,N,N) log10(M/(M☉/h)) of the halo each voxel ends in (0 where ``halo_id`` is −1)."""
    from halotrans.sims.labels import lagrangian_halo_mass

    n = halo_id.shape[0]
    return lagrangian_halo_mass(halo_id.reshape(-1), np.asarray(halo_mass, dtype=np.float64), n)
