"""Tidal shear of one box: the MPI slab path (mpi4py-fft) on 1 and 2 ranks vs the serial torch path.

Every figure is the wall time of ``python -m halotrans shear`` on one (N,N,N) box file as reported
by the command itself (rank 0 after a barrier): read δ, FFTs (FFTW planning included), scalar shear,
atomic write; interpreter start-up and imports excluded. N = 256 (quick: 128); best of 2 (quick: 1).
Serial torch uses torch's default thread count; each MPI rank runs single-threaded FFTW.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import h5py
import numpy as np

from halotrans.benchmark import REPO, row
from halotrans.sims.boxio import write_box

BOX_SIZE = 256.0  # Mpc/h
REPORTED = re.compile(r"([0-9.]+) s compute\+I/O")


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.update(OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    return env


def _timed_run(launcher: list[str], box: Path, workdir: Path, repeats: int) -> tuple[float, np.ndarray]:
    """Best reported seconds over ``repeats`` runs, each on a fresh copy of ``box``; and the result."""
    best, shear = float("inf"), None
    for i in range(repeats):
        copy = workdir / f"run{i}" / box.name
        copy.parent.mkdir(parents=True)
        shutil.copyfile(box, copy)
        cmd = [*launcher, sys.executable, "-m", "halotrans", "shear", str(copy)]
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=_env(), timeout=1800)
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-2000:]}")
        best = min(best, float(REPORTED.search(proc.stdout).group(1)))
        with h5py.File(copy, "r") as f:
            shear = f["tidal/T"][...]
        shutil.rmtree(copy.parent)
    return best, shear


def run(quick: bool) -> list[dict]:
    n, repeats = (128, 1) if quick else (256, 2)
    mpiexec = [shutil.which("mpiexec", path=_env()["PATH"]), "--allow-run-as-root", "--oversubscribe",
               "--bind-to", "none", "-n"]
    with tempfile.TemporaryDirectory(prefix="bench_shear_") as tmp:
        tmp = Path(tmp)
        delta = np.random.default_rng(0).standard_normal((n, n, n)).astype(np.float32)
        attrs = {"box_size": BOX_SIZE, "seed": 0, "z_init": 99.0}
        box = write_box(tmp / "box_0000.h5", delta, np.zeros_like(delta), attrs)
        del delta
        t_serial, q_serial = _timed_run([], box, tmp / "serial", repeats)
        t_one, _ = _timed_run([*mpiexec, "1"], box, tmp / "mpi1", repeats)
        t_two, q_two = _timed_run([*mpiexec, "2"], box, tmp / "mpi2", repeats)
    agree = float(np.abs(q_two - q_serial).max() / np.abs(q_serial).max())
    size = f"{n}³ box"
    peer = "serial torch (1 process)"
    note = f"max |MPI−serial|/max|serial| = {agree:.1e}"
    return [
        row("shear", f"MPI 1 rank wall time, {size}", t_one, "s", peer, t_serial, higher_is_better=False, note=note),
        row("shear", f"MPI 2 ranks wall time, {size}", t_two, "s", peer, t_serial, higher_is_better=False, note=note),
        row("shear", f"MPI speed-up 1→2 ranks, {size}", t_one / t_two, "x", "ideal (2 ranks)", 2.0,
            note="ratio = parallel efficiency"),
        row("shear", f"MPI 2 ranks speed-up vs serial torch, {size}", t_serial / t_two, "x", peer, 1.0),
    ]
