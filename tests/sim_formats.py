"""Write small files in the published layouts of external simulation codes, for reader tests.

Written from the codes' own descriptions, independently of ``halotrans.sims.readers``:

* PINOCCHIO v5 (``src/write_snapshot.c``, ``src/write_halos.c``): Gadget format-2 snapshots whose
  block-name records and HEAD/INFO records have 4-byte markers while particle blocks have 8-byte
  (``unsigned long``) markers; blocks over 2³¹ bytes get 8-byte name records (marker 12) and a data
  marker of 0. INFO entries are 40 bytes (name, type, ndim, active[6]); the INFO block comes last.
  Catalogues in ASCII (12 columns) or binary (header record, then per task a count record and the
  records name/M/x[3]/v[3]/q[3]/n/pad).
* Gadget-4 / AREPO / SWIFT HDF5 snapshots (``PartType1``, ``Header`` attrs) and Gadget-4
  ``fof_subhalo_tab`` files (``Group/GroupLen``, ``GroupMass``, ``GroupLenType``, ``GroupOffsetType``).

Also: a band-limited Gaussian field and its Zel'dovich displacement, so tests know the exact δ.
"""

from __future__ import annotations

import struct
from pathlib import Path

import h5py
import numpy as np


# ------------------------------------------------------------------------------------- fields
def gaussian_delta(n: int, seed: int, sigma: float = 1.0) -> np.ndarray:
    """A random (n,n,n) field with no power at or beyond the Nyquist frequency, unit-ish variance."""
    rng = np.random.default_rng(seed)
    spec = np.fft.rfftn(rng.standard_normal((n, n, n)))
    f = np.fft.fftfreq(n, 1.0 / n)
    fz = np.fft.rfftfreq(n, 1.0 / n)
    kk = np.sqrt(f[:, None, None] ** 2 + f[None, :, None] ** 2 + fz[None, None, :] ** 2)
    spec *= (kk < n / 2 - 1) * np.exp(-0.5 * (kk / (n / 6)) ** 2)
    spec[0, 0, 0] = 0
    delta = np.fft.irfftn(spec, s=(n, n, n), axes=(0, 1, 2))
    return delta * (sigma / delta.std())


def zeldovich_displacement(delta: np.ndarray) -> np.ndarray:
    """ψ (3,n,n,n) in grid cells with ∇·ψ = −δ: ψ_k = i k δ_k / k² (k in rad per cell)."""
    n = delta.shape[0]
    spec = np.fft.rfftn(delta)
    k = 2 * np.pi * np.fft.fftfreq(n, 1.0 / n) / n
    kz = 2 * np.pi * np.fft.rfftfreq(n, 1.0 / n) / n
    ks = np.meshgrid(k, k, kz, indexing="ij")
    k2 = ks[0] ** 2 + ks[1] ** 2 + ks[2] ** 2
    k2[0, 0, 0] = 1.0
    return np.stack([np.fft.irfftn(1j * ka / k2 * spec, s=delta.shape, axes=(0, 1, 2)) for ka in ks])


# ------------------------------------------------------------------------------------ PINOCCHIO
BIG = 2**31 - 10


def _name_record(fh, nbytes: int, name: str, huge: bool) -> None:
    if huge:   # 8-byte ("unsigned long") markers of value 12, 8-byte size
        fh.write(struct.pack("<Q4sQQ", 12, name.ljust(4).encode(), nbytes + 8, 12))
    else:
        fh.write(struct.pack("<I4sII", 8, name.ljust(4).encode(), nbytes + 8, 8))


def pinocchio_header(npart_file: int, npart_total: int, *, box_size: float, particle_mass: float,
                     redshift: float, num_files: int, omega0: float = 0.3, omega_lambda: float = 0.7,
                     hubble: float = 0.7) -> bytes:
    """The 256-byte header struct of write_snapshot.c (particle_mass in M☉/h; stored in 10¹⁰ M☉/h)."""
    npart = [0, npart_file, 0, 0, 0, 0]
    mass = [0.0, particle_mass / 1e10, 0.0, 0.0, 0.0, 0.0]
    tot = [0, npart_total & 0xFFFFFFFF, 0, 0, 0, 0]
    high = [0, npart_total >> 32, 0, 0, 0, 0]
    raw = struct.pack("<6I6d2d2i6I2i4d2i6I3i", *npart, *mass, 1.0 / (1 + redshift), redshift, 0, 0, *tot, 0,
                      num_files, box_size, omega0, omega_lambda, hubble, 0, 0, *high, 0, 0, 0)
    return raw + b"\0" * (256 - len(raw))


