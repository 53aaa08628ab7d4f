"""The τ screen: a fit of log τ in the parameters that skips only seeds sure to be rejected."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from halotrans.config import load_config
from halotrans.skatr.priors import prior_bounds, sample_params
from halotrans.skatr.screen import TauScreen
from halotrans.skatr.store import generation_settings, write_part
from tests.helpers import TINY_LIGHTCONES, halotrans_cli

TAU_MAX = 0.089
#: room for the 120 seeds written up front (max_attempts counts from seed 0)
MORE = ("--set", "lightcone.max_attempts=200")


def smooth_log_tau(cfg, params: np.ndarray) -> np.ndarray:
    """A smooth, non-linear log τ over the priors: rising with ζ and falling with T_vir and Ω_m."""
    lo, hi = prior_bounds(cfg).T
    u = (params - lo) / (hi - lo)
    return np.log(TAU_MAX) + 1.2 * (u[:, 5] - 0.5) - 0.6 * u[:, 4] ** 2 + 0.3 * u[:, 1] * u[:, 5] + 0.2


def test_screen_skips_only_seeds_far_above_the_cut():
    cfg = load_config(TINY_LIGHTCONES, ["lightcone.wdm=true"]).lightcone
    rng = np.random.default_rng(1)
    params = np.stack([sample_params(cfg, s) for s in range(400)])
    log_tau = smooth_log_tau(cfg, params) + rng.normal(0, 0.03, len(params))
    screen = TauScreen.fit(params, np.exp(log_tau), np.exp(log_tau) <= TAU_MAX, TAU_MAX, sigmas=4)
    assert 0.025 < screen.sigma < 0.036  # the fit recovers the scatter, not the curvature
    assert screen.tau_cut == pytest.approx(TAU_MAX * np.exp(4 * screen.sigma))
    assert screen.cv_screened > 40 and screen.cv_false_skips == 0

    fresh = np.stack([sample_params(cfg, s) for s in range(10_000, 14_000)])
    truth = smooth_log_tau(cfg, fresh) + rng.normal(0, 0.03, len(fresh))
    skipped = np.array([bool(screen.reason(p)) for p in fresh])
    assert 0.15 < skipped.mean() < 0.5  # it does skip, and not everything
    assert (truth[skipped] > np.log(TAU_MAX)).all()  # none that would have been accepted
    assert (truth[~skipped] > np.log(TAU_MAX)).any()  # the borderline ones are still simulated
    assert screen.reason(fresh[np.argmax(truth)]).startswith("screened: predicted tau ")


def test_screen_refuses_non_finite_or_too_few_light_cones():
    cfg = load_config(TINY_LIGHTCONES, ["lightcone.wdm=true"]).lightcone
    params = np.stack([sample_params(cfg, s) for s in range(200)])
    tau = np.exp(smooth_log_tau(cfg, params))
    with pytest.raises(ValueError, match="finite"):
        TauScreen.fit(params, np.where(np.arange(200) == 3, np.nan, tau), tau <= TAU_MAX, TAU_MAX, 4)
    with pytest.raises(ValueError, match=">= 102 computed light cones"):
        TauScreen.fit(params[:60], tau[:60], tau[:60] <= TAU_MAX, TAU_MAX, 4)
    with pytest.raises(ValueError, match="screen_sigmas must be > 0"):
        load_config(TINY_LIGHTCONES, ["lightcone.screen_sigmas=0"])


@pytest.mark.slow
def test_generator_records_screened_seeds_unsimulated_and_simulates_the_rest(tmp_path):
    """Seeds 0-119 carry τ of a known function of θ (recorded as rejections: they hold no field);
    the generator fits the screen on them, skips the new seeds predicted far above τ_max and runs
    real 21cmFAST on the others until one is accepted."""
    cfg = load_config(TINY_LIGHTCONES, [f"lightcone.out={tmp_path / 's.h5'}"]).lightcone
    settings = generation_settings(cfg)
    rng = np.random.default_rng(0)
    n_nodes = 8
    for seed in range(120):
        theta = sample_params(cfg, seed)
        tau = float(np.exp(smooth_log_tau(cfg, theta[None])[0] + rng.normal(0, 0.02)))
        write_part(cfg.out, settings, {
            "seed": seed, "params": theta, "tau": tau, "x_hi_zmin": 0.5, "x_hi": np.full(n_nodes, 0.5),
            "mean_brightness_temp": np.zeros(n_nodes), "inputs": "", "seconds": 1.0,
            "reason": f"tau {tau:.4f} > 0.089" if tau > TAU_MAX else "x_HI(z=5) 0.5000 > 0.1"})

    proc = halotrans_cli("lightcones", "-c", TINY_LIGHTCONES, "--out", cfg.out, "--n", "1", "--no-progress",
                         "--set", "lightcone.screen_sigmas=3", "--set", "lightcone.screen_min_fit=110", *MORE,
                         cwd=tmp_path, timeout=900)
    assert "τ screen fitted on 120 computed light cones" in proc.stdout
    assert "'screened': " in proc.stdout
    with h5py.File(cfg.out) as f:
        accepted = list(f["seeds"][...])
        rej = f["rejected"]
        reasons = [r.decode() for r in rej["reason"][...]]
        new = {int(s): (r, t) for s, r, t in zip(rej["seeds"][...], reasons, rej["tau"][...]) if s >= 120}
        params = {int(s): p for s, p in zip(rej["seeds"][...], rej["params"][...])}
    assert len(accepted) == 1 and accepted[0] >= 120
    screened = [s for s, (r, _) in new.items() if r.startswith("screened")]
    simulated = [s for s, (r, _) in new.items() if not r.startswith("screened")] + accepted
    assert screened and all(np.isnan(new[s][1]) for s in screened)  # skipped: nothing simulated
    assert all(np.isfinite(new[s][1]) for s in simulated if s in new)  # real 21cmFAST τ
    assert sorted(screened + simulated) == list(range(120, accepted[0] + 1))  # no seed left out
    for s in screened:
        np.testing.assert_array_equal(params[s], sample_params(cfg, s))
        assert smooth_log_tau(cfg, params[s][None])[0] > np.log(TAU_MAX)  # the fit's function says: rejected

    again = halotrans_cli("lightcones", "-c", TINY_LIGHTCONES, "--out", cfg.out, "--n", "1", "--no-progress",
                          "--set", "lightcone.screen_sigmas=3", "--set", "lightcone.screen_min_fit=110", *MORE,
                          cwd=tmp_path)
    assert "computed 0 light cones" in again.stdout  # screened seeds are done, not retried
