"""PNG figures of an evaluation (matplotlib, no display needed; each file written atomically).

Every function takes plain arrays keyed by model name and a target path; slices are 2-D arrays
(axis 0 = y, axis 1 = z of an x-slice through a (N,N,N) box).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
from matplotlib.colors import BoundaryNorm, ListedColormap
from matplotlib.figure import Figure

from halotrans.io import atomic_path


def save(fig: Figure, path: str | os.PathLike) -> Path:
    """Write ``fig`` as PNG atomically and return the path."""
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    return path


def _panels(n: int, width: float = 3.6, height: float = 3.4, max_cols: int = 4) -> tuple[Figure, list]:
    cols = min(n, max_cols)
    rows = -(-n // cols)
    fig = Figure(figsize=(width * cols, height * rows), layout="constrained")
    return fig, [fig.add_subplot(rows, cols, i + 1) for i in range(n)]


def class_colormap(n_classes: int) -> tuple[ListedColormap, BoundaryNorm]:
    """Discrete colours: light grey for "no halo", then a sequential ramp of halo masses."""
    from matplotlib import colormaps

    ramp = colormaps["plasma"](np.linspace(0.1, 0.9, max(n_classes - 1, 1)))
    cmap = ListedColormap(np.vstack([[0.92, 0.92, 0.92, 1.0], ramp])[:n_classes])
    return cmap, BoundaryNorm(np.arange(n_classes + 1) - 0.5, n_classes)


def roc_figure(curves: Mapping[str, Mapping[str, tuple[np.ndarray, np.ndarray, float]]],
               path: str | os.PathLike) -> Path:
    """One panel per model; per class the one-vs-rest ROC curve ``(fpr, tpr, auc)``."""
    fig, axes = _panels(len(curves))
    for ax, (model, per_class) in zip(axes, curves.items()):
        for cname, (fpr, tpr, auc) in per_class.items():
            ax.plot(fpr, tpr, lw=1.4, label=f"{cname} ({auc:.3f})")
        ax.plot([0, 1], [0, 1], ls=":", c="grey", lw=0.8)
        ax.set(title=model, xlabel="false positive rate", ylabel="true positive rate", xlim=(0, 1), ylim=(0, 1.01))
        ax.legend(fontsize=7, loc="lower right", title="class (AUC)", title_fontsize=7)
    return save(fig, path)


def confusion_figure(matrices: Mapping[str, np.ndarray], class_names: Sequence[str],
                     path: str | os.PathLike) -> Path:
    """Row-normalised confusion matrices (rows true, columns predicted), one panel per model."""
    fig, axes = _panels(len(matrices), width=4.2, height=3.8)
    k = len(class_names)
    for ax, (model, cm) in zip(axes, matrices.items()):
        cm = np.asarray(cm, float)
        rows = cm.sum(axis=1, keepdims=True)
        frac = np.divide(cm, rows, out=np.zeros_like(cm), where=rows > 0)
        ax.imshow(frac, cmap="Blues", vmin=0, vmax=1)
        for i in range(k):
            for j in range(k):
                ax.text(j, i, f"{frac[i, j]:.2f}", ha="center", va="center", fontsize=7,
                        color="white" if frac[i, j] > 0.5 else "black")
        ax.set(title=model, xlabel="predicted class", ylabel="true class", xticks=range(k), yticks=range(k))
    return save(fig, path)


def slices_figure(delta: np.ndarray, truth: np.ndarray, predictions: Mapping[str, np.ndarray],
                  class_names: Sequence[str], box_size: float, path: str | os.PathLike) -> Path:
    """The input δ, the true classes and each model's predicted classes on one slice (L in Mpc/h)."""
    fig, axes = _panels(2 + len(predictions))
    extent = (0, box_size, 0, box_size) if np.isfinite(box_size) else None
    im = axes[0].imshow(delta.T, origin="lower", cmap="RdBu_r", extent=extent)
    axes[0].set_title("initial density δ")
    fig.colorbar(im, ax=axes[0], shrink=0.8)
    cmap, norm = class_colormap(len(class_names))
    for ax, (title, lab) in zip(axes[1:], [("truth (N-body)", truth), *predictions.items()]):
        im = ax.imshow(np.asarray(lab).T, origin="lower", cmap=cmap, norm=norm, extent=extent,
                       interpolation="nearest")
        ax.set_title(title)
    cb = fig.colorbar(im, ax=axes[1:], shrink=0.8, ticks=range(len(class_names)))
    cb.ax.set_yticklabels(class_names, fontsize=7)
    for ax in axes:
        ax.set(xlabel="y [Mpc/h]" if extent else "y [voxels]", ylabel="z [Mpc/h]" if extent else "z [voxels]")
    return save(fig, path)


def gradcam_figure(cams: Mapping[str, tuple[np.ndarray, np.ndarray, Sequence[str]]],
                   path: str | os.PathLike) -> Path:
    """Per model a row: the input channel 0 and the Grad-CAM map of each class, ``(input2d, maps (K,·,·), names)``."""
    n_cols = 1 + max(len(m) for _, m, _ in cams.values())
    fig = Figure(figsize=(3.0 * n_cols, 3.0 * len(cams)), layout="constrained")
    for r, (model, (inp, maps, names)) in enumerate(cams.items()):
        ax = fig.add_subplot(len(cams), n_cols, r * n_cols + 1)
        ax.imshow(np.asarray(inp).T, origin="lower", cmap="RdBu_r")
        ax.set_title(f"{model}: input", fontsize=8)
        ax.axis("off")
        for k, (m, cname) in enumerate(zip(maps, names)):
            ax = fig.add_subplot(len(cams), n_cols, r * n_cols + 2 + k)
            ax.imshow(np.asarray(m).T, origin="lower", cmap="inferno", vmin=0, vmax=1)
            ax.set_title(f"Grad-CAM {cname}", fontsize=8)
            ax.axis("off")
    return save(fig, path)


def halo_scatter_figure(halos: Mapping[str, tuple[np.ndarray, np.ndarray]], path: str | os.PathLike) -> Path:
    """True vs predicted halo mass (M☉/h), one panel per model; missed halos are counted in the title."""
    fig, axes = _panels(len(halos))
    for ax, (model, (true_mass, pred_mass)) in zip(axes, halos.items()):
        true_mass, pred_mass = np.asarray(true_mass, float), np.asarray(pred_mass, float)
        hit = pred_mass > 0
        ax.scatter(true_mass[hit], pred_mass[hit], s=4, alpha=0.5, lw=0)
        if true_mass.size:
            lo, hi = true_mass.min() / 2, true_mass.max() * 2
            ax.plot([lo, hi], [lo, hi], c="k", lw=0.8, ls="--")
        ax.set(xscale="log", yscale="log", xlabel="true halo mass [M☉/h]", ylabel="predicted mass [M☉/h]",
               title=f"{model}: {int((~hit).sum())} of {true_mass.size} missed")
    return save(fig, path)
