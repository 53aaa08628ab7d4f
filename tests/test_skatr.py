"""SKATR downstream end to end: JEPA pretraining with the real DeepSpeed loop, cached summaries,
regression and NPE heads, the ViT from scratch, ``skatr report``; and NPE on a toy posterior."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from halotrans.models.heads import FlowPosterior
from halotrans.sims.lightcone_params import PARAM_NAMES
from halotrans.train.skatr_eval import NOMINAL, coverage_curve, hpd_levels, r2_scores, relative_errors
from halotrans.train.summaries import load_run
from halotrans.train.tasks import make_task
from tests.conftest import BIN, halotrans_cli, run
from tests.test_lightcones import tiny_set  # noqa: F401 - the real tiny 21cmFAST data set

PRIORS = np.array([[0.3, 10.0], [0.2, 0.4], [100.0, 1500.0], [38.0, 42.0], [4.0, 5.3], [10.0, 250.0]])


def write_synthetic_lightcones(path: str | Path, n: int = 40, side: int = 8, los: int = 40, seed: int = 0) -> Path:
    """A light-cone data set in the layout of ``python -m halotrans lightcones`` whose brightness
    temperature [mK] depends on three of the five sampled parameters (u = prior-normalised):
    fluctuation amplitude ∝ u(Ω_m), a line-of-sight ramp ∝ u(log10 L_X), a mean offset ∝ u(ζ).
    For tests that cannot afford 21cmFAST (seconds per light cone)."""
    rng = np.random.default_rng(seed)
    u = rng.random((n, 6))
    params = PRIORS[:, 0] + u * (PRIORS[:, 1] - PRIORS[:, 0])
    params[:, 0] = np.nan  # five-parameter mode: m_WDM not sampled
    z = np.linspace(0.0, 1.0, los)
    field = rng.standard_normal((n, side, side, los))
    tb = (5.0 + 20.0 * u[:, 1, None, None, None]) * field + 30.0 * u[:, 3, None, None, None] * z \
        - 25.0 * u[:, 5, None, None, None]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        f["brightness_temp"] = tb.astype(np.float32)
        f["params"] = params
        f["seeds"] = np.arange(n, dtype=np.int64)
        f["redshifts"] = np.linspace(5.0, 35.0, los)
        f["comoving_distance"] = np.linspace(6000.0, 9000.0, los)
        f.attrs.update(format="halotrans-lightcones-1", param_names=list(PARAM_NAMES), priors=PRIORS,
                       sampled=np.array([False, True, True, True, True, True]), cell_size_mpc=5.0,
                       settings=f'{{"synthetic": {seed}}}')
    return path


# --- end to end with the real DeepSpeed loop and CLI ---------------------------------------------

TINY_VIT = ("model.hidden_size=48", "model.mlp_dim=96", "model.depth=2", "jepa.predictor_dim=24",
            "jepa.predictor_mlp_dim=48", "jepa.predictor_depth=2", "jepa.mask_targets=2",
            "jepa.target_scale=[0.25,0.25]")
CPU = ("train.bf16=false", "train.torch_adam=true", "train.warmup_steps=2", "train.log_every=1")


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
        assert f["summaries"].shape == (48, 48) and f["params"].shape == (48, 5)
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
    for run in (npe_regpre, npe_jepa):
        rep = json.loads((run / "report" / "report.json").read_text())
        m = rep["metrics"]
        assert np.isfinite(m["log_posterior"]) and 0 <= m["calibration_error"] <= 1
        assert m["coverage"]["0.00"] == 0.0 and m["coverage"]["1.00"] == 1.0
        assert (run / "report" / "posteriors.png").is_file() and (run / "report" / "coverage.png").is_file()
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

@pytest.fixture
def one_thread():
    """Small networks train ~6x faster on one thread than on two busy cores (no OpenMP hand-offs)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


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
def test_jepa_and_summaries_on_real_21cmfast_light_cones(tiny_set, tmp_path):  # noqa: F811
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
