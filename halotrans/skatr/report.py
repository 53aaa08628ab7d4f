"""SKATR report files: per-run metrics and plots, and the comparison of several runs.

Per run (``<run>/report/``): ``report.json`` (info + metrics; ``sweep collect`` picks it up),
``report.md``, ``recovery.png`` (point estimate vs truth per parameter, posterior std as error
bars for npe), and for npe ``posteriors.png`` (marginal posteriors of a few test light cones with
the truth), ``coverage.png`` (HPD coverage vs nominal credibility, with the band a calibrated
posterior fills at this number of test light cones) and ``calibration.png`` (HPD in θ and logit
space, per-parameter rank coverage and TARP, each with that band).
Comparison (``--out``): ``skatr_report.md`` / ``.json`` (one row per run), ``coverage.png``
(every npe run) and ``data_efficiency.png`` (test R² / log posterior vs training light cones,
one curve per kind of summary).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from halotrans.formatting import number
from halotrans.io import atomic_path
from halotrans.skatr.eval import NOMINAL

#: test light cones shown in posteriors.png
N_POSTERIOR_PANELS = 3


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    _pyplot().close(fig)


def plot_recovery(arrays: dict[str, np.ndarray], names: Sequence[str], path: Path) -> None:
    """Estimated vs true value, one panel per parameter (physical units)."""
    plt = _pyplot()
    p = len(names)
    fig, axes = plt.subplots(1, p, figsize=(3.0 * p, 3.0), squeeze=False)
    for i, (ax, name) in enumerate(zip(axes[0], names)):
        t, e = arrays["true"][:, i], arrays["pred"][:, i]
        err = arrays["std"][:, i] if "std" in arrays else None
        ax.errorbar(t, e, yerr=err, fmt="o", ms=3, alpha=0.7, elinewidth=0.8)
        lo, hi = min(t.min(), e.min()), max(t.max(), e.max())
        ax.plot([lo, hi], [lo, hi], "k--", lw=0.8)
        ax.set_xlabel(f"true {name}")
        ax.set_ylabel(f"estimated {name}")
    fig.tight_layout()
    _save(fig, path)


def plot_posteriors(arrays: dict[str, np.ndarray], names: Sequence[str], path: Path) -> None:
    """Marginal posterior histograms (rows: test light cones, columns: parameters) with the truth."""
    plt = _pyplot()
    n, p = min(N_POSTERIOR_PANELS, len(arrays["true"])), len(names)
    fig, axes = plt.subplots(n, p, figsize=(2.6 * p, 2.2 * n), squeeze=False)
    for r in range(n):
        for i, name in enumerate(names):
            ax = axes[r, i]
            ax.hist(arrays["samples"][r, :, i], bins=30, density=True, color="C0", alpha=0.7)
            ax.axvline(arrays["true"][r, i], color="k", lw=1.2)
            ax.set_yticks([])
            if r == n - 1:
                ax.set_xlabel(name)
    fig.tight_layout()
    _save(fig, path)


def plot_coverage(curves: dict[str, np.ndarray], path: Path, band: tuple[np.ndarray, np.ndarray] | None = None,
                  band_label: str = "calibrated, 90 %") -> None:
    """Empirical HPD coverage vs nominal credibility, one line per run; the diagonal is calibrated and
    ``band`` (lower, upper) the pointwise spread of a calibrated posterior's curve."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(4, 4))
    ax.plot([0, 1], [0, 1], "k--", lw=0.8)
    if band is not None:
        ax.fill_between(NOMINAL, band[0], band[1], color="0.8", label=band_label)
    for label, cov in curves.items():
        ax.plot(NOMINAL, cov, marker="o", ms=3, label=label)
    ax.set_xlabel("nominal credibility")
    ax.set_ylabel("empirical coverage")
    ax.legend(fontsize=7)
    fig.tight_layout()
    _save(fig, path)


def plot_calibration(arrays: dict[str, np.ndarray], names: Sequence[str], n: int, path: Path) -> None:
    """Four coverage panels, each with the band of a calibrated posterior at ``n`` test points: HPD in θ-space,
    HPD in logit space, central intervals per parameter, TARP."""
    plt = _pyplot()
    panels = [("HPD, θ-space", {"": arrays["coverage"]}), ("HPD, logit space", {"": arrays["coverage_logit"]}),
              ("central interval per parameter", dict(zip(names, arrays["coverage_rank"]))),
              ("TARP", {"": arrays["coverage_tarp"]})]
    fig, axes = plt.subplots(1, 4, figsize=(14, 3.6))
    for ax, (title, curves) in zip(axes, panels):
        ax.fill_between(NOMINAL, arrays["band_lower"], arrays["band_upper"], color="0.8", label=f"calibrated, n={n}")
        ax.plot([0, 1], [0, 1], "k--", lw=0.8)
        for label, cov in curves.items():
            ax.plot(NOMINAL, cov, marker="o", ms=2, label=label or None)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("nominal credibility")
        ax.legend(fontsize=6)
    axes[0].set_ylabel("empirical coverage")
    fig.tight_layout()
    _save(fig, path)


