"""Set up and run PINOCCHIO for a halotrans sim config (the baseline of the segmentation task).

PINOCCHIO draws its own initial conditions from ``RandomSeed`` (it reads no external white noise),
so the baseline runs the other way round: PINOCCHIO makes the ICs, we import its linear density
field as ``/delta`` and, with ``--nbody``, run our particle-mesh simulation from that same δ.

    write_run_files(cfg.sim, seed=0, run_dir="pino")   # parameter_file + outputs from the template
    run_pinocchio("/path/pinocchio.x", "pino")          # mpiexec -n 2 pinocchio.x parameter_file [2]

The template is ``configs/pinocchio/parameter_file.template``; PINOCCHIO must be built with
``-DSNAPSHOT`` (timeless snapshot and run mode 2). Cosmology comes from colossus' parameter set
named by ``SimConfig.cosmology`` (``sigma8`` overridden by ``SimConfig.sigma8`` when set).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from halotrans.config import CONFIG_DIR, ConfigError
from halotrans.io import atomic_path
from halotrans.sims.config import SimConfig

TEMPLATE = CONFIG_DIR / "pinocchio" / "parameter_file.template"
OUTPUTS = CONFIG_DIR / "pinocchio" / "outputs"


def sim_cosmology(sim: SimConfig) -> dict[str, float]:
    """Om0, Ob0, H0, sigma8, ns of ``sim.cosmology`` (a colossus name), sigma8 overridden if set."""
    from colossus.cosmology import cosmology

    if sim.cosmology not in cosmology.cosmologies:
        raise ConfigError(f"sim.cosmology: unknown cosmology {sim.cosmology!r} "
                          f"(colossus knows {sorted(cosmology.cosmologies)})")
    params = dict(cosmology.cosmologies[sim.cosmology])
    if sim.sigma8 is not None:
        params["sigma8"] = sim.sigma8
    return {k: float(params[k]) for k in ("Om0", "Ob0", "H0", "sigma8", "ns")}


def write_run_files(sim: SimConfig, seed: int, run_dir: str | os.PathLike, run_flag: str = "halotrans",
                    max_mem_mb: int = 3600) -> Path:
    """Write ``parameter_file`` and ``outputs`` (z = 0) into ``run_dir``; return the parameter file.

    Box, grid and cosmology follow ``sim``; ``MinHaloMass`` = ``sim.fof_min_members``; the
    PINOCCHIO ``RandomSeed`` is ``seed + 1`` (PINOCCHIO needs a positive seed).
    """
    c = sim_cosmology(sim)
    text = TEMPLATE.read_text().format(
        run_flag=run_flag, box_size=sim.box_size, n_grid=sim.n_grid, seed=int(seed) + 1,
        omega0=c["Om0"], omega_lambda=1.0 - c["Om0"], omega_baryon=c["Ob0"], hubble=c["H0"] / 100.0,
        sigma8=c["sigma8"], ns=c["ns"], max_mem_mb=max_mem_mb, min_halo_mass=sim.fof_min_members,
    )
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(run_dir / "outputs") as tmp:
        shutil.copyfile(OUTPUTS, tmp)
    with atomic_path(run_dir / "parameter_file") as tmp:
        tmp.write_text(text)
    return run_dir / "parameter_file"


def run_pinocchio(executable: str | os.PathLike, run_dir: str | os.PathLike, ranks: int = 2,
                  mpiexec: list[str] | None = None, timeout: float | None = None) -> None:
    """Run PINOCCHIO in ``run_dir``: the full run (timeless snapshot, catalogues), then mode 2 (density).

    Raises ``RuntimeError`` with the tail of PINOCCHIO's output when a run fails.
    """
    launcher = mpiexec or [shutil.which("mpiexec") or "mpiexec", "-n", str(ranks)]
    for extra in ([], ["2"]):
        cmd = [*launcher, str(executable), "parameter_file", *extra]
        proc = subprocess.run(cmd, cwd=run_dir, capture_output=True, text=True, timeout=timeout)
        if proc.returncode != 0 or "Pinocchio done!" not in proc.stdout:
            raise RuntimeError(f"PINOCCHIO failed ({proc.returncode}): {' '.join(cmd)} in {run_dir}\n"
                               f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
