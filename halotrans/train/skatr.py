"""``python -m halotrans skatr``: SKATR downstream on top of ``train``: summaries and reports.

    python -m halotrans train -c skatr/pretrain.yaml                       # JEPA pretraining
    python -m halotrans skatr summarize -c skatr/regress.yaml              # cache the frozen summaries
    python -m halotrans train -c skatr/regress.yaml                        # MLP head on the summaries
    python -m halotrans train -c skatr/npe.yaml                            # flow posterior on the summaries
    python -m halotrans train -c skatr/regress_scratch.yaml                # the ViT from scratch
    python -m halotrans skatr report runs/skatr/regress runs/skatr/npe --out runs/skatr/report

``summarize`` computes the summaries of ``skatr.encoder_run`` on ``lightcone.out`` once and
reuses them until the encoder checkpoint or the data set changes (``regress``/``npe`` runs call
it themselves). ``report`` evaluates finished ``regress``/``npe`` runs on the test split
(``<run>/report/``: report.json/.md, recovery, posterior and coverage plots) and, with
``--out``, compares them (table, coverage, data-efficiency curves vs training-set size).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from halotrans.cli import add_config_arguments, config_from_args


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", required=True, metavar="{summarize,report}")
    s = sub.add_parser("summarize", help="cache the frozen encoder's summaries of every light cone")
    add_config_arguments(s, default="skatr/regress.yaml")
    s.add_argument("--no-progress", action="store_true", help="no progress bar")
    r = sub.add_parser("report", help="evaluate regress/npe runs on the test split; compare them")
    r.add_argument("runs", nargs="+", help="finished regress/npe run directories")
    r.add_argument("--out", help="directory of the comparison (skatr_report.md/.json, coverage, data efficiency)")
    r.add_argument("--split", default="test", choices=("train", "val", "test"), help="split to evaluate (test)")
    r.add_argument("--samples", type=int, help="posterior samples per light cone (default skatr.posterior_samples)")
    r.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    if args.action == "summarize":
        from halotrans.train.summaries import ensure_summaries, read_summaries

        cfg = config_from_args(args)
        path, status = ensure_summaries(cfg, progress=not args.no_progress)
        s = read_summaries(path, cfg)
        sizes = ", ".join(f"{k} {len(v)}" for k, v in s.splits.items())
        print(f"summaries {status}: {path} ({s.values.shape[0]} light cones x {s.values.shape[1]} features; {sizes})")
        return 0

    from halotrans.train.skatr_eval import evaluate_run
    from halotrans.train.skatr_report import write_comparison, write_run_report

    reports = []
    for run_dir in args.runs:
        report = evaluate_run(run_dir, args.split, args.samples, progress=not args.no_progress)
        path = write_run_report(report, Path(run_dir) / "report")
        m = report["metrics"]
        extra = f", log posterior {m['log_posterior']:.3f}, calibration error {m['calibration_error']:.3f}" \
            if "log_posterior" in m else ""
        print(f"{run_dir}: {report['info']['label']}: mean R² {m['r2_mean']:.4f}, "
              f"mean relative error {m['relative_error_mean']:.4f}{extra} -> {path.parent}")
        reports.append(report)
    if args.out:
        print(f"wrote {write_comparison(reports, args.out)}")
    return 0
