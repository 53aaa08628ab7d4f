"""Launchers without a cluster: the batch script run with bash, submitit local/debug sweeps, requeue.

Tiny ViPR (``configs/segment/tiny_vipr.yaml``) on four 32³ boxes, a few DeepSpeed steps on the CPU.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path

import psutil
import pytest
import submitit

from halotrans.config import load_config, save_config
from halotrans.launch import TrainJob, collect, load_sweep, submit_sweep, wait
from halotrans.launch.rundir import run_status
from halotrans.launch.sweep import make_executor
from tests.helpers import BIN, REPO, halotrans_cli, subprocess_env

pytestmark = [pytest.mark.slow, pytest.mark.dist]

TINY = "segment/tiny_vipr.yaml"
SLURM_TOOLS = {"sbatch", "srun", "salloc", "scontrol", "squeue", "scancel", "sinfo", "sacct"}


def tiny_sets(boxes: Path, run_dir: Path, *extra: str) -> list[str]:
    sets = [f"data.root={boxes}", f"train.out_dir={run_dir}", *extra]
    return [a for s in sets for a in ("--set", s)]


def no_slurm_env(tmp_path: Path) -> dict[str, str]:
    """This venv plus the system tools except SLURM's on PATH, and no SLURM_* variables."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for d in ("/usr/local/bin", "/usr/bin", "/bin"):
        for tool in Path(d).iterdir() if Path(d).is_dir() else []:
            if tool.name not in SLURM_TOOLS and not (bin_dir / tool.name).exists():
                (bin_dir / tool.name).symlink_to(tool)
    env = {k: v for k, v in subprocess_env().items() if not k.startswith("SLURM_")}
    env["PATH"] = f"{BIN}{os.pathsep}{bin_dir}"
    if len(os.sched_getaffinity(0)) > 4:  # keep the run small on big machines
        env["HALOTRANS_NPROC"] = "2"
    return env


def test_train_script_runs_without_slurm_and_resumes(tiny_boxes, tmp_path):
    env = no_slurm_env(tmp_path)
    assert subprocess.run(["bash", "-c", "command -v sbatch srun"], env=env).returncode != 0
    run_dir = tmp_path / "run"
    cmd = ["bash", str(REPO / "slurm" / "train_vipr.sh"), TINY]
    first = subprocess.run(cmd + tiny_sets(tiny_boxes, run_dir, "train.steps=4"), env=env, cwd=tmp_path,
                           capture_output=True, text=True, timeout=600)
    out = first.stdout + first.stderr
    assert first.returncode == 0, out[-4000:]
    ranks = env.get("HALOTRANS_NPROC", str(len(os.sched_getaffinity(0))))
    assert f"torch.distributed.run --standalone --nnodes=1 --nproc_per_node={ranks} -m halotrans train" in out
    assert f"{ranks} rank(s)" in out and "no checkpoint, starting fresh" in out
    assert (run_dir / "model.pt").is_file() and (run_dir / "checkpoints" / "latest").read_text() == "step_00000004"

    # Submitted again with more steps: the script finds the checkpoint and resumes from it.
    again = subprocess.run(cmd + tiny_sets(tiny_boxes, run_dir, "train.steps=6"), env=env, cwd=tmp_path,
                           capture_output=True, text=True, timeout=600)
    out = again.stdout + again.stderr
    assert again.returncode == 0, out[-4000:]
    assert "checkpoint found, resuming" in out and "resumed from step 4" in out
    steps = [int(r.split(",")[0]) for r in (run_dir / "metrics.csv").read_text().splitlines()[1:]]
    assert steps[-1] == 6 and steps == sorted(set(steps))


