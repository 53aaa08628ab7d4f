"""PINOCCHIO (v5) outputs as Lagrangian grids: its linear density field and its halo labels.

PINOCCHIO (Monaco et al.; github.com/pigimonaco/Pinocchio) writes, for a run ``RunFlag``:

* ``pinocchio.<RunFlag>.t_snapshot.out`` — the *timeless snapshot* (compiled with ``-DSNAPSHOT``,
  parameter ``WriteTimelessSnapshot``): Gadget format 2 with blocks ``ID`` (uint32, or uint64 with
  ``LONGIDS``), ``FMAX``, ``ZEL`` (Zel'dovich displacement, 3 float32 in grid units, multiplied by the
  growth factor of the last output), ``2LPT``/``31PT``/``32PT``, ``ZACC``, ``GRUP`` (int32 group id
  at the last output: 0 uncollapsed, 1 filament, else the catalogue name of the halo) and a final
  ``INFO``; HEAD/INFO have 4-byte record markers, particle blocks 8-byte ones (:mod:`.format2`).
  Particle ID = 1 + (i·N + j)·N + k; file order follows the MPI domains, so IDs place particles.
* ``pinocchio.<RunFlag>.density0.out`` — run mode 2 (``pinocchio.x params 2``): blocks ``ID`` and
  ``DENS``, the linear density contrast at z = 0 (growth factor 1).
* ``pinocchio.<z:.4f>.<RunFlag>.catalog.out[.N]`` — halo catalogue, ASCII (``CatalogInAscii``: name,
  mass, 3 initial + 3 final positions, 3 velocities, particle count) or binary (a header record
  ``[NTasksPerFile, record length]``, then per task ``[n]`` and ``n`` records of name uint64, mass,
  final position, velocity, initial position (float32, float64 with DOUBLE_PRECISION_PRODUCTS), count).

A halo's name is the 0-based index (i·N + j)·N + k of its peak particle. Names 0 and 1 cannot be told
apart from "uncollapsed"/"filament" in ``GRUP`` (probability 2/N³ per halo): such halos are dropped
with a warning. Halos below the catalogue's ``MinHaloMass`` are not in the catalogue; their particles,
and halos below a requested ``min_particles``, are labelled "no halo" (−1 / 0 in ``halo_mass``).
Halo mass = particle count × particle mass (M☉/h, from the snapshot header), the count taken from
the catalogue, not from ``GRUP``. On one MPI rank the two agree exactly. On several ranks each task
fragments its own domain plus a boundary layer: the catalogue lists a halo with the count of the task
that owns its peak, but each particle's ``GRUP`` entry comes from the task owning that particle, so
halos next to a domain border can have a different number of ``GRUP`` particles (64³ on 2 ranks:
21 of 626 halos, every one touching a border plane). The catalogue is the right source: for 19 of
those 21 halos its count equals a 1-rank run's on the same initial conditions, ``GRUP``'s for 1.
``GRUP`` still gives membership (which voxels carry the halo's label); ``stats["count_mismatches"]``
reports the disagreement. Halo ids are int32 in ``GRUP``: grids with N³ ≥ 2³¹ are refused.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from halotrans.io import DataError
from halotrans.sims.readers import format2
from halotrans.sims.readers.lagrangian import Divergence, LagrangianGrid, chunks, grid_size, lagrangian_index

log = logging.getLogger(__name__)

ID_OFFSET = 1
MAX_PARTICLES = 2**31  # GRUP halo ids are int32 peak-particle indices
FILAMENT = 1  # GRUP values: 0 uncollapsed, 1 filament, larger: the catalogue name of a halo


# ----------------------------------------------------------------------------------- parameter file
def read_params(path: str | os.PathLike) -> dict[str, object]:
    """A PINOCCHIO parameter file as a dict: ``Key value`` (numbers parsed), bare logical keys → True."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"PINOCCHIO parameter file not found: {path}")
    params: dict[str, object] = {}
    for line in path.read_text().splitlines():
        line = line.split("%", 1)[0].strip()
        if not line or line.startswith("#"):
            continue
        key, *rest = line.split()
        params[key] = _number(rest[0]) if len(rest) == 1 else " ".join(rest) if rest else True
    return params


