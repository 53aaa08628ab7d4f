"""Simulation pipeline: seconds per box (ICs + PM + FoF) against a NumPy PM and the issue's targets.

Ours: ``halotrans.sims.box.simulate_box`` (torch PM, FastPM KDK, 2× mesh, 40 steps; scipy FoF) at
64³ particles / 128³ mesh and 128³ / 256³, on the CPU with torch's threads, and on CUDA when
present. Peer: a straightforward NumPy implementation of the same force step (``np.add.at`` CIC
painting, ``numpy.fft`` rfftn/irfftn, the same Green's function and 4-point gradient via
``np.roll``, fancy-index readout), timed over a few force evaluations of the same particles and
extrapolated to the 41 force evaluations of 40 KDK steps. Targets (issue 2): a 128³/256³/40-step
box in under 60 s on the 2-core CPU and under 10 s on an H100.

``--quick``: the 64³ box in full; at 128³ only the ICs and 3 PM steps, extrapolated to 40 steps
(no FoF at 128³; later steps are a little slower as particles cluster).
"""

from __future__ import annotations

import time

import numpy as np
import torch

from halotrans.benchmark import row
from halotrans.sims.box import simulate_box
from halotrans.sims.config import SimConfig
from halotrans.sims.cosmology import Cosmology
from halotrans.sims.ics import linear_density_k, lpt_displacements, lpt_particles, white_noise
from halotrans.sims.pm import ParticleMesh, evolve, scale_factor_steps

NAME = "sims"
TARGET_S = {"cpu": 60.0, "cuda": 10.0}  # seconds for a 128³ box, 256³ mesh, 40 steps
N_STEPS = 40
PEER = "NumPy PM (np.add.at CIC, numpy.fft), {k} forces x41"


def numpy_force(pos: np.ndarray, n_mesh: int, box: float) -> np.ndarray:
    """The same PM force as :class:`halotrans.sims.pm.ParticleMesh`, written plainly in NumPy."""
    u = pos * (n_mesh / box) - 0.5  # mesh nodes at cell centres
    cell = np.floor(u).astype(np.int64)
    frac = u - cell
    rho = np.zeros((n_mesh,) * 3)
    corners = [(dx, dy, dz) for dx in (0, 1) for dy in (0, 1) for dz in (0, 1)]
    for dx, dy, dz in corners:
        w = (frac[0] if dx else 1 - frac[0]) * (frac[1] if dy else 1 - frac[1]) * (frac[2] if dz else 1 - frac[2])
        np.add.at(rho, ((cell[0] + dx) % n_mesh, (cell[1] + dy) % n_mesh, (cell[2] + dz) % n_mesh), w)
    k = 2 * np.pi * np.fft.fftfreq(n_mesh, d=box / n_mesh)
    kz = 2 * np.pi * np.fft.rfftfreq(n_mesh, d=box / n_mesh)
    k2 = k[:, None, None] ** 2 + k[None, :, None] ** 2 + kz[None, None, :] ** 2
    k2[0, 0, 0] = 1.0
    phi_k = np.fft.rfftn(rho) * (-1.0 / k2) * (n_mesh**3 / pos.shape[1])
    phi_k[0, 0, 0] = 0.0
    phi = np.fft.irfftn(phi_k, s=rho.shape)
    h = box / n_mesh
    force = np.empty_like(pos)
    for axis in range(3):
        grad = -(8 * (np.roll(phi, -1, axis) - np.roll(phi, 1, axis))
                 - (np.roll(phi, -2, axis) - np.roll(phi, 2, axis))) / (12 * h)
        force[axis] = sum(
            grad[(cell[0] + dx) % n_mesh, (cell[1] + dy) % n_mesh, (cell[2] + dz) % n_mesh]
            * (frac[0] if dx else 1 - frac[0]) * (frac[1] if dy else 1 - frac[1]) * (frac[2] if dz else 1 - frac[2])
            for dx, dy, dz in corners)
    return force


