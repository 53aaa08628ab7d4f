"""SKATR downstream end to end: JEPA pretraining with the real DeepSpeed loop, cached summaries,
regression and NPE heads, the ViT from scratch, ``skatr report``; and NPE on a toy posterior.
Issue 16's protocol: an unlabelled pool, SKATR's masks, 8 symmetries, L1 heads with the best
validation checkpoint and patience, compressed NPE conditions, flow ensembles, calibration tests,
bootstrap intervals, effective rank and linear probes against an untrained encoder."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from halotrans.io import DataError
from halotrans.models.heads import FlowPosterior, RegressionHead, Standardize, Whiten
from halotrans.skatr.calibration import calibrated_band, calibration_metrics, logit_log_density
from halotrans.skatr.compress import SymmetryMean, fit_pca
from halotrans.skatr.data import N_SYMMETRIES, random_symmetries, transverse_symmetry
from halotrans.skatr.dataset import LightConeDataset
from halotrans.skatr.diagnostics import effective_rank, linear_probe_r2, paired_bootstrap_ratio
from halotrans.skatr.eval import NOMINAL, coverage_curve, evaluate_ensemble, hpd_levels, r2_scores, relative_errors
from halotrans.skatr.summaries import load_run, read_summaries
from halotrans.skatr.tasks import write_untrained_encoder
from halotrans.train.registry import make_task
from tests.helpers import BIN, CPU, TINY_VIT, halotrans_cli, run, write_synthetic_lightcones

# --- end to end with the real DeepSpeed loop and CLI ---------------------------------------------

def sets(*overrides: str) -> list[str]:
    return [a for o in overrides for a in ("--set", o)]


def metrics(run_dir: Path) -> list[dict[str, float]]:
    with open(run_dir / "metrics.csv", newline="") as f:
        return [{k: float(v) for k, v in r.items() if v} for r in csv.DictReader(f)]


@pytest.fixture(scope="module")
def lightcones(tmp_path_factory) -> Path:
    return write_synthetic_lightcones(tmp_path_factory.mktemp("skatr") / "data" / "lc.h5", n=48)


@pytest.fixture(scope="module")
def jepa_run(lightcones) -> Path:
    run_dir = lightcones.parent.parent / "runs" / "jepa"
    halotrans_cli("train", "-c", "skatr/pretrain.yaml",
                  *sets(f"lightcone.out={lightcones}", *TINY_VIT, *CPU, "skatr.batch_size=4", "train.zero_stage=0",
                        f"train.out_dir={run_dir}", "train.steps=16", "train.eval_every=8",
                        "train.checkpoint_every=8"))
    return run_dir


@pytest.mark.slow
def test_jepa_pretraining_lowers_the_loss_and_moves_the_target_encoder(jepa_run):
    rows = metrics(jepa_run)
    val = [r for r in rows if "val_loss" in r]
    assert [r["step"] for r in val] == [0, 8, 16]
    assert val[-1]["val_loss"] < val[0]["val_loss"]
    for key in ("val_std_target", "val_std_context", "val_std_pred"):  # collapse monitors are logged
        assert all(r[key] > 0 for r in val)
    assert val[-1]["val_std_target"] > 0.1 and val[-1]["val_std_context"] > 0.1

    model, cfg, meta = load_run(jepa_run)
    task = make_task(cfg)
    task.configure_from_meta(meta)
    torch.manual_seed(cfg.train.seed)  # the loop builds the model right after seeding: the initial weights
    init = task.build_model()
    moved, trained = 0.0, 0.0
    with torch.no_grad():
        for tgt, ctx, p0 in zip(model.target_encoder.parameters(), model.encoder.parameters(),
                                init.target_encoder.parameters()):
            moved += float((tgt - p0).norm() ** 2)
            trained += float((ctx - p0).norm() ** 2)
    # the target followed the context encoder, by the small amount a momentum of 0.996 -> 1 allows
    assert trained > 0 and 0.0 < (moved / trained) ** 0.5 < 0.1


@pytest.mark.slow
def test_summaries_are_cached_once_then_the_regression_head_trains_and_reports(jepa_run, lightcones, tmp_path):
    common = sets(f"lightcone.out={lightcones}", f"skatr.encoder_run={jepa_run}", "skatr.batch_size=8")
    first = halotrans_cli("skatr", "summarize", "-c", "skatr/regress.yaml", *common, "--no-progress")
    assert "summaries computed" in first.stdout
    cache = jepa_run / "summaries" / "lc_target.h5"
    with h5py.File(cache) as f:
        assert f["summaries"].shape == (48, 1, 48) and f["params"].shape == (48, 5)  # (n, symmetries, K)
    stamp = cache.stat().st_mtime_ns
    assert "summaries cached" in halotrans_cli("skatr", "summarize", "-c", "skatr/regress.yaml", *common).stdout

    reg = tmp_path / "regress"
    out = halotrans_cli("train", "-c", "skatr/regress.yaml", *common,
                        *sets(*CPU, f"train.out_dir={reg}", "train.steps=150", "train.eval_every=75",
                              "train.warmup_steps=10", "train.log_every=10", "train.checkpoint_every=150"))
    assert f"summaries cached: {cache}" in out.stdout and cache.stat().st_mtime_ns == stamp  # reused, not recomputed
    val = [r for r in metrics(reg) if "val_loss" in r]
    assert val[-1]["val_loss"] < val[0]["val_loss"]

    rep = halotrans_cli("skatr", "report", str(reg), "--no-progress")
    assert "mean R²" in rep.stdout
    report = json.loads((reg / "report" / "report.json").read_text())
    assert set(report["metrics"]["r2"]) == {"omega_m", "e0", "log10_lx", "log10_tvir", "zeta"}
    assert report["info"]["n_test"] == 5 and report["info"]["label"] == "regress: JEPA summary (target)"
    assert (reg / "report" / "recovery.png").stat().st_size > 0 and (reg / "report" / "report.md").is_file()

    # another data set under the same name: the cache is stale and made again
    other = write_synthetic_lightcones(tmp_path / "other" / "lc.h5", n=48, seed=1)
    again = halotrans_cli("skatr", "summarize", "-c", "skatr/regress.yaml", "--no-progress",
                          *sets(f"lightcone.out={other}", f"skatr.encoder_run={jepa_run}"))
    assert "summaries recomputed (data changed)" in again.stdout


@pytest.mark.slow
def test_scratch_vit_regression_pretrained_summary_npe_and_comparison_report(jepa_run, lightcones, tmp_path):
    data = sets(f"lightcone.out={lightcones}", "skatr.batch_size=4")
    scratch = tmp_path / "scratch"
    halotrans_cli("train", "-c", "skatr/regress_scratch.yaml", *data,
                  *sets(*TINY_VIT, *CPU, f"train.out_dir={scratch}", "train.steps=6", "train.eval_every=6",
                        "train.checkpoint_every=6", "train.zero_stage=0"))
    assert (scratch / "model.pt").is_file() and (scratch / "norm_stats.json").is_file()

    flow = ("skatr.flow_hidden=16", "skatr.flow_transforms=2", "skatr.posterior_samples=100")
    npe_regpre = tmp_path / "npe_regpre"
    out = halotrans_cli("train", "-c", "skatr/npe_regpre.yaml", *data,
                        *sets(f"skatr.encoder_run={scratch}", *flow, *CPU, f"train.out_dir={npe_regpre}",
                              "train.steps=20", "train.eval_every=20", "train.checkpoint_every=20"))
    assert "summaries computed" in out.stdout and (scratch / "summaries" / "lc_vit.h5").is_file()
    npe_jepa = tmp_path / "npe_jepa"
    halotrans_cli("train", "-c", "skatr/npe.yaml", *data,
                  *sets(f"skatr.encoder_run={jepa_run}", *flow, *CPU, f"train.out_dir={npe_jepa}",
                        "train.steps=20", "train.eval_every=20", "train.checkpoint_every=20",
                        "skatr.train_fraction=0.5"))

    out_dir = tmp_path / "report"
    halotrans_cli("skatr", "report", str(scratch), str(npe_regpre), str(npe_jepa), "--out", str(out_dir),
                  "--no-progress")
    for name in ("skatr_report.md", "skatr_report.json", "coverage.png", "data_efficiency.png"):
        assert (out_dir / name).stat().st_size > 0
    table = (out_dir / "skatr_report.md").read_text()
    assert "ViT from scratch" in table and "regression-pretrained summary" in table and "JEPA summary" in table
    for run_dir in (npe_regpre, npe_jepa):
        rep = json.loads((run_dir / "report" / "report.json").read_text())
        m = rep["metrics"]
        assert np.isfinite(m["log_posterior"]) and 0 <= m["calibration_error"] <= 1
        assert m["coverage"]["0.00"] == 0.0 and m["coverage"]["1.00"] == 1.0
        assert (run_dir / "report" / "posteriors.png").is_file() and (run_dir / "report" / "coverage.png").is_file()
    assert json.loads((npe_jepa / "report" / "report.json").read_text())["info"]["n_train"] == 19  # half of 38


@pytest.mark.slow
@pytest.mark.parametrize("stage", [1, 2, 3])
def test_two_ranks_keep_the_target_encoder_an_exact_average(lightcones, tmp_path, stage):
    """Momentum 0: after every step the target must equal the context encoder, also when ZeRO-3 partitions both;
    model.pt holds the frozen target encoder at every ZeRO stage (ZeRO-1 keeps it only in the module state)."""
    run_dir = tmp_path / f"z{stage}"
    run([str(BIN / "torchrun"), "--nproc_per_node", "2", "-m", "halotrans", "train", "-c", "skatr/pretrain.yaml",
         *sets(f"lightcone.out={lightcones}", *TINY_VIT, *CPU, "skatr.batch_size=2", f"train.zero_stage={stage}",
               f"train.out_dir={run_dir}", "train.steps=3", "train.eval_every=3", "train.checkpoint_every=3",
               "jepa.ema_start=0.0", "jepa.ema_end=0.0")], timeout=900)
    state = torch.load(run_dir / "model.pt", weights_only=False)["state_dict"]
    keys = [k for k in state if k.startswith("encoder.")]
    assert len(keys) > 20
    for k in keys:
        torch.testing.assert_close(state["target_" + k], state[k], rtol=0, atol=0)


def test_bad_skatr_inputs_exit_with_status_2(lightcones, tmp_path):
    p = halotrans_cli("train", "-c", "skatr/regress.yaml", *sets(f"lightcone.out={lightcones}", "skatr.encoder_run="),
                      check=False)
    assert p.returncode == 2 and "skatr.encoder_run" in p.stderr
    p = halotrans_cli("skatr", "summarize", "-c", "skatr/regress.yaml",
                      *sets(f"lightcone.out={lightcones}", f"skatr.encoder_run={tmp_path}"), check=False)
    assert p.returncode == 2 and "not a finished training run" in p.stderr
    p = halotrans_cli("train", "-c", "skatr/pretrain.yaml",
                      *sets(f"lightcone.out={lightcones}", *CPU, "model.patch_size=[3,3,10]",
                            f"train.out_dir={tmp_path / 'bad'}"), check=False)
    assert p.returncode == 2 and "do not divide into model.patch_size" in p.stderr
    assert not (tmp_path / "bad" / "model.pt").exists()


# --- NPE head on a toy problem with a known posterior --------------------------------------------

def test_flow_posterior_recovers_a_known_gaussian_posterior(one_thread):
    """θ ~ N(0, I₂), x = θ + σ ε: the posterior is N(x / (1 + σ²), σ² / (1 + σ²) I₂)."""
    torch.manual_seed(0)
    sigma = 0.5
    q = FlowPosterior(2, 2, transforms=2, hidden=24, bins=8, unit_interval=False)
    q.norm.std.fill_((1 + sigma**2) ** 0.5)  # the evidence's spread
    steps = 400
    opt = torch.optim.Adam(q.parameters(), lr=5e-3)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=5e-3, total_steps=steps)
    for _ in range(steps):
        theta = torch.randn(256, 2)
        loss = -q(theta, theta + sigma * torch.randn(256, 2)).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    x_obs = torch.tensor([[1.5, -1.0], [-2.0, 2.5]])
    samples, _ = q.sample_and_log_prob(4000, x_obs)
    post_mean, post_std = x_obs / (1 + sigma**2), sigma / (1 + sigma**2) ** 0.5
    torch.testing.assert_close(samples.mean(1), post_mean, rtol=0.1, atol=0.0)
    torch.testing.assert_close(samples.std(1), torch.full((2, 2), post_std), rtol=0.1, atol=0.0)
    # the density agrees too: log q(θ | x) at the posterior mean vs the analytic Gaussian's
    analytic = -np.log(2 * np.pi * post_std**2)
    assert q.log_prob_of(post_mean, x_obs).numpy() == pytest.approx([analytic, analytic], abs=0.15)


def test_hpd_coverage_of_a_calibrated_posterior_is_the_diagonal():
    rng = np.random.default_rng(0)
    # truth and samples from the same Gaussian: the truth's HPD level is uniform
    samples = rng.standard_normal((2000, 500))
    truth = rng.standard_normal(2000)
    levels = hpd_levels(-0.5 * samples**2, -0.5 * truth**2)
    np.testing.assert_allclose(coverage_curve(levels), NOMINAL, atol=0.04)
    # an overconfident posterior N(0, 0.5²) for truths from N(0, 1) under-covers: below the diagonal
    narrow = hpd_levels(-2.0 * (0.5 * samples) ** 2, -2.0 * truth**2)
    assert (coverage_curve(narrow)[1:-1] < NOMINAL[1:-1]).all()
    assert r2_scores(np.array([[1.0], [2.0], [3.0]]), np.array([[1.0], [2.0], [3.0]]))[0] == 1.0
    assert relative_errors(np.array([[1.1]]), np.array([[1.0]]))[0] == pytest.approx(0.1)


@pytest.mark.slow
def test_jepa_and_summaries_on_real_21cmfast_light_cones(tiny_set, tmp_path):
    """The real tiny data set of the light-cone generator (2 light cones, 8 x 8 x 45 -> 40 slices)."""
    run_dir = tmp_path / "jepa"
    common = sets(f"lightcone.out={tiny_set}", "lightcone.split=[1.0,0.0,0.0]", "skatr.batch_size=2")
    halotrans_cli("train", "-c", "skatr/pretrain.yaml", *common,
                  *sets(*TINY_VIT, *CPU, f"train.out_dir={run_dir}", "train.steps=3", "train.eval_every=0",
                        "train.checkpoint_every=3", "train.zero_stage=0"))
    assert len([r for r in metrics(run_dir) if "loss" in r]) == 3
    out = halotrans_cli("skatr", "summarize", "-c", "skatr/regress.yaml", *common, "--no-progress",
                        *sets(f"skatr.encoder_run={run_dir}"))
    assert "summaries computed" in out.stdout and "train 2, val 0, test 0" in out.stdout


# --- issue 16: the pieces ------------------------------------------------------------------------

def test_the_eight_transverse_symmetries_form_the_square_group_and_leave_the_line_of_sight():
    x = torch.arange(3 * 3 * 2, dtype=torch.float32).reshape(1, 3, 3, 2)
    images = [transverse_symmetry(x, k) for k in range(N_SYMMETRIES)]
    assert len({tuple(im.flatten().tolist()) for im in images}) == 8  # all distinct
    assert torch.equal(images[0], x)
    for im in images:  # each slice of the line of sight is moved as a whole sky: the columns stay columns
        assert sorted(im[0, :, :, 0].flatten().tolist()) == sorted(x[0, :, :, 0].flatten().tolist())
        assert torch.equal(im[..., 1] - im[..., 0], torch.ones_like(im[..., 0]))
    for a in images:  # closed under composition
        for k in range(8):
            assert any(torch.equal(transverse_symmetry(a, k), b) for b in images)
    batch = torch.randn(6, 1, 4, 4, 3)
    aug = random_symmetries(batch, 8, seed=0)
    assert aug.shape == batch.shape and not torch.equal(aug, batch)
    assert torch.equal(random_symmetries(batch, 1, seed=0), batch)
    with pytest.raises(ValueError):
        transverse_symmetry(x, 8)


def test_the_unlabelled_pool_never_reads_its_parameters(tmp_path):
    pool = write_synthetic_lightcones(tmp_path / "pool.h5", n=6)
    with h5py.File(pool, "r+") as f:
        f["params"][...] = np.nan  # a labelled reader refuses these; JEPA must never look
    ds = LightConeDataset(pool, "all", labelled=False)
    x, theta = ds[0]
    assert x.shape == (1, 8, 8, 40) and theta.shape == (0,) and len(ds) == 6
    with pytest.raises(DataError, match="params"):
        LightConeDataset(pool, "all")


def test_pca_compression_keeps_the_leading_directions_and_averages_over_symmetries():
    torch.manual_seed(0)
    z = torch.randn(500, 2) * torch.tensor([5.0, 2.0])
    basis = torch.linalg.qr(torch.randn(10, 10))[0][:, :2]
    x = z @ basis.T + 0.01 * torch.randn(500, 10) + 3.0
    pca = fit_pca(x, 2)
    proj = pca(x)
    assert proj.shape == (500, 2)
    assert abs(proj[:, 0].std() - 5.0) < 0.5 and abs(proj[:, 1].std() - 2.0) < 0.3 and proj.mean(0).abs().max() < 1e-4
    sym = SymmetryMean(pca)
    stacked = torch.stack([x[:4], x[4:8]], dim=1)  # (4, S=2, K)
    torch.testing.assert_close(sym(stacked), (pca(x[:4]) + pca(x[4:8])) / 2)
    torch.testing.assert_close(sym(x[:4]), pca(x[:4]))


def test_whitening_equalises_an_anisotropic_summary_above_its_floor():
    """JEPA summaries span decades of variance: whitening maps a principal direction of variance λ to
    λ / (λ + floor·λ_max), unit variance well above the floor (1e-2 of the largest) and shrunk below it;
    the default is the identity."""
    torch.manual_seed(0)
    scales = torch.tensor([100.0, 30.0, 10.0, 0.1, 1e-4])  # standard deviations: variances 1e4 ... 1e-8
    basis = torch.linalg.qr(torch.randn(5, 5))[0]
    x = (torch.randn(4000, 5) * scales) @ basis.T + 7.0
    w = Whiten(5)
    torch.testing.assert_close(w(x), x)  # identity until fitted
    w.set_stats(x)
    lam = torch.linalg.eigvalsh(torch.cov(x.T.double()))
    out = torch.linalg.eigvalsh(torch.cov(w(x).T.double()))
    torch.testing.assert_close(out, lam / (lam + 1e-2 * lam.max()), rtol=1e-4, atol=1e-9)
    assert w(x).mean(0).abs().max() < 1e-4 and out[-1] > 0.98 and out[-2] > 0.85  # 1e4 and 900: about unit variance
    assert out[0] < 1e-9  # 1e-8: numerical noise stays small
    with pytest.raises(ValueError, match="non-finite"):
        w.set_stats(torch.cat([x[:10], torch.full((1, 5), float("nan"))]))
    assert isinstance(RegressionHead(5, 2).norm, Standardize)
    assert set(RegressionHead(5, 2, whiten=True).state_dict()) >= {"norm.mean", "norm.transform"}


def test_a_calibrated_posterior_wanders_as_measured():
    """DESIGN.md: at n = 120 the largest gap over 21 levels has median 0.067 and 90th percentile 0.10."""
    band = calibrated_band(120, draws=4000, seed=1)
    assert band["max_gap_median"] == pytest.approx(0.067, abs=0.008)
    assert band["max_gap_q90"] == pytest.approx(0.10, abs=0.01)
    assert (band["lower"] <= NOMINAL + 1e-9).all() and (band["upper"] >= NOMINAL - 1e-9).all()
    assert calibrated_band(300, draws=2000)["max_gap_q90"] < band["max_gap_q90"]  # more test points: narrower


def _toy_posteriors(n: int, s: int, scale: float, seed: int = 0):
    """θ in the unit box, logit θ ~ N(logit θ_true-ish): exact Gaussian posteriors in logit space, their samples
    widened or narrowed by ``scale`` (1 = calibrated). Returns u-space samples, truths, log densities in u."""
    rng = np.random.default_rng(seed)
    sigma = 0.5
    mu = rng.normal(0, 1, (n, 2))
    y_true = mu + sigma * rng.standard_normal((n, 2))
    y_s = mu[:, None, :] + scale * sigma * rng.standard_normal((n, s, 2))

    def log_q_y(y, m):
        return (-0.5 * ((y - m) / (scale * sigma)) ** 2 - np.log(scale * sigma * np.sqrt(2 * np.pi))).sum(-1)

    sig = lambda y: 1 / (1 + np.exp(-y))  # noqa: E731
    u_s, u_t = sig(y_s), sig(y_true)
    # density in u = density in y / Π u(1-u)
    lp_s = log_q_y(y_s, mu[:, None, :]) - np.log(u_s * (1 - u_s)).sum(-1)
    lp_t = log_q_y(y_true, mu) - np.log(u_t * (1 - u_t)).sum(-1)
    return u_s, u_t, lp_s, lp_t


def test_calibration_tests_pass_a_calibrated_posterior_and_fail_an_overconfident_one():
    u_s, u_t, lp_s, lp_t = _toy_posteriors(400, 400, 1.0)
    np.testing.assert_allclose(logit_log_density(lp_t, u_t), lp_t + np.log(u_t * (1 - u_t)).sum(-1))
    m, a = calibration_metrics(u_s, u_t, lp_s, lp_t, ["a", "b"])
    q90 = m["calibrated_gap_q90"]
    for key in ("calibration_error", "calibration_error_logit", "tarp_error"):
        assert m[key] <= 1.3 * q90, (key, m[key], q90)
    assert max(m["calibration_error_rank"].values()) <= 1.3 * q90
    assert a["coverage_rank"].shape == (2, len(NOMINAL)) and a["band_lower"].shape == NOMINAL.shape
    narrow = calibration_metrics(*_toy_posteriors(400, 400, 0.5), ["a", "b"])[0]
    for key in ("calibration_error", "calibration_error_logit"):
        assert narrow[key] > 3 * q90


def test_bootstrap_ratio_effective_rank_and_linear_probe():
    rng = np.random.default_rng(0)
    err = rng.random(300)
    assert paired_bootstrap_ratio(err, err) == (1.0, 1.0, 1.0)  # paired: identical errors have no spread
    r, lo, hi = paired_bootstrap_ratio(1.2 * err + 0.05 * rng.random(300), err)
    assert lo < r < hi and 1.2 < r < 1.3 and hi - lo < 0.1
    assert effective_rank(rng.standard_normal((2000, 8))) > 7.5
    assert effective_rank(np.outer(rng.standard_normal(100), rng.standard_normal(8))) == pytest.approx(1.0, abs=0.01)
    x = rng.standard_normal((600, 12))
    y = np.stack([x[:, 0] + 0.1 * rng.standard_normal(600), rng.random(600)], axis=1)
    probe = linear_probe_r2({"train": (x[:400], y[:400]), "val": (x[400:500], y[400:500]),
                             "test": (x[500:], y[500:])})
    assert probe["r2"][0] > 0.95 and probe["r2"][1] < 0.1


# --- issue 16 end to end: pool, SKATR masks, symmetries, L1 + best checkpoint, compressed NPE ensemble --

@pytest.fixture(scope="module")
def v2(tmp_path_factory) -> dict:
    """A JEPA run with SKATR's masks on the labelled training split plus an unlabelled pool (whose
    parameters are NaN: never read), then an L1 head on 8-symmetry summaries with the best checkpoint."""
    root = tmp_path_factory.mktemp("skatr_v2")
    data = write_synthetic_lightcones(root / "lc.h5", n=60)
    pool = write_synthetic_lightcones(root / "pool.h5", n=24, seed=3)
    with h5py.File(pool, "r+") as f:
        f["params"][...] = np.nan
    jepa = root / "jepa"
    out = halotrans_cli("train", "-c", "skatr/pretrain.yaml", *sets(
        f"lightcone.out={data}", f"skatr.pretrain_data={pool}", "jepa.mask_scheme=skatr", "model.patch_size=[2,2,10]",
        *TINY_VIT, "jepa.mask_targets=2", *CPU, "skatr.batch_size=4", "train.zero_stage=0", f"train.out_dir={jepa}",
        "train.steps=6", "train.eval_every=3", "train.checkpoint_every=6"))
    common = (f"lightcone.out={data}", f"skatr.encoder_run={jepa}", "skatr.symmetries=8", "skatr.batch_size=16")
    reg = root / "regress"
    halotrans_cli("train", "-c", "skatr/regress.yaml", *sets(
        *common, *CPU, "skatr.loss=l1", "train.keep_best=true", "train.patience=3", f"train.out_dir={reg}",
        "train.steps=2000", "train.eval_every=10", "train.checkpoint_every=1000", "train.lr=3e-3"))
    return {"root": root, "data": data, "pool": pool, "jepa": jepa, "regress": reg, "common": common,
            "jepa_stdout": out.stdout}


@pytest.mark.slow
def test_jepa_pretrains_on_the_pool_with_skatr_masks(v2):
    meta = torch.load(v2["jepa"] / "model.pt", weights_only=False)["meta"]
    assert meta["pretrain_light_cones"] == 48 + 24  # the labelled training split (80 % of 60) and the pool
    val = [r for r in metrics(v2["jepa"]) if "val_loss" in r]
    assert [r["step"] for r in val] == [0, 3, 6] and all(r["val_std_target"] > 0 for r in val)


@pytest.mark.slow
def test_l1_head_on_eight_symmetries_keeps_its_best_validation_and_stops_on_patience(v2):
    reg = v2["regress"]
    best = json.loads((reg / "best.json").read_text())
    rows = metrics(reg)
    val = [r for r in rows if "val_loss" in r and r["step"] > 0]
    assert best["val_loss"] == pytest.approx(min(r["val_loss"] for r in val))
    assert best["step"] == next(r["step"] for r in val if r["val_loss"] == min(v["val_loss"] for v in val))
    assert rows[-1]["step"] < 2000 and best["evals_since"] == 3  # stopped by patience, 3 validations after the best
    assert torch.load(reg / "model.pt", weights_only=False)["meta"]["step"] == best["step"]  # model.pt = the best
    cache = v2["jepa"] / "summaries" / "lc_target_s8.h5"
    with h5py.File(cache) as f:
        assert f["summaries"].shape == (60, 8, 48)
    # the 8 summaries of a light cone differ (the encoder is not symmetric), the head averages its 8 predictions
    s = read_summaries(cache, load_run(reg)[1])
    assert not np.allclose(s.values[:, 0], s.values[:, 1])
    rep = halotrans_cli("skatr", "report", str(reg), "--no-progress")
    assert "mean R²" in rep.stdout


@pytest.mark.slow
def test_npe_on_compressed_summaries_ensemble_and_untrained_baseline(v2):
    flow = ("skatr.flow_hidden=16", "skatr.flow_transforms=2", "skatr.posterior_samples=100", "train.keep_best=true",
            "train.patience=4", "train.steps=200", "train.eval_every=10", "train.checkpoint_every=200")
    runs = []
    for seed, condition in ((0, "regression"), (1, "regression"), (0, "pca")):
        run_dir = v2["root"] / f"npe_{condition}_{seed}"
        extra = (f"skatr.compress_run={v2['regress']}",) if condition == "regression" else ("skatr.npe_components=4",)
        halotrans_cli("train", "-c", "skatr/npe.yaml", *sets(
            *v2["common"], *flow, *CPU, f"skatr.npe_condition={condition}", *extra, f"train.seed={seed}",
            f"train.out_dir={run_dir}"))
        runs.append(run_dir)
        meta = torch.load(run_dir / "model.pt", weights_only=False)["meta"]
        assert meta["condition_dim"] == (5 if condition == "regression" else 4)
    # the condition of the regression-compressed flow is the head's symmetry-averaged estimate
    model, _, _ = load_run(runs[0])
    head, _, _ = load_run(v2["regress"])
    s = torch.randn(3, 8, 48)
    torch.testing.assert_close(model.compress(s), head(s.flatten(0, 1)).view(3, 8, -1).mean(1))
    ens = evaluate_ensemble(runs[:2], "test", 100, progress=False)
    m = ens["metrics"]
    assert ens["info"]["members"] == [str(r) for r in runs[:2]] and ens["arrays"]["samples"].shape == (6, 100, 5)
    for key in ("calibration_error", "calibration_error_logit", "tarp_error", "calibrated_gap_q90"):
        assert 0 <= m[key] <= 1
    assert set(m["calibration_error_rank"]) == set(m["r2"]) and np.isfinite(m["log_posterior"])
    with pytest.raises(DataError, match="ensemble"):
        evaluate_ensemble([runs[0], v2["regress"]], "test", 100, progress=False)
    # the randomly initialised encoder of the same architecture: a "run" whose summaries are the probes' baseline
    cfg = load_run(v2["jepa"])[1]
    untrained = write_untrained_encoder(cfg, v2["root"] / "untrained")
    model_u, _, meta_u = load_run(untrained)
    assert meta_u["step"] == 0 and meta_u["untrained"]
    trained, _, _ = load_run(v2["jepa"])
    assert not torch.equal(model_u.encoder.blocks[0].attn.qkv.weight, trained.encoder.blocks[0].attn.qkv.weight)


def test_cv_folds_partition_the_pool_evenly_and_reproducibly():
    from halotrans.skatr.data import cv_fold_ids

    f = cv_fold_ids(48, 5, 3)
    assert sorted(np.bincount(f)) == [9, 9, 10, 10, 10] and set(f) == set(range(5))
    np.testing.assert_array_equal(f, cv_fold_ids(48, 5, 3))
    assert not np.array_equal(f, cv_fold_ids(48, 5, 4))


@pytest.mark.slow
def test_npe_cross_fitted_on_out_of_fold_head_outputs(v2):
    """A flow trained on a head's outputs for the head's own training light cones sees tighter conditions
    than at test: with compress_fold_runs each training light cone is conditioned by the fold head
    that did not train on it (the flow's condition statistics show which)."""
    from halotrans.skatr.data import cv_fold_ids, train_items

    head_set = (*v2["common"], *CPU, "skatr.loss=l1", "train.keep_best=true", "train.patience=3", "train.steps=400",
                "train.eval_every=10", "train.checkpoint_every=1000", "train.lr=3e-3", "skatr.cv_folds=2")
    folds = []
    for k in (1, 0):
        run_dir = v2["root"] / f"regress_cv{k}"
        halotrans_cli("train", "-c", "skatr/regress.yaml", *sets(*head_set, f"skatr.cv_fold={k}",
                                                                f"train.out_dir={run_dir}"))
        folds.append(run_dir)
        assert torch.load(run_dir / "model.pt", weights_only=False)["meta"]["n_train"] == 24  # 48 minus one fold
    flow = ("skatr.flow_hidden=16", "skatr.flow_transforms=2", "train.steps=40", "train.eval_every=10",
            "train.checkpoint_every=40", "skatr.npe_condition=regression", f"skatr.compress_run={v2['regress']}")
    npe = v2["root"] / "npe_cv"
    halotrans_cli("train", "-c", "skatr/npe.yaml", *sets(*v2["common"], *flow, *CPU, f"train.out_dir={npe}",
                                                          f"skatr.compress_fold_runs=[{folds[0]},{folds[1]}]"))
    model, cfg, _ = load_run(npe)
    s = read_summaries(v2["jepa"] / "summaries" / "lc_target_s8.h5", cfg)
    train = torch.from_numpy(s.values[s.splits["train"]]).float()
    pool = train_items(len(train), 1.0, cfg.lightcone.split_seed)
    fold = cv_fold_ids(len(pool), 2, cfg.lightcone.split_seed)
    expect = torch.empty(len(pool), 5)
    for run_dir in folds:
        head, hcfg, _ = load_run(run_dir)
        sel = fold == hcfg.skatr.cv_fold
        with torch.no_grad():
            expect[torch.from_numpy(sel)] = SymmetryMean(head)(train[pool[sel]])
    torch.testing.assert_close(model.flow.norm.mean, expect.mean(0))
    torch.testing.assert_close(model.flow.norm.std, expect.std(0))
    with torch.no_grad():
        in_sample = model.compress(train[pool])  # the whole-pool head: the test-time compression
    assert not torch.allclose(model.flow.norm.std, in_sample.std(0))
    # a fold twice, or a fold head as the test-time compression, is refused
    for bad, message in ((f"skatr.compress_fold_runs=[{folds[0]},{folds[0]}]", "need each fold of 2 once"),
                         (f"skatr.compress_run={folds[0]}", "left fold 1 of 2 out")):
        extra = () if "fold_runs" in bad else (f"skatr.compress_fold_runs=[{folds[0]},{folds[1]}]",)
        out = halotrans_cli("train", "-c", "skatr/npe.yaml", *sets(*v2["common"], *flow, *CPU, *extra, bad,
                                                                    f"train.out_dir={v2['root'] / 'npe_bad'}"),
                            check=False)
        assert out.returncode != 0 and message in out.stderr, out.stderr[-2000:]
