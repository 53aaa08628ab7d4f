"""Segmentation metrics for proto-halo classes on periodic Lagrangian grids (numpy, exact).

Labels are int arrays of classes (0 = no halo, 1..P−1 = halo mass bins), any shape unless stated;
grids are (N,N,N), C order, periodic. Masses are in M☉/h; ``voxel_mass`` is the mass of one
Lagrangian voxel (one particle).

* :func:`accuracy`, :func:`confusion_matrix` (rows = true class, columns = predicted class),
  :func:`class_recall` (the per-class accuracy of the report: TP / (TP + FN)), :func:`class_precision`.
* :func:`roc_curve`, :func:`roc_auc` (:func:`auc` of a curve): one class against the rest from scores; exact with ties
  (a tie between a positive and a negative counts ½, as in the Mann–Whitney statistic).
* :func:`class_masses`, :func:`mass_relative_error`: total segmented mass per class.
* :func:`surface_dice_counts`: boundary fidelity as the surface Dice at a tolerance τ (Nikolov et al.
  2021): the boundary of a mask is its voxels with a face neighbour outside it (periodic), and
  SD_τ = (#pred-boundary voxels within τ of the true boundary + #true-boundary voxels within τ of
  the pred boundary) / (#pred-boundary + #true-boundary), distances Euclidean in voxels.
* :func:`halo_mass_comparison`: halo by halo. Predicted proto-halos are the periodic, face-connected
  components of voxels with the same predicted halo class; a predicted proto-halo's mass is its
  voxel count × ``voxel_mass``. Each true halo (``/halo_id``) is matched to the component sharing
  most of its voxels, and its predicted mass is that component's mass (0 if no predicted halo voxel
  lies in it: missed). Touching proto-halos of one predicted class merge into one component; the
  comparison reports how many true halos share their match (``merged``).
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components


def _labels(a: np.ndarray, n_classes: int, name: str) -> np.ndarray:
    a = np.asarray(a)
    if not np.issubdtype(a.dtype, np.integer):
        raise ValueError(f"{name} must be integer class labels, got dtype {a.dtype}")
    if a.size and (a.min() < 0 or a.max() >= n_classes):
        raise ValueError(f"{name} has classes outside [0, {n_classes - 1}]: min {a.min()}, max {a.max()}")
    return a


def accuracy(true: np.ndarray, pred: np.ndarray) -> float:
    """Fraction of voxels whose predicted class equals the true class."""
    true, pred = np.asarray(true), np.asarray(pred)
    if true.shape != pred.shape:
        raise ValueError(f"true {true.shape} and pred {pred.shape} differ in shape")
    return float(np.mean(true == pred))


def confusion_matrix(true: np.ndarray, pred: np.ndarray, n_classes: int) -> np.ndarray:
    """(n_classes, n_classes) int64 counts; entry [i, j] = voxels of true class i predicted as j."""
    true = _labels(true, n_classes, "true").ravel().astype(np.int64)
    pred = _labels(pred, n_classes, "pred").ravel().astype(np.int64)
    if true.shape != pred.shape:
        raise ValueError(f"true ({true.size} voxels) and pred ({pred.size}) differ in size")
    return np.bincount(true * n_classes + pred, minlength=n_classes**2).reshape(n_classes, n_classes)


def class_recall(cm: np.ndarray) -> np.ndarray:
    """Per-class accuracy TP/(TP+FN) from a confusion matrix (NaN for a class absent in the truth)."""
    rows = cm.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(rows > 0, np.diag(cm) / rows, np.nan)


def class_precision(cm: np.ndarray) -> np.ndarray:
    """Per-class precision TP/(TP+FP) (NaN for a class never predicted)."""
    cols = cm.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(cols > 0, np.diag(cm) / cols, np.nan)


def roc_curve(scores: np.ndarray, positive: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Exact ROC curve ``(fpr, tpr, thresholds)``, one point per distinct score (descending).

    A voxel is called positive when its score is >= the threshold; the first point (0, 0) has
    threshold +inf. Raises ValueError if there are no positives or no negatives.
    """
    s = np.asarray(scores).ravel()
    s = s if np.issubdtype(s.dtype, np.floating) else s.astype(np.float64)
    y = np.asarray(positive, dtype=bool).ravel()
    if s.shape != y.shape:
        raise ValueError(f"scores ({s.size}) and positive ({y.size}) differ in size")
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        raise ValueError(f"ROC needs positives and negatives, got {n_pos} and {n_neg}")
    order = np.argsort(s)[::-1]  # descending; the order inside a tie does not matter
    s, y = s[order], y[order]
    last_of_tie = np.r_[np.flatnonzero(np.diff(s)), s.size - 1]
    tps = np.cumsum(y, dtype=np.int64)[last_of_tie]
    fps = last_of_tie + 1 - tps
    fpr = np.r_[0.0, fps / n_neg]
    tpr = np.r_[0.0, tps / n_pos]
    return fpr, tpr, np.r_[np.inf, s[last_of_tie]]


