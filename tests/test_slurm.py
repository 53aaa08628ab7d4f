"""The launchers on a real single-node SLURM (slurmctld + slurmd on this machine, started as root).

One session-wide cluster (:mod:`tests.slurm_cluster`); skipped with the reason where it cannot be
started (not root, no apt-get). Jobs train the tiny ViPR on synthetic boxes for a few steps.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from pathlib import Path

import pytest

from halotrans.launch import collect, load_sweep, submit_sweep, wait, write_table
from tests.helpers import REPO, subprocess_env
from tests.slurm_cluster import SlurmCluster, SlurmUnavailable
from tests.test_launch_local import TINY

pytestmark = [pytest.mark.slurm, pytest.mark.slow]


@pytest.fixture(scope="session")
def slurm(tmp_path_factory):
    """A running private SLURM; ``SLURM_CONF`` is exported for submitit while it runs."""
    try:
        cluster = SlurmCluster.start(tmp_path_factory.mktemp("slurm"))
    except SlurmUnavailable as e:
        pytest.skip(f"cannot start a single-node SLURM here: {e}")
    old = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = str(cluster.conf)
    yield cluster
    cluster.stop()
    if old is None:
        os.environ.pop("SLURM_CONF", None)
    else:
        os.environ["SLURM_CONF"] = old


def slurm_cmd(cluster: SlurmCluster, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(list(args), capture_output=True, text=True, timeout=60, cwd=REPO,
                          env=subprocess_env(SLURM_CONF=str(cluster.conf)))
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed ({proc.returncode}): {proc.stderr}\n{cluster.logs()}")
    return proc


def sbatch(cluster: SlurmCluster, log: Path, *args: str) -> str:
    """Submit a batch script (from the repository root, this venv on PATH) → job id."""
    return slurm_cmd(cluster, "sbatch", "--parsable", f"--output={log}", *args).stdout.strip().split(";")[0]


def job_field(cluster: SlurmCluster, job: str, name: str) -> str:
    out = slurm_cmd(cluster, "scontrol", "show", "job", job).stdout
    m = re.search(rf"\b{name}=(\S+)", out)
    return m.group(1) if m else ""


def wait_for(predicate, timeout: float, what: str, log: Path | None = None) -> None:
    t_end = time.monotonic() + timeout
    while time.monotonic() < t_end:
        if predicate():
            return
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}\n"
                         + (log.read_text(errors="replace")[-3000:] if log and log.exists() else ""))


def wait_job(cluster: SlurmCluster, job: str, log: Path, timeout: float = 240) -> str:
    """Wait until the job leaves PENDING/RUNNING; return its final state."""
    done = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY")
    wait_for(lambda: job_field(cluster, job, "JobState") in done, timeout, f"job {job} to end", log)
    return job_field(cluster, job, "JobState")


def train_args(boxes: Path, run_dir: Path, *extra: str) -> list[str]:
    sets = [f"data.root={boxes}", f"train.out_dir={run_dir}", *extra]
    return [TINY, *[a for s in sets for a in ("--set", s)]]


def test_sbatch_train_vipr_requeues_and_resumes(slurm, tiny_boxes, tmp_path):
    """``sbatch slurm/train_vipr.sh``: 2 ranks via srun + torchrun (c10d rendezvous). Interrupted
    twice, by ``scontrol requeue`` and by the script's own pre-timeout trap (USR1 → SIGTERM, the
    trainer checkpoints and stops → ``scontrol requeue``); each restart resumes from the checkpoint."""
    run_dir, log = tmp_path / "run", tmp_path / "train.log"
    latest = run_dir / "checkpoints" / "latest"
    job = sbatch(slurm, log, "--nodes=1", "--cpus-per-task=2", "--gpus-per-node=0",
                 str(REPO / "slurm" / "train_vipr.sh"),
                 *train_args(tiny_boxes, run_dir, "train.steps=24", "train.checkpoint_every=2", "train.eval_every=0"))

    def restart_after_a_new_checkpoint(interrupt: list[str], restarts: int) -> None:
        before = latest.read_text() if latest.exists() else ""
        wait_for(lambda: latest.exists() and latest.read_text() != before, 300, "a new checkpoint", log)
        assert job_field(slurm, job, "JobState") == "RUNNING", "training ended before it could be interrupted"
        slurm_cmd(slurm, *interrupt)
        wait_for(lambda: job_field(slurm, job, "Restarts") == str(restarts)
                 and job_field(slurm, job, "JobState") == "PENDING", 120, f"requeue #{restarts}", log)
        # SLURM holds a requeued job ~2 minutes; release it (not within the second its credential was
        # revoked, or slurmd refuses the launch).
        time.sleep(2)
        slurm_cmd(slurm, "scontrol", "update", f"JobId={job}", "StartTime=now")

    restart_after_a_new_checkpoint(["scontrol", "requeue", job], 1)
    restart_after_a_new_checkpoint(["scancel", "--batch", "--signal=USR1", job], 2)
    state = wait_job(slurm, job, log, timeout=600)
    text = log.read_text(errors="replace")  # a requeue can tear a tqdm bar character mid-byte
    assert state == "COMPLETED", text[-3000:]
    assert re.search(r"srun .*torch\.distributed\.run --nnodes=1 --nproc_per_node=2 "
                     rf"--rdzv_id={job} --rdzv_backend=c10d --rdzv_endpoint=\S+:\d+ -m halotrans train", text)
    assert "2 rank(s)" in text
    for n in (0, 1, 2):  # one log for all three starts (--open-mode=append)
        assert f"job {job} restart {n} on" in text
    assert "pre-timeout signal" in text and f"requeueing job {job}" in text
    stopped = [int(s) for s in re.findall(r"SIGTERM: stopped at step (\d+) with a checkpoint", text)]
    resumed = [int(s) for s in re.findall(r"resumed from step (\d+)", text)]
    assert len(resumed) == 2 and 0 < resumed[0] < resumed[1] < 24
    assert resumed[1] in stopped  # the trap's SIGTERM made the trainer checkpoint where it stood
    assert latest.read_text() == "step_00000024" and (run_dir / "model.pt").is_file()
    steps = [int(r.split(",")[0]) for r in (run_dir / "metrics.csv").read_text().splitlines()[1:]]
    assert steps == list(range(1, 25))  # the resumed runs continued one metrics log, no step twice


def test_submitit_sweep_through_slurm_collects_a_table(slurm, tiny_boxes, tmp_path):
    path = tmp_path / "sweep.yaml"
    path.write_text(f"""
