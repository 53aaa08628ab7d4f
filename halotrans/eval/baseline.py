"""The no-network baseline: multinomial logistic regression of the mass class on smoothed fields.

Per Lagrangian voxel the features are the linear density δ smoothed with a periodic Gaussian of
radius R = 1, 2, 4, 8 Mpc/h (``SCALES``) and the scalar tidal shear T (``/tidal/T``), each
standardised with the training-set mean and standard deviation. The model is
p(class k | f) = softmax_k(b_k + Σ_j W_jk f_j), fitted by maximum likelihood (plus a small L2
penalty on W) with L-BFGS on the training boxes, unweighted, so its probabilities are calibrated
on the training set. It shows what the networks add beyond the local density at a few scales.

    model = fit_baseline([box_path(root, s) for s in range(16)], class_edges=(13.0, 13.5, 14.0))
    probs = model.predict_box(box_path(root, 18))          # (P, N, N, N) float32
    save_baseline(model, "runs/reference/baseline/model.json"); load_baseline(...)
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from scipy.optimize import minimize

from halotrans.data.boxes import load_classes
from halotrans.fields.smoothing import smoothed_density as gaussian_smoothed
from halotrans.io import DataError, atomic_path
from halotrans.sims.boxio import load_box

#: Gaussian smoothing radii of δ [Mpc/h]
SCALES = (1.0, 2.0, 4.0, 8.0)


def smoothed_density(delta: np.ndarray, box_size: float, radius: float) -> np.ndarray:
    """δ (N,N,N) convolved with a periodic Gaussian of radius ``radius`` Mpc/h (exp(−k²R²/2) in Fourier space),
    float32; :func:`halotrans.fields.smoothing.smoothed_density` in float64 (the physics input channels use it too)."""
    d = torch.as_tensor(np.asarray(delta), dtype=torch.float64)
    return gaussian_smoothed(d, box_size, radius).numpy().astype(np.float32)


def feature_names(scales: Sequence[float] = SCALES) -> list[str]:
    return [f"delta_R{r:g}" for r in scales] + ["T"]


def box_features(path: str | os.PathLike, scales: Sequence[float] = SCALES) -> np.ndarray:
    """Unstandardised features of a box file → (F, N, N, N) float32: δ smoothed at each scale, then T."""
    arrays, attrs = load_box(path, ["delta", "tidal/T"])
    if "box_size" not in attrs:
        raise DataError(f"{path}: attrs have no box_size [Mpc/h]")
    box_size = float(attrs["box_size"])
    delta, shear = arrays["delta"], arrays["tidal/T"]
    if delta.shape != shear.shape:
        raise DataError(f"{path}: /delta {delta.shape} and /tidal/T {shear.shape} differ in shape")
    return np.stack([smoothed_density(delta, box_size, r) for r in scales] + [shear.astype(np.float32)])


@dataclass
class LogisticBaseline:
    """A fitted baseline: feature ``mean``/``std`` (F,), ``weights`` (F, P), ``bias`` (P,), settings."""

    scales: list[float]
    class_edges: list[float]
    mean: list[float]
    std: list[float]
    weights: list[list[float]]
    bias: list[float]
    l2: float
    n_voxels: int
    train_files: list[str]

    def logits(self, features: np.ndarray) -> np.ndarray:
        """(F, N, N, N) unstandardised features → logits (P, N, N, N) float64."""
        f = np.asarray(features, dtype=np.float64)
        if f.shape[0] != len(self.mean):
            raise DataError(f"baseline expects {len(self.mean)} features, got {f.shape[0]}")
        z = (f.reshape(f.shape[0], -1) - np.asarray(self.mean)[:, None]) / np.asarray(self.std)[:, None]
        out = np.asarray(self.weights).T @ z + np.asarray(self.bias)[:, None]
        return out.reshape(len(self.bias), *f.shape[1:])

    def predict_proba(self, features: np.ndarray) -> np.ndarray:
        """Class probabilities (P, N, N, N) float32 from unstandardised features (F, N, N, N)."""
        z = self.logits(features)
        z -= z.max(axis=0, keepdims=True)
        p = np.exp(z)
        return (p / p.sum(axis=0, keepdims=True)).astype(np.float32)

    def predict_box(self, path: str | os.PathLike) -> np.ndarray:
        """Class probabilities (P, N, N, N) float32 of a box file."""
        return self.predict_proba(box_features(path, self.scales))


def _loss_and_grad(params: np.ndarray, x: np.ndarray, y: np.ndarray, n_classes: int, l2: float
                   ) -> tuple[float, np.ndarray]:
    """Mean negative log-likelihood (+ ½ l2 |W|²) of standardised features x (n, F), labels y (n,)."""
    f = x.shape[1]
    w = params[:f * n_classes].reshape(f, n_classes)
    b = params[f * n_classes:]
    z = x @ w + b
    z -= z.max(axis=1, keepdims=True)
    log_norm = np.log(np.exp(z).sum(axis=1))
    n = len(y)
    nll = float((log_norm - z[np.arange(n), y]).mean()) + 0.5 * l2 * float((w**2).sum())
    p = np.exp(z - log_norm[:, None])
    p[np.arange(n), y] -= 1.0
    p /= n
    grad_w = x.T @ p + l2 * w
    return nll, np.concatenate([grad_w.ravel(), p.sum(axis=0)])


def fit_logistic(features: Sequence[np.ndarray], labels: Sequence[np.ndarray], n_classes: int, *,
                 l2: float = 1e-4, max_voxels: int = 500_000, seed: int = 0) -> dict:
    """Fit the multinomial logistic regression on boxes of features (F,N,N,N) and labels (N,N,N).

    At most ``max_voxels`` voxels (a seeded uniform subsample) enter the fit. Returns the fields
    ``mean``, ``std``, ``weights``, ``bias``, ``n_voxels`` of :class:`LogisticBaseline`.
    """
    if not features or len(features) != len(labels):
        raise DataError(f"need as many label boxes as feature boxes, got {len(features)} and {len(labels)}")
    x = np.concatenate([np.asarray(f, dtype=np.float32).reshape(f.shape[0], -1).T for f in features])
    y = np.concatenate([np.asarray(lab).ravel() for lab in labels]).astype(np.int64)
    if len(x) != len(y):
        raise DataError(f"features cover {len(x)} voxels but labels {len(y)}")
    if y.min() < 0 or y.max() >= n_classes:
        raise DataError(f"labels outside 0..{n_classes - 1}")
    if len(y) > max_voxels:
        keep = np.sort(np.random.default_rng(seed).choice(len(y), max_voxels, replace=False))
        x, y = x[keep], y[keep]
    x = x.astype(np.float64)
    mean, std = x.mean(axis=0), x.std(axis=0)
    std[std == 0] = 1.0
    x = (x - mean) / std
    n_feat = x.shape[1]
    freq = np.bincount(y, minlength=n_classes) / len(y)
    init = np.concatenate([np.zeros(n_feat * n_classes), np.log(np.maximum(freq, 1e-12))])
    res = minimize(_loss_and_grad, init, args=(x, y, n_classes, l2), jac=True, method="L-BFGS-B",
                   options={"maxiter": 500, "gtol": 1e-7})
    w = res.x[:n_feat * n_classes].reshape(n_feat, n_classes)
    return {"mean": mean.tolist(), "std": std.tolist(), "weights": w.tolist(),
            "bias": res.x[n_feat * n_classes:].tolist(), "n_voxels": int(len(y))}


def fit_baseline(paths: Sequence[str | os.PathLike], class_edges: Sequence[float], *,
                 scales: Sequence[float] = SCALES, l2: float = 1e-4, max_voxels: int = 500_000,
                 seed: int = 0) -> LogisticBaseline:
    """Fit the baseline on the training box files ``paths`` (classes binned with ``class_edges``)."""
    feats = [box_features(p, scales) for p in paths]
    labels = [load_classes(p, class_edges) for p in paths]
    fit = fit_logistic(feats, labels, len(class_edges) + 2, l2=l2, max_voxels=max_voxels, seed=seed)
    return LogisticBaseline(scales=[float(s) for s in scales], class_edges=[float(e) for e in class_edges],
                            l2=l2, train_files=[str(p) for p in paths], **fit)


def save_baseline(model: LogisticBaseline, path: str | os.PathLike) -> None:
    """Write the fitted baseline as JSON (atomically)."""
    with atomic_path(path) as tmp:
        Path(tmp).write_text(json.dumps(asdict(model), indent=1))


def load_baseline(path: str | os.PathLike) -> LogisticBaseline:
    """Read a baseline written by :func:`save_baseline`."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"baseline file not found: {path}")
    try:
        return LogisticBaseline(**json.loads(path.read_text()))
    except (json.JSONDecodeError, TypeError) as e:
        raise DataError(f"{path}: not a baseline file ({e})") from None
