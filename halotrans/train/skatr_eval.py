"""Test-set evaluation of SKATR ``regress`` and ``npe`` runs: point estimates, posteriors, calibration.

Point estimates are the regression output or the posterior mean (``npe``), in the physical units
of each parameter (the priors undo the [0, 1] normalisation). Per parameter: R² and the mean
relative error |θ̂ − θ| / |θ|. For ``npe`` also the mean test log posterior density of the true
parameters (in the prior-normalised units, where the prior density is 1; physical units add
−Σ log(prior width)), and the calibration of the highest-posterior-density (HPD) regions: for
each test light cone, the HPD level of the truth is the fraction of posterior samples with a
higher density than the truth; the truth lies inside the α-HPD region iff that level is < α, so
for a calibrated posterior the empirical coverage Pr(level < α) equals α at every nominal α.

    result = evaluate_run("runs/skatr/npe", split="test")
    result["metrics"]["r2"]          # {parameter: R²}
    result["arrays"]["samples"]      # (N, S, P) physical units
"""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from halotrans.data.lightcones import denormalize_params
from halotrans.io import DataError
from halotrans.train.skatr_data import open_split, read_items
from halotrans.train.summaries import ensure_summaries, load_run, read_summaries

#: nominal credibility levels of the coverage curve
NOMINAL = np.linspace(0.0, 1.0, 21)


def r2_scores(pred: np.ndarray, true: np.ndarray) -> np.ndarray:
    """Coefficient of determination per parameter: 1 − Σ(θ̂ − θ)² / Σ(θ − mean θ)², (N, P) → (P,)."""
    sse = ((pred - true) ** 2).sum(0)
    sst = ((true - true.mean(0)) ** 2).sum(0)
    return np.where(sst > 0, 1.0 - sse / np.where(sst > 0, sst, 1.0), np.nan)


def relative_errors(pred: np.ndarray, true: np.ndarray) -> np.ndarray:
    """Mean |θ̂ − θ| / |θ| per parameter (physical units), (N, P) → (P,)."""
    return (np.abs(pred - true) / np.maximum(np.abs(true), 1e-12)).mean(0)


def hpd_levels(sample_log_prob: np.ndarray, true_log_prob: np.ndarray) -> np.ndarray:
    """HPD level of the truth per test point: fraction of samples denser than it, (N, S), (N,) → (N,)."""
    return (sample_log_prob > true_log_prob[:, None]).mean(1)


def coverage_curve(levels: np.ndarray, nominal: np.ndarray = NOMINAL) -> np.ndarray:
    """Empirical coverage Pr(level < α) at each nominal credibility α (α = 1 counts every point)."""
    return np.array([(levels < a).mean() if a < 1 else 1.0 for a in nominal])


def _test_inputs(cfg: Any, meta: dict, split: str, progress: bool):
    """Yield (inputs, theta) batches of the split: the cached summaries the head was trained on, or
    light cones scaled by the run's ``norm_stats``."""
    bs = cfg.skatr.batch_size
    if cfg.skatr.summary == "frozen":
        path, _ = ensure_summaries(cfg, progress)
        s = read_summaries(path, cfg)
        trained_on = meta["encoder"].get("checkpoint_sha256")
        if s.encoder.get("checkpoint_sha256") != trained_on:
            raise DataError(f"{cfg.skatr.encoder_run}: the encoder changed since this head was trained "
                            f"(checkpoint sha256 {str(trained_on)[:12]}); retrain the head")
        rows = s.splits[split]
        for start in range(0, len(rows), bs):
            r = rows[start:start + bs]
            yield torch.from_numpy(s.values[r]), torch.from_numpy(s.theta[r])
        return
    ds = open_split(cfg, split, fixed_noise=True)
    for start in tqdm(range(0, len(ds), bs), desc=f"{split} light cones", disable=not progress):
        yield read_items(ds, np.arange(start, min(start + bs, len(ds))), meta["norm_stats"])


def training_seconds(run_dir: str | os.PathLike) -> float | None:
    """Wall-clock seconds of the run's training loop (last ``time_s`` of ``metrics.csv``)."""
    path = Path(run_dir) / "metrics.csv"
    if not path.is_file():
        return None
    with open(path, newline="") as f:
        times = [r["time_s"] for r in csv.DictReader(f) if r.get("time_s")]
    return float(times[-1]) if times else None


