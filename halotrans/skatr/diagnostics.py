"""Is the JEPA summary any good, and how sure are we? Error bars, effective rank, linear probes.

* :func:`paired_bootstrap_ratio`: the ratio of two estimators' mean errors on the SAME test light
  cones, with a percentile interval from resampling the light cones (pairs kept together, so the
  light-cone-to-light-cone scatter common to both cancels);
* :func:`effective_rank`: exp of the entropy of the normalised singular values of the centred
  summaries (Roy & Vetterli 2007): 1 for collapsed summaries, K for isotropic ones;
* :func:`linear_probe_r2`: ridge regression of each prior-normalised parameter on the summaries,
  the penalty chosen on the validation split, R² on the test split: how much of each parameter a
  summary holds linearly. Against a randomly initialised encoder of the same architecture, it
  shows whether pretraining taught the encoder anything.

    ratio, lo, hi = paired_bootstrap_ratio(err_frozen[:, p], err_scratch[:, p])
    effective_rank(summaries)      # summaries (n, K)
    linear_probe_r2({"train": (x, y), "val": (x, y), "test": (x, y)})   # -> R² per parameter
"""

from __future__ import annotations

import numpy as np

#: ridge penalties tried on the validation split (in units of the mean eigenvalue of the standardised features)
RIDGE_PENALTIES = (1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0)


def paired_bootstrap_ratio(a: np.ndarray, b: np.ndarray, n_boot: int = 4000, level: float = 0.95,
                           seed: int = 0) -> tuple[float, float, float]:
    """mean(a) / mean(b) of paired per-item errors ``a``, ``b`` (N,) and its ``level`` percentile interval."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1 or len(a) == 0:
        raise ValueError(f"need two equally long 1-d error arrays, got {a.shape} and {b.shape}")
    idx = np.random.default_rng(seed).integers(0, len(a), (n_boot, len(a)))
    ratios = a[idx].mean(1) / np.maximum(b[idx].mean(1), 1e-300)
    tail = (1 - level) / 2
    ratio = float(a.mean() / max(b.mean(), 1e-300))
    return ratio, float(np.quantile(ratios, tail)), float(np.quantile(ratios, 1 - tail))


def effective_rank(x: np.ndarray) -> float:
    """exp(entropy) of the normalised singular values of the centred rows of ``x`` (n, K)."""
    x = np.asarray(x, dtype=np.float64)
    s = np.linalg.svd(x - x.mean(0), compute_uv=False)
    if s.sum() <= 0:
        return 1.0
    p = s / s.sum()
    p = p[p > 0]
    return float(np.exp(-(p * np.log(p)).sum()))


def _ridge(x: np.ndarray, y: np.ndarray, penalty: float) -> tuple[np.ndarray, np.ndarray]:
    n, k = x.shape
    gram = x.T @ x / n
    scale = np.trace(gram) / k if k else 1.0
    w = np.linalg.solve(gram + penalty * scale * np.eye(k), x.T @ (y - y.mean(0)) / n)
    return w, y.mean(0)


def _r2(pred: np.ndarray, true: np.ndarray) -> np.ndarray:
    sst = ((true - true.mean(0)) ** 2).sum(0)
    return np.where(sst > 0, 1 - ((pred - true) ** 2).sum(0) / np.where(sst > 0, sst, 1), np.nan)


def linear_probe_r2(splits: dict[str, tuple[np.ndarray, np.ndarray]]) -> dict[str, object]:
    """Ridge probes of every column of y on x: ``splits`` maps train/val/test to (x (n, K), y (n, P)).

    Features are standardised with the training statistics; each parameter's penalty is the one
    of :data:`RIDGE_PENALTIES` with the best validation R². Returns ``r2`` (P,) on test and the
    chosen ``penalty`` (P,).
    """
    (xt, yt), (xv, yv), (xs, ys) = (tuple(np.asarray(a, dtype=np.float64) for a in splits[k])
                                     for k in ("train", "val", "test"))
    mu, sd = xt.mean(0), xt.std(0)
    sd = np.where(sd > 0, sd, 1.0)
    xt, xv, xs = ((a - mu) / sd for a in (xt, xv, xs))
    best = np.full(yt.shape[1], -np.inf)
    chosen = np.zeros(yt.shape[1])
    r2_test = np.full(yt.shape[1], np.nan)
    for pen in RIDGE_PENALTIES:
        w, b = _ridge(xt, yt, pen)
        r2_val = _r2(xv @ w + b, yv)
        r2_s = _r2(xs @ w + b, ys)
        better = r2_val > best
        best = np.where(better, r2_val, best)
        chosen = np.where(better, pen, chosen)
        r2_test = np.where(better, r2_s, r2_test)
    return {"r2": r2_test, "penalty": chosen}
