"""Post-hoc mass calibration of class probabilities: one log-probability offset per class.

A network trained with a class-weighted loss over-predicts the rare (massive) classes, and a
calibrated one under-predicts them once probabilities are turned into labels by argmax, so the
total segmented mass per class is biased either way. The remedy: add an offset b_k to each
class's log-probability (b_0 = 0, "no halo"), chosen on held-out VALIDATION boxes so that the
argmax labels give every class as many voxels (= as much mass: one particle per Lagrangian voxel)
as the truth, then apply the same offsets to the test boxes. Renormalised, the shifted
probabilities are p'_k ∝ p_k e^{b_k}; the argmax labels, hence accuracy and mass errors, change,
and the one-vs-rest AUCs change slightly (the ranking of p'_k over voxels differs from p_k's).

    bias = fit_class_bias(val_probs, val_labels)       # lists of (P,N,N,N) and (N,N,N)
    test_probs = [apply_class_bias(p, bias) for p in test_probs]
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from halotrans.io import DataError


def _log_probs(probs: Sequence[np.ndarray]) -> np.ndarray:
    """(P, n) float32 log-probabilities of all voxels of all boxes."""
    p = [np.asarray(a, dtype=np.float32).reshape(a.shape[0], -1) for a in probs]
    if len({a.shape[0] for a in p}) != 1:
        raise DataError(f"boxes predict different numbers of classes: {sorted({a.shape[0] for a in p})}")
    return np.log(np.maximum(np.concatenate(p, axis=1), 1e-30))


def argmax_counts(log_p: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """Voxels per class (P,) when each voxel takes argmax_k(log p_k + b_k); ``log_p`` is (P, n)."""
    return np.bincount((log_p + bias[:, None]).argmax(axis=0), minlength=log_p.shape[0])


def fit_class_bias(probs: Sequence[np.ndarray], labels: Sequence[np.ndarray], n_iter: int = 300) -> np.ndarray:
    """Offsets b (P,) float64 (b_0 = 0) that make the argmax counts match the true class counts.

    ``probs``: per box (P, N, N, N) probabilities; ``labels``: per box (N, N, N) true classes.
    Fixed-point iteration b_k += η (log n_true,k − log n_pred,k) with a decreasing step η; returns
    the offsets with the smallest largest relative count error seen. Classes absent from the truth
    keep b_k = 0.
    """
    if len(probs) != len(labels) or not probs:
        raise DataError(f"need one label box per probability box, got {len(probs)} and {len(labels)}")
    log_p = _log_probs(probs)
    n_classes = log_p.shape[0]
    y = np.concatenate([np.asarray(lab).ravel() for lab in labels]).astype(np.int64)
    if y.size != log_p.shape[1]:
        raise DataError(f"labels cover {y.size} voxels but probabilities {log_p.shape[1]}")
    true = np.bincount(y, minlength=n_classes).astype(np.float64)
    if len(true) > n_classes:
        raise DataError(f"labels outside 0..{n_classes - 1}")
    present = true > 0
    bias = np.zeros(n_classes)
    best, best_err = bias.copy(), np.inf
    for it in range(n_iter):
        pred = argmax_counts(log_p, bias).astype(np.float64)
        err = np.max(np.abs(pred[present] - true[present]) / true[present])
        if err < best_err:
            best, best_err = bias.copy(), err
        if err < 1e-3:
            break
        step = 0.5 / (1.0 + it / 30.0)
        bias[present] += step * (np.log(true[present]) - np.log(np.maximum(pred[present], 0.5)))
        bias -= bias[0]
    return best


def apply_class_bias(probs: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """Shifted, renormalised probabilities p'_k ∝ p_k e^{b_k}: (P, ...) → (P, ...) float32."""
    p = np.asarray(probs, dtype=np.float64)
    b = np.asarray(bias, dtype=np.float64).reshape((-1,) + (1,) * (p.ndim - 1))
    if b.shape[0] != p.shape[0]:
        raise DataError(f"{b.shape[0]} class offsets for probabilities of {p.shape[0]} classes")
    w = p * np.exp(b - b.max())
    return (w / np.maximum(w.sum(axis=0, keepdims=True), 1e-300)).astype(np.float32)