def _number(text: str) -> object:
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def params_cosmology(params: dict) -> dict[str, float]:
    """colossus-style cosmology dict from PINOCCHIO parameters."""
    try:
        return {"Om0": float(params["Omega0"]), "Ode0": float(params["OmegaLambda"]),
                "Ob0": float(params["OmegaBaryon"]), "H0": 100.0 * float(params["Hubble100"]),
                "sigma8": float(params["Sigma8"]), "ns": float(params["PrimordialIndex"])}
    except KeyError as e:
        raise DataError(f"PINOCCHIO parameters lack {e.args[0]!r}") from None


# ---------------------------------------------------------------------------------------- catalogue
@dataclass
class Catalog:
    """Halos at one redshift: ``name`` (int64, peak-particle index), ``mass`` as written (M☉/h if
    ``in_h100``), ``npart`` (int64, or None for LIGHT_OUTPUT catalogues)."""

    name: np.ndarray
    mass: np.ndarray
    npart: np.ndarray | None
    in_h100: bool | None


def catalog_path(run_dir: str | os.PathLike, run_flag: str, redshift: float) -> Path:
    return Path(run_dir) / f"pinocchio.{redshift:6.4f}.{run_flag}.catalog.out"


def _catalog_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    files = []
    while (p := Path(f"{path}.{len(files)}")).is_file():
        files.append(p)
    if not files:
        raise DataError(f"PINOCCHIO catalogue not found: {path} (nor {path}.0)")
    return files


def _read_ascii_catalog(path: Path) -> tuple[np.ndarray, bool | None]:
    """Rows (n, 12) — (n, 11) for LIGHT_OUTPUT — and whether masses are in M☉/h (from the header)."""
    in_h100 = None
    with open(path) as fh:
        for line in fh:
            if not line.startswith("#"):
                break
            if "group mass" in line:
                in_h100 = "Msun/h" in line
    try:
        rows = np.loadtxt(path, comments="#", ndmin=2, dtype=np.float64)
    except ValueError as e:
        raise DataError(f"{path}: not a PINOCCHIO ASCII catalogue ({e})") from None
    if rows.size == 0:
        return np.zeros((0, 12)), in_h100
    if rows.shape[1] not in (11, 12):
        raise DataError(f"{path}: {rows.shape[1]} columns, a PINOCCHIO catalogue has 12 (11 with LIGHT_OUTPUT)")
    return rows, in_h100


_BINARY_RECORDS = {  # record length -> (float type, has particle count)
    56: ("<f4", True), 48: ("<f4", False), 96: ("<f8", True), 88: ("<f8", False),
}


