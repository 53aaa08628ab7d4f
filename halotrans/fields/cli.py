"""Add the scalar tidal shear ``/tidal/T`` of ``/delta`` to box files.

    python -m halotrans shear data/boxes                              # serial (torch FFT)
    mpiexec -n 4 python -m halotrans shear data/boxes/box_0000.h5     # MPI slabs (mpi4py-fft)
    python -m halotrans shear data/boxes --set shear.definition=q2 --set shear.smoothing=2.0

PATHs are box files or directories of ``box_*.h5``. Run alone it computes each box in one process
(float64, on ``shear.device``); under ``mpiexec -n R`` (R must divide N) every rank reads and writes
only its slab of rows. Each file is rewritten atomically; boxes that already have ``/tidal/T`` made
with the same ``shear.definition`` and ``shear.smoothing`` are skipped, so a killed job is resumed
by running it again. All boxes are checked before anything is written (a ``/delta`` holding NaN or
±Inf stops the command with status 2, naming the file and the count).

Settings (``shear`` section, defaults in :class:`halotrans.fields.config.ShearConfig`):
``definition`` q | q2 (q = √(½Σ(λi−λj)²) of the tidal eigenvalues), ``smoothing`` Gaussian radius of
δ in Mpc/h, ``save_tensor`` also store ``/tidal/Tij``, ``device`` cpu | cuda (serial runs);
``feature_radii`` (Mpc/h, default none) also adds the physics input channels ``/features/*`` (smoothed δ
and ellipsoidal collapse time per radius, :mod:`halotrans.fields.features`), skipped when done likewise.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from tqdm import tqdm

from halotrans.cli import add_config_arguments, config_from_args
from halotrans.fields.config import ShearConfig
from halotrans.io import DataError
from halotrans.yaml_config import ConfigError

Plan = list[tuple[Path, int, float]]  # (box file, N, box_size Mpc/h)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("paths", nargs="+", metavar="PATH", help="box files or directories of box_*.h5")
    add_config_arguments(parser)


def box_files(paths: list[str]) -> list[Path]:
    """Expand PATHs (files, or directories of ``box_*.h5`` in name order) into a list without repeats."""
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(p.glob("box_*.h5"))
            if not found:
                raise DataError(f"{p}: directory has no box_*.h5 files")
            files += found
        elif p.is_file():
            files.append(p)
        else:
            raise DataError(f"{p}: no such file or directory")
    return sorted(set(files), key=files.index)


def plan(paths: list[str], cfg: ShearConfig, n_ranks: int) -> tuple[Plan, int]:
    """Check every box (cubic ``/delta``, N divisible by ``n_ranks``); return the ones to do and the skip count."""
    from halotrans.fields.store import inspect_box, is_done, shear_settings

    boxes = []
    for path in box_files(paths):
        n, box_size = inspect_box(path)
        if n % n_ranks:
            raise DataError(f"{path}: N={n} is not divisible by the {n_ranks} MPI ranks; "
                            "use a rank count that divides N")
        boxes.append((path, n, box_size))
    settings = shear_settings(cfg)
    todo = [b for b in boxes if not is_done(b[0], settings, cfg.save_tensor)]
    return todo, len(boxes) - len(todo)


def run_serial(todo: Plan, cfg: ShearConfig) -> None:
    """One process: float64 torch FFT on ``cfg.device``, one atomic rewrite per box."""
    import torch

    from halotrans.fields.store import prepare_output, read_delta_slab, require_finite_shear, shear_settings, write_slab
    from halotrans.fields.tidal import scalar_shear, tidal_tensor
    from halotrans.io import atomic_path

    try:
        torch.empty(0, device=cfg.device)
    except (RuntimeError, AssertionError) as e:
        raise ConfigError(f"shear.device={cfg.device!r} is not usable here ({e})") from None
    settings = shear_settings(cfg)
    for path, n, box_size in tqdm(todo, desc="shear", unit="box", file=sys.stderr):
        delta = torch.from_numpy(read_delta_slab(path, 0, n)).to(cfg.device)
        tij = tidal_tensor(delta, box_size, cfg.smoothing)
        shear = scalar_shear(tij, cfg.definition).cpu().numpy()
        tij_out = tij.cpu().numpy() if cfg.save_tensor else None
        require_finite_shear(path, shear, tij_out)
        with atomic_path(path) as tmp:
            prepare_output(path, tmp, n, settings, cfg.save_tensor)
            write_slab(tmp, 0, shear, tij_out)


def run_mpi(comm, todo: Plan, cfg: ShearConfig) -> None:
    """All ranks: slab FFTs, each rank reads and writes its own rows; progress on rank 0."""
    import torch
    from mpi4py import MPI

    from halotrans.fields.ranks import agree
    from halotrans.fields.store import shear_settings
    from halotrans.fields.tidal_mpi import SlabTidal, shear_box_mpi

    ranks_here = comm.Split_type(MPI.COMM_TYPE_SHARED).size
    torch.set_num_threads(max(1, len(os.sched_getaffinity(0)) // ranks_here))
    settings = shear_settings(cfg)
    slabs: dict[int, SlabTidal] = {}
    for path, n, box_size in tqdm(todo, desc="shear", unit="box", file=sys.stderr, disable=comm.rank != 0):
        if n not in slabs:
            slabs[n] = agree(comm, lambda: SlabTidal(comm, n))
        shear_box_mpi(slabs[n], path, box_size, settings, cfg.save_tensor)


def run(args: argparse.Namespace) -> int:
    cfg = config_from_args(args).shear
    from halotrans.fields.ranks import agree, launched_by_mpi

    if not launched_by_mpi():
        todo, skipped = plan(args.paths, cfg, 1)
        t0 = time.perf_counter()
        run_serial(todo, cfg)
        how = f"serial torch on {cfg.device}"
    else:
        from mpi4py import MPI

        comm = MPI.COMM_WORLD
        # rank 0 checks the boxes; every rank gets the same plan, or raises the same error
        outcome = agree(comm, lambda: plan(args.paths, cfg, comm.size) if comm.rank == 0 else None)
        todo, skipped = comm.bcast(outcome, root=0)
        comm.Barrier()
        t0 = time.perf_counter()
        run_mpi(comm, todo, cfg)
        comm.Barrier()
        how = f"{comm.size} MPI rank(s)"
        if comm.rank != 0:
            return 0
    print(f"shear: {len(todo)} box(es) computed, {skipped} skipped (already done with "
          f"definition={cfg.definition}, smoothing={cfg.smoothing} Mpc/h); "
          f"{time.perf_counter() - t0:.3f} s compute+I/O, {how}", flush=True)
    if cfg.feature_radii:  # physics input channels (halotrans.fields.features): serial, rank 0 under MPI
        from halotrans.fields.features import add_features

        print(add_features(box_files(args.paths), cfg), flush=True)
    return 0