def write_pinocchio_snapshot(path: str | Path, blocks: list[tuple[str, str, np.ndarray]], *, box_size: float,
                             particle_mass: float, redshift: float = 0.0, num_files: int = 1,
                             huge: tuple[str, ...] = (), data_marker_bytes: int = 8, **cosmo) -> list[Path]:
    """Write blocks ``(name, INFO type, array (n,) or (n,ndim))`` as PINOCCHIO does; particles in file order.

    With ``num_files`` > 1 the particles are split into ``path.0``, ``path.1``, … Blocks named in
    ``huge`` are written the way PINOCCHIO writes blocks over 2³¹ bytes. ``data_marker_bytes`` = 4
    writes Gadget-style particle blocks (for the marker-size tests).
    """
    n_total = len(blocks[0][2])
    splits = np.array_split(np.arange(n_total), num_files)
    paths = []
    for ifile, sel in enumerate(splits):
        p = Path(f"{path}.{ifile}") if num_files > 1 else Path(path)
        with open(p, "wb") as fh:
            _name_record(fh, 256, "HEAD", False)
            head = pinocchio_header(len(sel), n_total, box_size=box_size, particle_mass=particle_mass,
                                    redshift=redshift, num_files=num_files, **cosmo)
            fh.write(struct.pack("<I", 256) + head + struct.pack("<I", 256))
            info = []
            for name, kind, arr in blocks:
                data = np.ascontiguousarray(arr[sel]).tobytes()
                big = name in huge
                _name_record(fh, len(data), name, big)
                marker_fmt = "<Q" if data_marker_bytes == 8 else "<I"
                marker = struct.pack(marker_fmt, 0 if big else len(data))
                fh.write(marker + data + marker)
                ndim = 1 if arr.ndim == 1 else arr.shape[1]
                info.append(struct.pack("<4s8si6i", name.ljust(4).encode(), kind.ljust(8).encode(), ndim,
                                        0, 1, 0, 0, 0, 0))
            payload = b"".join(info)
            _name_record(fh, len(payload), "INFO", False)
            fh.write(struct.pack("<I", len(payload)) + payload + struct.pack("<I", len(payload)))
        paths.append(p)
    return paths


def pinocchio_ids(n: int, order: np.ndarray | None = None) -> np.ndarray:
    """uint32 IDs 1 + (i·N + j)·N + k, in the given particle order (default: C order)."""
    ids = np.arange(1, n**3 + 1, dtype=np.uint32)
    return ids if order is None else ids[order]


def write_pinocchio_catalog(path: str | Path, name, mass, npart, *, ascii_: bool = True, redshift: float = 0.0,
                            min_mass: int = 10, tasks: int = 1, in_h100: bool = True) -> Path:
    """A halo catalogue as write_halos.c writes it (initial/final positions and velocities are zeros)."""
    path = Path(path)
    name, mass, npart = np.asarray(name), np.asarray(mass, np.float64), np.asarray(npart)
    zeros = np.zeros((len(name), 3))
    if ascii_:
        h = "/h" if in_h100 else ""
        with open(path, "w") as fh:
            fh.write(f"# Group catalog for redshift {redshift:f} and minimal mass of {min_mass} particles\n")
            fh.write("#    1) group ID\n")
            fh.write(f"#    2) group mass (Msun{h})\n# 3- 5) initial position (Mpc{h})\n")
            fh.write(f"# 6- 8) final position (Mpc{h})\n# 9-11) velocity (km/s)\n#   12) number of particles\n#\n")
            for i in range(len(name)):
                fh.write(" %12d %13.6e %s %12d\n" % (name[i], mass[i], " ".join(["%10.2f" % 0.0] * 9), npart[i]))
        return path
    rec = np.dtype([("name", "<u8"), ("M", "<f4"), ("x", "<f4", 3), ("v", "<f4", 3), ("q", "<f4", 3),
                    ("n", "<i4"), ("pad", "<i4")])
    cat = np.zeros(len(name), rec)
    cat["name"], cat["M"], cat["n"] = name, mass, npart
    cat["x"] = cat["v"] = cat["q"] = zeros
    with open(path, "wb") as fh:
        fh.write(struct.pack("<4i", 8, tasks, rec.itemsize, 8))
        for part in np.array_split(cat, tasks):
            fh.write(struct.pack("<3i", 4, len(part), 4))
            if len(part):
                size = len(part) * rec.itemsize
                fh.write(struct.pack("<i", size) + part.tobytes() + struct.pack("<i", size))
    return path


