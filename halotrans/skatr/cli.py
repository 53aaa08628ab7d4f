"""SKATR's commands: ``lightcones`` (21cmFAST data set) and ``skatr`` (summaries and reports on top of ``train``).

    python -m halotrans lightcones -c skatr/lightcones_lowres.yaml --n 600   # light cones (resumable)

    python -m halotrans train -c skatr/pretrain.yaml                       # JEPA pretraining
    python -m halotrans skatr summarize -c skatr/regress.yaml              # cache the frozen summaries
    python -m halotrans train -c skatr/regress.yaml                        # MLP head on the summaries
    python -m halotrans train -c skatr/npe.yaml                            # flow posterior on the summaries
    python -m halotrans train -c skatr/regress_scratch.yaml                # the ViT from scratch
    python -m halotrans skatr report runs/skatr/regress runs/skatr/npe --out runs/skatr/report

``compare-sampling`` runs the same seeds at several ``zprime_step_factor`` and reports what a cheaper
redshift sampling changes (τ, verdicts, global signal, field, power spectra; :mod:`halotrans.skatr.sampling`):

    python -m halotrans skatr compare-sampling -c skatr/lightcones_cpu.yaml --factors 1.02 1.05 1.10 \
        --reference 1.05 --seeds 0-199 --out runs/skatr_sampling      # resumable; --minutes caps a piece
    python -m halotrans skatr compare-sampling -c skatr/lightcones_cpu.yaml --factors 1.10 --seeds 0-199 \
        --reuse data/reference/lightcones_cpu.h5      # the 1.05 light cones of a `lightcones` run, not rerun

``summarize`` computes the summaries of ``skatr.encoder_run`` on ``lightcone.out`` once and
reuses them until the encoder checkpoint or the data set changes (``regress``/``npe`` runs call
it themselves). ``report`` evaluates finished ``regress``/``npe`` runs on the test split
(``<run>/report/``: report.json/.md, recovery, posterior and coverage plots) and, with
``--out``, compares them (table, coverage, data-efficiency curves vs training-set size).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from halotrans.cli import Command, add_config_arguments, config_from_args


def add_skatr_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", required=True, metavar="{summarize,report,compare-sampling}")
    s = sub.add_parser("summarize", help="cache the frozen encoder's summaries of every light cone")
    add_config_arguments(s, default="skatr/regress.yaml")
    s.add_argument("--no-progress", action="store_true", help="no progress bar")
    r = sub.add_parser("report", help="evaluate regress/npe runs on the test split; compare them")
    r.add_argument("runs", nargs="+", help="finished regress/npe run directories")
    r.add_argument("--out", help="directory of the comparison (skatr_report.md/.json, coverage, data efficiency)")
    r.add_argument("--split", default="test", choices=("train", "val", "test"), help="split to evaluate (test)")
    r.add_argument("--samples", type=int, help="posterior samples per light cone (default skatr.posterior_samples)")
    r.add_argument("--no-progress", action="store_true", help="no progress bar")
    c = sub.add_parser("compare-sampling", help="the same seeds at several zprime_step_factors: what changes")
    add_config_arguments(c, default="skatr/lightcones_cpu.yaml")
    c.add_argument("--factors", type=float, nargs="+", default=[1.02, 1.05, 1.10], help="zprime_step_factors to run")
    c.add_argument("--reference", type=float, default=1.05, help="the factor the others are compared with")
    c.add_argument("--seeds", default="0-19", help="seeds, e.g. 0-19 or 0,3,7 (resumes: done ones are kept)")
    c.add_argument("--out", default="runs/skatr_sampling", help="directory of the light cones and the report")
    c.add_argument("--minutes", type=float, help="start no new light cone after this many minutes")
    c.add_argument("--report-only", action="store_true", help="compare what is there, simulate nothing")
    c.add_argument("--reuse", metavar="LIGHTCONES_H5",
                   help="take the reference factor's light cones from this `lightcones` output (data set and parts, "
                        "same settings) instead of simulating them again")


def run_skatr(args: argparse.Namespace) -> int:
    if args.action == "compare-sampling":
        from halotrans.data.config import split_seeds
        from halotrans.skatr.sampling import compare, run_comparison, write_report

        cfg = config_from_args(args).lightcone
        if args.reuse and not args.report_only:
            from dataclasses import replace

            from halotrans.skatr.sampling import import_generated

            n = import_generated(replace(cfg, zprime_step_factor=args.reference), args.reuse, args.out,
                                 split_seeds(args.seeds))
            print(f"took {n} light cones at factor {args.reference:g} from {args.reuse}")
        if not args.report_only:
            res = run_comparison(cfg, args.factors, split_seeds(args.seeds), args.out, cfg.workers,
                                 None if args.minutes is None else 60 * args.minutes)
            print(f"computed {res['computed']} light cones in {res['wall_s']:.0f} s")
        path = write_report(compare(args.out, args.reference, cfg.tau_max, cfg.x_hi_max), args.out)
        print(path.read_text())
        return 0
    if args.action == "summarize":
        from halotrans.skatr.summaries import ensure_summaries, read_summaries

        cfg = config_from_args(args)
        path, status = ensure_summaries(cfg, progress=not args.no_progress)
        s = read_summaries(path, cfg)
        sizes = ", ".join(f"{k} {len(v)}" for k, v in s.splits.items())
        print(f"summaries {status}: {path} ({s.values.shape[0]} light cones x {s.values.shape[1]} symmetries x "
              f"{s.values.shape[2]} features; {sizes})")
        return 0

    from halotrans.skatr.eval import evaluate_run
    from halotrans.skatr.report import write_comparison, write_run_report

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


def add_lightcones_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser, default="skatr/lightcones_lowres.yaml")
    parser.add_argument("--n", type=int, help="number of accepted light cones (sets lightcone.n)")
    parser.add_argument("--out", help="output HDF5 file (sets lightcone.out)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run_lightcones(args: argparse.Namespace) -> int:
    """``python -m halotrans lightcones``: 21cmFAST light cones for SKATR → one HDF5 data set."""
    from halotrans.skatr.generate import generate_lightcones

    if args.n is not None:
        args.overrides.append(f"lightcone.n={args.n}")
    if args.out is not None:
        args.overrides.append(f"lightcone.out={args.out}")
    cfg = config_from_args(args).lightcone
    try:
        from halotrans.skatr import simulate  # noqa: F401 - checks the 21cmFAST version
    except ImportError as e:
        print(f"python -m halotrans lightcones: error: {e}", file=sys.stderr)
        return 2
    res = generate_lightcones(cfg, progress=not args.no_progress)
    per_lc = res["wall_s"] / res["computed"] if res["computed"] else float("nan")
    print(f"{cfg.out}: {res['accepted']} accepted, {res['rejected']} rejected in all; this run computed "
          f"{res['computed']} light cones (rejected: {res['reasons'] or 'none'}) in {res['wall_s']:.1f} s with "
          f"{cfg.workers} worker(s): {per_lc:.1f} s wall per light cone, {res['mean_lc_s']:.1f} s each in a worker")
    if res["screen"]:
        print(f"{res['screened']} seeds skipped unsimulated; {res['screen']}")
    if res["accepted"] < cfg.n:
        print(f"only {res['accepted']} of {cfg.n} accepted after max_attempts seeds; "
              "widen the priors or raise lightcone.max_attempts", file=sys.stderr)
        return 1
    return 0


LIGHTCONES = Command(add_lightcones_arguments, run_lightcones, description="""\
21cmFAST light cones for SKATR -> one HDF5 data set.

Draws the six SKATR parameters per seed, runs 21cmFAST 4.1.1 in ``workers`` processes, rejects
(and records) light cones with tau > ``tau_max`` or x_HI(z_min) > ``x_hi_max``, and writes
``out`` (layout in halotrans/skatr/store.py). Killed jobs resume where they stopped: run the same
command again; a larger ``--n`` extends an existing data set.

    python -m halotrans lightcones --config configs/skatr/lightcones_lowres.yaml --n 600
    python -m halotrans lightcones -c skatr/lightcones_cpu.yaml --set lightcone.workers=2
""")
SKATR = Command(add_skatr_arguments, run_skatr, description=__doc__)
