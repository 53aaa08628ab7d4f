"""Gadget-4 / AREPO / SWIFT HDF5 reader: multi-file snapshots, FoF tables, δ from ICs, bad files."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from halotrans.io import DataError
from halotrans.sims.readers import gadget_hdf5 as gh
from halotrans.sims.readers.importer import growth_factor, import_gadget
from tests.helpers import halotrans_cli
from tests.sim_formats import gaussian_delta, write_fof_tab, write_hdf5_snapshot, zeldovich_displacement

N, BOX, MP, Z_IC, D_IC = 16, 32.0, 6.66e11, 49.0, 0.02
SIZES = (200, 90, 50, 33, 21, 20, 19, 8)


@pytest.fixture(scope="module")
def run():
    """A 16³ run: IC positions = lattice + D ψ(δ); FoF groups = random Lagrangian sets of known sizes."""
    rng = np.random.default_rng(11)
    delta = gaussian_delta(N, seed=5, sigma=1.0)
    psi = zeldovich_displacement(delta).reshape(3, -1).T
    cell = BOX / N
    q = np.stack(np.meshgrid(*[np.arange(N)] * 3, indexing="ij")).reshape(3, -1).T
    ic_pos = ((q + 0.5 + D_IC * psi) * cell) % BOX
    group_of = np.full(N**3, -1)
    free = rng.permutation(N**3)
    start = 0
    for g, size in enumerate(SIZES):
        group_of[free[start:start + size]] = g
        start += size
    # final snapshot in group order: group 0's particles, group 1's, ..., then the rest shuffled
    order = np.concatenate([rng.permutation(np.flatnonzero(group_of == g)) for g in range(len(SIZES))]
                           + [rng.permutation(np.flatnonzero(group_of < 0))])
    return {"delta": delta, "ic_pos": ic_pos, "group_of": group_of, "order": order, "rng": rng,
            "final_pos": (q * cell + 0.3)[order] % BOX}


def _write(tmp_path, run, flavour="gadget4", snap_files=3, fof_files=2, ic_files=2):
    ids = np.arange(1, N**3 + 1, dtype=np.uint64)
    common = dict(box_size=BOX, particle_mass=MP, flavour=flavour)
    extra = None
    if flavour == "swift":
        gid = np.where(run["group_of"] >= 0, run["group_of"] + 1, gh.SWIFT_NO_GROUP).astype(np.int64)
        extra = {"FOFGroupIDs": gid[run["order"]]}
    snap = write_hdf5_snapshot(tmp_path / "snap_005", ids[run["order"]], run["final_pos"], redshift=0.0,
                               num_files=snap_files, extra=extra, **common)
    ic_order = run["rng"].permutation(N**3)
    ic = write_hdf5_snapshot(tmp_path / "ics", ids[ic_order], run["ic_pos"][ic_order], redshift=Z_IC,
                             num_files=ic_files, **common)
    fof = write_fof_tab(tmp_path / "fof_subhalo_tab_005", np.array(SIZES), np.array(SIZES) * MP,
                        num_files=fof_files)
    return snap[0], ic[0], fof[0]


def _expected(run, min_particles):
    kept = [g for g, s in enumerate(SIZES) if s >= min_particles]
    halo_id = np.full(N**3, -1)
    for new, g in enumerate(kept):
        halo_id[run["group_of"] == g] = new
    mass = np.where(halo_id >= 0, np.log10(np.array(SIZES, float)[np.maximum(run["group_of"], 0)] * MP), 0.0)
    return halo_id.reshape(N, N, N), mass.reshape(N, N, N)


def test_multifile_gadget4_round_trip(tmp_path, run):
    snap, ic, fof = _write(tmp_path, run)
    assert snap.name == "snap_005.0.hdf5" and fof.name == "fof_subhalo_tab_005.0.hdf5"
    s = gh.HDF5Snapshot.open(snap)
    assert len(s.files) == 3 and s.box_size == pytest.approx(BOX) and s.particle_mass == pytest.approx(MP)
    out = import_gadget(snap, ic, tmp_path / "box.h5", groups=fof, z_init=None, min_particles=20, progress=False)
    want_id, want_mass = _expected(run, 20)
    with h5py.File(out, "r") as f:
        np.testing.assert_array_equal(f["halo_id"][...], want_id)
        np.testing.assert_allclose(f["halo_mass"][...], want_mass, rtol=1e-6)
        np.testing.assert_allclose(f["delta"][...], D_IC * run["delta"], atol=2e-4)
        assert f.attrs["z_init"] == Z_IC and f.attrs["box_size"] == pytest.approx(BOX)
        assert f.attrs["labels"] == "nbody-fof"


def test_delta_rescaled_to_z_init_and_cic(tmp_path, run):
    snap, ic, fof = _write(tmp_path, run, snap_files=1, fof_files=1, ic_files=1)
    out = import_gadget(snap, ic, tmp_path / "box.h5", groups=fof, z_init=99.0, progress=False)
    factor = growth_factor({"Om0": 0.3, "Ode0": 0.7, "H0": 70.0}, 99.0) / growth_factor({"Om0": 0.3}, Z_IC)
    with h5py.File(out, "r") as f:
        np.testing.assert_allclose(f["delta"][...], factor * D_IC * run["delta"], atol=2e-4 * factor)
    cic, stats = gh.delta_from_ic(gh.HDF5Snapshot.open(ic), N, 1, "cic")
    assert stats["delta_method"] == "cic"
    assert np.corrcoef(cic.ravel(), run["delta"].ravel())[0, 1] > 0.85  # CIC smooths on the cell scale
    assert stats["lattice_offset_mpch"] == pytest.approx([0.5 * BOX / N] * 3, abs=0.05)


def test_swift_per_particle_group_ids(tmp_path, run):
    snap, ic, _ = _write(tmp_path, run, flavour="swift", snap_files=2, ic_files=1)
    s = gh.HDF5Snapshot.open(snap)
    assert s.box_size == pytest.approx(BOX) and s.particle_mass == pytest.approx(MP, rel=1e-3)
    out = import_gadget(snap, ic, tmp_path / "box.h5", group_ids="FOFGroupIDs", z_init=None, min_particles=20,
                        progress=False)
    want_id, want_mass = _expected(run, 20)
    with h5py.File(out, "r") as f:
        np.testing.assert_array_equal(f["halo_id"][...], want_id)
        np.testing.assert_allclose(f["halo_mass"][...], want_mass, atol=2e-4)  # SWIFT's M☉ differs by 3e-4


def test_arepo_units_and_bare_files(tmp_path, run, caplog):
    snap, _, _ = _write(tmp_path, run, flavour="arepo", snap_files=1)
    assert gh.HDF5Snapshot.open(snap).length_to_mpch == pytest.approx(1.0)
    bare = write_hdf5_snapshot(tmp_path / "bare", np.arange(1, N**3 + 1), run["ic_pos"], box_size=BOX,
                               particle_mass=MP, redshift=Z_IC, flavour="bare")[0]
    s = gh.HDF5Snapshot.open(bare)
    assert s.box_size == pytest.approx(BOX) and "taken as kpc/h" in caplog.text
    assert gh.HDF5Snapshot.open(bare, length_unit="Mpc/h").box_size == pytest.approx(1000 * BOX)


def test_cli_gadget(tmp_path, run):
    snap, ic, fof = _write(tmp_path, run)
    out = tmp_path / "box.h5"
    halotrans_cli("import", "gadget", "--snapshot", snap, "--ic", ic, "--groups", fof, "--out", out,
                  "--min-particles", "30", "--z-init", "source", "--no-progress")
    want_id, _ = _expected(run, 30)
    with h5py.File(out, "r") as f:
        np.testing.assert_array_equal(f["halo_id"][...], want_id)
    again = halotrans_cli("import", "gadget", "--snapshot", snap, "--ic", ic, "--groups", fof, "--out", out)
    assert "skipping" in again.stdout
    assert "--group-ids" in halotrans_cli("import", "gadget", "--help").stdout


# ------------------------------------------------------------------------------------- bad files
def _edit(path, fn):
    with h5py.File(path, "a") as f:
        fn(f)


def test_missing_groups_and_datasets_rejected(tmp_path, run):
    snap, ic, fof = _write(tmp_path, run)
    s = gh.HDF5Snapshot.open(snap)
    _edit(fof, lambda f: f.__delitem__("Group"))
    with pytest.raises(DataError, match="missing HDF5 group /Group"):
        gh.read_fof_tab(fof, s)
    _edit(snap, lambda f: f.__delitem__("PartType1"))
    with pytest.raises(DataError, match="missing HDF5 group /PartType1"):
        gh.HDF5Snapshot.open(snap)
    _edit(ic, lambda f: f["PartType1"].__delitem__("ParticleIDs"))
    with pytest.raises(DataError, match="missing HDF5 dataset /PartType1/ParticleIDs"):
        gh.delta_from_ic(gh.HDF5Snapshot.open(ic), N, 1)


def test_inconsistent_group_lengths_rejected(tmp_path, run):
    snap, _, _ = _write(tmp_path, run, snap_files=1)
    s = gh.HDF5Snapshot.open(snap)
    too_many = write_fof_tab(tmp_path / "big", np.array([N**3, 10]), np.array([N**3, 10]) * MP)[0]
    with pytest.raises(DataError, match="GroupLen sums to"):
        gh.read_fof_tab(too_many, s)
    bad_offsets = write_fof_tab(tmp_path / "off", np.array(SIZES), np.array(SIZES) * MP)[0]
    _edit(bad_offsets, lambda f: f["Group/GroupOffsetType"].__setitem__((2, 1), 7))
    with pytest.raises(DataError, match="GroupOffsetType does not match"):
        gh.read_fof_tab(bad_offsets, s)
    wrong_total = write_fof_tab(tmp_path / "tot", np.array(SIZES), np.array(SIZES) * MP, num_files=2)
    _edit(wrong_total[1], lambda f: f["Header"].attrs.__setitem__("Ngroups_Total", 3))
    with pytest.raises(DataError, match="Ngroups_Total"):
        gh.read_fof_tab(wrong_total[0], s)
    wrong_mass = write_fof_tab(tmp_path / "mass", np.array(SIZES), 2 * np.array(SIZES) * MP)[0]
    with pytest.raises(DataError, match="GroupMass differs"):
        gh.read_fof_tab(wrong_mass, s)


def test_ids_out_of_range_and_missing_files_rejected(tmp_path, run):
    snap, ic, fof = _write(tmp_path, run)
    _edit(snap.with_name("snap_005.1.hdf5"), lambda f: f["PartType1/ParticleIDs"].__setitem__(0, N**3 + 9))
    s = gh.HDF5Snapshot.open(snap)
    with pytest.raises(DataError, match="IDs out of range"):
        gh.labels_from_sorted_groups(s, gh.read_fof_tab(fof, s), N, 1, 20)
    snap.with_name("snap_005.2.hdf5").unlink()
    with pytest.raises(DataError, match="NumFilesPerSnapshot = 3 but 2 file"):
        gh.HDF5Snapshot.open(snap)


def test_cli_bad_files_exit_2_and_write_nothing(tmp_path, run):
    snap, ic, fof = _write(tmp_path, run)
    _edit(fof, lambda f: f.__delitem__("Group"))
    out = tmp_path / "box.h5"
    proc = halotrans_cli("import", "gadget", "--snapshot", snap, "--ic", ic, "--groups", fof, "--out", out,
                         "--no-progress", check=False)
    assert proc.returncode == 2 and "missing HDF5 group /Group" in proc.stderr
    assert not list(tmp_path.glob("box.h5*"))
