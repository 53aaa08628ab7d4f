"""Gather the final metrics of every run of a sweep into one table (CSV and Markdown).

The runs are those listed in the sweep's ``sweep.json`` (so runs that never started show up as
``missing``), or, without a manifest, every sub-directory holding a ``config.yaml``. One row per
run: its name, status (done | failed | incomplete | missing), its grid values, the last value of
each ``metrics.csv`` column and the numbers of any ``report.json``, and the error of a failed run.

    rows = collect("runs/sweeps/segment_ablation")
    write_table(rows, "runs/sweeps/segment_ablation")   # results.csv, results.md
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from halotrans.formatting import number
from halotrans.io import DataError, atomic_path
from halotrans.launch.rundir import final_metrics, run_status
from halotrans.launch.sweep import MANIFEST


def _runs(sweep_dir: Path) -> list[dict[str, Any]]:
    manifest = sweep_dir / MANIFEST
    if manifest.is_file():
        return json.loads(manifest.read_text())["runs"]
    dirs = sorted(p.parent for p in sweep_dir.glob("*/config.yaml"))
    if not dirs:
        raise DataError(f"{sweep_dir}: no {MANIFEST} and no run directories (*/config.yaml) to collect")
    return [{"name": d.name, "run_dir": str(d), "values": {}} for d in dirs]


def _value(v: Any) -> Any:
    return "-".join(map(str, v)) if isinstance(v, (list, tuple)) else v


def collect(sweep_dir: str | Path) -> list[dict[str, Any]]:
    """One dict per run: ``run``, ``status``, grid values, final metrics, ``error``."""
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise DataError(f"{sweep_dir}: not a directory")
    rows = []
    for run in _runs(sweep_dir):
        run_dir = Path(run["run_dir"])
        if not run_dir.is_absolute() and not run_dir.exists():
            run_dir = sweep_dir / run["name"]
        status, error = run_status(run_dir)
        rows.append({"run": run["name"], "status": status,
                     **{k: _value(v) for k, v in run["values"].items()},
                     **final_metrics(run_dir), "error": error})
    return rows


def columns(rows: list[dict[str, Any]]) -> list[str]:
    """All keys in first-seen order, ``error`` last."""
    cols: dict[str, None] = {}
    for r in rows:
        cols.update(dict.fromkeys(r))
    cols.pop("error", None)
    return [*cols, "error"]


def markdown(rows: list[dict[str, Any]]) -> str:
    """A Markdown table of ``rows`` (numbers to 6 significant digits, blanks for absent values)."""
    cols = columns(rows)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(number(r.get(c), 6, none="").replace("|", "\\|") for c in cols) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def write_table(rows: list[dict[str, Any]], out_dir: str | Path) -> tuple[Path, Path]:
    """Write ``results.csv`` and ``results.md`` into ``out_dir`` (atomically); return both paths."""
    out_dir = Path(out_dir)
    csv_path, md_path = out_dir / "results.csv", out_dir / "results.md"
    cols = columns(rows)
    with atomic_path(csv_path) as tmp:
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=cols)
            w.writeheader()
            w.writerows({c: number(r.get(c), 6, none="") for c in cols} for r in rows)
    with atomic_path(md_path) as tmp:
        tmp.write_text(markdown(rows))
    return csv_path, md_path
