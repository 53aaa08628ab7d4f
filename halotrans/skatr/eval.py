"""Test-set evaluation of SKATR ``regress`` and ``npe`` runs: point estimates, posteriors, calibration.

Point estimates are the regression output or the posterior mean (``npe``), in the physical units
of each parameter (the priors undo the [0, 1] normalisation); with ``skatr.symmetries: 8`` a
regression estimate is the average over the 8 transverse symmetries of the light cone (as in
validation). Per parameter: R² and the mean relative error |θ̂ − θ| / |θ|. For ``npe`` also the
mean test log posterior density of the true parameters (in the prior-normalised units, where the
prior density is 1; physical units add −Σ log(prior width)), and the calibration tests of
:mod:`halotrans.skatr.calibration`: HPD coverage in θ-space (``calibration_error``, the largest
|coverage − nominal|) and in logit space, per-parameter rank coverage and TARP, each next to the
spread a calibrated posterior shows with this many test light cones.

An ensemble of npe runs (:func:`evaluate_ensemble`, flows trained with different seeds) is the
equal-weight mixture of its members: ``n_samples / M`` samples from each, densities
``log mean_m q_m``.

    result = evaluate_run("runs/skatr/npe", split="test")
    result["metrics"]["r2"]          # {parameter: R²}
    result["arrays"]["samples"]      # (N, S, P) physical units
    ens = evaluate_ensemble(["runs/skatr/npe_0", "runs/skatr/npe_1"], split="test")
"""

from __future__ import annotations

import csv
import math
import os
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch
from tqdm import tqdm

from halotrans.io import DataError
from halotrans.skatr.calibration import NOMINAL, calibration_metrics, coverage_curve, hpd_levels  # noqa: F401
from halotrans.skatr.data import open_split, read_items
from halotrans.skatr.dataset import denormalize_params
from halotrans.skatr.summaries import ensure_summaries, load_run, read_summaries
from halotrans.skatr.tasks import symmetric_predict


def r2_scores(pred: np.ndarray, true: np.ndarray) -> np.ndarray:
    """Coefficient of determination per parameter: 1 − Σ(θ̂ − θ)² / Σ(θ − mean θ)², (N, P) → (P,)."""
    sse = ((pred - true) ** 2).sum(0)
    sst = ((true - true.mean(0)) ** 2).sum(0)
    return np.where(sst > 0, 1.0 - sse / np.where(sst > 0, sst, 1.0), np.nan)


def relative_errors(pred: np.ndarray, true: np.ndarray) -> np.ndarray:
    """Mean |θ̂ − θ| / |θ| per parameter (physical units), (N, P) → (P,)."""
    return per_item_relative_errors(pred, true).mean(0)


def per_item_relative_errors(pred: np.ndarray, true: np.ndarray) -> np.ndarray:
    """|θ̂ − θ| / |θ| of every test item and parameter (physical units), (N, P) → (N, P)."""
    return np.abs(pred - true) / np.maximum(np.abs(true), 1e-12)


def _test_inputs(cfg: Any, meta: dict, split: str, progress: bool) -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
    """Yield (inputs, theta) batches of the split: the cached summaries (B, S, K) the head was trained on,
    or light cones scaled by the run's ``norm_stats``."""
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


