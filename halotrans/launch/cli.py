"""Grid sweeps over config keys with submitit, and the table of their results.

    python -m halotrans sweep submit sweeps/segment_ablation --dry-run    # check, list the runs
    python -m halotrans sweep submit sweeps/segment_ablation --executor slurm
    python -m halotrans sweep collect runs/sweeps/segment_ablation        # results.csv / .md

``submit`` checks every run's config before submitting anything, writes one run directory per
grid point and submits them as one job array (``--executor auto`` picks SLURM when ``srun`` is
on PATH, else local processes). SLURM jobs requeue themselves before their time limit and resume
from their last checkpoint. Local and debug jobs run while this command waits; ``--wait`` makes it
wait for SLURM jobs too. After waiting, the results table is written and printed. A failing
debug job opens the debugger (that is what the debug executor is for).
"""

from __future__ import annotations

import argparse

import submitit

from halotrans.launch.collect import collect, markdown, write_table
from halotrans.launch.grid import load_sweep
from halotrans.launch.sweep import EXECUTORS, submit_sweep, wait


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", required=True, metavar="{submit,collect}")
    p = sub.add_parser("submit", help="expand a sweep file and submit its runs")
    p.add_argument("sweep", help="sweep YAML (a path, or a name in configs/, e.g. sweeps/segment_ablation)")
    p.add_argument("--executor", choices=EXECUTORS, default="auto",
                   help="where jobs run: slurm, local processes, debug (in this process), auto (default)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="fixed override for every run, e.g. --set train.steps=100; out_dir=DIR moves the sweep")
    p.add_argument("--dry-run", action="store_true", help="check the configs and list the runs; submit nothing")
    p.add_argument("--wait", action="store_true", help="wait for SLURM jobs and collect (always for local/debug)")
    c = sub.add_parser("collect", help="gather each run's final metrics into results.csv and results.md")
    c.add_argument("sweep_dir", help="the sweep's out_dir (holding sweep.json and one directory per run)")


def run(args: argparse.Namespace) -> int:
    if args.action == "collect":
        rows = collect(args.sweep_dir)
        csv_path, md_path = write_table(rows, args.sweep_dir)
        print(markdown(rows) + f"\nwrote {csv_path} and {md_path}")
        return 0
    sweep = load_sweep(args.sweep, args.overrides)
    if args.dry_run:
        runs = sweep.runs()
        print(f"sweep {sweep.name}: {len(runs)} runs in {sweep.out_dir} (configs checked, nothing submitted)")
        for r in runs:
            print(f"  {r.name}: " + ", ".join(f"{k}={v}" for k, v in r.values.items()))
        return 0
    jobs = submit_sweep(sweep, args.executor)
    print(f"sweep {sweep.name}: submitted {len(jobs)} runs "
          f"({', '.join(j.job_id for j in jobs) or 'all runs already done'}) -> {sweep.out_dir}")
    if not (args.wait or any(isinstance(j, (submitit.LocalJob, submitit.DebugJob)) for j in jobs)):
        print(f"collect later with: python -m halotrans sweep collect {sweep.out_dir}")
        return 0
    failures = wait(jobs)
    rows = collect(sweep.out_dir)
    csv_path, md_path = write_table(rows, sweep.out_dir)
    print(markdown(rows) + f"\nwrote {csv_path} and {md_path}")
    for f in failures:
        print(f"failed: {f}")
    return 1 if failures else 0
