"""How far one training run got, read from its run directory.

A run directory (``cfg.train.out_dir``) holds ``config.yaml``, ``metrics.csv``, DeepSpeed
checkpoints under ``checkpoints/`` (``latest`` names the newest tag) and ``model.pt`` once training
finished. The launchers add ``launch.json`` when a job fails. From these files a run is:

- ``done``: ``model.pt`` exists;
- ``failed``: ``launch.json`` records an error, or ``diverged.json`` a non-finite loss;
- ``incomplete``: it started (metrics or a checkpoint) but did not finish (killed, or still running);
- ``missing``: nothing was written yet.

``python -m halotrans.launch.rundir --config X [--set k=v ...]`` prints ``--resume`` when the run
that config describes has a checkpoint to resume from (and nothing otherwise); the SLURM scripts
use it to restart a requeued job where it stopped. Config errors exit with status 2; a run that
diverged and would repeat with the same settings exits with status 3 before any rank starts
(:mod:`halotrans.train.divergence`), so a requeued job does not train into the same failure.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

from halotrans.io import atomic_path
from halotrans.train import divergence
from halotrans.yaml_config import flatten

STATUS_FILE = "launch.json"


def has_checkpoint(run_dir: str | Path) -> bool:
    """True when ``run_dir/checkpoints`` holds a complete checkpoint to resume from."""
    ckpt = Path(run_dir) / "checkpoints"
    latest = ckpt / "latest"
    return latest.is_file() and (ckpt / latest.read_text().strip()).is_dir()


def mark_failed(run_dir: str | Path, error: str) -> None:
    """Record that the job for ``run_dir`` raised ``error`` (one line kept)."""
    with atomic_path(Path(run_dir) / STATUS_FILE) as tmp:
        tmp.write_text(json.dumps({"state": "failed", "error": error.strip().splitlines()[-1][:300]
                                   if error.strip() else "unknown error", "time": time.time()}))


def clear_failed(run_dir: str | Path) -> None:
    """Forget an earlier failure (a new attempt is starting)."""
    (Path(run_dir) / STATUS_FILE).unlink(missing_ok=True)


def _number(text: str) -> float | str:
    try:
        return float(text)
    except ValueError:
        return text


def final_metrics(run_dir: str | Path) -> dict[str, Any]:
    """The last value logged in each column of ``metrics.csv`` (columns may be sparse: validation
    metrics appear only every ``eval_every`` steps), plus numeric entries of ``report.json`` files in
    the run directory or one level below, prefixed ``eval.``."""
    run_dir = Path(run_dir)
    out: dict[str, Any] = {}
    path = run_dir / "metrics.csv"
    if path.is_file():
        with open(path, newline="") as f:
            for rec in csv.DictReader(f):
                out.update({k: _number(v) for k, v in rec.items() if k and v not in (None, "")})
    for report in sorted([*run_dir.glob("report.json"), *run_dir.glob("*/report.json")]):
        try:
            data = json.loads(report.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        out.update({f"eval.{k}": v for k, v in _numbers(data).items()})
    return out


def _numbers(d: Any) -> dict[str, float]:
    """The finite numbers of a nested report, by dotted key (none if it is not a mapping)."""
    return {k: float(v) for k, v in (flatten(d) if isinstance(d, dict) else {}).items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}


def run_status(run_dir: str | Path) -> tuple[str, str]:
    """``(status, error)`` of a run: status is done | failed | incomplete | missing."""
    run_dir = Path(run_dir)
    if (run_dir / "model.pt").is_file():
        return "done", ""
    marker = divergence.read(run_dir)
    if marker is not None:
        return "failed", f"diverged: non-finite {marker.get('what', 'loss')} at step {marker.get('step')}"
    status = run_dir / STATUS_FILE
    if status.is_file():
        try:
            rec = json.loads(status.read_text())
        except json.JSONDecodeError:
            rec = {"state": "failed", "error": f"unreadable {STATUS_FILE}"}
        if rec.get("state") == "failed":
            return "failed", str(rec.get("error", ""))
    if (run_dir / "metrics.csv").is_file() or has_checkpoint(run_dir):
        return "incomplete", ""
    return "missing", ""


def main(argv: list[str] | None = None) -> int:
    from halotrans.cli import add_config_arguments, config_from_args, run_reporting_errors

    parser = argparse.ArgumentParser(prog="python -m halotrans.launch.rundir",
                                     description="print --resume if the configured run has a checkpoint")
    add_config_arguments(parser)

    def report(args: argparse.Namespace) -> int:
        cfg = config_from_args(args)
        run_dir = Path(cfg.train.out_dir)
        refusal = divergence.refusal(run_dir, cfg)
        if refusal:
            raise divergence.TrainingDiverged(refusal)
        resume = has_checkpoint(run_dir)
        state = "checkpoint found, resuming" if resume else "no checkpoint, starting fresh"
        print(f"[halotrans] run dir {run_dir}: {state}", file=sys.stderr)
        if resume:
            print("--resume")
        return 0

    args, _train_options = parser.parse_known_args(argv)  # other train options pass through
    return run_reporting_errors(parser.prog, report, args)


if __name__ == "__main__":
    sys.exit(main())