def _mixture_samples(models: Sequence[torch.nn.Module], inputs: torch.Tensor, theta: torch.Tensor,
                     n_samples: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Samples (B, S, P) of the equal-weight mixture of ``models``, log q_mix of the samples (B, S) and of
    ``theta`` (B,), in prior-normalised units. One model: its own samples and densities."""
    if len(models) == 1:
        s, lp = models[0].sample_and_log_prob(n_samples, inputs)
        return s, lp, models[0].log_prob_of(theta, inputs)
    per = math.ceil(n_samples / len(models))
    samples = torch.cat([m.sample_and_log_prob(per, inputs)[0] for m in models], dim=1)[:, :n_samples]
    b, s, p = samples.shape
    lp_s, lp_t = [], []
    for m in models:
        cond = m.compress(inputs)
        lp_s.append(m.flow.log_prob_of(samples.reshape(b * s, p), cond.repeat_interleave(s, 0)).reshape(b, s))
        lp_t.append(m.flow.log_prob_of(theta, cond))
    log_m = math.log(len(models))
    return (samples, torch.logsumexp(torch.stack(lp_s), 0) - log_m, torch.logsumexp(torch.stack(lp_t), 0) - log_m)


def _evaluate(run_dirs: Sequence[str | os.PathLike], split: str, n_samples: int | None, progress: bool) -> dict[str, Any]:
    loaded = [load_run(r) for r in run_dirs]
    model, cfg, meta = loaded[0]
    for r, (_, _, m) in zip(run_dirs[1:], loaded[1:]):
        if m["task"] != "npe" or meta["task"] != "npe" or m.get("encoder", {}).get("checkpoint_sha256") != \
                meta.get("encoder", {}).get("checkpoint_sha256") or m["param_names"] != meta["param_names"]:
            raise DataError(f"{r}: an ensemble needs npe runs on the same summaries and parameters as {run_dirs[0]}")
    if meta["task"] not in ("regress", "npe"):
        raise DataError(f"{run_dirs[0]}: a {meta['task']} run; the report evaluates regress and npe runs")
    npe = meta["task"] == "npe"
    n_samples = n_samples or cfg.skatr.posterior_samples
    priors = np.asarray(meta["priors"])
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    models = [m.to(dev) for m, _, _ in loaded]
    frozen = cfg.skatr.summary == "frozen"
    true, pred, samples, lp_true, lp_samples = [], [], [], [], []
    torch.manual_seed(cfg.skatr.noise_seed)
    with torch.no_grad():
        for inputs, theta in _test_inputs(cfg, meta, split, progress):
            inputs, theta = inputs.to(dev), theta.to(dev)
            true.append(theta.cpu().numpy())
            if not npe:
                pred.append(symmetric_predict(model, inputs, frozen, cfg.skatr.symmetries).cpu().numpy())
                continue
            s, lp, lpt = _mixture_samples(models, inputs, theta, n_samples)
            samples.append(s.cpu().numpy())
            lp_samples.append(lp.cpu().numpy())
            lp_true.append(lpt.cpu().numpy())
    if not true:
        raise DataError(f"{cfg.lightcone.out}: the {split} split is empty (lightcone.split = {list(cfg.lightcone.split)})")
    true_n = np.concatenate(true).astype(np.float64)
    arrays: dict[str, np.ndarray] = {"true": denormalize_params(true_n, priors)}
    names = list(meta["param_names"])
    metrics: dict[str, Any] = {}
    if npe:
        samp_u = np.concatenate(samples).astype(np.float64)
        samp = denormalize_params(samp_u, priors)
        lp = np.concatenate(lp_true).astype(np.float64)
        cal_metrics, cal_arrays = calibration_metrics(samp_u, true_n, np.concatenate(lp_samples).astype(np.float64), lp,
                                                      names, seed=cfg.skatr.noise_seed)
        arrays.update(samples=samp, pred=samp.mean(1), std=samp.std(1), **cal_arrays)
    else:
        arrays["pred"] = denormalize_params(np.concatenate(pred).astype(np.float64), priors)
    metrics.update({
        "r2": dict(zip(names, map(float, r2_scores(arrays["pred"], arrays["true"])))),
        "relative_error": dict(zip(names, map(float, relative_errors(arrays["pred"], arrays["true"])))),
    })
    metrics["r2_mean"] = float(np.nanmean(list(metrics["r2"].values())))
    metrics["relative_error_mean"] = float(np.mean(list(metrics["relative_error"].values())))
    if npe:
        metrics["log_posterior"] = float(lp.mean())
        metrics["log_posterior_physical"] = float(lp.mean() - np.log(priors[:, 1] - priors[:, 0]).sum())
        metrics.update(cal_metrics)
    info = {"run": str(Path(run_dirs[0])), "task": meta["task"], "summary": meta["summary"], "label": run_label(meta),
            "encoder": meta.get("encoder", {}), "n_train": meta.get("n_train"),
            "train_fraction": meta.get("train_fraction"), "n_test": int(len(true_n)), "split": split,
            "step": meta.get("step"), "train_seconds": training_seconds(run_dirs[0]), "param_names": names,
            "n_samples": n_samples if npe else None}
    if len(run_dirs) > 1:
        info.update(members=[str(Path(r)) for r in run_dirs], steps=[m.get("step") for _, _, m in loaded],
                    train_seconds=sum(training_seconds(r) or 0.0 for r in run_dirs),
                    label=f"npe: ensemble of {len(run_dirs)} flows, {run_label(meta).split(': ', 1)[1]}")
    return {"info": info, "metrics": metrics, "arrays": arrays}


def evaluate_run(run_dir: str | os.PathLike, split: str = "test", n_samples: int | None = None,
                 progress: bool = True) -> dict[str, Any]:
    """Evaluate a finished ``regress``/``npe`` run on ``split`` → {"info", "metrics", "arrays"}.

    ``arrays`` (physical units): ``true`` and ``pred`` (N, P); for npe also ``std`` (N, P),
    ``samples`` (N, S, P), ``levels`` (N,) and ``coverage`` (len(NOMINAL),), and the curves of the
    other calibration tests (:func:`halotrans.skatr.calibration.calibration_metrics`).
    """
    return _evaluate([run_dir], split, n_samples, progress)


def evaluate_ensemble(run_dirs: Sequence[str | os.PathLike], split: str = "test", n_samples: int | None = None,
                      progress: bool = True) -> dict[str, Any]:
    """Evaluate the equal-weight mixture of finished frozen-summary ``npe`` runs (as :func:`evaluate_run`)."""
    if not run_dirs:
        raise DataError("an ensemble needs at least one npe run")
    return _evaluate(list(run_dirs), split, n_samples, progress)


def run_label(meta: dict) -> str:
    """Which summary a run used, in words: JEPA / regression-pretrained / ViT from scratch."""
    if meta.get("summary") == "scratch":
        kind = "ViT from scratch"
    elif meta.get("encoder", {}).get("task") == "jepa":
        kind = f"JEPA summary ({meta['encoder'].get('weights', 'target')})"
    else:
        kind = "regression-pretrained summary"
    return f"{meta['task']}: {kind}"
