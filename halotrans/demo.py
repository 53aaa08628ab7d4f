"""The embedded default job: simulate → tidal shear → train vipr → evaluate → report.

    python -m halotrans demo                       # configs/demo.yaml, ~10 minutes on 2 CPU cores
    python -m halotrans demo --set train.time_budget_s=60

Each stage is the package's own command, run as a child process and printed first, so the demo
shows exactly what a user runs on a cluster (where the stages become `slurm/simulate.sh`,
`slurm/tidal_shear.sh`, `slurm/train_vipr.sh`). Every stage resumes: finished boxes are skipped,
training continues from its last checkpoint, so a killed demo picks up where it stopped.
Writes ``<train.out_dir>/../REPORT.md`` with the stage timings and the test-box metrics.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

from halotrans.cli import add_config_arguments, config_from_args
from halotrans.config import ConfigError, save_config
from halotrans.io import atomic_path, parse_seeds


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser, default="demo")


def _stage(name: str, argv: list[str], timings: dict[str, float]) -> None:
    """Run ``python -m halotrans <argv>``; stop the demo with that stage's exit status on failure."""
    cmd = [sys.executable, "-m", "halotrans", *argv]
    print(f"\n=== {name}: python -m halotrans {shlex.join(argv)}", flush=True)
    t0 = time.perf_counter()
    rc = subprocess.call(cmd)
    timings[name] = time.perf_counter() - t0
    if rc != 0:
        raise SystemExit(f"demo: stage '{name}' failed with exit status {rc}")


def _summary(report_json: Path) -> list[str]:
    """One Markdown row per model of the evaluation report: accuracy, AUCs, worst mass error."""
    report = json.loads(report_json.read_text())
    lines = []
    for name, m in report["models"].items():
        aucs = [p["auc"] for p in m["per_class"] if p["auc"] is not None]
        errs = [abs(p["mass_rel_error"]) for p in m["per_class"][1:] if p["mass_rel_error"] is not None]
        fmt = lambda x: "–" if x is None else f"{x:.3f}"  # noqa: E731
        lines.append(f"| {name} | {fmt(m['accuracy'])} | {fmt(min(aucs) if aucs else None)} | "
                     f"{fmt(m['auc_halo_vs_none'])} | {fmt(max(errs) if errs else None)} |")
    return lines


def run(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    if Path(cfg.sim.out_dir).resolve() != Path(cfg.data.root).resolve():
        raise ConfigError(f"demo: sim.out_dir ({cfg.sim.out_dir}) must equal data.root ({cfg.data.root})")
    run_dir = Path(cfg.train.out_dir)
    top = run_dir.parent
    top.mkdir(parents=True, exist_ok=True)
    config = top / "demo_config.yaml"
    save_config(cfg, config)  # the resolved config (with --set applied) that every stage reads
    seeds = sorted(set(parse_seeds(cfg.data.train_seeds)) | set(parse_seeds(cfg.data.val_seeds))
                   | set(parse_seeds(cfg.data.test_seeds)))
    seed_arg = ",".join(map(str, seeds))
    timings: dict[str, float] = {}
    _stage("simulate", ["simulate", "--config", str(config), "--seeds", seed_arg], timings)
    _stage("shear", ["shear", cfg.data.root], timings)
    _stage("train", ["train", "--config", str(config), "--resume"], timings)
    eval_dir = top / "eval"
    _stage("evaluate", ["evaluate", str(run_dir), cfg.data.root, "--out", str(eval_dir)], timings)

    lines = [
        "# halotrans demo",
        "",
        f"{len(seeds)} boxes of {cfg.sim.box_size:g} Mpc/h with {cfg.sim.n_grid}³ particles "
        f"({cfg.sim.n_steps} PM steps, {cfg.sim.mesh_factor}× mesh); inputs {', '.join(cfg.data.inputs)}; "
        f"{cfg.data.n_classes} classes (edges {list(cfg.data.class_edges)} in log10 M☉/h); "
        f"{cfg.model.name} trained on boxes {cfg.data.train_seeds}, validated on {cfg.data.val_seeds}, "
        f"tested on {cfg.data.test_seeds}.",
        "",
        "| stage | seconds |",
        "|---|---|",
        *[f"| {k} | {v:.1f} |" for k, v in timings.items()],
        "",
        "Test boxes (full-box periodic sliding-window inference):",
        "",
        "| model | accuracy | min per-class AUC | AUC halo vs none | max abs(ΔM/M) over halo classes |",
        "|---|---|---|---|---|",
        *_summary(eval_dir / "report.json"),
        "",
        f"Full report: `{eval_dir / 'report.md'}` (ROC curves, slices, Grad-CAM as PNG);",
        f"training curve: `{run_dir / 'metrics.csv'}`.",
    ]
    with atomic_path(top / "REPORT.md") as tmp:
        tmp.write_text("\n".join(lines) + "\n")
    print("\n" + "\n".join(lines))
    return 0
