"""Bootstrap intervals (68 % by default) of the report metrics, resampling whole test boxes.

The test boxes are the independent units: one pass over each box's voxels reduces a model's
prediction to additive sufficient statistics (:class:`BoxStats`: confusion matrix, masses per class,
surface-Dice counts, score histograms), and every metric of a set of boxes follows from their sum.
Resampling boxes with replacement is then a (n_boot, n_boxes) count matrix applied to per-box
arrays (the AUC numerators through precomputed box-pair cross terms, so independent of the bins).

Layouts: truth labels (N,N,N) int, C order, 0 = no halo, 1..K−1 = halo mass classes; a prediction
is class probabilities (K,N,N,N) float (class axis first, as :func:`halotrans.eval.report.evaluate_model`
takes them) or class labels (N,N,N) int (one-hot scores: a single ROC operating point). Masses in
M☉/h (voxel count × ``voxel_mass``).

    stats = model_stats(truths, preds, n_classes)        # list of BoxStats, one per box
    combine(stats)["per_class"][2]["auc"]                # metrics of all boxes (float)
    bootstrap(stats)["metrics"]["per_class"][2]["auc"]   # {"value", "lo", "hi"}
    paired_difference(vipr, copra)["metrics"]["auc_halo_vs_none"]   # A − B on the same resamples

AUCs come from ``bins`` equal-width histograms of the score on [0, 1] (pairs within one bin count
½, the Mann–Whitney form): exact for label predictions, otherwise within about the fraction of
positive–negative pairs that share a bin of the exact :func:`halotrans.eval.metrics.roc_auc`.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from halotrans.eval import metrics
from halotrans.eval.truth import BoxTruth

#: voxels per chunk when histogramming probabilities (bounds the temporary memory)
CHUNK = 1 << 21
#: probabilities may exceed [0, 1] by this much (rounding) and are clipped; beyond it they are refused
_PROB_SLACK = 1e-5

_SCALARS = ("accuracy", "auc_halo_vs_none", "auc_mean_halo_classes", "surface_dice_halo")
_PER_CLASS = ("recall", "precision", "auc", "mass_true", "mass_pred", "mass_rel_error", "surface_dice")


@dataclass
class BoxStats:
    """Additive sufficient statistics of one model on one box (K classes, B histogram bins).

    ``confusion`` (K,K) int64, rows = true class, columns = predicted (argmax) class;
    ``mass_true``, ``mass_pred`` (K,) float64 M☉/h; ``surface_dice`` (K+1, 2) int64 (agreeing,
    all) boundary voxels per class, last row "any halo"; ``class_hist`` (K,2,B) int64: histogram of
    the class-c score over B equal bins of [0, 1], ``[c, 0]`` negatives (true ≠ c), ``[c, 1]``
    positives (true == c); ``halo_hist`` (2,B) int64: the same for the score 1 − p₀ with positives
    true > 0; ``kind``: "probabilities" or "labels".
    """

    confusion: np.ndarray
    mass_true: np.ndarray
    mass_pred: np.ndarray
    surface_dice: np.ndarray
    class_hist: np.ndarray
    halo_hist: np.ndarray
    kind: str

    @property
    def n_classes(self) -> int:
        return int(self.confusion.shape[0])

    @property
    def bins(self) -> int:
        return int(self.class_hist.shape[-1])


def _check_probabilities(prob: np.ndarray) -> None:
    flat = prob.reshape(-1)
    for i in range(0, flat.size, CHUNK):
        part = flat[i:i + CHUNK]
        if not np.isfinite(part).all():
            raise ValueError("probabilities contain non-finite values (NaN or inf)")
        lo, hi = float(part.min()), float(part.max())
        if lo < -_PROB_SLACK or hi > 1 + _PROB_SLACK:
            raise ValueError(f"probabilities outside [0, 1] (found {lo:g} .. {hi:g}): logits rather than softmax?")


def _histogram(scores: np.ndarray, positive: np.ndarray, bins: int, flip: bool = False) -> np.ndarray:
    """(2, bins) int64 counts of ``scores`` (or 1 − scores) in equal bins of [0, 1]; row 1 = positives."""
    scores, positive = scores.reshape(-1), positive.reshape(-1)
    out = np.zeros(2 * bins, dtype=np.int64)
    for i in range(0, scores.size, CHUNK):
        s = scores[i:i + CHUNK].astype(np.float64)
        if flip:
            s = 1.0 - s
        idx = np.minimum((np.clip(s, 0.0, 1.0) * bins).astype(np.int64), bins - 1)
        idx += bins * positive[i:i + CHUNK]
        out += np.bincount(idx, minlength=2 * bins)
    return out.reshape(2, bins)


def _label_histogram(tp: int, fn: int, fp: int, tn: int, bins: int) -> np.ndarray:
    """(2, bins) histogram of a 0/1 score: 0 in the first bin, 1 in the last."""
    h = np.zeros((2, bins), dtype=np.int64)
    h[0, 0], h[0, -1], h[1, 0], h[1, -1] = tn, fp, fn, tp
    return h


def box_stats(truth_labels: np.ndarray, pred: np.ndarray, n_classes: int, voxel_mass: float,
              bins: int = 2048, tolerance: float = 1.0) -> BoxStats:
    """The :class:`BoxStats` of prediction ``pred`` (probabilities (K,N,N,N) or labels (N,N,N)) on one box.

    Predicted labels are the argmax of the probabilities; with label predictions the score of class c
    is 1 where the label is c, else 0. ``voxel_mass`` in M☉/h; ``tolerance`` of the surface Dice in
    voxels. Raises ValueError for bad shapes, labels outside 0..K−1, or non-finite probabilities.
    """
    k = int(n_classes)
    if k < 2:
        raise ValueError(f"n_classes must be >= 2, got {n_classes}")
    if int(bins) != bins or bins < 2:
        raise ValueError(f"bins must be an integer >= 2, got {bins}")
    bins = int(bins)
    if not (math.isfinite(voxel_mass) and voxel_mass > 0):
        raise ValueError(f"voxel_mass must be a positive finite mass in M☉/h, got {voxel_mass}")
    true = np.asarray(truth_labels)
    if true.ndim != 3:
        raise ValueError(f"truth labels must be (N,N,N), got shape {true.shape}")
    if not np.issubdtype(true.dtype, np.integer):
        raise ValueError(f"truth labels must be integer classes, got dtype {true.dtype}")
    if true.size == 0:
        raise ValueError("truth labels are empty")
    if true.min() < 0 or true.max() >= k:
        raise ValueError(f"truth labels outside 0..{k - 1}: min {true.min()}, max {true.max()}")
    pred = np.asarray(pred)
    if np.issubdtype(pred.dtype, np.integer):
        if pred.shape != true.shape:
            raise ValueError(f"predicted labels of shape {pred.shape} for a box of shape {true.shape}")
        if pred.min() < 0 or pred.max() >= k:
            raise ValueError(f"predicted labels outside 0..{k - 1}: min {pred.min()}, max {pred.max()}")
        lab, prob, kind = pred, None, "labels"
    elif np.issubdtype(pred.dtype, np.floating):
        if pred.shape != (k, *true.shape):
            raise ValueError(f"probabilities of shape {pred.shape}; expected (K, N, N, N) = {(k, *true.shape)}")
        _check_probabilities(pred)
        lab, prob, kind = pred.argmax(axis=0), pred, "probabilities"
    else:
        raise ValueError(f"pred must be integer labels or float probabilities, got dtype {pred.dtype}")

    cm = metrics.confusion_matrix(true, lab, k)
    sd = np.zeros((k + 1, 2), dtype=np.int64)
    for c in range(k):
        sd[c] = metrics.surface_dice_counts(lab == c, true == c, tolerance)
    sd[k] = metrics.surface_dice_counts(lab > 0, true > 0, tolerance)
    if prob is None:
        n, rows, cols = int(cm.sum()), cm.sum(axis=1), cm.sum(axis=0)
        hist = np.stack([_label_histogram(cm[c, c], rows[c] - cm[c, c], cols[c] - cm[c, c],
                                          n - rows[c] - cols[c] + cm[c, c], bins) for c in range(k)])
        halo = _label_histogram(cm[1:, 1:].sum(), cm[1:, 0].sum(), cm[0, 1:].sum(), cm[0, 0], bins)
    else:
        hist = np.stack([_histogram(prob[c], true == c, bins) for c in range(k)])
        halo = _histogram(prob[0], true > 0, bins, flip=True)
    return BoxStats(
        confusion=cm.astype(np.int64),
        mass_true=metrics.class_masses(true, k, voxel_mass),
        mass_pred=metrics.class_masses(lab, k, voxel_mass),
        surface_dice=sd, class_hist=hist, halo_hist=halo, kind=kind,
    )


def model_stats(truths: Sequence[BoxTruth], preds: Sequence[np.ndarray], n_classes: int,
                bins: int = 2048, tolerance: float = 1.0) -> list[BoxStats]:
    """:func:`box_stats` of ``preds[i]`` on ``truths[i]`` for every box."""
    if len(truths) != len(preds):
        raise ValueError(f"{len(preds)} predictions for {len(truths)} boxes")
    out = []
    for t, p in zip(truths, preds):
        try:
            out.append(box_stats(t.labels, p, n_classes, t.voxel_mass, bins, tolerance))
        except ValueError as e:
            raise ValueError(f"{t.path}: {e}") from None
    return out


def _credit(neg: np.ndarray) -> np.ndarray:
    """Per bin, the negatives a positive in that bin beats: all in lower bins + ½ of its own bin."""
    return np.cumsum(neg, axis=-1) - 0.5 * neg  # exact: integer and half-integer valued floats


def _auc_ratio(wins: np.ndarray, n_pos: np.ndarray, n_neg: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where((n_pos > 0) & (n_neg > 0), wins / (n_pos * n_neg), np.nan)


def histogram_auc(pos_hist: np.ndarray, neg_hist: np.ndarray) -> float:
    """ROC AUC from score histograms of the positives and negatives on the same ascending bins.

    P(score⁺ > score⁻) + ½ P(same bin) (Mann–Whitney); NaN if either histogram is empty.
    Leading axes are allowed (an array of AUCs over them is returned then).
    """
    pos, neg = np.asarray(pos_hist, dtype=np.float64), np.asarray(neg_hist, dtype=np.float64)
    if pos.shape != neg.shape or pos.ndim == 0:
        raise ValueError(f"positive {pos.shape} and negative {neg.shape} histograms differ in shape")
    if (pos < 0).any() or (neg < 0).any():
        raise ValueError("histogram counts must be non-negative")
    a = _auc_ratio(np.sum(pos * _credit(neg), axis=-1), pos.sum(axis=-1), neg.sum(axis=-1))
    return float(a) if a.ndim == 0 else a


def _stack(stats: Sequence[BoxStats]) -> dict[str, np.ndarray]:
    """Per-box statistics as float64 arrays (counts exact below 2⁵³), summed over boxes by weights.

    Linear terms have a leading box axis (n_boxes, ...). The AUC numerator Σ_b pos[b]·credit(neg)[b]
    of summed histograms is bilinear in the box weights w: wᵀ G w with the cross terms
    G[k, i, j] = Σ_b pos_i[k, b]·credit(neg_j)[k, b] ("wins", (K, n, n); "halo_wins", (n, n)), so a
    replicate costs O(n_boxes²) whatever the number of bins.
    """
    if len(stats) == 0:
        raise ValueError("no boxes: need at least one BoxStats")
    k, bins = stats[0].n_classes, stats[0].bins
    shapes = {"confusion": (k, k), "mass_true": (k,), "mass_pred": (k,), "surface_dice": (k + 1, 2),
              "class_hist": (k, 2, bins), "halo_hist": (2, bins)}
    arrays = {}
    for name, shape in shapes.items():
        arrs = [np.asarray(getattr(s, name), dtype=np.float64) for s in stats]
        bad = [i for i, a in enumerate(arrs) if a.shape != shape]
        if bad:
            raise ValueError(f"box {bad[0]}: {name} of shape {arrs[bad[0]].shape}, expected {shape} "
                             f"(all boxes need the same number of classes and bins)")
        arrays[name] = np.stack(arrs)
    hist, halo = arrays.pop("class_hist"), arrays.pop("halo_hist")  # [:, ..., 0] negatives, 1 positives
    arrays["n_neg"], arrays["n_pos"] = hist[:, :, 0].sum(axis=-1), hist[:, :, 1].sum(axis=-1)
    arrays["halo_n_neg"], arrays["halo_n_pos"] = halo[:, 0].sum(axis=-1), halo[:, 1].sum(axis=-1)
    quad = {"wins": np.einsum("ikb,jkb->kij", hist[:, :, 1], _credit(hist[:, :, 0])),
            "halo_wins": np.einsum("ib,jb->ij", halo[:, 1], _credit(halo[:, 0]))}
    return {"linear": arrays, "quadratic": quad}


def _sums(stacked: dict, weights: np.ndarray) -> dict[str, np.ndarray]:
    """Statistics of weighted sums of boxes: ``weights`` (R, n_boxes) -> arrays (R, ...)."""
    out = {name: np.tensordot(weights, a, axes=(1, 0)) for name, a in stacked["linear"].items()}
    out["wins"] = np.einsum("ri,kij,rj->rk", weights, stacked["quadratic"]["wins"], weights)
    out["halo_wins"] = np.einsum("ri,ij,rj->r", weights, stacked["quadratic"]["halo_wins"], weights)
    return out


def _metric_arrays(s: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """All metrics of summed statistics with a leading replicate axis R: (R,) or (R, K) arrays."""
    cm = s["confusion"]
    with np.errstate(invalid="ignore", divide="ignore"):
        sd = s["surface_dice"]
        sd = np.where(sd[..., 1] > 0, sd[..., 0] / sd[..., 1], np.nan)
        out = {"accuracy": np.trace(cm, axis1=1, axis2=2) / cm.sum(axis=(1, 2))}
    auc = _auc_ratio(s["wins"], s["n_pos"], s["n_neg"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN rows give NaN
        out["auc_mean_halo_classes"] = np.nanmean(auc[:, 1:], axis=1)
    out["auc_halo_vs_none"] = _auc_ratio(s["halo_wins"], s["halo_n_pos"], s["halo_n_neg"])
    out["surface_dice_halo"] = sd[:, -1]
    out["recall"] = np.stack([metrics.class_recall(m) for m in cm])
    out["precision"] = np.stack([metrics.class_precision(m) for m in cm])
    out["auc"] = auc
    out["mass_true"], out["mass_pred"] = s["mass_true"], s["mass_pred"]
    out["mass_rel_error"] = metrics.mass_relative_error(s["mass_pred"], s["mass_true"])
    out["surface_dice"] = sd[:, :-1]
    return out


def _tree(n_classes: int, leaf: Callable[[str, int | None], Any]) -> dict:
    """The metric layout of :func:`combine` with ``leaf(name, class or None)`` at every leaf."""
    out: dict[str, Any] = {name: leaf(name, None) for name in _SCALARS}
    out["per_class"] = [{name: leaf(name, c) for name in _PER_CLASS} for c in range(n_classes)]
    return out


def _pick(arrays: dict[str, np.ndarray], name: str, c: int | None) -> np.ndarray:
    a = arrays[name]
    return a if c is None else a[:, c]


def combine(stats: Sequence[BoxStats]) -> dict:
    """Metrics of a set of boxes from their summed statistics (floats, NaN where undefined).

    Layout (K classes)::

        {"accuracy", "auc_halo_vs_none", "auc_mean_halo_classes", "surface_dice_halo",
         "per_class": [{"recall", "precision", "auc", "mass_true", "mass_pred", "mass_rel_error",
                        "surface_dice"}] * K}

    ``recall`` = TP/(TP+FN) is the report's per-class "accuracy"; ``mass_rel_error`` the signed
    (M_pred − M_true)/M_true of the summed masses (M☉/h); AUCs from histograms (module doc).
    """
    stacked = _stack(stats)
    arrays = _metric_arrays(_sums(stacked, np.ones((1, len(stats)))))
    return _tree(stacked["linear"]["confusion"].shape[1], lambda name, c: float(_pick(arrays, name, c)[0]))


def _check_resampling(n_boot: int, level: float) -> None:
    if int(n_boot) != n_boot or n_boot < 1:
        raise ValueError(f"n_boot must be a positive integer, got {n_boot}")
    if not 0 < level < 1:
        raise ValueError(f"level must lie in (0, 1), got {level}")


def _replicates(stacked_list: Sequence[dict], n_boot: int, seed: int) -> list[dict[str, np.ndarray]]:
    """Metric arrays (n_boot, ...) of every stack on the same resampled boxes (Generator(seed))."""
    n_boxes = stacked_list[0]["linear"]["confusion"].shape[0]
    draws = np.random.default_rng(seed).integers(0, n_boxes, size=(n_boot, n_boxes))
    counts = np.bincount((draws + n_boxes * np.arange(n_boot)[:, None]).ravel(),
                         minlength=n_boot * n_boxes).reshape(n_boot, n_boxes).astype(np.float64)
    return [_metric_arrays(_sums(stacked, counts)) for stacked in stacked_list]


def _percentiles(reps: np.ndarray, level: float) -> tuple[np.ndarray, np.ndarray]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns give NaN
        lo, hi = np.nanpercentile(reps, [50 * (1 - level), 50 * (1 + level)], axis=0)
    return lo, hi


def bootstrap(stats: Sequence[BoxStats], n_boot: int = 2000, level: float = 0.68, seed: int = 0) -> dict:
    """Central percentile bootstrap intervals of every :func:`combine` metric, resampling boxes.

    Each of ``n_boot`` replicates draws len(stats) boxes with replacement (``np.random.default_rng(seed)``)
    and recomputes the metrics of their summed statistics. Returns::

        {"n_boxes": int, "n_boot": int, "level": float, "seed": int,
         "metrics": <the layout of combine() with every float replaced by
                     {"value": metric of all boxes, "lo": percentile 50(1−level), "hi": percentile 50(1+level)}>}

    e.g. ``["metrics"]["accuracy"]["lo"]``, ``["metrics"]["per_class"][c]["auc"]["hi"]``. Replicates
    where a metric is undefined (e.g. a class absent from the drawn boxes) are left out of its interval.
    """
    _check_resampling(n_boot, level)
    stacked = _stack(stats)
    value = _metric_arrays(_sums(stacked, np.ones((1, len(stats)))))
    (reps,) = _replicates([stacked], int(n_boot), seed)
    bounds = {name: _percentiles(r, level) for name, r in reps.items()}

    def leaf(name: str, c: int | None) -> dict:
        lo, hi = bounds[name]
        if c is not None:
            lo, hi = lo[c], hi[c]
        return {"value": float(_pick(value, name, c)[0]), "lo": float(lo), "hi": float(hi)}

    return {"n_boxes": len(stats), "n_boot": int(n_boot), "level": float(level), "seed": seed,
            "metrics": _tree(stacked["linear"]["confusion"].shape[1], leaf)}


def paired_difference(stats_a: Sequence[BoxStats], stats_b: Sequence[BoxStats], n_boot: int = 2000,
                      level: float = 0.68, seed: int = 0) -> dict:
    """Paired bootstrap of metric differences A − B: both models on the same resampled boxes.

    ``stats_a[i]`` and ``stats_b[i]`` must describe the same box (same truth: checked through the
    true class counts and masses). Returns the layout of :func:`bootstrap` with the leaves
    ``{"value": A − B on all boxes, "lo", "hi", "frac_positive": fraction of replicates with A − B > 0
    among those where it is defined}``. An ordering A > B holds beyond the box-to-box scatter at
    ``level`` when ``lo > 0``.
    """
    _check_resampling(n_boot, level)
    if len(stats_a) != len(stats_b):
        raise ValueError(f"paired bootstrap needs the same boxes: {len(stats_a)} vs {len(stats_b)} boxes")
    sa, sb = _stack(stats_a), _stack(stats_b)
    la, lb = sa["linear"], sb["linear"]
    if la["confusion"].shape != lb["confusion"].shape:
        raise ValueError(f"models differ in the number of classes: {la['confusion'].shape[1]} vs "
                         f"{lb['confusion'].shape[1]}")
    same = (la["confusion"].sum(axis=2) == lb["confusion"].sum(axis=2)).all(axis=1)
    same &= np.isclose(la["mass_true"], lb["mass_true"], rtol=1e-12, atol=0).all(axis=1)
    if not same.all():
        raise ValueError(f"box {int(np.argmin(same))} has different truths for the two models (not the same box)")
    ones = np.ones((1, len(stats_a)))
    va, vb = _metric_arrays(_sums(sa, ones)), _metric_arrays(_sums(sb, ones))
    ra, rb = _replicates([sa, sb], int(n_boot), seed)
    diff = {name: ra[name] - rb[name] for name in ra}
    bounds = {name: _percentiles(d, level) for name, d in diff.items()}
    with np.errstate(invalid="ignore", divide="ignore"):
        frac = {name: np.sum(d > 0, axis=0) / np.sum(np.isfinite(d), axis=0) for name, d in diff.items()}

    def leaf(name: str, c: int | None) -> dict:
        lo, hi, f = *bounds[name], frac[name]
        if c is not None:
            lo, hi, f = lo[c], hi[c], f[c]
        v = _pick(va, name, c)[0] - _pick(vb, name, c)[0]
        return {"value": float(v), "lo": float(lo), "hi": float(hi), "frac_positive": float(f)}

    return {"n_boxes": len(stats_a), "n_boot": int(n_boot), "level": float(level), "seed": seed,
            "metrics": _tree(sa["linear"]["confusion"].shape[1], leaf)}