def roc_auc(scores: np.ndarray, positive: np.ndarray) -> float:
    """Area under :func:`roc_curve` (trapezoids, so ties count ½); NaN without positives or negatives."""
    try:
        fpr, tpr, _ = roc_curve(scores, positive)
    except ValueError:
        return math.nan
    return auc(fpr, tpr)


def auc(fpr: np.ndarray, tpr: np.ndarray) -> float:
    """Area under a ROC curve by trapezoids."""
    return float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))


def class_masses(labels: np.ndarray, n_classes: int, voxel_mass: float) -> np.ndarray:
    """Total mass (M☉/h) per class: voxel count × ``voxel_mass``, shape (n_classes,)."""
    labels = _labels(labels, n_classes, "labels")
    return np.bincount(labels.ravel(), minlength=n_classes).astype(np.float64) * float(voxel_mass)


def mass_relative_error(pred_mass: np.ndarray, true_mass: np.ndarray) -> np.ndarray:
    """(M_pred − M_true) / M_true per class; NaN where the true mass is 0."""
    pred_mass, true_mass = np.asarray(pred_mass, float), np.asarray(true_mass, float)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(true_mass > 0, (pred_mass - true_mass) / true_mass, np.nan)


def boundary(mask: np.ndarray) -> np.ndarray:
    """Voxels of ``mask`` with at least one of their 6 face neighbours outside it (periodic)."""
    mask = np.asarray(mask, dtype=bool)
    interior = mask.copy()
    for axis in range(mask.ndim):
        for shift in (1, -1):
            interior &= np.roll(mask, shift, axis=axis)
    return mask & ~interior


def within(mask: np.ndarray, tolerance: float) -> np.ndarray:
    """Voxels within Euclidean distance ``tolerance`` (voxels) of a ``mask`` voxel, periodic.

    A dilation by the ball of integer offsets with |o| <= tolerance (exact for voxel centres).
    """
    mask = np.asarray(mask, dtype=bool)
    r = int(math.floor(tolerance))
    if r == 0:
        return mask.copy()
    offsets = np.indices((2 * r + 1,) * mask.ndim) - r
    ball = (offsets**2).sum(axis=0) <= tolerance**2 + 1e-9
    grown = ndimage.binary_dilation(np.pad(mask, r, mode="wrap"), structure=ball)
    return grown[(slice(r, -r),) * mask.ndim]


def surface_dice_counts(pred_mask: np.ndarray, true_mask: np.ndarray, tolerance: float) -> tuple[int, int]:
    """``(agreeing boundary voxels, all boundary voxels)`` of the surface Dice at ``tolerance`` voxels.

    SD = agreeing / all; counts add up over boxes. (0, 0) when neither mask has a boundary.
    """
    if np.shape(pred_mask) != np.shape(true_mask):
        raise ValueError(f"pred mask {np.shape(pred_mask)} and true mask {np.shape(true_mask)} differ")
    bp, bt = boundary(pred_mask), boundary(true_mask)
    agree = int(np.count_nonzero(within(bt, tolerance) & bp) + np.count_nonzero(within(bp, tolerance) & bt))
    return agree, int(bp.sum() + bt.sum())


