"""One simulated box: seed → Gaussian field → LPT → particle-mesh N-body → FoF → Lagrangian labels.

    arrays, attrs = simulate_box(SimConfig(n_grid=32, box_size=32.0, n_steps=20), seed=0)
    arrays["delta"]      # float32 (N,N,N) linear δ at z_init
    arrays["halo_mass"]  # float32 (N,N,N) log10 M [M☉/h] of the z=0 FoF halo of each voxel, 0 = none
    arrays["halo_id"]    # int32 (N,N,N) index into arrays["halos/n_members"], −1 = none

The arrays and attrs are what :func:`halotrans.sims.boxio.write_box` stores (``halo_id`` and
``halos/n_members`` as extra datasets). Same seed and settings give bitwise identical results on
the same CPU build; a GPU run differs at round-off level.
"""

from __future__ import annotations

import time
from typing import Any, Callable

import numpy as np
import torch

import halotrans
from halotrans.io import require_cubic
from halotrans.sims.config import SimConfig
from halotrans.sims.cosmology import Cosmology
from halotrans.sims.fof import friends_of_friends, member_counts
from halotrans.sims.ics import linear_density, linear_density_k, lpt_displacements, lpt_particles, white_noise
from halotrans.sims.labels import lagrangian_halo_id, lagrangian_halo_mass
from halotrans.sims.pm import ParticleMesh, evolve, scale_factor_steps
from halotrans.yaml_config import config_to_dict

GRID_ORIGIN = "grid point (i,j,k)·L/N; particle index (i·N + j)·N + k"


def simulate_box(cfg: SimConfig, seed: int, timings: dict[str, float] | None = None,
                 on_step: Callable[[int], None] | None = None) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Simulate the box of ``seed`` with the settings ``cfg``; returns (arrays, attrs).

    ``timings`` (if given) receives seconds per stage: ``ics``, ``pm``, ``fof``, ``labels``;
    ``on_step(i)`` is called after each PM step.
    """
    t0 = time.perf_counter()
    cosmo = Cosmology(cfg.cosmology, cfg.sigma8, cfg.power_spectrum)
    delta_k = linear_density_k(cosmo, white_noise(seed, cfg.n_grid), cfg.box_size, cfg.device)
    if timings is not None:
        timings["ics"] = time.perf_counter() - t0
    return _evolve_and_label(cfg, cosmo, delta_k, int(seed), timings, on_step)


def simulate_from_delta(delta: np.ndarray, cfg: SimConfig, timings: dict[str, float] | None = None,
                        on_step: Callable[[int], None] | None = None) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Like :func:`simulate_box` from a given linear δ (N,N,N) at ``cfg.z_init`` (e.g. PINOCCHIO's ICs).

    ``cfg.n_grid`` must equal N; ``attrs['seed']`` is −1.
    """
    n = require_cubic(np.shape(delta), "delta")
    if n != cfg.n_grid:
        raise ValueError(f"delta has N={n} but cfg.n_grid={cfg.n_grid}")
    t0 = time.perf_counter()
    cosmo = Cosmology(cfg.cosmology, cfg.sigma8, cfg.power_spectrum)
    growth = cosmo.growth(1.0 / (1.0 + cfg.z_init))
    delta_k = torch.fft.rfftn(torch.as_tensor(np.asarray(delta, dtype=np.float64), device=cfg.device)) / growth
    if timings is not None:
        timings["ics"] = time.perf_counter() - t0
    return _evolve_and_label(cfg, cosmo, delta_k, -1, timings, on_step)


def _evolve_and_label(cfg: SimConfig, cosmo: Cosmology, delta_k: torch.Tensor, seed: int,
                      timings: dict[str, float] | None, on_step: Callable[[int], None] | None
                      ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    n, box = cfg.n_grid, cfg.box_size
    clock = _Clock(timings)
    a_init = 1.0 / (1.0 + cfg.z_init)
    growth_init = cosmo.growth(a_init)
    delta_init = (linear_density(delta_k, n) * growth_init).to(torch.float32).cpu().numpy()
    psi1, psi2 = lpt_displacements(delta_k, box, cfg.lpt_order)
    pos, mom = lpt_particles(cosmo, a_init, psi1, psi2, box)
    del psi1, psi2, delta_k
    clock.add("ics")

    pm = ParticleMesh(cfg.mesh_factor * n, box, pos.device)
    evolve(pos, mom, cosmo, pm, scale_factor_steps(cfg.z_init, cfg.n_steps), on_step)
    positions = pos.T.cpu().numpy()
    del pos, mom, pm
    clock.add("pm")

    group_id = friends_of_friends(positions, box, cfg.fof_b, cfg.fof_min_members)
    n_members = member_counts(group_id)
    clock.add("fof")

    particle_mass = cosmo.particle_mass(box, n)
    arrays = {
        "delta": delta_init,
        "halo_mass": lagrangian_halo_mass(group_id, n_members * particle_mass, n),
        "halo_id": lagrangian_halo_id(group_id, n),
        "halos/n_members": n_members.astype(np.int32),
    }
    attrs = {
        "box_size": float(box), "n_grid": n, "seed": seed, "z_init": float(cfg.z_init),
        "cosmology": cosmo.parameters(), "generator": generator_attrs(cfg),
        "particle_mass": particle_mass, "growth_z_init": growth_init, "grid_origin": GRID_ORIGIN,
        "code_version": halotrans.__version__, "n_halos": len(n_members),
        "halo_fraction": float(np.mean(group_id >= 0)),
    }
    clock.add("labels")
    return arrays, attrs


def generator_attrs(cfg: SimConfig) -> dict[str, Any]:
    """Every SimConfig setting but ``out_dir`` (stored as JSON in the box's ``generator`` attr)."""
    return {k: v for k, v in config_to_dict(cfg).items() if k != "out_dir"}


class _Clock:
    """Adds the seconds since the previous call to ``timings[name]`` (no-op without ``timings``)."""

    def __init__(self, timings: dict[str, float] | None) -> None:
        self.timings = timings
        self.last = time.perf_counter()

    def add(self, name: str) -> None:
        now = time.perf_counter()
        if self.timings is not None:
            self.timings[name] = self.timings.get(name, 0.0) + now - self.last
        self.last = now
