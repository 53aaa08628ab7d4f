"""``python -m halotrans simulate`` as a user runs it: files, resume after SIGKILL, clear errors."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from halotrans.cli import main
from halotrans.sims.boxio import box_path, is_complete, load_box, read_attrs
from halotrans.sims.cli import BOX_DATASETS
from tests.helpers import REPO, halotrans_cli, subprocess_env

TINY = ["--config", "sims/tiny"]


def _listing(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir()) if root.exists() else []


def test_simulate_writes_boxes_with_every_setting(tmp_path):
    out = tmp_path / "boxes"
    proc = halotrans_cli("simulate", *TINY, "--seeds", "0", "--set", f"sim.out_dir={out}", "--set", "sim.n_steps=10")
    assert "shear" in proc.stdout  # hint to the next stage
    arrays, attrs = load_box(box_path(out, 0), BOX_DATASETS[:3])
    assert arrays["delta"].shape == (32, 32, 32) and arrays["halo_id"].dtype == np.int32
    assert attrs["generator"]["n_steps"] == 10 and attrs["generator"]["mesh_factor"] == 2
    assert attrs["cosmology"]["name"] == "planck18" and attrs["cosmology"]["sigma8"] == pytest.approx(0.8102)
    assert attrs["seed"] == 0 and attrs["z_init"] == 99.0 and attrs["box_size"] == 32.0
    assert attrs["particle_mass"] == pytest.approx(0.3111 * 2.775e11, rel=1e-6)
    assert attrs["n_halos"] > 0 and 0.1 < attrs["halo_fraction"] < 0.6
    assert attrs["code_version"]
    # linear δ at z_init: rms ~ D(99) × σ(1 Mpc/h cells) ≈ 0.013 × 2.5
    assert 0.01 < arrays["delta"].std() < 0.06
    # a second run skips the complete box
    again = halotrans_cli("simulate", *TINY, "--seeds", "0", "--set", f"sim.out_dir={out}", "--set", "sim.n_steps=10")
    assert "0 box(es) simulated, 1 already complete" in again.stdout


@pytest.mark.slow
def test_killed_run_resumes_to_identical_files(tmp_path):
    """SIGKILL while box 1 is being simulated, rerun: files byte-identical to an uninterrupted run."""
    seeds, settings = "0-2", ["--set", "sim.n_steps=30"]
    straight = tmp_path / "straight"
    halotrans_cli("simulate", *TINY, "--seeds", seeds, "--set", f"sim.out_dir={straight}", *settings)

    resumed = tmp_path / "resumed"
    cmd = [sys.executable, "-m", "halotrans", "simulate", *TINY, "--seeds", seeds,
           "--set", f"sim.out_dir={resumed}", *settings]
    proc = subprocess.Popen(cmd, cwd=REPO, env=subprocess_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not box_path(resumed, 0).exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL, "the run finished before it could be killed"
    finals = sorted(resumed.glob("box_*.h5"))
    assert box_path(resumed, 0) in finals and box_path(resumed, 2) not in finals
    assert all(is_complete(p, BOX_DATASETS) for p in finals)  # nothing half-written under a final name

    halotrans_cli("simulate", *TINY, "--seeds", seeds, "--set", f"sim.out_dir={resumed}", *settings)
    assert _listing(resumed) == _listing(straight) == ["box_0000.h5", "box_0001.h5", "box_0002.h5"]
    for name in _listing(straight):
        assert (straight / name).read_bytes() == (resumed / name).read_bytes(), name


def _simulate_in_process(capsys, *args) -> tuple[int, str]:
    """``python -m halotrans simulate ARGS`` in this process (same code path, no interpreter start)."""
    rc = main(["simulate", *map(str, args)])
    return rc, capsys.readouterr().err


def test_unknown_config_key_names_key_and_file(tmp_path, capsys):
    out = tmp_path / "boxes"
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(yaml.safe_dump({"sim": {"n_grid": 32, "n_stepz": 10, "out_dir": str(out)}}))
    rc, err = _simulate_in_process(capsys, "--config", cfg, "--seeds", "0")
    assert rc == 2 and "n_stepz" in err and "bad.yaml" in err
    assert not out.exists()


@pytest.mark.parametrize("seeds", ["0-x", "5-2", ","])
def test_bad_seeds_are_refused(tmp_path, capsys, seeds):
    out = tmp_path / "boxes"
    rc, err = _simulate_in_process(capsys, *TINY, "--seeds", seeds, "--set", f"sim.out_dir={out}")
    assert rc == 2 and "--seeds" in err
    assert not out.exists()


def test_existing_box_with_other_settings_is_refused(tmp_path, capsys):
    out = tmp_path / "boxes"
    assert main(["simulate", *TINY, "--seeds", "0", "--set", f"sim.out_dir={out}", "--set", "sim.n_steps=5"]) == 0
    before = box_path(out, 0).read_bytes()
    capsys.readouterr()
    rc, err = _simulate_in_process(capsys, *TINY, "--seeds", "0-1", "--set", f"sim.out_dir={out}", "--set", "sim.n_steps=6")
    assert rc == 2
    assert "box_0000.h5" in err and "n_steps: 5 in the file, 6 now" in err
    assert _listing(out) == ["box_0000.h5"]  # box 1 not started
    assert box_path(out, 0).read_bytes() == before
    assert read_attrs(box_path(out, 0))["generator"]["n_steps"] == 5


@pytest.mark.parametrize("setting, words", [("sim.cosmology=planck99", "planck99"), ("sim.device=gpu0", "sim.device"),
                                            ("sim.power_spectrum=camb", "power_spectrum")])
def test_bad_cosmology_and_device_are_config_errors(tmp_path, capsys, setting, words):
    out = tmp_path / "boxes"
    rc, err = _simulate_in_process(capsys, *TINY, "--set", setting, "--set", f"sim.out_dir={out}")
    assert rc == 2 and words in err, err
    assert not out.exists()


def test_help():
    proc = halotrans_cli("simulate", "--help")
    assert "--seeds" in proc.stdout and "resume" in proc.stdout


def test_leftovers_of_killed_runs_are_removed(tmp_path, capsys):
    """A ``.tmp-<host>-<pid>`` file of a dead process on this host is deleted; other hosts' are kept."""
    out = tmp_path / "boxes"
    out.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    ours = out / f"box_0000.h5.tmp-{socket.gethostname()}-{dead.pid}"
    other = out / "box_0000.h5.tmp-elsewhere-1"
    ours.write_bytes(b"half a box")
    other.write_bytes(b"someone else's")
    rc, _ = _simulate_in_process(capsys, *TINY, "--seeds", "0", "--set", f"sim.out_dir={out}", "--set", "sim.n_steps=3")
    assert rc == 0
    assert _listing(out) == ["box_0000.h5", other.name]
    assert is_complete(box_path(out, 0), BOX_DATASETS)