def surface_dice(pred_mask: np.ndarray, true_mask: np.ndarray, tolerance: float) -> float:
    """Surface Dice in [0, 1] at ``tolerance`` voxels (NaN when neither mask has a boundary)."""
    agree, total = surface_dice_counts(pred_mask, true_mask, tolerance)
    return agree / total if total else math.nan


def periodic_components(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """Face-connected components of ``mask`` on a periodic grid: (labels int64, 0 = background, count)."""
    mask = np.asarray(mask, dtype=bool)
    lab, n = ndimage.label(mask, structure=ndimage.generate_binary_structure(mask.ndim, 1))
    if n == 0:
        return lab.astype(np.int64), 0
    a, b = [], []
    for axis in range(mask.ndim):
        lo = np.take(lab, 0, axis=axis).ravel()
        hi = np.take(lab, -1, axis=axis).ravel()
        both = (lo > 0) & (hi > 0)
        a.append(lo[both])
        b.append(hi[both])
    a, b = np.concatenate(a), np.concatenate(b)
    graph = coo_matrix((np.ones(a.size), (a, b)), shape=(n + 1, n + 1))
    _, root = connected_components(graph, directed=False)
    # Renumber the merged components 1..m in order of first appearance among labels 1..n.
    _, new = np.unique(root[1:], return_inverse=True)
    lut = np.r_[0, new + 1].astype(np.int64)
    return lut[lab], int(new.max()) + 1


def predicted_halos(pred: np.ndarray, n_classes: int) -> tuple[np.ndarray, int]:
    """Predicted proto-halos: periodic face-connected components of voxels of one halo class (≥ 1).

    Returns (component id per voxel, 0 = no predicted halo, number of components).
    """
    pred = _labels(pred, n_classes, "pred")
    comp = np.zeros(pred.shape, dtype=np.int64)
    total = 0
    for c in range(1, n_classes):
        lab, n = periodic_components(pred == c)
        comp[lab > 0] = lab[lab > 0] + total
        total += n
    return comp, total


def halo_mass_comparison(halo_id: np.ndarray, halo_log_mass: np.ndarray, true: np.ndarray,
                         pred: np.ndarray, n_classes: int, voxel_mass: float) -> dict[str, np.ndarray]:
    """Per true halo: catalogue mass and the mass of its matched predicted proto-halo (module doc).

    ``halo_id`` (N,N,N) int, −1 = none; ``halo_log_mass`` (N,N,N) log10 M of the voxel's halo;
    ``true``/``pred`` (N,N,N) class labels. Returns arrays over the true halos present: ``halo``
    (ids), ``true_class`` (the true label of its voxels), ``true_mass``, ``pred_mass``
    (M☉/h, 0 = missed), ``overlap`` (fraction of the halo's voxels inside its match), ``merged``
    (its match is also the match of another halo), ``pred_class`` (majority predicted class over
    the halo's voxels).
    """
    halo_id, pred = np.asarray(halo_id).ravel(), np.asarray(pred)
    if not (halo_id.size == np.size(halo_log_mass) == np.size(true) == pred.size):
        raise ValueError(f"halo_id, halo_log_mass, true and pred differ in size: {halo_id.size}, "
                         f"{np.size(halo_log_mass)}, {np.size(true)}, {pred.size} voxels")
    comp, n_comp = predicted_halos(pred, n_classes)
    comp, pred_flat, log_mass = comp.ravel(), pred.ravel(), np.asarray(halo_log_mass).ravel()
    inside = halo_id >= 0
    halos, inv = np.unique(halo_id[inside], return_inverse=True)
    n_halos = halos.size
    true_mass = np.zeros(n_halos)
    true_mass[inv] = 10.0 ** log_mass[inside].astype(np.float64)
    true_class = np.zeros(n_halos, dtype=np.int64)
    true_class[inv] = _labels(true, n_classes, "true").ravel()[inside]
    n_vox = np.bincount(inv, minlength=n_halos)

    # Best-overlapping predicted component per halo.
    c_in = comp[inside]
    hit = c_in > 0
    key = inv[hit].astype(np.int64) * (n_comp + 1) + c_in[hit]
    keys, counts = np.unique(key, return_counts=True)
    h_of, c_of = keys // (n_comp + 1), keys % (n_comp + 1)
    order = np.lexsort((-counts, h_of))
    first = order[np.unique(h_of[order], return_index=True)[1]]
    best = np.zeros(n_halos, dtype=np.int64)
    shared = np.zeros(n_halos, dtype=np.int64)
    best[h_of[first]] = c_of[first]
    shared[h_of[first]] = counts[first]
    comp_size = np.bincount(comp, minlength=n_comp + 1)
    pred_mass = np.where(best > 0, comp_size[best] * float(voxel_mass), 0.0)
    users = np.bincount(best, minlength=n_comp + 1)
    merged = (best > 0) & (users[best] > 1)

    # Majority predicted class over each halo's voxels.
    cls_counts = np.bincount(inv.astype(np.int64) * n_classes + pred_flat[inside],
                             minlength=n_halos * n_classes).reshape(n_halos, n_classes)
    return {
        "halo": halos, "true_class": true_class, "true_mass": true_mass, "pred_mass": pred_mass, "overlap": shared / n_vox,
        "merged": merged, "pred_class": cls_counts.argmax(axis=1),
    }


def halo_summary(true_mass: np.ndarray, pred_mass: np.ndarray, merged: np.ndarray,
                 true_class: np.ndarray, pred_class: np.ndarray, n_classes: int) -> dict:
    """Summary of a halo-by-halo comparison (arrays over halos, possibly of several boxes).

    ``log_ratio_*``: median and 16th/84th percentiles of log10(M_pred/M_true) over detected halos;
    ``class_accuracy``: fraction of halos whose majority predicted class is their true class;
    per halo class (``by_class``): count, detected fraction, median log ratio.
    """
    true_mass, pred_mass = np.asarray(true_mass, float), np.asarray(pred_mass, float)
    detected = pred_mass > 0

    def ratio_stats(sel: np.ndarray) -> dict:
        r = np.log10(pred_mass[sel & detected] / true_mass[sel & detected])
        if r.size == 0:
            return {"log_ratio_median": math.nan, "log_ratio_p16": math.nan, "log_ratio_p84": math.nan}
        p16, p50, p84 = np.percentile(r, [16, 50, 84])
        return {"log_ratio_median": float(p50), "log_ratio_p16": float(p16), "log_ratio_p84": float(p84)}

    n = true_mass.size
    out = {
        "n_halos": int(n),
        "detected_fraction": float(detected.mean()) if n else math.nan,
        "merged_fraction": float(np.asarray(merged).mean()) if n else math.nan,
        "class_accuracy": float(np.mean(np.asarray(true_class) == np.asarray(pred_class))) if n else math.nan,
        **ratio_stats(np.ones(n, dtype=bool)),
    }
    lt, lp = np.log10(true_mass[detected]), np.log10(pred_mass[detected])
    defined = lt.size > 1 and lt.std() > 0 and lp.std() > 0
    out["log_mass_correlation"] = float(np.corrcoef(lt, lp)[0, 1]) if defined else math.nan
    out["by_class"] = {}
    for c in range(1, n_classes):
        sel = np.asarray(true_class) == c
        out["by_class"][str(c)] = {
            "n_halos": int(sel.sum()),
            "detected_fraction": float(detected[sel].mean()) if sel.any() else math.nan,
            **ratio_stats(sel),
        }
    return out