# ------------------------------------------------------------------------------------- Gadget HDF5
def write_hdf5_snapshot(base: str | Path, ids: np.ndarray, pos: np.ndarray, *, box_size: float,
                        particle_mass: float, redshift: float, num_files: int = 1, flavour: str = "gadget4",
                        extra: dict[str, np.ndarray] | None = None, hubble: float = 0.7,
                        omega0: float = 0.3) -> list[Path]:
    """Write ``PartType1`` (ids, positions in the flavour's units) as ``base.hdf5`` or ``base.{i}.hdf5``.

    ``flavour``: ``gadget4`` (kpc/h, units and cosmology in /Parameters), ``arepo`` (Mpc/h, units
    and cosmology in /Header, HighWord counts), ``swift`` (Mpc without h, /Units, /Cosmology, BoxSize (3,)),
    ``bare`` (no unit attributes, kpc/h). ``pos`` and ``box_size`` are in Mpc/h, ``particle_mass`` in M☉/h.
    """
    scale = {"gadget4": 1e3, "bare": 1e3, "arepo": 1.0, "swift": 1.0 / hubble}[flavour]
    mscale = {"swift": 1e-10 / hubble}.get(flavour, 1e-10)
    n_total = len(ids)
    paths = []
    for ifile, sel in enumerate(np.array_split(np.arange(n_total), num_files)):
        p = Path(f"{base}.{ifile}.hdf5") if num_files > 1 else Path(f"{base}.hdf5")
        with h5py.File(p, "w") as f:
            hd = f.create_group("Header")
            hd.attrs["NumPart_ThisFile"] = np.array([0, len(sel), 0, 0, 0, 0], np.uint32)
            total_type = np.uint64 if flavour == "gadget4" else np.uint32
            hd.attrs["NumPart_Total"] = np.array([0, n_total, 0, 0, 0, 0], total_type)
            hd.attrs["MassTable"] = np.array([0, particle_mass * mscale, 0, 0, 0, 0])
            hd.attrs["Redshift"] = redshift
            hd.attrs["NumFilesPerSnapshot"] = num_files
            if flavour == "swift":
                hd.attrs["BoxSize"] = np.full(3, box_size * scale)
                hd.attrs["Scale-factor"] = 1.0 / (1 + redshift)
                f.create_group("Units").attrs["Unit length in cgs (U_L)"] = 3.08567758e24
                f["Units"].attrs["Unit mass in cgs (U_M)"] = 1.98841e43
                cos = f.create_group("Cosmology")
                cos.attrs["h"], cos.attrs["Omega_m"], cos.attrs["Omega_lambda"] = hubble, omega0, 1 - omega0
                f.create_group("Code").attrs["Code"] = "SWIFT"
            else:
                hd.attrs["BoxSize"] = box_size * scale
                hd.attrs["Time"] = 1.0 / (1 + redshift)
            if flavour == "gadget4":
                par = f.create_group("Parameters")
                par.attrs["UnitLength_in_cm"], par.attrs["UnitMass_in_g"] = 3.085678e21, 1.989e43
                par.attrs["Omega0"], par.attrs["OmegaLambda"], par.attrs["HubbleParam"] = omega0, 1 - omega0, hubble
            if flavour == "arepo":
                hd.attrs["NumPart_Total_HighWord"] = np.zeros(6, np.uint32)
                hd.attrs["UnitLength_in_cm"], hd.attrs["UnitMass_in_g"] = 3.085678e24, 1.989e43
                hd.attrs["Omega0"], hd.attrs["OmegaLambda"], hd.attrs["HubbleParam"] = omega0, 1 - omega0, hubble
            g = f.create_group("PartType1")
            g.create_dataset("ParticleIDs", data=ids[sel])
            g.create_dataset("Coordinates", data=(pos[sel] * scale).astype(np.float32))
            for name, arr in (extra or {}).items():
                g.create_dataset(name, data=arr[sel])
        paths.append(p)
    return paths


def write_fof_tab(base: str | Path, group_len: np.ndarray, group_mass: np.ndarray, *, num_files: int = 1,
                  with_offsets: bool = True) -> list[Path]:
    """Gadget-4 ``fof_subhalo_tab``: ``Group/GroupLen``, ``GroupMass`` (10¹⁰ M☉/h), ``GroupLenType``,
    ``GroupOffsetType``; ``group_mass`` in M☉/h. Groups are split evenly over the files."""
    group_len = np.asarray(group_len)
    offsets = np.concatenate([[0], np.cumsum(group_len)[:-1]]).astype(np.int64)
    paths = []
    for ifile, sel in enumerate(np.array_split(np.arange(len(group_len)), num_files)):
        p = Path(f"{base}.{ifile}.hdf5") if num_files > 1 else Path(f"{base}.hdf5")
        with h5py.File(p, "w") as f:
            hd = f.create_group("Header")
            hd.attrs["Ngroups_ThisFile"], hd.attrs["Ngroups_Total"] = len(sel), len(group_len)
            hd.attrs["Nsubhalos_ThisFile"], hd.attrs["Nsubhalos_Total"] = 0, 0
            hd.attrs["NumFiles"] = num_files
            if len(sel):
                g = f.create_group("Group")
                g.create_dataset("GroupLen", data=group_len[sel].astype(np.int32))
                g.create_dataset("GroupMass", data=(np.asarray(group_mass)[sel] / 1e10).astype(np.float32))
                lt = np.zeros((len(sel), 6), np.int32)
                lt[:, 1] = group_len[sel]
                g.create_dataset("GroupLenType", data=lt)
                if with_offsets:
                    ot = np.zeros((len(sel), 6), np.int64)
                    ot[:, 1] = offsets[sel]
                    g.create_dataset("GroupOffsetType", data=ot)
        paths.append(p)
    return paths