def evaluate_run(run_dir: str | os.PathLike, split: str = "test", n_samples: int | None = None,
                 progress: bool = True) -> dict[str, Any]:
    """Evaluate a finished ``regress``/``npe`` run on ``split`` → {"info", "metrics", "arrays"}.

    ``arrays`` (physical units): ``true`` and ``pred`` (N, P); for npe also ``std`` (N, P),
    ``samples`` (N, S, P), ``levels`` (N,) and ``coverage`` (len(NOMINAL),).
    """
    model, cfg, meta = load_run(run_dir)
    if meta["task"] not in ("regress", "npe"):
        raise DataError(f"{run_dir}: a {meta['task']} run; the report evaluates regress and npe runs")
    npe = meta["task"] == "npe"
    n_samples = n_samples or cfg.skatr.posterior_samples
    priors = np.asarray(meta["priors"])
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = model.to(dev)
    true, pred, std, samples, lp_true, lp_samples = [], [], [], [], [], []
    torch.manual_seed(cfg.skatr.noise_seed)
    with torch.no_grad():
        for inputs, theta in _test_inputs(cfg, meta, split, progress):
            inputs, theta = inputs.to(dev), theta.to(dev)
            true.append(theta.cpu().numpy())
            if not npe:
                pred.append(model(inputs).cpu().numpy())
                continue
            s, lp = model.sample_and_log_prob(n_samples, inputs)
            samples.append(s.cpu().numpy())
            lp_samples.append(lp.cpu().numpy())
            lp_true.append(model.log_prob_of(theta, inputs).cpu().numpy())
    if not true:
        raise DataError(f"{cfg.lightcone.out}: the {split} split is empty (lightcone.split = {list(cfg.lightcone.split)})")
    true_n = np.concatenate(true).astype(np.float64)
    arrays: dict[str, np.ndarray] = {"true": denormalize_params(true_n, priors)}
    if npe:
        samp = denormalize_params(np.concatenate(samples).astype(np.float64), priors)
        arrays.update(samples=samp, pred=samp.mean(1), std=samp.std(1))
        levels = hpd_levels(np.concatenate(lp_samples), np.concatenate(lp_true))
        arrays.update(levels=levels, coverage=coverage_curve(levels))
    else:
        arrays["pred"] = denormalize_params(np.concatenate(pred).astype(np.float64), priors)
    names = list(meta["param_names"])
    metrics: dict[str, Any] = {
        "r2": dict(zip(names, map(float, r2_scores(arrays["pred"], arrays["true"])))),
        "relative_error": dict(zip(names, map(float, relative_errors(arrays["pred"], arrays["true"])))),
    }
    metrics["r2_mean"] = float(np.nanmean(list(metrics["r2"].values())))
    metrics["relative_error_mean"] = float(np.mean(list(metrics["relative_error"].values())))
    if npe:
        lp = np.concatenate(lp_true).astype(np.float64)
        metrics["log_posterior"] = float(lp.mean())
        metrics["log_posterior_physical"] = float(lp.mean() - np.log(priors[:, 1] - priors[:, 0]).sum())
        metrics["calibration_error"] = float(np.abs(arrays["coverage"] - NOMINAL).max())
        metrics["coverage"] = {f"{a:.2f}": float(c) for a, c in zip(NOMINAL, arrays["coverage"])}
    info = {"run": str(Path(run_dir)), "task": meta["task"], "summary": meta["summary"], "label": run_label(meta),
            "encoder": meta.get("encoder", {}), "n_train": meta.get("n_train"),
            "train_fraction": meta.get("train_fraction"), "n_test": int(len(true_n)), "split": split,
            "step": meta.get("step"), "train_seconds": training_seconds(run_dir), "param_names": names,
            "n_samples": n_samples if npe else None}
    return {"info": info, "metrics": metrics, "arrays": arrays}


def run_label(meta: dict) -> str:
    """Which summary a run used, in words: JEPA / regression-pretrained / ViT from scratch."""
    if meta.get("summary") == "scratch":
        kind = "ViT from scratch"
    elif meta.get("encoder", {}).get("task") == "jepa":
        kind = f"JEPA summary ({meta['encoder'].get('weights', 'target')})"
    else:
        kind = "regression-pretrained summary"
    return f"{meta['task']}: {kind}"
