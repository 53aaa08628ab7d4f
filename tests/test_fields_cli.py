"""``python -m halotrans shear``: real processes, serial and under mpiexec (real MPI ranks)."""

from __future__ import annotations

import hashlib
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from halotrans.fields.tidal import tidal_shear, tidal_tensor
from halotrans.sims.boxio import write_box
from tests.helpers import REPO, halotrans_cli, run, subprocess_env

L = 32.0  # Mpc/h


def gaussian_boxes(root: Path, n: int = 32, seeds=(0, 1)) -> list[Path]:
    """Box files with a white-noise δ (halo_mass zeros): enough for the shear stage."""
    paths = []
    for seed in seeds:
        delta = np.random.default_rng(seed).standard_normal((n, n, n)).astype(np.float32)
        paths.append(write_box(root / f"box_{seed:04d}.h5", delta, np.zeros_like(delta),
                               {"box_size": L, "seed": seed, "z_init": 99.0}))
    return paths


def read(path: Path, name: str = "tidal/T") -> np.ndarray:
    with h5py.File(path, "r") as f:
        return f[name][...]


def tidal_attrs(path: Path) -> dict:
    with h5py.File(path, "r") as f:
        return dict(f["tidal"].attrs)


def fingerprint(paths) -> dict:
    """Bytes and mtime of every file (and the directory listing) to prove nothing was written."""
    return {str(p): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns) for p in paths}


def rel_err(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / np.abs(b).max())


@pytest.fixture
def boxes(tmp_path) -> list[Path]:
    return gaussian_boxes(tmp_path / "boxes")


def test_serial_cli_matches_library_and_records_settings(boxes):
    proc = halotrans_cli("shear", boxes[0].parent, "--set", "shear.smoothing=1.5")
    assert "2 box(es) computed, 0 skipped" in proc.stdout
    for path in boxes:
        delta = torch.from_numpy(read(path, "delta")).double()
        expected = tidal_shear(delta, L, "q", smoothing=1.5).numpy()
        assert rel_err(read(path), expected) < 1e-6
        attrs = tidal_attrs(path)
        assert attrs["definition"] == "q" and attrs["smoothing"] == 1.5
        assert attrs["components"] == "xx,yy,zz,xy,xz,yz"
    assert sorted(p.name for p in boxes[0].parent.iterdir()) == ["box_0000.h5", "box_0001.h5"]


def test_rerun_skips_done_boxes_and_new_definition_recomputes(boxes):
    halotrans_cli("shear", *boxes)
    q = read(boxes[0])
    before = fingerprint(boxes)
    proc = halotrans_cli("shear", boxes[0].parent)
    assert "0 box(es) computed, 2 skipped" in proc.stdout
    assert fingerprint(boxes) == before
    proc = halotrans_cli("shear", boxes[0].parent, "--set", "shear.definition=q2")
    assert "2 box(es) computed, 0 skipped" in proc.stdout
    assert tidal_attrs(boxes[0])["definition"] == "q2"
    np.testing.assert_allclose(read(boxes[0]), q.astype(np.float64) ** 2, rtol=1e-6)
    # asking for the components too recomputes; dropping them again is already done
    halotrans_cli("shear", boxes[0], "--set", "shear.definition=q2", "--set", "shear.save_tensor=true")
    assert read(boxes[0], "tidal/Tij").shape == (6, 32, 32, 32)
    proc = halotrans_cli("shear", boxes[0], "--set", "shear.definition=q2")
    assert "0 box(es) computed, 1 skipped" in proc.stdout


@pytest.mark.mpi
@pytest.mark.parametrize("ranks", [2, pytest.param(4, marks=pytest.mark.slow)])
def test_mpi_slabs_match_serial(tmp_path, mpiexec, ranks):
    serial = gaussian_boxes(tmp_path / "serial", seeds=(3,))
    slabs = gaussian_boxes(tmp_path / "mpi", seeds=(3,))
    settings = ["--set", "shear.save_tensor=true", "--set", "shear.smoothing=1.0"]
    halotrans_cli("shear", serial[0], *settings)
    proc = run([*mpiexec, "-n", str(ranks), sys.executable, "-m", "halotrans", "shear", slabs[0].parent, *settings],
               timeout=300)
    assert "1 box(es) computed, 0 skipped" in proc.stdout and f"{ranks} MPI rank(s)" in proc.stdout
    assert proc.stdout.count("box(es) computed") == 1  # the summary comes from rank 0 only
    assert rel_err(read(slabs[0]), read(serial[0])) < 1e-6
    assert rel_err(read(slabs[0], "tidal/Tij"), read(serial[0], "tidal/Tij")) < 1e-6
    delta = torch.from_numpy(read(slabs[0], "delta")).double()
    assert rel_err(read(slabs[0], "tidal/Tij"), tidal_tensor(delta, L, smoothing=1.0).numpy()) < 1e-6
    assert tidal_attrs(slabs[0])["smoothing"] == 1.0
    assert [p.name for p in slabs[0].parent.iterdir()] == ["box_0003.h5"]  # no temporary file left
    proc = run([*mpiexec, "-n", str(ranks), sys.executable, "-m", "halotrans", "shear", slabs[0], *settings])
    assert "0 box(es) computed, 1 skipped" in proc.stdout


