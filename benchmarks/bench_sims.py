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

``pinocchio`` rows (issue 15): one 64³ box (64 Mpc/h, the ``sims/box64`` settings) labelled by
PINOCCHIO v5 and by our PM + FoF started from PINOCCHIO's own linear δ (its run-mode-2 density file,
scaled to z_init), i.e. on the same initial conditions. Seconds to labels: PINOCCHIO's full run
(ICs, collapse times, fragmentation, catalogue, timeless snapshot; 2 MPI ranks) plus reading its
``GRUP`` labels, against ``simulate_from_delta`` (ICs, 128³-mesh 40-step PM, FoF, labels). Label
agreement: PINOCCHIO's mass classes against the N-body ones (5 classes, edges 13.0/13.5/14.0 in
log10 M☉/h): accuracy (peer: labelling every voxel "no halo"), per-class recall and ΔM/M of the
total mass per class. The binary is ``$PINOCCHIO``, else ``build/pinocchio/bin/pinocchio.x``
(``scripts/build_pinocchio.sh``), else ``pinocchio.x`` on PATH; without one the row says "not run".
"""

from __future__ import annotations

import itertools
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from halotrans.benchmark import row
from halotrans.sims.box import simulate_box
from halotrans.sims.config import SimConfig
from halotrans.sims.cosmology import Cosmology
from halotrans.sims.ics import linear_density_k, lpt_displacements, lpt_particles, white_noise
from halotrans.sims.pm import ParticleMesh, evolve, scale_factor_steps

sys.path.insert(0, str(Path(__file__).resolve().parent))  # harness.py next to this file
from harness import PINOCCHIO_BUILD, find_pinocchio  # noqa: E402

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


PINOCCHIO_EDGES = (13.0, 13.5, 14.0)  # log10 M☉/h: 5 classes (0 = no halo)
PINOCCHIO_N = 64
def pinocchio_rows(exe: str | None, n: int = PINOCCHIO_N, seed: int = 0, ranks: int | None = None) -> list[dict]:
    """The ``pinocchio`` rows: seconds to labels and label agreement on one box (see the module doc)."""
    metric = f"pinocchio: seconds to labels, {n}³ box ({n} Mpc/h)"
    if exe is None:
        return [row(NAME, metric, None, "s", "PINOCCHIO v5", None, higher_is_better=False,
                    note=f"not run: no PINOCCHIO binary (build it: {PINOCCHIO_BUILD}; then PINOCCHIO=/path/pinocchio.x)")]
    from halotrans.data.boxes import mass_to_class
    from halotrans.eval.metrics import accuracy, class_masses, class_recall, confusion_matrix, mass_relative_error
    from halotrans.sims.box import simulate_from_delta
    from halotrans.sims.readers import pinocchio
    from halotrans.sims.readers.importer import growth_factor
    from halotrans.sims.readers.lagrangian import halo_mass_grid
    from halotrans.sims.readers.pinocchio_run import run_pinocchio, write_run_files

    cfg = SimConfig(box_size=float(n), n_grid=n, mesh_factor=2, n_steps=N_STEPS)
    ranks = ranks or min(2, os.cpu_count() or 1)
    with tempfile.TemporaryDirectory(prefix="bench_pinocchio_") as tmp:
        run_dir = Path(tmp)
        write_run_files(cfg, seed, run_dir, max_mem_mb=2000)
        try:
            pino_s = run_pinocchio(exe, run_dir, ranks=ranks, timeout=600)
        except RuntimeError as e:
            return [row(NAME, metric, None, "s", "PINOCCHIO v5", None, higher_is_better=False,
                        note=f"not run: PINOCCHIO failed: {str(e).splitlines()[0]}")]
        t0 = time.perf_counter()
        snap = pinocchio.Snapshot.open(run_dir / "pinocchio.halotrans.t_snapshot.out")
        cat = pinocchio.read_catalog(pinocchio.catalog_path(run_dir, "halotrans", snap.redshift))
        halo_id, halos, stats = pinocchio.halo_labels(snap, cat, cfg.fof_min_members)
        pino_mass = halo_mass_grid(halo_id, halos["mass"])
        read_s = time.perf_counter() - t0
        cosmology = pinocchio.params_cosmology(pinocchio.read_params(run_dir / "parameter_file"))
        delta = pinocchio.linear_delta(pinocchio.Snapshot.open(run_dir / "pinocchio.halotrans.density0.out"), "density")
    delta *= growth_factor(cosmology, cfg.z_init)  # density0 is δ at z = 0 (D = 1)

    timings: dict[str, float] = {}
    arrays, attrs = simulate_from_delta(delta, cfg, timings)
    ours_s = sum(timings.values())
    pino_total = pino_s["run"] + read_s

    true = mass_to_class(arrays["halo_mass"], PINOCCHIO_EDGES)
    pred = mass_to_class(pino_mass, PINOCCHIO_EDGES)
    k = len(PINOCCHIO_EDGES) + 2
    recall = class_recall(confusion_matrix(true, pred, k))
    voxel_mass = attrs["particle_mass"]
    dm = mass_relative_error(class_masses(pred, k, voxel_mass), class_masses(true, k, voxel_mass))
    names = ["no halo", f"< {PINOCCHIO_EDGES[0]}"] + [f"{a}–{b}" for a, b in itertools.pairwise(PINOCCHIO_EDGES)] \
        + [f"≥ {PINOCCHIO_EDGES[-1]}"]
    split = ", ".join(f"{key} {v:.2f} s" for key, v in timings.items())
    setup = f"{n}³, {n} Mpc/h, seed {seed}, same ICs (PINOCCHIO's δ)"
    rows = [
        row(NAME, f"{metric}: PM + FoF", ours_s, "s", f"PINOCCHIO v5, {ranks} MPI ranks (full run + reading GRUP)",
            pino_total, higher_is_better=False,
            note=f"{setup}; ours: 128³ mesh, {N_STEPS} steps, {split}, threads {torch.get_num_threads()}; "
                 f"PINOCCHIO run {pino_s['run']:.2f} s + labels read {read_s:.2f} s (density file, run mode 2, "
                 f"{pino_s['density']:.2f} s more); halos ≥ {cfg.fof_min_members} particles: "
                 f"ours {attrs['n_halos']}, PINOCCHIO {stats['n_halos_kept']}"),
        row(NAME, f"pinocchio: label accuracy vs N-body, 5 classes (edges {'/'.join(map(str, PINOCCHIO_EDGES))})",
            accuracy(true, pred), "fraction", "all voxels 'no halo'", accuracy(true, np.zeros_like(true)),
            note=f"{setup}; truth = our PM + FoF labels; halo voxels ours {np.mean(true > 0):.3f}, "
                 f"PINOCCHIO {np.mean(pred > 0):.3f}; halo/no-halo agreement {np.mean((true > 0) == (pred > 0)):.3f}"),
    ]
    for c in range(k):
        rows.append(row(NAME, f"pinocchio: recall of class {c} ({names[c]}) vs N-body", float(recall[c]), "fraction",
                        note=f"{setup}; {int(np.sum(true == c))} true voxels; total mass ΔM/M of PINOCCHIO's "
                             f"class {float(dm[c]):+.3f}"))
    return rows


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
    rows += pinocchio_rows(find_pinocchio())
    return rows


if __name__ == "__main__":
    import sys

    from halotrans.benchmark import format_table

    print(format_table(run(quick="--quick" in sys.argv)))
