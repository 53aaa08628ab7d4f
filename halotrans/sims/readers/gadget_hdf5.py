"""Gadget-4 / AREPO / SWIFT HDF5 snapshots and FoF tables as Lagrangian grids, streamed in chunks.

Snapshot (one file ``snap_XXX.hdf5`` or ``snap_XXX.0.hdf5 … snap_XXX.{F−1}.hdf5``): dark matter is
``PartType1`` with ``Coordinates`` (n,3), ``ParticleIDs`` and, when ``Header/MassTable[1]`` is 0,
``Masses``. Header attrs ``BoxSize``, ``NumPart_ThisFile``, ``NumPart_Total`` (+ ``_HighWord``),
``MassTable``, ``Redshift``, ``NumFilesPerSnapshot``.

Units: Gadget-4 and AREPO store ``UnitLength_in_cm``/``UnitMass_in_g`` (in ``/Parameters`` or
``/Header``) for h-scaled comoving units (default kpc/h and 10¹⁰ M☉/h); SWIFT stores
``/Units`` (no h: Mpc, 10¹⁰ M☉) and ``/Cosmology`` attrs ``h``, ``Omega_m``. Without unit attrs,
lengths are taken as kpc/h when the mean particle spacing exceeds 30 box units, else Mpc/h (with a
warning); ``length_unit`` overrides. Everything returned is in Mpc/h and M☉/h.

Halos, two layouts:

* Gadget-4/AREPO ``fof_subhalo_tab_XXX[.N].hdf5``: ``Group/GroupLen`` (``GroupLenType[:,1]`` in
  multi-species runs), ``Group/GroupMass``, optional ``GroupOffsetType``; snapshot particles are
  stored group by group (the first GroupLen[0] type-1 particles belong to group 0, …, then all
  particles in no group), which is the default snapshot order when FoF runs with the snapshot.
* SWIFT: a per-particle dataset (``PartType1/FOFGroupIDs``) with ``no_group`` (default
  2147483647, SWIFT's ``FOF:group_id_default``) for particles in no group; group mass = count × m.

Memory: grids are int32/float32 (N,N,N) filled chunk by chunk (:mod:`.lagrangian`); nothing per
particle of the whole run is held.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from halotrans.io import DataError, open_h5
from halotrans.sims.readers.lagrangian import CHUNK, Divergence, LagrangianGrid, cic_overdensity, lagrangian_index

log = logging.getLogger(__name__)

MPC_CM = 3.085678e24
MSUN_G = 1.989e33
SWIFT_NO_GROUP = 2147483647
LENGTH_UNITS = {"kpc/h": (1e-3, True), "Mpc/h": (1.0, True), "kpc": (1e-3, False), "Mpc": (1.0, False)}


def numbered_files(path: str | os.PathLike, count_attr: str) -> list[Path]:
    """``x.hdf5``, or the series ``x.0.hdf5 … x.{F−1}.hdf5`` named by its first file, its base or its directory.

    The count must match the first file's ``Header/<count_attr>``.
    """
    path = Path(path)
    if path.is_dir():
        firsts = sorted(path.glob("*.0.hdf5"))
        if len(firsts) != 1:
            raise DataError(f"{path}: expected one file series *.0.hdf5 in the directory, found {len(firsts)}")
        path = firsts[0]
    m = re.fullmatch(r"(.*)\.(\d+)\.hdf5", str(path))
    if m and path.is_file():
        base = m.group(1)
    elif path.is_file():
        files = [path]
        base = None
    else:
        base = str(path)[: -len(".hdf5")] if str(path).endswith(".hdf5") else str(path)
        if not Path(f"{base}.0.hdf5").is_file():
            raise DataError(f"file not found: {path} (nor {base}.0.hdf5)")
    if base is not None:
        files = []
        while Path(f"{base}.{len(files)}.hdf5").is_file():
            files.append(Path(f"{base}.{len(files)}.hdf5"))
        if not files:
            raise DataError(f"{path}: the series must start with {base}.0.hdf5")
    with open_h5(files[0]) as f:
        want = int(np.ravel(_attr(f, "Header", count_attr, files[0]))[0])
    if len(files) != want:
        raise DataError(f"{files[0]}: Header/{count_attr} = {want} but {len(files)} file(s) found")
    return files


def _attr(f: h5py.File, group: str, name: str, path: Path):
    if group not in f:
        raise DataError(f"{path}: missing HDF5 group /{group}")
    if name not in f[group].attrs:
        raise DataError(f"{path}: missing attribute /{group}.{name}")
    return f[group].attrs[name]


def _dataset(f: h5py.File, name: str, path: Path) -> h5py.Dataset:
    if name not in f:
        raise DataError(f"{path}: missing HDF5 dataset /{name}")
    return f[name]


def _scalar(value) -> float:
    return float(np.ravel(value)[0])


@dataclass
class HDF5Snapshot:
    """A (multi-file) snapshot: dark-matter counts per file and conversions to Mpc/h and M☉/h."""

    files: list[Path]
    counts: np.ndarray         # type-1 particles per file
    box_size: float            # Mpc/h
    length_to_mpch: float      # factor from file lengths to Mpc/h
    mass_to_msunh: float       # factor from file masses to M☉/h
    particle_mass: float       # M☉/h
    redshift: float
    only_dark_matter: bool
    cosmology: dict = field(default_factory=dict)

    @property
    def n_total(self) -> int:
        return int(self.counts.sum())

    @classmethod
    def open(cls, path: str | os.PathLike, length_unit: str = "auto") -> "HDF5Snapshot":
        files = numbered_files(path, "NumFilesPerSnapshot")
        counts, others = [], 0
        for p in files:
            with open_h5(p) as f:
                this = np.asarray(_attr(f, "Header", "NumPart_ThisFile", p), np.int64)
                counts.append(int(this[1]))
                others += int(this.sum() - this[1])
                if this[1] and "PartType1" not in f:
                    raise DataError(f"{p}: missing HDF5 group /PartType1 ({this[1]} particles announced)")
        with open_h5(files[0]) as f:
            total = np.asarray(_attr(f, "Header", "NumPart_Total", files[0]), np.int64)
            if "NumPart_Total_HighWord" in f["Header"].attrs:
                total = total + (np.asarray(f["Header"].attrs["NumPart_Total_HighWord"], np.int64) << 32)
            if int(total[1]) != sum(counts):
                raise DataError(f"{files[0]}: NumPart_Total[1] = {int(total[1])} but the files hold {sum(counts)}")
            box = _scalar(_attr(f, "Header", "BoxSize", files[0]))
            redshift = _scalar(_attr(f, "Header", "Redshift", files[0]))
            cosmo = _cosmology(f)
            to_mpc, h_scaled, to_msun = _units(f, length_unit, box, sum(counts), files[0])
            if not h_scaled and "H0" not in cosmo:
                raise DataError(f"{files[0]}: lengths are in units without h but the file gives no Hubble "
                                "parameter (/Cosmology.h or HubbleParam); pass --length-unit")
            h = cosmo.get("H0", 100.0) / 100.0
            length = to_mpc * (1.0 if h_scaled else h)
            mass = to_msun * (1.0 if h_scaled else h)
            table = _scalar(np.asarray(_attr(f, "Header", "MassTable", files[0]))[1:2])
        snap = cls(files, np.asarray(counts, np.int64), box * length, length, mass, table * mass, redshift,
                   others == 0, cosmo)
        if table == 0.0:
            snap.particle_mass = snap._uniform_mass()
        return snap

    def _uniform_mass(self) -> float:
        lo, hi = np.inf, -np.inf
        for _, blk in self.stream("Masses"):
            lo, hi = min(lo, float(blk["Masses"].min())), max(hi, float(blk["Masses"].max()))
        if not np.isfinite(lo) or hi > lo * (1 + 1e-6):
            raise DataError(f"{self.files[0]}: PartType1 masses range {lo}..{hi}: only runs with one dark-matter "
                            "particle mass map onto a Lagrangian grid")
        return lo * self.mass_to_msunh

    def stream(self, *datasets: str, chunk: int = CHUNK):
        """Yield ``(global type-1 index of the first particle, {name: array})`` over all files in order."""
        start = 0
        for p, count in zip(self.files, self.counts):
            if count == 0:
                continue
            with open_h5(p) as f:
                dsets = {name: _dataset(f, f"PartType1/{name}", p) for name in datasets}
                for name, d in dsets.items():
                    if d.shape[0] != count:
                        raise DataError(f"{p}: /PartType1/{name} has {d.shape[0]} rows, NumPart_ThisFile[1] = {count}")
                for lo in range(0, int(count), chunk):
                    hi = min(lo + chunk, int(count))
                    yield start + lo, {name: d[lo:hi] for name, d in dsets.items()}
            start += int(count)


def _cosmology(f: h5py.File) -> dict:
    """Om0, Ode0, Ob0, H0 from /Parameters (Gadget-4), /Header (Gadget-2/3, AREPO) or /Cosmology (SWIFT)."""
    keys = {"Om0": ("Omega0", "Omega_m"), "Ode0": ("OmegaLambda", "Omega_lambda"),
            "Ob0": ("OmegaBaryon", "Omega_b"), "H0": ("HubbleParam", "h")}
    out = {}
    for group in ("Cosmology", "Parameters", "Header"):
        if group not in f:
            continue
        attrs = f[group].attrs
        for key, names in keys.items():
            for name in names:
                if key not in out and name in attrs:
                    out[key] = _scalar(attrs[name]) * (100.0 if key == "H0" else 1.0)
    return out


def _units(f: h5py.File, length_unit: str, box: float, n_total: int, path: Path) -> tuple[float, bool, float]:
    """(file length → Mpc, whether lengths/masses carry 1/h, file mass → M☉)."""
    unit_l = unit_m = None
    h_scaled = True
    for group in ("Parameters", "Header"):
        if group in f and "UnitLength_in_cm" in f[group].attrs:
            unit_l = _scalar(f[group].attrs["UnitLength_in_cm"])
            unit_m = _scalar(f[group].attrs["UnitMass_in_g"]) if "UnitMass_in_g" in f[group].attrs else None
            break
    if unit_l is None and "Units" in f and "Unit length in cgs (U_L)" in f["Units"].attrs:
        unit_l = _scalar(f["Units"].attrs["Unit length in cgs (U_L)"])
        unit_m = _scalar(f["Units"].attrs.get("Unit mass in cgs (U_M)", 1.989e43))
        h_scaled = False
    to_msun = (unit_m if unit_m is not None else 1.989e43) / MSUN_G
    if length_unit != "auto":
        if length_unit not in LENGTH_UNITS:
            raise DataError(f"unknown length unit {length_unit!r} (choose from {sorted(LENGTH_UNITS)})")
        to_mpc, h_scaled = LENGTH_UNITS[length_unit]
        return to_mpc, h_scaled, to_msun
    if unit_l is not None:
        return unit_l / MPC_CM, h_scaled, to_msun
    spacing = box / max(n_total, 1) ** (1.0 / 3.0)
    guess = "kpc/h" if spacing > 30 else "Mpc/h"
    log.warning("%s: no unit attributes; mean particle spacing %.3g box units, so lengths are taken as %s "
                "(pass --length-unit to override)", path, spacing, guess)
    return LENGTH_UNITS[guess][0], True, to_msun


# ------------------------------------------------------------------------------------------ halos
@dataclass
class FoFGroups:
    """FoF groups in catalogue order: type-1 particles per group and total mass (M☉/h)."""

    length: np.ndarray
    mass: np.ndarray


def read_fof_tab(path: str | os.PathLike, snap: HDF5Snapshot) -> FoFGroups:
    """Read ``Group/GroupLen`` (or ``GroupLenType[:,1]``) and ``GroupMass`` of all files, with checks."""
    files = numbered_files(path, "NumFiles")
    lengths, masses, offsets, total = [], [], [], None
    for p in files:
        with open_h5(p) as f:
            ngroups = int(_scalar(_attr(f, "Header", "Ngroups_ThisFile", p)))
            this_total = int(_scalar(_attr(f, "Header", "Ngroups_Total", p)))
            if total is not None and this_total != total:
                raise DataError(f"{p}: Ngroups_Total = {this_total}, the first file says {total}")
            total = this_total
            if ngroups == 0:
                continue
            if "Group" not in f:
                raise DataError(f"{p}: missing HDF5 group /Group ({ngroups} groups announced)")
            if "GroupLenType" in f["Group"]:
                length = np.asarray(f["Group/GroupLenType"][:, 1], np.int64)
            elif snap.only_dark_matter:
                length = np.asarray(_dataset(f, "Group/GroupLen", p)[...], np.int64)
            else:
                raise DataError(f"{p}: /Group/GroupLenType is needed for a snapshot with several particle types")
            if len(length) != ngroups:
                raise DataError(f"{p}: {len(length)} group lengths but Ngroups_ThisFile = {ngroups}")
            lengths.append(length)
            masses.append(np.asarray(f["Group/GroupMass"][...], np.float64) * snap.mass_to_msunh
                          if "GroupMass" in f["Group"] else length * snap.particle_mass)
            if "GroupOffsetType" in f["Group"]:
                offsets.append(np.asarray(f["Group/GroupOffsetType"][:, 1], np.int64))
    length = np.concatenate(lengths) if lengths else np.zeros(0, np.int64)
    mass = np.concatenate(masses) if masses else np.zeros(0)
    where = str(files[0])
    if len(length) != total:
        raise DataError(f"{where}: Ngroups_Total = {total} but the files list {len(length)} groups")
    if (length < 0).any():
        raise DataError(f"{where}: negative GroupLen")
    if int(length.sum()) > snap.n_total:
        raise DataError(f"{where}: GroupLen sums to {int(length.sum())} particles, more than the snapshot's "
                        f"{snap.n_total}: inconsistent group catalogue")
    if offsets:
        offset = np.concatenate(offsets)
        expect = np.concatenate([[0], np.cumsum(length)[:-1]])
        if len(offset) != len(length) or (offset != expect).any():
            raise DataError(f"{where}: GroupOffsetType does not match the cumulative GroupLen: the snapshot is "
                            "not stored in group order")
    if snap.only_dark_matter and len(length) and not np.allclose(mass, length * snap.particle_mass, rtol=1e-3):
        raise DataError(f"{where}: GroupMass differs from GroupLen × particle mass ({snap.particle_mass:.6g} M☉/h): "
                        "wrong units, or catalogue and snapshot from different runs")
    return FoFGroups(length, mass)


def _kept(length: np.ndarray, min_particles: int) -> tuple[np.ndarray, np.ndarray]:
    keep = length >= max(min_particles, 1)
    new_index = np.full(len(length) + 1, -1, np.int64)  # last entry: "no group"
    new_index[:-1][keep] = np.arange(int(keep.sum()))
    return keep, new_index


def labels_from_sorted_groups(snap: HDF5Snapshot, groups: FoFGroups, n: int, id_offset: int,
                              min_particles: int, progress: bool = False):
    """Labels of a snapshot stored in group order.

    Returns halo_id int32 (N,N,N) (−1 none), mass [M☉/h] and type-1 member count of each kept halo, stats.
    """
    from tqdm import tqdm

    ends = np.cumsum(groups.length)
    in_groups = int(ends[-1]) if len(ends) else 0
    keep, new_index = _kept(groups.length, min_particles)
    grid = LagrangianGrid(n, np.int32, -2)
    where = str(snap.files[0])
    with tqdm(total=snap.n_total, desc="FoF labels", unit="part", disable=not progress) as bar:
        for start, blk in snap.stream("ParticleIDs"):
            idx = lagrangian_index(blk["ParticleIDs"], n, id_offset, where)
            s = np.arange(start, start + len(idx))
            g = np.where(s < in_groups, np.searchsorted(ends, s, side="right"), len(groups.length))
            grid.put(idx, new_index[g].astype(np.int32))
            bar.update(len(idx))
    stats = {"n_groups": int(len(groups.length)), "n_halos_kept": int(keep.sum()), "min_particles": int(min_particles)}
    return grid.finish(where), groups.mass[keep], groups.length[keep].astype(np.int32), stats


def labels_from_group_ids(snap: HDF5Snapshot, dataset: str, n: int, id_offset: int, min_particles: int,
                          no_group: int = SWIFT_NO_GROUP, progress: bool = False):
    """Labels from a per-particle group-id dataset (SWIFT ``FOFGroupIDs``); returns as
    :func:`labels_from_sorted_groups` (group mass = member count × particle mass)."""
    from tqdm import tqdm

    where = str(snap.files[0])
    grid = LagrangianGrid(n, np.int32, -2)
    top = -1
    with tqdm(total=snap.n_total, desc="FoF labels", unit="part", disable=not progress) as bar:
        for _, blk in snap.stream("ParticleIDs", dataset):
            idx = lagrangian_index(blk["ParticleIDs"], n, id_offset, where)
            gid = np.asarray(blk[dataset], np.int64)
            gid = np.where((gid == no_group) | (gid < 0), -1, gid)
            if gid.size and gid.max() >= np.iinfo(np.int32).max:
                raise DataError(f"{where}: group ids up to {int(gid.max())} do not fit int32; pass --no-group-value")
            top = max(top, int(gid.max()) if gid.size else -1)
            grid.put(idx, gid.astype(np.int32))
            bar.update(len(idx))
    raw = grid.finish(where)
    counts = np.zeros(top + 1, np.int64)
    for slab in raw:
        counts += np.bincount(slab[slab >= 0], minlength=top + 1)
    keep, new_index = _kept(counts, min_particles)
    for x in range(n):  # relabel in place: raw group id -> index of kept halo
        slab = raw[x]
        raw[x] = np.where(slab >= 0, new_index[np.maximum(slab, 0)], -1)
    stats = {"n_groups": int((counts > 0).sum()), "n_halos_kept": int(keep.sum()), "min_particles": int(min_particles)}
    return raw, counts[keep] * snap.particle_mass, counts[keep].astype(np.int32), stats


# ------------------------------------------------------------------------------ initial conditions
def delta_from_ic(ic: HDF5Snapshot, n: int, id_offset: int, method: str = "displacement",
                  progress: bool = False) -> tuple[np.ndarray, dict]:
    """δ (N,N,N) float32 at the IC redshift.

    ``displacement``: ψ = x − q(ID) in grid cells (periodic), δ = −∇·ψ (spectral; exact for
    Zel'dovich ICs, includes the small 2LPT term otherwise). ``cic``: cloud-in-cell density contrast of
    the IC positions on the N³ mesh, after removing the lattice offset (e.g. particles at cell centres)
    so voxel (i,j,k) is particle (i,j,k)'s; needs no ID mapping but is smoothed by the CIC window.
    """
    from tqdm import tqdm

    where = str(ic.files[0])
    if ic.n_total != n**3:
        raise DataError(f"{where}: the IC file holds {ic.n_total} particles, the snapshot {n}³")
    if method == "cic":
        cell = ic.box_size / n
        phase = np.zeros(3, complex)  # lattice offset: circular mean of x/cell mod 1 (particles barely moved)
        for _, blk in ic.stream("Coordinates"):
            phase += np.exp(2j * np.pi * blk["Coordinates"] * (ic.length_to_mpch / cell)).sum(axis=0)
        offset = (np.angle(phase) / (2 * np.pi)) % 1.0
        shift = np.where(offset > 0.75, offset - 1.0, offset) * cell  # in (−¼, ¾] cell: 0 or ½ for usual lattices
        positions = (blk["Coordinates"] * ic.length_to_mpch - shift for _, blk in ic.stream("Coordinates"))
        stats = {"delta_method": "cic", "lattice_offset_mpch": shift.tolist()}
        return cic_overdensity(positions, n, ic.box_size), stats
    if method != "displacement":
        raise ValueError(f"unknown delta method {method!r} (displacement | cic)")
    cell = ic.box_size / n
    div, var = Divergence(n), 0.0
    for axis in range(3):
        total = sq = 0.0
        grid = LagrangianGrid(n, np.float32, np.nan)
        for _, blk in tqdm(ic.stream("ParticleIDs", "Coordinates"), desc=f"IC ψ[{axis}]", disable=not progress,
                           total=-(-ic.n_total // CHUNK)):
            idx = lagrangian_index(blk["ParticleIDs"], n, id_offset, where)
            q = (idx // (n * n), (idx // n) % n, idx % n)[axis]
            psi = np.asarray(blk["Coordinates"][:, axis], np.float64) * (ic.length_to_mpch / cell) - q
            psi = (psi + n / 2) % n - n / 2
            total, sq = total + float(psi.sum()), sq + float(np.dot(psi, psi))
            grid.put(idx, psi.astype(np.float32))
        div.add(axis, grid.finish(where))
        del grid
        var += sq / n**3 - (total / n**3) ** 2
    rms = float(np.sqrt(var))
    if rms > 1.0:
        log.warning("%s: rms IC displacement %.2f cells: if the IDs do not encode offset + (i·N + j)·N + k, "
                    "use --delta-method cic", where, rms)
    return div.result(), {"delta_method": "displacement", "ic_displacement_rms_cells": rms}
