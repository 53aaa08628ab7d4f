"""Which launcher started this process, and errors that every MPI rank sees together.

A command run under ``mpiexec`` must fail on all ranks at the same step, or the ranks still waiting
in a collective would hang: :func:`agree` runs one step on every rank and re-raises the first error
everywhere. Nothing here imports mpi4py, so serial runs never start MPI.
"""

from __future__ import annotations

import os
from typing import Callable, TypeVar

from halotrans.io import DataError

R = TypeVar("R")

#: environment variables set by MPI launchers (Open MPI, MPICH/Hydra, PMIx, Intel MPI)
LAUNCHER_ENV = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK", "MPI_LOCALNRANKS")


def launched_by_mpi() -> bool:
    """True when this process was started by ``mpiexec``/``srun`` with an MPI process manager."""
    return any(v in os.environ for v in LAUNCHER_ENV)


class _Agreed(RuntimeError):
    """An error already raised on every rank by :func:`agree` (passed on unchanged)."""


def agree(comm, fn: Callable[[], R]) -> R:
    """Run ``fn`` on every rank; if it raised anywhere, raise the first error on all ranks.

    A :class:`DataError` stays a DataError (the CLI reports it and exits with status 2).
    """
    try:
        result, error = fn(), None
    except Exception as e:  # noqa: BLE001 - reported to every rank below
        message = str(e) if isinstance(e, (DataError, _Agreed)) else f"rank {comm.rank}: {type(e).__name__}: {e}"
        result, error = None, (isinstance(e, DataError), message)
    errors = [e for e in comm.allgather(error) if e is not None]
    if errors:
        is_data, message = errors[0]
        raise DataError(message) if is_data else _Agreed(message)
    return result
