"""External simulations → box files (``/delta``, ``/halo_mass``, ``/halo_id``) in our format.

* :func:`import_pinocchio`: δ from PINOCCHIO's own ICs (run-mode-2 density, or −∇·ψ of the
  Zel'dovich block), labels from ``GRUP`` + catalogue. With ``nbody`` (a :class:`SimConfig`) our
  particle-mesh simulation runs from that δ: its FoF labels become ``/halo_mass``/``/halo_id`` and
  PINOCCHIO's go to ``/pinocchio/halo_mass``/``/pinocchio/halo_id`` — the baseline row of an
  evaluation on identical initial conditions.
* :func:`import_gadget`: δ from the IC snapshot, labels from the FoF table (or per-particle group
  ids) of a Gadget-4/AREPO/SWIFT run.

δ is rescaled with the linear growth factor D(z) (colossus, the file's cosmology) to ``z_init``.
attrs record the source files and every choice (``generator``), plus ``labels`` = "pinocchio",
"pm-fof" or "nbody-fof". Memory: every grid is 4 bytes per voxel; the peak is while δ is built —
labels (int32) + one ψ component (float32) + two half-complex float32 spectra ≈ 16 N³ bytes — plus
~0.25 GB of per-chunk temporaries: measured 549 MiB peak RSS at 256³ (2-core CPU, 6 s), so
≈ 16.3 GiB at 1024³.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from halotrans import __version__
from halotrans.io import DataError, require_finite
from halotrans.sims.boxio import write_box
from halotrans.sims.config import SimConfig
from halotrans.sims.readers import gadget_hdf5, pinocchio
from halotrans.sims.readers.lagrangian import grid_size, halo_mass_grid

log = logging.getLogger(__name__)


def growth_factor(cosmology: dict, z: float) -> float:
    """Linear growth factor D(z), D(0) = 1, for a dict with Om0 (Ode0, Ob0, H0 optional).

    Matter + dark energy without radiation, the background of our particle-mesh runs
    (:mod:`halotrans.sims.cosmology`), of Gadget and of PINOCCHIO built with NO_RADIATION.
    """
    from colossus.cosmology import cosmology as cc

    if "Om0" not in cosmology:
        raise DataError("the files give no Omega_m, so δ cannot be rescaled in time; keep the source redshift "
                        "(z_init=None, --z-init source)")
    om, ode = float(cosmology["Om0"]), float(cosmology.get("Ode0", 1.0 - cosmology["Om0"]))
    flat = abs(om + ode - 1.0) < 1e-6
    c = cc.Cosmology(name="import", flat=flat, Om0=om, Ode0=None if flat else ode, Ob0=cosmology.get("Ob0", 0.049),
                     H0=cosmology.get("H0", 70.0), sigma8=0.8, ns=0.96, relspecies=False, persistence="",
                     print_warnings=False)
    return float(c.growthFactor(z))


def _require_finite_fields(delta_source: str, labels_source: str, delta: np.ndarray, halo_mass: np.ndarray) -> None:
    """:class:`DataError` naming the source file if the imported δ or halo masses hold NaN/±Inf."""
    require_finite(delta, f"{delta_source}: /delta computed from this file",
                   "its particle data hold NaN/±Inf (corrupt file or transfer); nothing written")
    require_finite(halo_mass, f"{labels_source}: /halo_mass computed from this file",
                   "its halo masses hold NaN/±Inf (corrupt file or transfer); nothing written")


def _rescaled(delta: np.ndarray, cosmology: dict, z_from: float, z_to: float | None) -> tuple[np.ndarray, float]:
    if z_to is None or z_to == z_from:
        return delta, z_from
    delta *= growth_factor(cosmology, z_to) / growth_factor(cosmology, z_from)
    return delta, z_to


def import_pinocchio(run_dir: str | os.PathLike, out: str | os.PathLike, *, run_flag: str | None = None,
                     catalog: str | os.PathLike | None = None, params: str | os.PathLike | None = None,
                     delta_source: str = "auto", z_init: float | None = 99.0, min_particles: int = 20,
                     nbody: SimConfig | None = None, progress: bool = True) -> Path:
    """Import a PINOCCHIO run directory into the box file ``out``."""
    run_flag, files = pinocchio.find_run(run_dir, run_flag)
    snap = pinocchio.Snapshot.open(files.timeless)
    param_file = Path(params) if params else files.params
    pars = pinocchio.read_params(param_file) if param_file else {}
    if pars:
        if int(pars.get("GridSize", snap.n)) != snap.n:
            raise DataError(f"{param_file}: GridSize {pars['GridSize']} but the snapshot has {snap.n}³ particles")
        cosmology = pinocchio.params_cosmology(pars)
    else:
        cosmology = {"Om0": snap.omega0, "Ode0": snap.omega_lambda, "H0": 100.0 * snap.hubble}
    sim = _matching_sim(nbody, snap, z_init, cosmology) if nbody is not None else None  # fail before reading
    cat_path = Path(catalog) if catalog else pinocchio.catalog_path(run_dir, run_flag, snap.redshift)
    halo_id, halos, stats = pinocchio.halo_labels(snap, pinocchio.read_catalog(cat_path), min_particles, progress)

    if delta_source == "auto":
        delta_source = "density" if files.density else "zeldovich"
    if delta_source == "density":
        if files.density is None:
            raise DataError(f"{run_dir}: no pinocchio.{run_flag}.density0.out; run `pinocchio.x parameter_file 2` "
                            "or use delta_source='zeldovich'")
        dens = pinocchio.Snapshot.open(files.density)
        if dens.n != snap.n:
            raise DataError(f"{files.density}: {dens.n}³ particles, the timeless snapshot has {snap.n}³")
        delta, z_delta = pinocchio.linear_delta(dens, "density", progress), 0.0
    else:
        delta, z_delta = pinocchio.linear_delta(snap, "zeldovich", progress), snap.redshift
    delta, z_out = _rescaled(delta, cosmology, z_delta, z_init)
    halo_mass = halo_mass_grid(halo_id, halos["mass"])  # after the FFT buffers of δ are freed
    _require_finite_fields(str(files.density if delta_source == "density" else files.timeless), str(cat_path),
                           delta, halo_mass)

    generator = {
        "code": "pinocchio", "run_dir": str(Path(run_dir).resolve()), "run_flag": run_flag,
        "timeless_snapshot": str(files.timeless), "catalog": str(cat_path), "delta_source": delta_source,
        "delta_file": str(files.density if delta_source == "density" else files.timeless),
        "labels_redshift": snap.redshift, **stats,
    }
    attrs = {"box_size": snap.box_size, "seed": int(pars.get("RandomSeed", -1)), "z_init": z_out,
             "cosmology": cosmology, "particle_mass": snap.particle_mass, "code_version": __version__,
             "grid_origin": "cell centre ((i,j,k)+0.5)·L/N (PINOCCHIO)"}
    n_members = halos["npart"].astype(np.int32)
    baseline = {"pinocchio/halo_mass": halo_mass, "pinocchio/halo_id": halo_id,
                "pinocchio/halos/n_members": n_members, "pinocchio/halos/name": halos["name"]}
    if sim is None:
        attrs.update(labels="pinocchio", generator=generator)
        return write_box(out, delta, halo_mass, attrs, {"halo_id": halo_id, "halos/n_members": n_members, **baseline})

    from halotrans.sims.box import simulate_from_delta

    arrays, sim_attrs = simulate_from_delta(delta, sim)
    generator["pinocchio_particle_mass"] = snap.particle_mass
    attrs.update(labels="pm-fof", baseline="pinocchio", generator=generator, nbody=sim_attrs["generator"],
                 **{k: sim_attrs[k] for k in ("cosmology", "particle_mass", "grid_origin", "n_halos")})
    extra = {"halo_id": arrays["halo_id"], "halos/n_members": arrays["halos/n_members"], **baseline}
    return write_box(out, delta, arrays["halo_mass"], attrs, extra)


def _matching_sim(sim: SimConfig, snap: "pinocchio.Snapshot", z_init: float | None, cosmology: dict) -> SimConfig:
    """``sim`` with the imported box size, grid and z_init (steps, mesh, FoF settings kept).

    The N-body cosmology is ``sim.cosmology``; its Ω_m must be the PINOCCHIO run's.
    """
    from dataclasses import replace

    from halotrans.sims.cosmology import Cosmology

    if z_init is None:
        raise DataError("the N-body run needs δ at a starting redshift: give z_init (e.g. the config's sim.z_init)")
    om = Cosmology(sim.cosmology, sim.sigma8, sim.power_spectrum).omega_m
    if abs(om - cosmology["Om0"]) > 1e-3 * om:
        raise DataError(f"the PINOCCHIO run has Omega0 = {cosmology['Om0']}, sim.cosmology '{sim.cosmology}' has "
                        f"Om0 = {om}: use the config the parameter file was written from")
    changed = {k: v for k, v in (("box_size", snap.box_size), ("n_grid", snap.n), ("z_init", z_init))
               if getattr(sim, k) != v}
    if changed:
        log.info("N-body settings follow the imported run: %s", changed)
    return replace(sim, **changed)


def import_gadget(snapshot: str | os.PathLike, ic: str | os.PathLike, out: str | os.PathLike, *,
                  groups: str | os.PathLike | None = None, group_ids: str | None = None,
                  no_group: int = gadget_hdf5.SWIFT_NO_GROUP, id_offset: int = 1, length_unit: str = "auto",
                  delta_method: str = "displacement", z_init: float | None = 99.0, min_particles: int = 20,
                  progress: bool = True) -> Path:
    """Import a Gadget-4/AREPO/SWIFT HDF5 run: final snapshot + FoF groups + IC snapshot → box file."""
    if (groups is None) == (group_ids is None):
        raise DataError("give exactly one of groups (fof_subhalo_tab file) or group_ids (per-particle dataset)")
    snap = gadget_hdf5.HDF5Snapshot.open(snapshot, length_unit)
    n = grid_size(snap.n_total, str(snap.files[0]))
    if groups is not None:
        fof = gadget_hdf5.read_fof_tab(groups, snap)
        halo_id, masses, n_members, stats = gadget_hdf5.labels_from_sorted_groups(snap, fof, n, id_offset,
                                                                                  min_particles, progress)
    else:
        halo_id, masses, n_members, stats = gadget_hdf5.labels_from_group_ids(snap, group_ids, n, id_offset,
                                                                              min_particles, no_group, progress)

    ics = gadget_hdf5.HDF5Snapshot.open(ic, length_unit)
    if abs(ics.box_size - snap.box_size) > 1e-6 * snap.box_size:
        raise DataError(f"{ic}: box size {ics.box_size} Mpc/h differs from the snapshot's {snap.box_size} Mpc/h")
    delta, dstats = gadget_hdf5.delta_from_ic(ics, n, id_offset, delta_method, progress)
    cosmology = snap.cosmology or ics.cosmology
    delta, z_out = _rescaled(delta, cosmology, ics.redshift, z_init)
    halo_mass = halo_mass_grid(halo_id, masses)  # after the FFT buffers of δ are freed
    _require_finite_fields(str(ics.files[0]), str(groups or snap.files[0]), delta, halo_mass)

    generator = {"code": "gadget-hdf5", "snapshot": [str(p) for p in snap.files], "ic": [str(p) for p in ics.files],
                 "groups": str(groups) if groups else f"per-particle {group_ids}", "id_offset": id_offset,
                 "length_to_mpch": snap.length_to_mpch, "ic_redshift": ics.redshift,
                 "labels_redshift": snap.redshift, **stats, **dstats}
    attrs = {"box_size": snap.box_size, "seed": -1, "z_init": z_out, "cosmology": cosmology,
             "particle_mass": snap.particle_mass, "code_version": __version__, "labels": "nbody-fof",
             "grid_origin": "IDs in C order: offset + (i·N + j)·N + k", "generator": generator}
    return write_box(out, delta, halo_mass, attrs, {"halo_id": halo_id, "halos/n_members": n_members})