config: {TINY}
out_dir: {tmp_path / 'sweep'}
set: {{data.root: {tiny_boxes}, train.steps: 3, train.eval_every: 3}}
grid:
  data.inputs: [[delta], [delta, T]]
resources: {{cpus_per_task: 1, timeout_min: 10, slurm_partition: debug}}
""")
    sweep = load_sweep(path)
    jobs = submit_sweep(sweep, executor="slurm")
    assert len(jobs) == 2 and len({j.job_id.split("_")[0] for j in jobs}) == 1  # one job array
    assert wait(jobs) == []
    rows = collect(sweep.out_dir)
    csv_path, md_path = write_table(rows, sweep.out_dir)
    assert [(r["data.inputs"], r["status"]) for r in rows] == [("delta", "done"), ("delta-T", "done")]
    assert all(r["step"] == 3 and r["loss"] > 0 and 0 < r["val_acc"] <= 1 for r in rows)
    assert csv_path.is_file() and md_path.read_text().count("| done |") == 2


def test_simulate_array_then_mpi_tidal_shear(slurm, tmp_path):
    """simulate.sh: one seed per array task; tidal_shear.sh: 2 MPI ranks (mpiexec in the job)."""
    import h5py

    out = tmp_path / "boxes"
    job = slurm_cmd(slurm, "sbatch", "--parsable", "--array=0-1", "--cpus-per-task=1",
                    f"--output={tmp_path}/sim-%A_%a.log", str(REPO / "slurm" / "simulate.sh"),
                    "sims/tiny", "--set", f"sim.out_dir={out}").stdout.strip()
    wait_for(lambda: slurm_cmd(slurm, "squeue", "-h", "-j", job).stdout.strip() == "", 300, "the array to end")
    states = re.findall(r"JobState=(\S+)", slurm_cmd(slurm, "scontrol", "show", "job", job).stdout)
    logs = "".join(p.read_text() for p in sorted(tmp_path.glob("sim-*.log")))
    assert states == ["COMPLETED", "COMPLETED"], logs[-3000:]
    assert sorted(p.name for p in out.glob("box_*.h5")) == ["box_0000.h5", "box_0001.h5"]
    assert "--seeds 0" in logs and "--seeds 1" in logs

    log = tmp_path / "shear.log"
    job = sbatch(slurm, log, "--nodes=1", "--ntasks-per-node=2", "--cpus-per-task=1",
                 str(REPO / "slurm" / "tidal_shear.sh"), str(out))
    assert wait_job(slurm, job, log) == "COMPLETED", log.read_text()[-3000:]
    assert "2 box(es) computed" in log.read_text() and "2 MPI rank(s)" in log.read_text()
    for p in out.glob("box_*.h5"):
        with h5py.File(p) as f:
            assert f["tidal/T"].shape == f["delta"].shape == (32, 32, 32)
