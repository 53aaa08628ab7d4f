"""Submit the runs of a sweep as one submitit job array.

    sweep = load_sweep("sweeps/segment_ablation")
    jobs = submit_sweep(sweep, executor="slurm")   # or "local", "debug", "auto"
    wait(jobs); write_table(collect(sweep.out_dir), sweep.out_dir)

Every run's config is built and checked first; only then are the run directories, their
``config.yaml`` and the manifest ``sweep.json`` written and the array submitted. Runs that are
already done are skipped, so submitting a sweep again only redoes what failed or never ran.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import submitit

from halotrans.config import ConfigError, config_to_dict, load_config, save_config
from halotrans.io import atomic_path
from halotrans.launch.grid import Run, Sweep
from halotrans.launch.job import TrainJob
from halotrans.launch.rundir import has_checkpoint, run_status

EXECUTORS = ("auto", "slurm", "local", "debug")
MANIFEST = "sweep.json"
#: submitit's local executor kills a job after 2 minutes unless told otherwise
DEFAULT_RESOURCES = {"timeout_min": 60, "nodes": 1, "tasks_per_node": 1}


def make_executor(kind: str, folder: Path, resources: dict[str, Any], name: str) -> submitit.AutoExecutor:
    """A submitit executor: ``auto`` picks SLURM when ``srun`` is on PATH, else local processes."""
    if kind not in EXECUTORS:
        raise ConfigError(f"unknown executor '{kind}'; choose one of {', '.join(EXECUTORS)}")
    executor = submitit.AutoExecutor(folder=folder / "%j", cluster=None if kind == "auto" else kind)
    try:
        executor.update_parameters(name=name, **{**DEFAULT_RESOURCES, **resources})
    except (ValueError, TypeError, NameError) as e:
        raise ConfigError(f"sweep resources: {e}".splitlines()[0]) from None
    return executor


def _check_resumable(run: Run) -> None:
    """Refuse to resume a checkpoint that was trained with another config."""
    path = run.run_dir / "config.yaml"
    if not (has_checkpoint(run.run_dir) and path.is_file()):
        return
    old, new = config_to_dict(load_config(path)), config_to_dict(run.config)
    changed = [f"{s}.{k}" for s, section in old.items() for k, v in section.items() if new[s].get(k) != v]
    if changed:
        raise ConfigError(f"{run.run_dir} has a checkpoint trained with a different config "
                          f"(changed: {', '.join(changed)}); use another out_dir or delete it")


def write_manifest(sweep: Sweep, runs: list[Run], jobs: dict[str, str]) -> Path:
    """``out_dir/sweep.json``: the grid, every run and its job id (read by the collector)."""
    path = sweep.out_dir / MANIFEST
    old = json.loads(path.read_text()).get("jobs", {}) if path.is_file() else {}
    manifest = {
        "name": sweep.name, "source": sweep.source, "config": sweep.config, "grid": sweep.grid,
        "set": sweep.fixed, "runs": [{"name": r.name, "run_dir": str(r.run_dir), "values": r.values} for r in runs],
        "jobs": {**old, **jobs},
    }
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(manifest, indent=1))
    return path


def submit_sweep(sweep: Sweep, executor: str = "auto") -> list[submitit.Job]:
    """Check every run's config, write the run directories and submit the unfinished runs.

    Returns the submitted jobs (one per run still to do). Local and debug jobs die with this
    process: wait for them (:func:`wait`) before exiting.
    """
    runs = sweep.runs()
    for run in runs:
        _check_resumable(run)
    ex = make_executor(executor, sweep.out_dir / "submitit", sweep.resources, sweep.name)
    todo = [r for r in runs if run_status(r.run_dir)[0] != "done"]
    for run in todo:
        save_config(run.config, run.run_dir / "config.yaml")
    write_manifest(sweep, runs, {})
    if not todo:
        return []
    jobs = ex.map_array(TrainJob(), [str(r.run_dir) for r in todo])
    write_manifest(sweep, runs, {r.name: j.job_id for r, j in zip(todo, jobs)})
    return jobs


def wait(jobs: list[submitit.Job]) -> list[str]:
    """Wait for every job; return one line per failed job (failures are also in each run's
    ``launch.json``, so the collector marks them)."""
    failures = []
    for job in jobs:
        try:
            job.result()
        except Exception as e:  # noqa: BLE001 - a failed run is reported, not fatal to the sweep
            lines = str(e).strip().splitlines()
            failures.append(f"job {job.job_id}: {lines[-1] if lines else type(e).__name__}")
    return failures
