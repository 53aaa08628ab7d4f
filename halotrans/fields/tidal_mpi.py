"""Tidal shear of a box on MPI slabs (mpi4py + mpi4py-fft 2.0.6, FFTW on CPU, float64).

Slab decomposition of an (N,N,N) box over R ranks (R divides N): rank r holds real-space rows
``r·N/R : (r+1)·N/R`` along axis 0 (x) and, after the forward transform, the same range of axis 1 of
the (N, N, N//2+1) rfft grid. The Fourier multipliers and the scalar shear are those of the serial
path (:mod:`halotrans.fields.tidal`), so both agree to round-off.

Each rank reads only its slab of ``/delta`` (serial h5py). The output is written without parallel
HDF5: rank 0 copies the box to a temporary name and creates ``/tidal``, the ranks write their
hyperslab in turn, and rank 0 renames the file onto the box (:mod:`halotrans.fields.store`). Every
step ends in :func:`halotrans.fields.ranks.agree`, so an error on any rank is raised on all of them
(no hang) and nothing is renamed.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch

from halotrans.fields.ranks import agree
from halotrans.fields.store import prepare_output, read_delta_slab, require_finite_shear, write_slab
from halotrans.fields.tidal import scalar_shear, tidal_multipliers
from halotrans.io import DataError, atomic_path


class SlabTidal:
    """The slab FFT of an (N,N,N) box on ``comm`` (FFTW plans made once, reused for every box of that N)."""

    def __init__(self, comm, n: int):
        try:
            from mpi4py_fft import PFFT, newDistArray
        except ImportError:
            raise RuntimeError("MPI runs need mpi4py-fft: pip install 'halotrans[mpi]'") from None

        if n % comm.size:
            raise DataError(f"N={n} is not divisible by the {comm.size} MPI ranks; use a rank count that divides N")
        self.comm, self.n = comm, n
        self.fft = PFFT(comm, (n, n, n), axes=(0, 1, 2), dtype=np.float64, grid=(-1,))
        # an explicit output array: fft.forward(x) alone returns the buffer that backward() reads
        self._spectral = newDistArray(self.fft, True)
        rows = self.fft.local_slice(False)[0]
        self.rows = (rows.start, rows.stop)

    def tensor_and_shear(self, delta_slab: np.ndarray, box_size: float, definition: str, smoothing: float,
                         save_tensor: bool) -> tuple[np.ndarray, np.ndarray | None]:
        """Scalar shear (N/R,N,N) of this rank's δ rows, and the (6,N/R,N,N) components if ``save_tensor``."""
        self.fft.forward(delta_slab, self._spectral)
        spectral = torch.from_numpy(np.asarray(self._spectral))
        product = torch.from_numpy(np.asarray(self.fft.backward.input_array))  # filled in place, no copy
        tij = np.empty((6, *delta_slab.shape))
        local = self.fft.local_slice(True)
        for c, mult in enumerate(tidal_multipliers(self.n, box_size, smoothing, local=local)):
            torch.mul(spectral, mult, out=product)
            self.fft.backward(output_array=tij[c])
        shear = scalar_shear(torch.from_numpy(tij), definition).numpy()
        return shear, (tij if save_tensor else None)


def shear_box_mpi(slab: SlabTidal, path: os.PathLike, box_size: float, settings: dict[str, Any],
                  save_tensor: bool) -> None:
    """Read this rank's rows of ``path:/delta``, compute, and write ``/tidal`` into the box atomically."""
    comm, (start, stop) = slab.comm, slab.rows
    delta = agree(comm, lambda: read_delta_slab(path, start, stop))
    shear, tij = agree(comm, lambda: slab.tensor_and_shear(delta, box_size, settings["definition"],
                                                           settings["smoothing"], save_tensor))
    agree(comm, lambda: require_finite_shear(path, shear, tij))

    def write_in_turn(tmp: os.PathLike | None) -> None:
        tmp = comm.bcast(tmp, root=0)
        agree(comm, lambda: comm.rank == 0 and prepare_output(path, tmp, slab.n, settings, save_tensor))
        for rank in range(comm.size):
            agree(comm, lambda: comm.rank == rank and write_slab(tmp, start, shear, tij))

    def commit() -> None:
        if comm.rank == 0:
            with atomic_path(path) as tmp:
                write_in_turn(tmp)
        else:
            write_in_turn(None)

    agree(comm, commit)
