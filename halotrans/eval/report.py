"""The comparison report: any number of named predictions on the same test boxes, one table.

A prediction is, per box, either class probabilities (P,N,N,N) float (networks) or class labels
(N,N,N) int (e.g. PINOCCHIO). Labels count as one-hot scores, so their ROC curve has a single
operating point and their AUC is that of the hard classification. The layout follows Alokda &
Porciani (2025): per mass class the AUC, the accuracy and the total segmented mass with its error,
with the models as rows within each class; a summary table has one row per model.

    summary = write_report("out/", truths, {"vipr": vipr_probs, "PINOCCHIO": pin_labels}, (13.0, 13.5, 14.0))

writes ``report.md``, ``report.json`` and the PNG figures (ROC, confusion, slices, halo scatter,
Grad-CAM when given) into ``out/``, each file atomically.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from halotrans.eval import metrics, plots
from halotrans.eval.truth import BoxTruth
from halotrans.formatting import fixed, jsonable, percent
from halotrans.io import DataError, atomic_path

ROC_POINTS = 200


def class_names(class_edges: Sequence[float]) -> list[str]:
    """Names of the classes: "no halo", then the log10 M bins, e.g. "13.0–13.5"."""
    e = [f"{float(v):g}" for v in class_edges]
    if not e:
        return ["no halo", "halo"]
    return ["no halo", f"<{e[0]}", *[f"{a}–{b}" for a, b in zip(e[:-1], e[1:])], f"≥{e[-1]}"]


def _as_labels_and_scores(pred: np.ndarray, truth: BoxTruth, n_classes: int, model: str) -> tuple[np.ndarray, np.ndarray | None]:
    pred = np.asarray(pred)
    shape = truth.labels.shape
    if np.issubdtype(pred.dtype, np.integer):
        if pred.shape != shape:
            raise DataError(f"{model}: labels of shape {pred.shape} for box {truth.path} of shape {shape}")
        if pred.min() < 0 or pred.max() >= n_classes:
            raise DataError(f"{model}: labels outside 0..{n_classes - 1} for box {truth.path}")
        return pred.astype(np.int64), None
    if pred.ndim != 4 or pred.shape[1:] != shape:
        raise DataError(f"{model}: probabilities of shape {pred.shape} for box {truth.path}; expected (P, *{shape})")
    if pred.shape[0] != n_classes:
        raise DataError(f"{model}: predicts {pred.shape[0]} classes but the data are binned into {n_classes} "
                        "(class_edges differ between the checkpoint and this evaluation)")
    return pred.argmax(axis=0).astype(np.int64), pred


def _thin(fpr: np.ndarray, tpr: np.ndarray, n: int = ROC_POINTS) -> tuple[np.ndarray, np.ndarray]:
    """At most ~3n points of a ROC curve, evenly spread along both axes (for plots and JSON)."""
    if fpr.size <= 3 * n:
        return fpr, tpr
    grid = np.linspace(0, 1, n)
    idx = np.unique(np.r_[np.linspace(0, fpr.size - 1, n).astype(int),
                          np.minimum(np.searchsorted(fpr, grid), fpr.size - 1),
                          np.minimum(np.searchsorted(tpr, grid), tpr.size - 1)])
    return fpr[idx], tpr[idx]


def evaluate_model(truths: Sequence[BoxTruth], preds: Sequence[np.ndarray], n_classes: int,
                   tolerance: float, model: str = "model") -> tuple[dict, dict]:
    """Metrics of one model over all boxes: (JSON-able summary, arrays for the figures)."""
    if len(preds) != len(truths):
        raise DataError(f"{model}: {len(preds)} predictions for {len(truths)} boxes")
    cm = np.zeros((n_classes, n_classes), dtype=np.int64)
    m_true, m_pred = np.zeros(n_classes), np.zeros(n_classes)
    sd = np.zeros((n_classes + 1, 2), dtype=np.int64)  # per class, then "any halo"
    scores: list[list[np.ndarray]] = [[] for _ in range(n_classes)]
    halo_score: list[np.ndarray] = []
    halo_rows: list[dict] = []
    kind = "probabilities"
    labels_of_boxes = []
    for truth, pred in zip(truths, preds):
        lab, prob = _as_labels_and_scores(pred, truth, n_classes, model)
        labels_of_boxes.append(lab)
        true = truth.labels
        cm += metrics.confusion_matrix(true, lab, n_classes)
        m_true += metrics.class_masses(true, n_classes, truth.voxel_mass)
        m_pred += metrics.class_masses(lab, n_classes, truth.voxel_mass)
        for c in range(n_classes):
            sd[c] += metrics.surface_dice_counts(lab == c, true == c, tolerance)
            scores[c].append((prob[c] if prob is not None else (lab == c)).ravel().astype(np.float32))
        sd[n_classes] += metrics.surface_dice_counts(lab > 0, true > 0, tolerance)
        halo_score.append((1.0 - prob[0] if prob is not None else (lab > 0)).ravel().astype(np.float32))
        if prob is None:
            kind = "labels"
        if truth.halo_id is not None:
            halo_rows.append(metrics.halo_mass_comparison(truth.halo_id, truth.halo_log_mass, true, lab,
                                                          n_classes, truth.voxel_mass))
    true_all = np.concatenate([t.labels.ravel() for t in truths])
    recall, precision = metrics.class_recall(cm), metrics.class_precision(cm)
    rel_err = metrics.mass_relative_error(m_pred, m_true)
    per_class, curves = [], {}
    for c in range(n_classes):
        try:
            fpr, tpr, _ = metrics.roc_curve(np.concatenate(scores[c]), true_all == c)
        except ValueError:  # no voxel of this class, or only this class
            auc = math.nan
        else:
            auc = metrics.auc(fpr, tpr)
            curves[c] = (*_thin(fpr, tpr), auc)
        per_class.append({
            "auc": auc, "accuracy": recall[c], "precision": precision[c], "mass_true": m_true[c],
            "mass_pred": m_pred[c], "mass_rel_error": rel_err[c],
            "surface_dice": sd[c, 0] / sd[c, 1] if sd[c, 1] else math.nan,
        })
    auc_halo = metrics.roc_auc(np.concatenate(halo_score), true_all > 0)
    summary: dict[str, Any] = {
        "kind": kind,
        "accuracy": float(np.trace(cm) / cm.sum()),
        "auc_mean_halo_classes": float(np.nanmean([p["auc"] for p in per_class[1:]]))
        if any(math.isfinite(p["auc"]) for p in per_class[1:]) else math.nan,
        "auc_halo_vs_none": auc_halo,
        "surface_dice_halo": sd[-1, 0] / sd[-1, 1] if sd[-1, 1] else math.nan,
        "per_class": per_class,
        "confusion": cm.tolist(),
        "roc": {str(c): {"fpr": f.tolist(), "tpr": t.tolist()} for c, (f, t, _) in curves.items()},
    }
    arrays: dict[str, Any] = {"curves": curves, "labels": labels_of_boxes}
    if halo_rows:
        cat = {k: np.concatenate([r[k] for r in halo_rows]) for k in halo_rows[0]}
        summary["halos"] = metrics.halo_summary(cat["true_mass"], cat["pred_mass"], cat["merged"],
                                                cat["true_class"], cat["pred_class"], n_classes)
        arrays["halos"] = (cat["true_mass"], cat["pred_mass"])
    return summary, arrays


def markdown(result: dict) -> str:
    """The Markdown text of a report from its JSON-able ``result`` (see :func:`write_report`)."""
    names, models, tol = result["class_names"], result["models"], result["boundary_tolerance_voxels"]
    boxes = result["boxes"]
    lines = [
        "# Proto-halo segmentation: evaluation report", "",
        f"Test boxes: {len(boxes)} ({', '.join(Path(b).stem for b in boxes)}), {result['grid']} voxels each, "
        f"L = {fixed(result['box_size'], 'g')} Mpc/h. Classes: {len(names)} from log10 M edges "
        f"{result['class_edges']} [M☉/h]. Masses in M☉/h.", "",
        "## Models", "",
        "| model | accuracy | mean AUC (halo classes) | AUC halo vs none | surface Dice halo "
        f"(τ = {tol:g} vox) | halos detected | median log10(M_pred/M_true) [16%, 84%] | halo class accuracy | merged |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, m in models.items():
        h = m.get("halos") or {}
        ratio = (f"{fixed(h.get('log_ratio_median'), '+.3f')} [{fixed(h.get('log_ratio_p16'), '+.3f')}, "
                 f"{fixed(h.get('log_ratio_p84'), '+.3f')}]") if h else "–"
        lines.append(
            f"| {name} | {fixed(m['accuracy'], '.4f')} | {fixed(m['auc_mean_halo_classes'], '.4f')} | "
            f"{fixed(m['auc_halo_vs_none'], '.4f')} | {fixed(m['surface_dice_halo'])} | "
            f"{fixed(h.get('detected_fraction'), '.1%') if h else '–'} of {h.get('n_halos', '–')} | {ratio} | "
            f"{fixed(h.get('class_accuracy'), '.1%') if h else '–'} | {fixed(h.get('merged_fraction'), '.1%') if h else '–'} |")
    lines += [
        "", "## Per class", "",
        f"| class | log10 M [M☉/h] | model | AUC | accuracy | precision | M_true | M_pred | ΔM/M | surface Dice (τ = {tol:g}) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c, cname in enumerate(names):
        for name, m in models.items():
            p = m["per_class"][c]
            lines.append(
                f"| {c} | {cname} | {name} | {fixed(p['auc'], '.4f')} | {fixed(p['accuracy'], '.4f')} | "
                f"{fixed(p['precision'], '.4f')} | {fixed(p['mass_true'], '.4g')} | {fixed(p['mass_pred'], '.4g')} | "
                f"{percent(p['mass_rel_error'])} | {fixed(p['surface_dice'])} |")
    lines += ["", "## Confusion matrices (rows: true class, columns: predicted class; voxel counts)"]
    for name, m in models.items():
        k = len(names)
        lines += ["", f"**{name}**", "", "| true \\ pred | " + " | ".join(map(str, range(k))) + " |",
                  "|---" * (k + 1) + "|"]
        lines += [f"| {i} | " + " | ".join(str(v) for v in row) + " |" for i, row in enumerate(m["confusion"])]
    lines += ["", "## Figures", ""]
    lines += [f"![{title}]({fname})" for title, fname in result["figures"].items()]
    lines += [
        "", "## Definitions", "",
        "- accuracy (overall): fraction of voxels with the right class; per class: TP/(TP+FN) (recall).",
        "- AUC: one class against the rest from the predicted probability of that class, exact with ties "
        "(a prediction given as labels has a single operating point).",
        "- M_true, M_pred: voxel count of the class × voxel (particle) mass, summed over boxes; "
        "ΔM/M = (M_pred − M_true)/M_true.",
        f"- surface Dice: boundary voxels (a face neighbour outside the mask, periodic) of the predicted and the "
        f"true mask within τ = {tol:g} voxels of the other boundary, over all boundary voxels.",
        "- halos: each true FoF halo is matched to the predicted proto-halo (periodic face-connected voxels of "
        "one predicted class) sharing most of its voxels; predicted mass = that component's voxel count × voxel "
        "mass (missed halos have none). 'merged': the match is shared with another true halo. "
        "'halo class accuracy': the majority predicted class over the halo's voxels is its true class.",
    ]
    if result.get("meta"):
        lines += ["", "## Runs", "", "```json", json.dumps(result["meta"], indent=1, sort_keys=True), "```"]
    return "\n".join(lines) + "\n"


def write_report(
    out_dir: str | os.PathLike,
    truths: Sequence[BoxTruth],
    predictions: Mapping[str, Sequence[np.ndarray]],
    class_edges: Sequence[float],
    *,
    tolerance: float = 1.0,
    gradcams: Mapping[str, tuple[np.ndarray, np.ndarray, Sequence[int]]] | None = None,
    meta: Mapping[str, Any] | None = None,
) -> dict:
    """Evaluate every named prediction on ``truths`` and write the report; returns the JSON dict.

    ``predictions[name][i]`` belongs to ``truths[i]`` (probabilities or labels, module doc).
    ``gradcams[name] = (input (D,H,W), maps (K,D,H,W), classes)`` adds a Grad-CAM figure.
    """
    if not predictions:
        raise DataError("no predictions to report")
    if not truths:
        raise DataError("no test boxes to evaluate")
    n_classes = len(class_edges) + 2
    names = class_names(class_edges)
    out = Path(out_dir)
    summaries, arrays = {}, {}
    for name, preds in predictions.items():
        summaries[name], arrays[name] = evaluate_model(truths, preds, n_classes, tolerance, name)
    grid = truths[0].labels.shape
    result: dict[str, Any] = {
        "boxes": [t.path for t in truths], "grid": "×".join(map(str, grid)), "box_size": truths[0].box_size,
        "class_edges": list(map(float, class_edges)), "class_names": names,
        "boundary_tolerance_voxels": tolerance, "models": summaries, "meta": dict(meta or {}), "figures": {},
    }
    figs = result["figures"]
    plots.roc_figure({m: {names[c]: v for c, v in a["curves"].items()} for m, a in arrays.items()}, out / "roc.png")
    figs["ROC curves (one class against the rest)"] = "roc.png"
    plots.confusion_figure({m: np.asarray(s["confusion"]) for m, s in summaries.items()}, names, out / "confusion.png")
    figs["confusion matrices (row-normalised)"] = "confusion.png"
    mid = grid[0] // 2
    plots.slices_figure(truths[0].delta[mid], truths[0].labels[mid],
                        {m: a["labels"][0][mid] for m, a in arrays.items()}, names, truths[0].box_size,
                        out / "slices.png")
    figs[f"slice x = {mid} of {Path(truths[0].path).stem}: truth and predictions"] = "slices.png"
    halos = {m: a["halos"] for m, a in arrays.items() if "halos" in a}
    if halos:
        plots.halo_scatter_figure(halos, out / "halo_masses.png")
        figs["halo by halo: true vs predicted mass"] = "halo_masses.png"
    if gradcams:
        cams = {}
        for m, (inp, maps, classes) in gradcams.items():
            k = np.asarray(inp).shape[0] // 2
            cams[m] = (np.asarray(inp)[k], np.asarray(maps)[:, k], [names[c] for c in classes])
        plots.gradcam_figure(cams, out / "gradcam.png")
        figs["Grad-CAM (central slice of the window)"] = "gradcam.png"
    result = jsonable(result)
    with atomic_path(out / "report.json") as tmp:
        tmp.write_text(json.dumps(result, indent=1, ensure_ascii=False))
    with atomic_path(out / "report.md") as tmp:
        tmp.write_text(markdown(result), encoding="utf-8")
    return result