def bad_inputs(root: Path) -> dict[str, tuple[list[str], str]]:
    """Name -> (CLI paths, expected message part); each set also holds a good box that must stay as it is."""
    root.mkdir()
    good = gaussian_boxes(root / "good", n=16, seeds=(0,))[0]
    no_delta = root / "box_no_delta.h5"
    with h5py.File(no_delta, "w") as f:
        f["halo_mass"] = np.zeros((16, 16, 16), np.float32)
        f.attrs["box_size"] = L
    non_cubic = root / "box_non_cubic.h5"
    with h5py.File(non_cubic, "w") as f:
        f["delta"] = np.zeros((16, 16, 8), np.float32)
        f.attrs["box_size"] = L
    return {
        "missing /delta": ([str(good), str(no_delta)], "missing dataset(s) ['delta']; the file has ['halo_mass']"),
        "non-cubic": ([str(good), str(non_cubic)], "must be a cubic (N,N,N) grid"),
        "no such path": ([str(good), str(root / "nowhere")], "no such file or directory"),
    }


def assert_refused(proc: subprocess.CompletedProcess, message: str, ranks: int) -> None:
    assert proc.returncode == 2, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("python -m halotrans shear: error:")]
    assert len(errors) == ranks and all(message in e for e in errors), proc.stderr


def test_bad_input_is_refused_and_nothing_written(tmp_path):
    cases = bad_inputs(tmp_path / "bad")
    files = [p for p in (tmp_path / "bad").rglob("*") if p.is_file()]
    before = fingerprint(files)
    for name, (paths, message) in cases.items():
        proc = halotrans_cli("shear", *paths, check=False, timeout=120)
        assert_refused(proc, message, ranks=1)
        assert "Traceback" not in proc.stderr, name
    assert fingerprint(files) == before
    assert sorted(p for p in (tmp_path / "bad").rglob("*") if p.is_file()) == sorted(files)


@pytest.mark.mpi
def test_bad_input_under_mpi_fails_on_every_rank_without_hanging(tmp_path, mpiexec):
    cases = bad_inputs(tmp_path / "bad")
    cases["N not divisible by ranks"] = (cases["non-cubic"][0][:1], "N=16 is not divisible by the 3 MPI ranks")
    files = [p for p in (tmp_path / "bad").rglob("*") if p.is_file()]
    before = fingerprint(files)
    for name, (paths, message) in cases.items():
        ranks = 3 if "divisible" in name else 2
        proc = run([*mpiexec, "-n", str(ranks), sys.executable, "-m", "halotrans", "shear", *paths],
                   check=False, timeout=120)
        assert_refused(proc, message, ranks)
    assert fingerprint(files) == before
    assert sorted(p for p in (tmp_path / "bad").rglob("*") if p.is_file()) == sorted(files)


@pytest.mark.slow
def test_killed_job_leaves_old_or_finished_boxes(tmp_path):
    """SIGKILL a serial run mid-way: every box is either untouched or complete; a re-run finishes the rest."""
    boxes = gaussian_boxes(tmp_path / "boxes", n=96, seeds=range(8))
    before = fingerprint(boxes)
    proc = subprocess.Popen([sys.executable, "-m", "halotrans", "shear", str(boxes[0].parent)], cwd=REPO,
                            env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        with h5py.File(boxes[0], "r") as f:  # wait until the first box is done, then kill mid-run
            if "tidal" in f:
                break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = []
    for path in boxes:
        with h5py.File(path, "r") as f:
            if "tidal" not in f:
                assert fingerprint([path]) == {str(path): before[str(path)]}
                continue
        delta = torch.from_numpy(read(path, "delta")).double()
        assert rel_err(read(path), tidal_shear(delta, L).numpy()) < 1e-6
        done.append(path)
    assert 1 <= len(done) < len(boxes)
    proc = halotrans_cli("shear", boxes[0].parent)
    assert f"{len(boxes) - len(done)} box(es) computed, {len(done)} skipped" in proc.stdout
    strays = set(boxes[0].parent.iterdir()) - set(boxes)  # at most the killed job's temporary file
    assert len(strays) <= 1 and all(".tmp-" in p.name for p in strays)


def test_help():
    proc = halotrans_cli("shear", "--help")
    assert "mpiexec" in proc.stdout and "--set" in proc.stdout


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal of a missing GPU")
def test_unusable_device_is_a_config_error(boxes):
    before = fingerprint(boxes)
    proc = halotrans_cli("shear", boxes[0], "--set", "shear.device=cuda", check=False)
    assert_refused(proc, "shear.device='cuda' is not usable here", ranks=1)
    assert fingerprint(boxes) == before