def _initial_particles(cfg: SimConfig, device: str) -> tuple[Cosmology, torch.Tensor, torch.Tensor]:
    cosmo = Cosmology(cfg.cosmology)
    delta_k = linear_density_k(cosmo, white_noise(0, cfg.n_grid), cfg.box_size, device)
    pos, mom = lpt_particles(cosmo, 1.0 / (1.0 + cfg.z_init), *lpt_displacements(delta_k, cfg.box_size), cfg.box_size)
    return cosmo, pos, mom


def numpy_pm_seconds(cfg: SimConfig, forces: int) -> float:
    """Seconds of ``forces`` NumPy force evaluations, extrapolated to the 41 of a 40-step run."""
    _, pos, _ = _initial_particles(cfg, "cpu")
    pos = pos.double().numpy()
    numpy_force(pos, cfg.mesh_factor * cfg.n_grid, cfg.box_size)  # warm-up (page faults, FFT plans)
    t0 = time.perf_counter()
    for _ in range(forces):
        numpy_force(pos, cfg.mesh_factor * cfg.n_grid, cfg.box_size)
    return (time.perf_counter() - t0) / forces * (N_STEPS + 1)


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def ours_extrapolated(cfg: SimConfig, device: str, steps: int) -> dict[str, float]:
    """ICs and ``steps`` PM steps timed; PM seconds extrapolated to ``cfg.n_steps``."""
    t0 = time.perf_counter()
    cosmo, pos, mom = _initial_particles(cfg, device)
    _sync(device)
    t1 = time.perf_counter()
    pm = ParticleMesh(cfg.mesh_factor * cfg.n_grid, cfg.box_size, device)
    evolve(pos, mom, cosmo, pm, scale_factor_steps(cfg.z_init, cfg.n_steps)[:steps + 1])
    _sync(device)
    t2 = time.perf_counter()
    return {"ics": t1 - t0, "pm": (t2 - t1) / (steps + 1) * (cfg.n_steps + 1)}


def ours_full(cfg: SimConfig, device: str) -> dict[str, float]:
    """A whole box (after one warm-up box for CUDA): seconds per stage."""
    if device == "cuda":
        simulate_box(cfg, 0)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    simulate_box(cfg, 0, timings)
    timings["total"] = time.perf_counter() - t0
    return timings


def run(quick: bool) -> list[dict]:
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    rows = []
    for n in (64, 128):
        cfg = SimConfig(box_size=float(n), n_grid=n, mesh_factor=2, n_steps=N_STEPS)
        size = f"{n}³/{2 * n}³ mesh/{N_STEPS} steps"
        peer_forces = 2 if n == 64 or not quick else 1
        peer_s = numpy_pm_seconds(cfg, peer_forces)
        for device in devices:
            partial = quick and n == 128 and device == "cpu"
            t = ours_extrapolated(cfg, device, 3) if partial else ours_full(cfg, device)
            split = ", ".join(f"{k} {v:.2f} s" for k, v in t.items() if k != "total")
            how = "ICs + 3 PM steps timed, PM extrapolated to 40 steps, no FoF" if partial else "full box"
            rows.append(row(NAME, f"PM seconds, {size} ({device})", t["pm"], "s",
                            PEER.format(k=peer_forces), peer_s, higher_is_better=False,
                            note=f"{how}; {split}; threads {torch.get_num_threads()}"))
            if n == 128:
                total = t.get("total", t["ics"] + t["pm"])
                rows.append(row(NAME, f"box seconds, {size} ({device})", total, "s",
                                f"issue target ({device})", TARGET_S[device], higher_is_better=False,
                                note=f"{how}; {split}"))
    return rows


if __name__ == "__main__":
    import sys

    from halotrans.benchmark import format_table

    print(format_table(run(quick="--quick" in sys.argv)))