def _read_binary_catalog(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    raw = path.read_bytes()
    words = np.frombuffer(raw[: len(raw) // 4 * 4], "<i4")
    if len(words) < 4 or words[0] != 8 or words[3] != 8:
        raise DataError(f"{path}: not a PINOCCHIO catalogue (binary header record [8, ntasks, reclen, 8] missing)")
    ntasks, reclen = int(words[1]), int(words[2])
    if reclen not in _BINARY_RECORDS:
        raise DataError(f"{path}: unknown catalogue record length {reclen} (known: {sorted(_BINARY_RECORDS)})")
    ftype, has_n = _BINARY_RECORDS[reclen]
    fields = [("name", "<u8"), ("mass", ftype), ("x", ftype, 3), ("v", ftype, 3), ("q", ftype, 3)]
    if has_n:
        fields += [("n", "<i4"), ("pad", "<i4")]
    rec = np.dtype(fields)
    assert rec.itemsize == reclen
    at, parts = 16, []
    for task in range(ntasks):
        if at + 12 > len(raw):
            raise DataError(f"{path}: truncated: the count record of task {task} of {ntasks} is missing")
        m0, ngood, m1 = np.frombuffer(raw, "<i4", 3, at)
        if m0 != 4 or m1 != 4:
            raise DataError(f"{path}: bad record markers ({m0}, {m1}) around the halo count of task {task}")
        at += 12
        if ngood:
            size = int(ngood) * reclen
            if at + size + 8 > len(raw):
                raise DataError(f"{path}: truncated: task {task} announces {ngood} halos, the file is too short")
            head, = np.frombuffer(raw, "<i4", 1, at)
            tail, = np.frombuffer(raw, "<i4", 1, at + 4 + size)
            if head != size or tail != size:
                raise DataError(f"{path}: record markers ({head}, {tail}) of task {task} differ from {size} bytes")
            parts.append(np.frombuffer(raw, rec, int(ngood), at + 4))
            at += size + 8
    if at != len(raw):
        raise DataError(f"{path}: {len(raw) - at} unexpected bytes after the last halo record")
    cat = np.concatenate(parts) if parts else np.zeros(0, rec)
    return cat["name"].astype(np.int64), cat["mass"].astype(np.float64), cat["n"].astype(np.int64) if has_n else None


def read_catalog(path: str | os.PathLike) -> Catalog:
    """Read a PINOCCHIO halo catalogue (ASCII or binary, one file or ``path.0``, ``path.1``, …)."""
    names, masses, npart, in_h100, has_n = [], [], [], None, True
    for f in _catalog_files(Path(path)):
        with open(f, "rb") as fh:
            ascii_ = fh.read(1) == b"#"
        if ascii_:
            rows, h = _read_ascii_catalog(f)
            in_h100 = h if h is not None else in_h100
            names.append(rows[:, 0].astype(np.int64))
            masses.append(rows[:, 1])
            npart.append(rows[:, 11].astype(np.int64) if rows.shape[1] == 12 else None)
            has_n &= rows.shape[1] == 12
        else:
            name, mass, n = _read_binary_catalog(f)
            names.append(name)
            masses.append(mass)
            npart.append(n)
            has_n &= n is not None
    return Catalog(np.concatenate(names), np.concatenate(masses),
                   np.concatenate(npart) if has_n else None, in_h100)


def catalog_npart(cat: Catalog, particle_mass: float, h: float, where: str = "") -> np.ndarray:
    """Particle count of each halo; from the catalogue, or mass / particle mass for LIGHT_OUTPUT.

    ``particle_mass`` in M☉/h; the catalogue's masses must agree with count × particle mass (in M☉/h,
    or in M☉ for catalogues written without ``OutputInH100``), else the files are from different runs.
    """
    if cat.npart is not None:
        n = cat.npart
        if len(n):
            ratio = cat.mass / (n * particle_mass)
            ok_h = np.allclose(ratio, 1.0, rtol=1e-4)
            ok_true = np.allclose(ratio * h, 1.0, rtol=1e-4)
            if not (ok_h or ok_true):
                raise DataError(f"{where}: catalogue masses are not particle count × particle mass "
                                f"({particle_mass:.6g} M☉/h): catalogue and snapshot from different runs?")
        return n
    for factor in ((1.0,) if cat.in_h100 else (h,) if cat.in_h100 is False else (1.0, h)):
        n = cat.mass * factor / particle_mass
        if np.allclose(n, np.rint(n), atol=1e-3 * np.maximum(1.0, n / 100)):
            return np.rint(n).astype(np.int64)
    raise DataError(f"{where}: catalogue masses are not multiples of the particle mass {particle_mass:.6g} M☉/h")


# ------------------------------------------------------------------------------------ snapshots
@dataclass
class Snapshot:
    """A PINOCCHIO Gadget format-2 output (one or several files): grid size, box, particle mass."""

    parts: list[format2.Format2File]
    n: int
    box_size: float       # Mpc/h
    particle_mass: float  # M☉/h
    redshift: float
    hubble: float
    omega0: float
    omega_lambda: float

    @classmethod
    def open(cls, path: str | os.PathLike) -> "Snapshot":
        parts = format2.snapshot_parts(path)
        head = parts[0].header
        total = int(head["npart_total"][1]) + (int(head["npart_total_high_word"][1]) << 32)
        in_files = sum(int(p.npart.sum()) for p in parts)
        if in_files != total:
            raise DataError(f"{path}: the files hold {in_files} particles, the header total is {total}")
        return cls(parts, grid_size(total, str(path)), float(head["box_size"]), float(head["mass"][1]) * 1e10,
                   float(head["redshift"]), float(head["hubble_param"]), float(head["omega0"]),
                   float(head["omega_lambda"]))

    def stream(self, *blocks: str):
        """Yield ``(voxel index int64, {block: values})`` chunk by chunk over all files."""
        for part in self.parts:
            ids = part.array("ID")
            ids = ids.view(np.uint32) if ids.dtype == np.int32 else ids  # PINOCCHIO IDs are unsigned
            arrays = {b: part.array(b) for b in blocks}
            for start, stop in chunks(len(ids)):
                idx = lagrangian_index(ids[start:stop], self.n, ID_OFFSET, str(part.path))
                yield idx, {b: np.asarray(a[start:stop]) for b, a in arrays.items()}


def halo_labels(snap: Snapshot, cat: Catalog, min_particles: int = 1, progress: bool = False):
    """Lagrangian halo labels from ``GRUP`` and the catalogue.

    Returns ``halo_id`` int32 (N,N,N) (index into the kept halos, −1 none), ``halos`` (dict of
    ``name``, ``npart``, ``mass`` [M☉/h] of the kept halos, catalogue order; counts and masses from
    the catalogue, see the module notes on MPI domain borders) and ``stats``.
    """
    from tqdm import tqdm

    where = str(snap.parts[0].path)
    if snap.n**3 >= MAX_PARTICLES:
        raise DataError(f"{where}: {snap.n}³ particles ≥ 2³¹; GRUP stores halo ids (peak-particle indices) as "
                        "int32, so they cannot be told apart at this size")
    npart = catalog_npart(cat, snap.particle_mass, snap.hubble, where)
    ambiguous = cat.name <= FILAMENT
    if ambiguous.any():
        log.warning("%s: %d halo(s) named 0 or 1 cannot be told from uncollapsed/filament particles; dropped",
                    where, int(ambiguous.sum()))
    keep = (npart >= min_particles) & ~ambiguous
    new_index = np.full(len(cat.name), -1, np.int64)
    new_index[keep] = np.arange(int(keep.sum()))
    order = np.argsort(cat.name, kind="stable")
    sorted_names = cat.name[order]
    if len(sorted_names) > 1 and (np.diff(sorted_names) == 0).any():
        raise DataError(f"{where}: the catalogue lists a halo name twice (several redshifts concatenated?)")

    grid = LagrangianGrid(snap.n, np.int32, -2)
    counts = np.zeros(len(cat.name), np.int64)
    uncatalogued = 0
    bar = tqdm(total=snap.n**3, desc="PINOCCHIO labels", unit="part", disable=not progress)
    for idx, blk in snap.stream("GRUP"):
        g = blk["GRUP"].astype(np.int64)
        pos = np.minimum(np.searchsorted(sorted_names, g), max(len(sorted_names) - 1, 0))
        found = (g > FILAMENT) & (sorted_names[pos] == g) if len(sorted_names) else np.zeros(len(g), bool)
        halo = np.where(found, order[pos] if len(order) else 0, -1)
        counts += np.bincount(halo[found], minlength=len(counts))
        uncatalogued += int(((g > FILAMENT) & ~found).sum())
        grid.put(idx, np.where(found, new_index[np.maximum(halo, 0)], -1).astype(np.int32))
        bar.update(len(idx))
    bar.close()
    halo_id = grid.finish(where)
    check = ~ambiguous
    empty = check & (counts == 0)
    if empty.any():
        raise DataError(f"{where}: {int(empty.sum())} catalogue halo(s), e.g. name {int(cat.name[empty][0])}, have no "
                        "particle in GRUP: catalogue and snapshot are from different runs or redshifts")
    mismatch = int((check & (counts != npart)).sum())
    if mismatch:
        log.warning("%s: %d of %d halo(s) have a GRUP particle count different from the catalogue's (expected "
                    "for halos at MPI domain borders of a multi-rank run; masses use the catalogue's counts)",
                    where, mismatch, int(check.sum()))
    halos = {"name": cat.name[keep], "npart": npart[keep], "mass": npart[keep] * snap.particle_mass}
    stats = {"n_halos_catalogue": int(len(cat.name)), "n_halos_kept": int(keep.sum()),
             "min_particles": int(min_particles), "count_mismatches": mismatch,
             "particles_in_uncatalogued_groups": uncatalogued}
    return halo_id, halos, stats


def linear_delta(snap: Snapshot, source: str, progress: bool = False) -> np.ndarray:
    """The linear density contrast of the run's ICs, float32 (N,N,N) on the Lagrangian grid.

    ``source="density"``: ``snap`` is the run-mode-2 file; its ``DENS`` block is δ at z = 0 (D = 1).
    ``source="zeldovich"``: ``snap`` is the timeless snapshot; δ = −∇·ψ of its ``ZEL`` block (grid
    units), which PINOCCHIO scales to the last output, so δ is at ``snap.redshift``.
    """
    from tqdm import tqdm

    where = str(snap.parts[0].path)
    if source == "density":
        grid = LagrangianGrid(snap.n, np.float32, np.nan)
        for idx, blk in tqdm(snap.stream("DENS"), desc="PINOCCHIO DENS", disable=not progress):
            grid.put(idx, blk["DENS"])
        return grid.finish(where)
    if source != "zeldovich":
        raise ValueError(f"unknown delta source {source!r} (density | zeldovich)")
    div = Divergence(snap.n)
    for axis in range(3):
        grid = LagrangianGrid(snap.n, np.float32, np.nan)
        for idx, blk in tqdm(snap.stream("ZEL"), desc=f"PINOCCHIO ZEL[{axis}]", disable=not progress):
            grid.put(idx, blk["ZEL"][:, axis])
        div.add(axis, grid.finish(where))
        del grid
    return div.result()


# --------------------------------------------------------------------------------- file discovery
@dataclass
class RunFiles:
    """The files of one PINOCCHIO run in ``run_dir``."""

    timeless: Path
    density: Path | None
    params: Path | None


def find_run(run_dir: str | os.PathLike, run_flag: str | None = None) -> tuple[str, RunFiles]:
    """Locate the timeless snapshot (and density file / parameter file if present) of a run."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise DataError(f"PINOCCHIO run directory not found: {run_dir}")
    pattern = re.compile(r"pinocchio\.(.+)\.t_snapshot\.out(\.0)?$")
    flags = sorted({m.group(1) for p in run_dir.iterdir() if (m := pattern.match(p.name))})
    if run_flag is None:
        if len(flags) != 1:
            raise DataError(f"{run_dir}: {'no' if not flags else 'several'} timeless snapshots "
                            f"pinocchio.<RunFlag>.t_snapshot.out{' ' + str(flags) if flags else ''}; "
                            "pass --run-flag (and compile with -DSNAPSHOT, set WriteTimelessSnapshot)")
        run_flag = flags[0]
    elif run_flag not in flags:
        raise DataError(f"{run_dir}: no pinocchio.{run_flag}.t_snapshot.out (found run flags {flags})")
    density = None
    for name in (f"pinocchio.{run_flag}.density0.out", f"pinocchio.{run_flag}.density.out"):
        if (run_dir / name).is_file() or (run_dir / f"{name}.0").is_file():
            density = run_dir / name
            break
    params = next((p for p in (run_dir / "parameter_file", run_dir / f"{run_flag}.params") if p.is_file()), None)
    return run_flag, RunFiles(run_dir / f"pinocchio.{run_flag}.t_snapshot.out", density, params)