def plot_data_efficiency(reports: Sequence[dict], path: Path) -> None:
    """Test R² (regress) and log posterior (npe) against the number of training light cones."""
    plt = _pyplot()
    panels = [("regress", "r2_mean", "mean test R²"), ("npe", "log_posterior", "test log posterior")]
    panels = [p for p in panels if any(r["info"]["task"] == p[0] for r in reports)]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 3.5), squeeze=False)
    for ax, (task, key, ylabel) in zip(axes[0], panels):
        labels = sorted({r["info"]["label"] for r in reports if r["info"]["task"] == task})
        for label in labels:
            pts = sorted((r["info"]["n_train"], r["metrics"][key]) for r in reports if r["info"]["label"] == label)
            ax.plot(*zip(*pts), marker="o", label=label.split(": ", 1)[1])
        ax.set_xscale("log")
        ax.set_xlabel("training light cones")
        ax.set_ylabel(ylabel)
        ax.legend(fontsize=7)
    fig.tight_layout()
    _save(fig, path)


def _json(report: dict) -> dict:
    return {"info": report["info"], "metrics": report["metrics"]}


def _markdown_run(report: dict) -> str:
    info, m = report["info"], report["metrics"]
    lines = [f"# SKATR {info['label']}", "",
             f"Run `{info['run']}`, step {info['step']}; {info['n_train']} training light cones "
             f"(fraction {info['train_fraction']}), {info['n_test']} {info['split']} light cones; "
             f"training took {number(info['train_seconds'])} s.", ""]
    if info.get("encoder"):
        e = info["encoder"]
        lines += [f"Summary: frozen encoder of `{e.get('run')}` ({e.get('task')}, {e.get('weights')} weights, "
                  f"checkpoint sha256 {str(e.get('checkpoint_sha256'))[:12]}).", ""]
    lines += ["| parameter | R² | relative error |", "|---|---|---|"]
    lines += [f"| {n} | {m['r2'][n]:.4f} | {m['relative_error'][n]:.4f} |" for n in info["param_names"]]
    lines += [f"| **mean** | {m['r2_mean']:.4f} | {m['relative_error_mean']:.4f} |", ""]
    if info["task"] == "npe":
        lines += [f"Test log posterior density: {m['log_posterior']:.4f} (prior-normalised units), "
                  f"{m['log_posterior_physical']:.4f} (physical units); {info['n_samples']} samples per light cone.",
                  f"Calibration: largest |coverage − nominal| of the HPD regions = {m['calibration_error']:.3f}"
                  + (f" (θ-space), {m['calibration_error_logit']:.3f} (logit space); TARP {m['tarp_error']:.3f}; "
                     "per parameter " + ", ".join(f"{k} {v:.3f}" for k, v in m["calibration_error_rank"].items())
                     + f". A calibrated posterior on {info['n_test']} light cones: median "
                     f"{m['calibrated_gap_median']:.3f}, 90th percentile {m['calibrated_gap_q90']:.3f}."
                     if "calibration_error_logit" in m else "."), "",
                  "![recovery](recovery.png) ![posteriors](posteriors.png) ![coverage](coverage.png)"
                  + (" ![calibration](calibration.png)" if "calibration_error_logit" in m else "")]
    else:
        lines += ["![recovery](recovery.png)"]
    return "\n".join(lines) + "\n"


def write_run_report(report: dict, out_dir: str | os.PathLike) -> Path:
    """report.json, report.md and the plots of one evaluated run in ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    names = report["info"]["param_names"]
    plot_recovery(report["arrays"], names, out / "recovery.png")
    if report["info"]["task"] == "npe":
        plot_posteriors(report["arrays"], names, out / "posteriors.png")
        a = report["arrays"]
        band = (a["band_lower"], a["band_upper"]) if "band_lower" in a else None
        plot_coverage({report["info"]["label"]: a["coverage"]}, out / "coverage.png", band,
                      f"calibrated, n={report['info']['n_test']}, 90 %")
        if "coverage_logit" in a:
            plot_calibration(a, names, report["info"]["n_test"], out / "calibration.png")
    with atomic_path(out / "report.md") as tmp:
        tmp.write_text(_markdown_run(report))
    with atomic_path(out / "report.json") as tmp:
        tmp.write_text(json.dumps(_json(report), indent=1))
    return out / "report.json"


def write_comparison(reports: Sequence[dict], out_dir: str | os.PathLike) -> Path:
    """skatr_report.md / .json, coverage.png (npe runs) and data_efficiency.png for several runs."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = ["| run | summary | task | training light cones | train s | mean R² | mean rel. error | "
            "log posterior | calibration error |", "|---|---|---|---|---|---|---|---|---|"]
    for r in reports:
        i, m = r["info"], r["metrics"]
        rows.append(f"| `{Path(i['run']).name}` | {i['label'].split(': ', 1)[1]} | {i['task']} | {i['n_train']} | "
                    f"{number(i['train_seconds'])} | {m['r2_mean']:.4f} | {m['relative_error_mean']:.4f} | "
                    f"{number(m.get('log_posterior'))} | {number(m.get('calibration_error'))} |")
    lines = ["# SKATR comparison", "", *rows, ""]
    curves = {f"{Path(r['info']['run']).name}": r["arrays"]["coverage"] for r in reports if r["info"]["task"] == "npe"}
    if curves:
        plot_coverage(curves, out / "coverage.png")
        lines.append("![coverage](coverage.png)")
    plot_data_efficiency(reports, out / "data_efficiency.png")
    lines.append("![data efficiency](data_efficiency.png)")
    with atomic_path(out / "skatr_report.md") as tmp:
        tmp.write_text("\n".join(lines) + "\n")
    with atomic_path(out / "skatr_report.json") as tmp:
        tmp.write_text(json.dumps([_json(r) for r in reports], indent=1))
    return out / "skatr_report.md"
