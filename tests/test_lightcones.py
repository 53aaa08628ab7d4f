"""21cmFAST light cones: real 21cmFAST 4.1.1 runs on the tiny config (8 x 8 x 45 cells, 8 nodes)."""

from __future__ import annotations

import dataclasses
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from halotrans.config import load_config
from halotrans.skatr.priors import PARAM_NAMES, prior_bounds, sample_params
from tests.helpers import REPO, TINY_LIGHTCONES, halotrans_cli, subprocess_env

TINY = TINY_LIGHTCONES


def tiny_config(*overrides: str):
    return load_config(TINY, list(overrides)).lightcone


def files_under(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*"))


@pytest.mark.slow
def test_cli_writes_tiny_light_cones_with_their_parameters(tiny_set):
    cfg = tiny_config()
    assert files_under(tiny_set.parent.parent) == ["out", "out/tiny.h5"]  # no cache, no parts left
    with h5py.File(tiny_set) as f:
        tb = f["brightness_temp"]
        assert tb.shape == (2, 8, 8, 45) and tb.dtype == np.float32 and f["brightness_temp"].attrs["units"] == "mK"
        assert np.isfinite(tb[...]).all() and tb[...].std() > 1.0  # a real 21cm signal, mK
        seeds = f["seeds"][...]
        assert list(seeds) == [0, 4] and list(f["rejected/seeds"][...]) == [1, 2, 3]
        for seed, theta in zip(seeds, f["params"][...]):
            np.testing.assert_array_equal(theta, sample_params(cfg, seed))
        assert np.isnan(f["params"][:, 0]).all() and not f.attrs["sampled"][0]  # five-parameter mode
        assert "five-parameter" in f.attrs["wdm_model"]
        np.testing.assert_array_equal(f.attrs["priors"], prior_bounds(cfg))
        assert list(f.attrs["param_names"]) == list(PARAM_NAMES)
        assert f.attrs["py21cmfast_version"] == "4.1.1"
        z = f["redshifts"][...]
        assert z.shape == (45,) and z[0] == 5.0 and z[-1] == 35.0 and np.all(np.diff(z) > 0)
        assert (f["tau"][...] <= 0.089).all() and (f["x_hi_zmin"][...] <= 0.1).all()
        assert f["x_hi"].shape == (2, 8) and f["node_redshifts"][0] == 5.0
        assert '"USE_TS_FLUCT": true' in f.attrs["inputs_example"]
        assert '"M_MIN_in_Mass": false' in f.attrs["inputs_example"]


@pytest.mark.slow
def test_tau_rejections_are_recorded_not_dropped(tiny_set):
    with h5py.File(tiny_set) as f:
        rej = f["rejected"]
        tau = rej["tau"][...]
        assert (tau > 0.089).all()
        reasons = [r.decode() for r in rej["reason"][...]]
        assert all(r.startswith("tau ") and "> 0.089" in r for r in reasons)
        cfg = tiny_config()
        for seed, theta in zip(rej["seeds"][...], rej["params"][...]):
            np.testing.assert_array_equal(theta, sample_params(cfg, seed))


@pytest.mark.slow
def test_forced_neutral_fraction_rejection(tmp_path):
    proc = halotrans_cli("lightcones", "-c", TINY, "--out", "r.h5", "--n", "1", "--no-progress",
                         "--set", "lightcone.x_hi_max=-1", "--set", "lightcone.max_attempts=1",
                         cwd=tmp_path, check=False)
    assert proc.returncode == 1 and "only 0 of 1 accepted" in proc.stderr
    assert "0 accepted, 1 rejected in all; this run computed 1 light cones (rejected: {'x_HI(z=5)': 1})" in proc.stdout
    with h5py.File(tmp_path / "r.h5") as f:
        assert f["brightness_temp"].shape == (0, 8, 8, 45)
        assert list(f["rejected/seeds"][...]) == [0]
        assert "x_HI(z=5)" in f["rejected/reason"][0].decode()
        assert f["rejected/x_hi_zmin"][0] >= 0.0


@pytest.mark.slow
def test_higher_virial_temperature_delays_reionisation():
    from halotrans.skatr.simulate import simulate_light_cone

    cfg = tiny_config()
    theta = np.array([np.nan, 0.31, 500.0, 40.0, 4.0, 30.0])
    low = simulate_light_cone(cfg, 7, theta)
    high = simulate_light_cone(cfg, 7, np.where(np.arange(6) == 4, 5.3, theta))
    assert (high["x_hi"] >= low["x_hi"] - 1e-6).all()  # fewer, rarer sources: more neutral at every node
    assert (high["x_hi"] - low["x_hi"]).max() > 0.2
    assert high["tau"] < low["tau"]


@pytest.mark.slow
def test_warm_dark_matter_cutoff_delays_reionisation():
    from halotrans.skatr.simulate import simulate_light_cone

    cfg = tiny_config("lightcone.wdm=true")
    warm = simulate_light_cone(cfg, 7, np.array([0.3, 0.31, 500.0, 40.0, 4.3, 30.0]))
    cold = simulate_light_cone(cfg, 7, np.array([10.0, 0.31, 500.0, 40.0, 4.3, 30.0]))
    assert (warm["x_hi"] >= cold["x_hi"] - 1e-6).all()
    assert (warm["x_hi"] - cold["x_hi"]).max() > 0.2


@pytest.mark.slow
def test_high_res_mode_is_the_block_average():
    from halotrans.skatr.simulate import block_average, simulate_light_cone

    cfg = tiny_config("lightcone.n_los=44")
    theta = np.array([np.nan, 0.3, 500.0, 40.0, 4.6, 30.0])
    full = simulate_light_cone(cfg, 3, theta)["brightness_temp"]
    coarse = simulate_light_cone(dataclasses.replace(cfg, downsample=2), 3, theta)["brightness_temp"]
    assert full.shape == (8, 8, 44) and coarse.shape == (4, 4, 22)
    np.testing.assert_allclose(coarse, block_average(full, 2), rtol=1e-6, atol=1e-5)
    np.testing.assert_allclose(coarse[1, 2, 3], full[2:4, 4:6, 6:8].mean(), rtol=1e-5)


@pytest.mark.slow
def test_sigkilled_generator_resumes_without_duplicates(tmp_path):
    args = [sys.executable, "-m", "halotrans", "lightcones", "-c", TINY, "--out", "out/k.h5", "--n", "3",
            "--no-progress", "--set", "lightcone.tau_max=1", "--set", "lightcone.x_hi_max=1",
            "--set", "lightcone.workers=2"]
    proc = subprocess.Popen(args, cwd=tmp_path, env=subprocess_env(), start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    parts = tmp_path / "out" / "k.h5.parts"
    deadline = time.time() + 300
    while not list(parts.glob("seed_*.h5")) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    assert proc.poll() is None, "the generator finished before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)  # the command and its worker processes, mid-run
    proc.wait()
    assert not (tmp_path / "out" / "k.h5").exists()
    done_before = len(list(parts.glob("seed_*.h5")))
    assert 1 <= done_before < 3

    res = halotrans_cli(*[a for a in args[3:] if a != "--no-progress"], cwd=tmp_path, timeout=600)
    assert f"computed {3 - done_before} light cones" in res.stdout
    # the progress bar starts at the light cones already made (so its rate and ETA are this run's)
    frames = re.findall(r"\| (\d)/3 \[", res.stderr)
    assert frames[0] == str(done_before) and frames[-1] == "3", res.stderr
    with h5py.File(tmp_path / "out" / "k.h5") as f:
        assert list(f["seeds"][...]) == [0, 1, 2] and len(f["rejected/seeds"]) == 0
        assert f["brightness_temp"].shape == (3, 8, 8, 45) and np.isfinite(f["brightness_temp"][...]).all()
        cfg = tiny_config()
        np.testing.assert_array_equal(f["params"][...], np.stack([sample_params(cfg, s) for s in range(3)]))
    assert files_under(tmp_path) == ["out", "out/k.h5"]

    again = halotrans_cli(*args[3:], cwd=tmp_path)  # complete: nothing to compute
    assert "computed 0 light cones" in again.stdout


@pytest.mark.slow
def test_other_settings_refuse_to_mix(tiny_set):
    proc = halotrans_cli("lightcones", "-c", TINY, "--out", str(tiny_set), "--set", "lightcone.hii_dim=4",
                         "--set", "lightcone.dim=8", "--no-progress", check=False)
    assert proc.returncode == 2 and "other light-cone settings" in proc.stderr and "hii_dim" in proc.stderr


def test_bad_config_is_a_one_line_error(tmp_path):
    proc = halotrans_cli("lightcones", "-c", TINY, "--out", "x.h5", "--set", "lightcone.r_bubble_max=30",
                         cwd=tmp_path, check=False)
    assert proc.returncode == 2 and "r_bubble_max" in proc.stderr
    assert files_under(tmp_path) == []


def test_21cmfast_version_is_pinned():
    code = ("import py21cmfast; py21cmfast.__version__ = '4.3.1'\n"
            "from halotrans.cli import main\n"
            f"raise SystemExit(main(['lightcones', '-c', '{TINY}', '--out', 'never.h5']))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO,
                          env=subprocess_env(), timeout=300)
    assert proc.returncode == 2
    assert "pinned to 21cmFAST 4.1.1" in proc.stderr and "found 4.3.1" in proc.stderr
    assert not (REPO / "never.h5").exists()


def test_priors_and_draws():
    cfg = tiny_config("lightcone.wdm=true")
    draws = np.stack([sample_params(cfg, s) for s in range(200)])
    lo, hi = prior_bounds(cfg).T
    assert ((draws >= lo) & (draws <= hi)).all()
    assert (draws.max(0) - draws.min(0) > 0.8 * (hi - lo)).all()
    np.testing.assert_array_equal(sample_params(cfg, 5), sample_params(cfg, 5))
    np.testing.assert_array_equal(prior_bounds(load_config(None).lightcone),
                                  [[0.3, 10], [0.2, 0.4], [100, 1500], [38, 42], [4, 5.3], [10, 250]])


# --- a cheaper redshift sampling, measured on matched seeds (halotrans.skatr.sampling) -------------

def _fake_part(out: Path, seed: int, factor: float, tb: np.ndarray, tau: float) -> None:
    from halotrans.skatr.sampling import part_file

    out.mkdir(parents=True, exist_ok=True)
    np.savez(part_file(out, seed, factor), brightness_temp=tb.astype(np.float32), params=np.zeros(6), tau=tau,
             x_hi_zmin=0.01, accepted=True, seconds=1.0 / factor, redshifts=np.linspace(5, 35, tb.shape[2]),
             n_nodes=int(10 / (factor - 1)), cell_mpc=7.0)


def test_sampling_comparison_statistics_on_known_changes(tmp_path):
    from halotrans.skatr.sampling import chunk_power, compare, markdown

    rng = np.random.default_rng(0)
    for seed in range(4):
        tb = rng.standard_normal((8, 8, 40)) * (1 + seed) + 10.0 * seed
        _fake_part(tmp_path, seed, 1.05, tb, 0.05 + 0.01 * seed)
        _fake_part(tmp_path, seed, 1.10, 1.1 * tb, 0.05 + 0.01 * seed + 0.002)  # 10 % brighter fluctuations
    power, k = chunk_power(np.ones((8, 8, 40)), 7.0, 4, 3)
    assert power.shape == (4, 3) and k.shape == (3,) and np.allclose(np.nan_to_num(power), 0)  # no fluctuations
    res = compare(tmp_path, 1.05, n_chunks=4, n_k=3)
    e = res["factors"]["1.1"]
    assert e["n_matched"] == 4 and e["verdict_flips"] == 0 and e["tau_abs_diff_max"] == pytest.approx(0.002, abs=1e-9)
    assert e["field_corr_median"] == pytest.approx(1.0) and e["field_rel_rms_diff_median"] == pytest.approx(0.1, rel=1e-3)
    np.testing.assert_allclose(e["ps_log_ratio_mean"], 2 * np.log(1.1), rtol=1e-4)  # Δ² scales as amplitude²
    assert e["ps_max_abs_shift"] == pytest.approx(2 * np.log(1.1), rel=1e-4)
    assert res["factors"]["1.05"]["n_light_cones"] == 4 and "| 1.1 | 99 |" in markdown(res)


def test_generated_light_cones_join_the_comparison_with_verdicts_even_without_a_field(tmp_path):
    """A rejected light cone of a `lightcones` run has no field: it still counts for τ and the verdicts."""
    from halotrans.skatr.sampling import compare, import_generated, markdown
    from halotrans.skatr.store import generation_settings, write_part

    cfg = tiny_config()
    out = tmp_path / "gen" / "tiny.h5"
    rng = np.random.default_rng(1)
    fields = {s: rng.standard_normal((8, 8, 40)).astype(np.float32) * 5 for s in (0, 2)}
    taus = {0: 0.060, 1: 0.095, 2: 0.088}  # seed 1 rejected by τ at the reference, seed 2 just accepted
    for seed, tau in taus.items():
        write_part(out, generation_settings(cfg), {
            "seed": seed, "params": sample_params(cfg, seed), "tau": tau, "x_hi_zmin": 0.01, "seconds": 2.0,
            "reason": "" if tau <= cfg.tau_max else f"tau {tau} > 0.089", "inputs": "", "x_hi": np.zeros(8),
            "mean_brightness_temp": np.zeros(8), "brightness_temp": fields.get(seed)})
    cmp_dir = tmp_path / "cmp"
    assert import_generated(cfg, out, cmp_dir, [0, 1, 2, 3]) == 3  # seed 3 was never generated
    assert import_generated(cfg, out, cmp_dir, [0, 1, 2, 3]) == 0  # kept parts are not taken twice
    for seed, tau in taus.items():  # the cheaper setting: seed 1 now accepted, seed 2 now rejected
        _fake_part(cmp_dir, seed, 1.5, rng.standard_normal((8, 8, 40)), tau - 0.01 if seed == 1 else tau + 0.002)
    res = compare(cmp_dir, 1.3, n_chunks=4, n_k=3)
    e = res["factors"]["1.5"]
    assert (e["n_matched"], e["n_matched_fields"], e["no_field"]) == (3, 2, 1)
    assert (e["verdict_flips"], e["flips_to_rejected"], e["flips_to_accepted"]) == (2, 1, 1)
    assert e["seconds_ratio_matched"] == pytest.approx((1 / 1.5) / 2.0)
    assert np.array(e["ps_log_ratio_sem"]).shape == (4, 3)
    assert "| 1.5 | 20 |" in markdown(res) and "2 of 3 (1 / 1)" in markdown(res)
    with pytest.raises(Exception, match="other light-cone settings"):
        import_generated(dataclasses.replace(cfg, zprime_step_factor=1.5), out, tmp_path / "other", [0])


@pytest.mark.slow
def test_compare_sampling_runs_matched_seeds_and_resumes(tmp_path, tiny_set):
    args = ("skatr", "compare-sampling", "-c", TINY, "--factors", "1.3", "1.5", "--reference", "1.3",
            "--seeds", "0", "--out", str(tmp_path / "s"))
    first = halotrans_cli(*args, timeout=600)
    assert "computed 2 light cones" in first.stdout and "| 1.5 " in first.stdout and "| 1.3 (reference) |" in first.stdout
    assert len(list((tmp_path / "s").glob("seed_*.npz"))) == 2 and (tmp_path / "s" / "sampling.json").is_file()
    again = halotrans_cli(*args, timeout=600)
    assert "computed 0 light cones" in again.stdout
    # the reference light cones of a `lightcones` run are taken, not simulated again: bit for bit the same
    reused = halotrans_cli("skatr", "compare-sampling", "-c", TINY, "--factors", "1.5", "--reference", "1.3",
                           "--seeds", "0-1", "--reuse", str(tiny_set), "--out", str(tmp_path / "r"), timeout=600)
    assert "took 2 light cones at factor 1.3" in reused.stdout and "computed 2 light cones" in reused.stdout
    from halotrans.skatr.sampling import part_file

    with np.load(part_file(tmp_path / "s", 0, 1.3)) as run, np.load(part_file(tmp_path / "r", 0, 1.3)) as taken:
        np.testing.assert_array_equal(run["brightness_temp"], taken["brightness_temp"])
        assert float(run["tau"]) == float(taken["tau"])
    with np.load(part_file(tmp_path / "r", 1, 1.3)) as rejected:
        assert "brightness_temp" not in rejected.files and float(rejected["tau"]) > 0.089