def test_train_script_rejects_a_bad_config_before_starting_ranks(tmp_path):
    proc = subprocess.run(["bash", str(REPO / "slurm" / "train_vipr.sh"), TINY, "--set", "train.stepz=3"],
                          env=no_slurm_env(tmp_path), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "stepz" in proc.stderr and "torch.distributed.run" not in proc.stdout


def test_local_executor_sweep_collects_done_and_failed_runs(tiny_boxes, tmp_path):
    """Two 2-rank local jobs through the CLI; the one whose training box does not exist fails."""
    path = tmp_path / "sweep.yaml"
    path.write_text(f"""
config: {TINY}
out_dir: {tmp_path / 'sweep'}
set: {{data.root: {tiny_boxes}, train.steps: 3, train.eval_every: 3}}
grid:
  data.train_seeds: ["0-1", "7"]
resources: {{tasks_per_node: 2, timeout_min: 10}}
""")
    proc = halotrans_cli("sweep", "submit", path, "--executor", "local", check=False, timeout=600)
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "submitted 2 runs" in proc.stdout and "failed: job" in proc.stdout
    rows = {r["run"]: r for r in collect(tmp_path / "sweep")}
    assert rows["000_0-1"]["status"] == "done" and rows["000_0-1"]["step"] == 3
    assert rows["000_0-1"]["val_acc"] > 0
    assert rows["001_7"]["status"] == "failed" and "box_0007.h5" in rows["001_7"]["error"]
    logs = "".join(p.read_text() for p in (tmp_path / "sweep" / "submitit").rglob("*_log.out"))
    assert "task 1/2" in logs and "2 rank(s)" in logs  # two submitit tasks formed one DeepSpeed world
    table = (tmp_path / "sweep" / "results.md").read_text()
    assert "| 000_0-1 | done |" in table and "| 001_7 | failed |" in table

    # Submitting again only redoes the unfinished run (which fails the same way).
    again = halotrans_cli("sweep", "submit", path, "--executor", "local", check=False, timeout=600)
    assert "submitted 1 runs" in again.stdout and again.returncode == 1


def test_debug_executor_runs_in_process_and_records_failure(tiny_boxes, tmp_path, monkeypatch):
    """The debug executor runs the job in this process (and restores os.environ after it)."""
    import pdb

    monkeypatch.setattr(pdb, "post_mortem", lambda *a: None)  # it would open the debugger on the failure
    sweep = load_sweep(_write(tmp_path / "s.yaml", f"""
config: {TINY}
out_dir: {tmp_path / 'sweep'}
set: {{data.root: {tmp_path / 'nowhere'}}}
grid: {{train.seed: [1]}}
"""))
    environ = dict(os.environ)
    jobs = submit_sweep(sweep, executor="debug")
    assert isinstance(jobs[0], submitit.DebugJob)
    failures = wait(jobs)
    assert len(failures) == 1 and "nowhere" in failures[0]
    status, error = run_status(tmp_path / "sweep" / "000_1")
    assert status == "failed" and "DataError" in error and "box_0000.h5" in error
    assert dict(os.environ) == environ


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_checkpointable_job_requeues_and_resumes(tiny_boxes, tmp_path):
    """submitit's preemption signal: TrainJob.checkpoint requeues with resume on; training goes on
    from the last checkpoint and finishes."""
    run_dir = tmp_path / "run"
    cfg = load_config(TINY, [f"data.root={tiny_boxes}", f"train.out_dir={run_dir}", "train.steps=12",
                             "train.checkpoint_every=2", "train.eval_every=0"])
    save_config(cfg, run_dir / "config.yaml")
    ex = make_executor("local", tmp_path / "submitit", {"timeout_min": 10}, "requeue")
    job = ex.submit(TrainJob(), str(run_dir))
    latest = run_dir / "checkpoints" / "latest"
    t_end = time.monotonic() + 300
    while not latest.exists() and time.monotonic() < t_end:
        assert not job.done(), job.stderr()
        time.sleep(0.1)
    assert not job.done(), "training finished before it could be interrupted"
    # What SLURM does before the time limit: USR2 to the job's task, whose submitit handler calls
    # TrainJob.checkpoint and exits with "requeue me"; the local controller then starts it again.
    for task in psutil.Process(job._process.pid).children():
        task.send_signal(signal.SIGUSR2)
    result = job.result()
    out = job.stdout()
    assert "requeueing" in out and "Requeued job" in out
    resumed = [int(s) for s in re.findall(r"resumed from step (\d+)", out)]
    assert len(resumed) == 1 and 0 < resumed[0] < 12
    assert result["step"] == 12 and (run_dir / "model.pt").is_file()
