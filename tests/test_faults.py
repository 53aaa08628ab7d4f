"""Fault injection on the real commands, on tiny data: every fault ends in one clear error or in a
resume equal to the uninterrupted run; nothing non-finite or half-written under a final name, and
no good file lost.

* NaN and ±Inf in each input dataset of ``simulate`` (its own fields), ``import``, ``shear``, the
  box and light-cone data sets at load (``train``), ``evaluate``, ``infer`` and ``lightcones``;
* a NaN loss (or gradient) at step k, through a test-only task registered here (:class:`FaultTask`;
  this file run as ``python -m tests.test_faults train ...`` registers it first);
* SIGKILL at random points of ``simulate``, ``shear``, ``lightcones``, ``train`` and ``sweep``, then
  the same command again;
* a full disk (a size-limited tmpfs when root may mount one, else an injected ``OSError(ENOSPC)``)
  and a read-only data directory (a read-only tmpfs, or ``chmod`` for a non-root user).

The README table "What happens on bad input" lists the same cases.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import psutil
import pytest
import torch

from halotrans.cli import main
from halotrans.io import DataError, require_finite
from halotrans.sims.boxio import box_path, is_complete
from halotrans.train.segment import SegmentTask
from tests.helpers import (
    CPU,
    REPO,
    TINY_VIT,
    halotrans_cli,
    run,
    subprocess_env,
    write_synthetic_boxes,
    write_synthetic_lightcones,
)

TINY = "segment/tiny_vipr.yaml"
#: a 6-step ViPR run on 16³ crops of 16³ boxes, a checkpoint every 2 steps (all kept)
TRAIN = ("data.crop=16", "train.steps=6", "train.checkpoint_every=2", "train.keep_checkpoints=0",
         "train.eval_every=0", "train.warmup_steps=1")
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1", "--nproc_per_node=2"]
FAULT_TASK = "fault_at_step"


# --- a test-only task: a non-finite loss or gradient at one step -----------------------------------
class _NaNGradient(torch.autograd.Function):
    """Identity forward (the loss stays finite), NaN backward."""

    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return grad * float("nan")


class FaultTask(SegmentTask):
    """The segmentation task with a fault at training step ``FAULT_STEP`` (1-based, as logged) on rank
    ``FAULT_RANK`` (default all): ``FAULT_KIND=loss`` makes the loss NaN, ``grad`` its gradient."""

    name = FAULT_TASK

    def train_batch(self, step: int, micro: int, rank: int):
        self._at = (step + 1, rank)
        return super().train_batch(step, micro, rank)

    def loss(self, model, batch):
        loss, sums = super().loss(model, batch)
        step, rank = getattr(self, "_at", (None, None))
        want_rank = os.environ.get("FAULT_RANK")
        if (model.training and step == int(os.environ.get("FAULT_STEP", "-1"))
                and (want_rank is None or int(want_rank) == rank)):
            loss = loss * float("nan") if os.environ.get("FAULT_KIND", "loss") == "loss" else _NaNGradient.apply(loss)
        return loss, sums


def register_fault_task() -> None:
    from halotrans.train.registry import TASKS

    TASKS.register(FAULT_TASK, f"{__name__ if __name__ != '__main__' else 'tests.test_faults'}:FaultTask")


# --- helpers ---------------------------------------------------------------------------------------
def sets(*pairs: str) -> list[str]:
    return [a for s in pairs for a in ("--set", s)]


def poke(path: Path, dataset: str, values: dict[tuple, float]) -> None:
    """Write ``values`` ({index: value}) into ``path:/dataset`` in place."""
    with h5py.File(path, "r+") as f:
        for index, value in values.items():
            f[dataset][index] = value


#: two NaN and one Inf: the messages must count both kinds
BAD = {(0, 0, 0): np.nan, (1, 2, 3): np.nan, (4, 5, 6): np.inf}


def snapshot(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` → its bytes."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def kill_at(cmd: list[str], delay: float, cwd: Path = REPO, after=None, **env: str) -> bool:
    """Start ``cmd``, SIGKILL it and every process under it ``delay`` s after it started (or after
    ``after()`` first became true) → True if it was still running."""
    proc = subprocess.Popen(cmd, cwd=cwd, env=subprocess_env(**env), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 300
    while after is not None and not after() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    try:
        proc.wait(timeout=delay)
        return False
    except subprocess.TimeoutExpired:
        victims = psutil.Process(proc.pid).children(recursive=True)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        for p in victims:  # torchrun workers and submitit jobs run in sessions of their own
            with contextlib.suppress(psutil.NoSuchProcess):
                p.kill()
        proc.wait()
        psutil.wait_procs(victims, timeout=30)
        return True


def finals(root: Path) -> list[str]:
    """Files under ``root`` that are not temporaries of :func:`halotrans.io.atomic_path`."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and ".tmp-" not in p.name)


def everything(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def same_weights(a: Path, b: Path) -> None:
    wa = torch.load(a, weights_only=False)["state_dict"]
    wb = torch.load(b, weights_only=False)["state_dict"]
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wb[k], wa[k], rtol=1e-5, atol=1e-6, msg=k)


def metrics(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


@contextlib.contextmanager
def tmpfs(path: Path, size: str, files: dict[str, Path] | None = None, read_only: bool = False):
    """A tmpfs of ``size`` at ``path`` holding copies of ``files`` ({name: source}), read-only if asked
    → True; False (nothing mounted, plain directory) where this user may not mount one."""
    path.mkdir(parents=True, exist_ok=True)
    mounted = os.geteuid() == 0 and shutil.which("mount") is not None and subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True, check=False
    ).returncode == 0
    try:
        for name, src in (files or {}).items():
            shutil.copyfile(src, path / name)
        if read_only and mounted:
            subprocess.run(["mount", "-o", "remount,ro", str(path)], check=True)
        yield mounted
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(path)], check=False)


# --- fixtures --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def boxes(tmp_path_factory) -> Path:
    """Four synthetic 16³ boxes with /delta, /halo_mass and /tidal/T (seeds 0-3)."""
    return write_synthetic_boxes(tmp_path_factory.mktemp("boxes16"), range(4), n=16)


@pytest.fixture
def bad_boxes(boxes, tmp_path) -> Path:
    """A writable copy of ``boxes`` to corrupt."""
    return Path(shutil.copytree(boxes, tmp_path / "data"))


@pytest.fixture(scope="module")
def read_only_boxes(boxes, tmp_path_factory):
    """The boxes on a read-only file system (tmpfs remounted ro), or chmod'ed for a non-root user;
    yields (directory, really read-only)."""
    root = tmp_path_factory.mktemp("ro") / "data"
    files = {p.name: p for p in boxes.glob("box_*.h5")}
    with tmpfs(root, "4m", files, read_only=True) as mounted:
        if not mounted:
            for name, src in files.items():
                shutil.copyfile(src, root / name)
            root.chmod(0o555)
        yield root, mounted or os.geteuid() != 0
        if not mounted:
            root.chmod(0o755)


@pytest.fixture(scope="module")
def reference_run(read_only_boxes, tmp_path_factory) -> Path:
    """The uninterrupted 6-step run, reading its boxes from the read-only directory (one process)."""
    root, really_read_only = read_only_boxes
    out = tmp_path_factory.mktemp("reference") / "run"
    halotrans_cli("train", "--config", TINY, *sets(f"data.root={root}", f"train.out_dir={out}", *TRAIN))
    if really_read_only:
        assert not (root / "stats.json").exists() and sorted(p.name for p in root.iterdir()) == [
            f"box_000{i}.h5" for i in range(4)]
    return out


# --- the one check ---------------------------------------------------------------------------------
@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_require_finite_counts_each_kind(tmp_path, value):
    a = np.zeros((4, 3, 3), np.float32)
    a[1, 1, 1] = value
    a[3, 0, 2] = np.nan
    with pytest.raises(DataError, match=r"x\.h5:/a: 2 of 36 values are not finite \((2|1) NaN, (0|1) ±Inf\); hint"):
        require_finite(a, "x.h5:/a", "hint")
    with h5py.File(tmp_path / "x.h5", "w") as f:
        f["a"] = a
        f["i"] = np.arange(5)
    with h5py.File(tmp_path / "x.h5") as f:
        with pytest.raises(DataError, match="2 of 36"):
            require_finite(f["a"], "x.h5:/a")
        with pytest.raises(DataError, match="1 of 9"):
            require_finite(f["a"], "x.h5:/a", rows=[3])
        require_finite(f["a"], "x.h5:/a", rows=[0, 2])
        require_finite(f["i"], "x.h5:/i")  # integers are always finite


# --- NaN/Inf in every input --------------------------------------------------------------------------
def test_simulate_writes_no_non_finite_box(tmp_path, monkeypatch, capsys):
    """A PM box whose field comes out non-finite is not written (the write guard of every box)."""
    from halotrans.sims import box

    real = box.simulate_box

    def broken(sim, seed, **kw):
        arrays, attrs = real(sim, seed, **kw)
        arrays["delta"][0, 0, :2] = np.nan
        arrays["halo_mass"][1, 1, 1] = np.inf
        return arrays, attrs

    monkeypatch.setattr(box, "simulate_box", broken)
    out = tmp_path / "boxes"
    rc = main(["simulate", "--config", "sims/tiny", "--seeds", "0", *sets(f"sim.out_dir={out}", "sim.n_grid=16",
                                                                        "sim.n_steps=4")])
    err = capsys.readouterr().err
    assert rc == 2 and f"{box_path(out, 0)}:/delta: 2 of 4096 values are not finite (2 NaN, 0 ±Inf)" in err, err
    assert not out.exists() or not list(out.iterdir())


def _gadget_run(root: Path, n: int = 8) -> tuple[Path, Path, Path]:
    from tests.sim_formats import write_fof_tab, write_hdf5_snapshot

    box, mp = float(n), 1e11
    ids = np.arange(1, n**3 + 1, dtype=np.uint64)
    q = np.stack(np.meshgrid(*[np.arange(n)] * 3, indexing="ij")).reshape(3, -1).T
    rng = np.random.default_rng(0)
    ic = write_hdf5_snapshot(root / "ics", ids, (q + 0.5 + 0.05 * rng.standard_normal(q.shape)) % box,
                             box_size=box, particle_mass=mp, redshift=49.0)[0]
    snap = write_hdf5_snapshot(root / "snap", ids, (q + 0.3) % box, box_size=box, particle_mass=mp, redshift=0.0)[0]
    fof = write_fof_tab(root / "fof", np.array([30, 20]), np.array([30, 20]) * mp)[0]
    return snap, ic, fof


@pytest.mark.parametrize("value, method, message", [
    (np.nan, "displacement", "1 of 512 particle values (positions, displacements or densities) are not finite"),
    (np.inf, "cic", "/delta computed from this file: "),  # the CIC deposit spreads it: counted in δ
])
def test_import_refuses_non_finite_particles(tmp_path, capsys, value, method, message):
    snap, ic, fof = _gadget_run(tmp_path)
    out = tmp_path / "out" / "box.h5"
    args = ["import", "gadget", "--snapshot", str(snap), "--ic", str(ic), "--groups", str(fof), "--out", str(out),
            "--no-progress", "--z-init", "source", "--min-particles", "10", "--delta-method", method]
    assert main(args) == 0 and is_complete(out)  # the clean run imports
    out.unlink()
    poke(ic, "PartType1/Coordinates", {(5, 1): value})
    rc = main(args)
    err = capsys.readouterr().err
    assert rc == 2 and f"{ic}" in err and message in err and "not finite" in err, err
    assert list(out.parent.iterdir()) == []


@pytest.mark.parametrize("value", [np.nan, -np.inf])
def test_shear_refuses_non_finite_delta_and_changes_nothing(bad_boxes, capsys, value):
    poke(box_path(bad_boxes, 2), "delta", {(3, 3, 3): value})
    before = snapshot(bad_boxes)
    rc = main(["shear", str(bad_boxes), "--set", "shear.smoothing=1.0"])
    err = capsys.readouterr().err
    assert rc == 2 and f"{box_path(bad_boxes, 2)}:/delta: 1 of 4096 values are not finite" in err, err
    assert snapshot(bad_boxes) == before  # all boxes are checked first: nothing written, not even box 0


@pytest.mark.mpi
def test_shear_under_mpi_refuses_non_finite_delta_on_every_rank(bad_boxes, mpiexec):
    poke(box_path(bad_boxes, 1), "delta", BAD)
    before = snapshot(bad_boxes)
    proc = run([*mpiexec, "-n", "2", sys.executable, "-m", "halotrans", "shear", str(bad_boxes)], check=False,
               timeout=300)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert proc.stderr.count(f"{box_path(bad_boxes, 1)}:/delta: 3 of 4096 values are not finite") == 2  # both ranks
    assert snapshot(bad_boxes) == before


@pytest.mark.parametrize("dataset", ["delta", "tidal/T", "halo_mass"])
def test_train_refuses_non_finite_boxes(bad_boxes, tmp_path, dataset):
    """The box data set at load (and the normalisation statistics): one line, exit 2, no run directory."""
    poke(box_path(bad_boxes, 1), dataset, BAD)
    out = tmp_path / "run"
    proc = halotrans_cli("train", "--config", TINY, *sets(f"data.root={bad_boxes}", f"train.out_dir={out}", *TRAIN),
                         check=False)
    msg = f"{box_path(bad_boxes, 1)}:/{dataset}: 3 of 4096 values are not finite (2 NaN, 1 ±Inf)"
    assert proc.returncode == 2 and msg in proc.stderr, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    assert not out.exists() and not (bad_boxes / "stats.json").exists()


def test_light_cone_data_set_refuses_non_finite(tmp_path):
    from halotrans.skatr.dataset import LightConeDataset, split_indices

    path = write_synthetic_lightcones(tmp_path / "lc.h5", n=12)
    LightConeDataset(path, "all")
    row = int(split_indices(12, (0.8, 0.1, 0.1), 0)["train"][0])  # in every split the command may open
    poke(path, "brightness_temp", {(row, 1, 2, 3): np.inf, (row, 0, 0, 0): np.nan})
    with pytest.raises(DataError, match=r"lc\.h5:/brightness_temp \(all split\): 2 of \d+ values are not finite "
                                        r"\(1 NaN, 1 ±Inf\)"):
        LightConeDataset(path, "all")
    clean = write_synthetic_lightcones(tmp_path / "lc2.h5", n=12)
    poke(clean, "params", {(5, 2): np.nan})  # column 0 (m_WDM, not sampled) is NaN by design, column 2 is not
    with pytest.raises(DataError, match=r"/params \(sampled columns, all split\): 1 of 60"):
        LightConeDataset(clean, "all")
    # through the command: JEPA pretraining on it stops before its run directory exists
    out = tmp_path / "run"
    proc = halotrans_cli("train", "-c", "skatr/pretrain.yaml", *sets(f"lightcone.out={path}", *TINY_VIT, *CPU,
                                                                    "train.zero_stage=0", f"train.out_dir={out}",
                                                                    "train.steps=2"), check=False)
    assert proc.returncode == 2 and "lc.h5:/brightness_temp (" in proc.stderr, proc.stderr[-3000:]
    assert "split): 2 of" in proc.stderr and "(1 NaN, 1 ±Inf)" in proc.stderr
    assert not out.exists()


def test_lightcones_refuses_a_non_finite_record(tmp_path, capsys):
    """A part file (then an old data set) holding NaN: exit 2, naming the file and the seed; nothing lost."""
    from halotrans.config import load_config
    from halotrans.skatr import simulate as lc
    from halotrans.skatr.store import generation_settings, part_path, write_part
    from tests.helpers import TINY_LIGHTCONES

    out = tmp_path / "lc.h5"
    args = ["lightcones", "-c", TINY_LIGHTCONES, "--out", str(out), "--n", "1", "--no-progress"]
    cfg = load_config(TINY_LIGHTCONES, [f"lightcone.out={out}", "lightcone.n=1"]).lightcone
    side, n_z, n_nodes = cfg.hii_dim // cfg.downsample, len(lc.los_grid(cfg)[0]) // cfg.downsample, len(
        lc.node_redshifts(cfg))
    cube = np.random.default_rng(0).normal(size=(side, side, n_z)).astype(np.float32)
    record = {"seed": 0, "reason": "", "tau": 0.05, "x_hi_zmin": 0.0, "seconds": 1.0, "inputs": "{}",
              "params": np.linspace(0.1, 0.6, 6), "x_hi": np.linspace(0, 1, n_nodes),
              "mean_brightness_temp": np.zeros(n_nodes), "brightness_temp": cube}
    settings = generation_settings(cfg)
    write_part(out, settings, {**record, "brightness_temp": np.where(np.arange(n_z) == 4, np.nan, cube)})
    part = part_path(out, 0)
    before = part.read_bytes()
    assert main(args) == 2
    err = capsys.readouterr().err
    assert f"{part}:/brightness_temp (seed 0): {side * side} of {cube.size} values are not finite" in err, err
    assert not out.exists() and part.read_bytes() == before

    write_part(out, settings, record)  # a good part: the data set is written; then it is corrupted
    assert main(args) == 0 and out.is_file()
    poke(out, "brightness_temp", {(0, 1, 1, 1): np.inf})
    before = out.read_bytes()
    assert main(args) == 2
    err = capsys.readouterr().err
    assert f"{out}:/brightness_temp: 1 of {cube.size} values are not finite (0 NaN, 1 ±Inf)" in err, err
    assert out.read_bytes() == before


def test_evaluate_refuses_non_finite_boxes_and_weights(reference_run, bad_boxes, tmp_path, capsys):
    poke(box_path(bad_boxes, 3), "tidal/T", BAD)
    report = tmp_path / "report"
    assert main(["evaluate", str(reference_run), str(bad_boxes), "--out", str(report)]) == 2
    err = capsys.readouterr().err
    assert f"{box_path(bad_boxes, 3)}:/tidal/T: 3 of 4096 values are not finite (2 NaN, 1 ±Inf)" in err, err
    poke(box_path(bad_boxes, 3), "delta", {(0, 0, 0): np.nan})  # the truth (/delta) is checked too
    poke(box_path(bad_boxes, 3), "tidal/T", {k: 0.5 for k in BAD})
    assert main(["evaluate", str(reference_run), str(bad_boxes), "--out", str(report)]) == 2
    assert f"{box_path(bad_boxes, 3)}:/delta: 1 of 4096" in capsys.readouterr().err

    run_copy = Path(shutil.copytree(reference_run, tmp_path / "run"))
    blob = torch.load(run_copy / "model.pt", weights_only=False)
    next(iter(blob["state_dict"].values())).view(-1)[:3] = float("nan")
    torch.save(blob, run_copy / "model.pt")
    assert main(["evaluate", str(run_copy), str(REPO), "--out", str(report)]) == 2  # weights fail before data
    err = capsys.readouterr().err
    assert f"{run_copy / 'model.pt'}: 3 of" in err and "weights are not finite" in err, err
    assert not report.exists()


def test_infer_refuses_non_finite_box(reference_run, bad_boxes, tmp_path):
    poke(box_path(bad_boxes, 3), "delta", BAD)
    out = tmp_path / "pred.h5"
    proc = halotrans_cli("infer", reference_run, box_path(bad_boxes, 3), "--out", out, check=False)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert f"{box_path(bad_boxes, 3)}:/delta: 3 of 4096 values are not finite (2 NaN, 1 ±Inf)" in proc.stderr
    assert not list(tmp_path.glob("pred.h5*"))


# --- a non-finite loss or gradient norm ------------------------------------------------------------
def _fault_train(*args: str, torchrun: bool = False, **env: str) -> subprocess.CompletedProcess:
    launcher = [*TORCHRUN, "-m", "tests.test_faults"] if torchrun else [sys.executable, "-m", "tests.test_faults"]
    return run([*launcher, "train", "--config", TINY, *args], check=False, timeout=600, **env)


@pytest.mark.slow
def test_nan_loss_at_step_k_stops_and_keeps_the_last_good_checkpoint(boxes, tmp_path):
    """2 ranks, NaN loss on rank 1 only at step 5: both stop there; checkpoint 4 survives keep=1; the
    same settings are refused on resume (exit 3, also by the SLURM start-up check); lower lr finishes
    (here on one rank). ZeRO-0 fp32 computes no gradient norm: the loss alone decides."""
    from halotrans.launch.rundir import run_status
    from halotrans.train.checkpoint import latest_tag

    out = tmp_path / "run"
    common = sets(f"data.root={boxes}", f"train.out_dir={out}", f"train.task={FAULT_TASK}", *TRAIN,
                  "train.keep_checkpoints=1", "train.steps=8", "train.zero_stage=0")  # ZeRO-0: resumable on 1 rank
    proc = _fault_train(*common, torchrun=True, FAULT_STEP="5", FAULT_RANK="1")
    err = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "training diverged at step 5: non-finite loss (nan)" in err, err[-4000:]
    assert f"The last good checkpoint is {out / 'checkpoints' / 'step_00000004'} (kept)" in err
    assert "exitcode  : 3" in err or "exit code 3" in err or "exitcode: 3" in err.replace("  ", " ")
    assert latest_tag(out) == "step_00000004" and sorted(p.name for p in (out / "checkpoints").glob("step_*")) == [
        "step_00000004"]
    assert not (out / "model.pt").exists()
    rows = metrics(out)
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4] and "nan" not in (out / "metrics.csv").read_text()
    assert run_status(out) == ("failed", "diverged: non-finite loss at step 5")

    again = _fault_train(*common, "--resume")  # no fault injected now: the refusal comes from the marker
    assert again.returncode == 3 and "stopped at step 5 on a non-finite loss" in again.stderr, again.stderr[-3000:]
    assert "step_00000004" in again.stderr and "Traceback" not in again.stderr
    check = run([sys.executable, "-m", "tests.test_faults", "rundir", "--config", TINY, *common], check=False)
    assert check.returncode == 3 and "--resume" not in check.stdout

    fixed = _fault_train(*common, "--resume", "--set", "train.lr=1e-3")
    assert fixed.returncode == 0, fixed.stderr[-3000:]
    assert "resumed from step 4" in fixed.stdout and "train.lr: 0.002 -> 0.001" in fixed.stdout
    assert (out / "model.pt").is_file() and not (out / "diverged.json").exists()
    assert [int(r["step"]) for r in metrics(out)] == list(range(1, 9))


@pytest.mark.slow
def test_nan_gradient_norm_stops_before_any_checkpoint(boxes, tmp_path):
    out = tmp_path / "run"
    proc = _fault_train(*sets(f"data.root={boxes}", f"train.out_dir={out}", f"train.task={FAULT_TASK}", *TRAIN,
                              "train.checkpoint_every=10"), FAULT_STEP="3", FAULT_KIND="grad")
    assert proc.returncode == 3, proc.stderr[-3000:]
    assert "training diverged at step 3: non-finite gradient norm" in proc.stderr
    assert "No checkpoint was written before it" in proc.stderr and "Traceback" not in proc.stderr
    assert not list((out / "checkpoints").glob("step_*")) and not (out / "model.pt").exists()
    assert [int(r["step"]) for r in metrics(out)] == [1, 2]


def test_slurm_scripts_neither_start_nor_requeue_a_diverged_run(boxes, tmp_path):
    """The job scripts' start-up check refuses a diverged run with unchanged settings (exit 3, no rank
    started); a job stopped by the pre-timeout signal is requeued only if that check passes (fake SLURM)."""
    from halotrans.config import load_config
    from halotrans.train import divergence
    from tests.test_launch_local import no_slurm_env

    out = tmp_path / "run"
    overrides = [f"data.root={boxes}", f"train.out_dir={out}", *TRAIN]
    divergence.mark(out, load_config(TINY, overrides), 5, "loss", None)
    job = subprocess.run(["bash", str(REPO / "slurm" / "train_vipr.sh"), TINY, *sets(*overrides)],
                         env=no_slurm_env(tmp_path), capture_output=True, text=True, timeout=300, check=False)
    assert job.returncode == 3 and "stopped at step 5 on a non-finite loss" in job.stderr, job.stderr[-3000:]
    assert "torch.distributed.run" not in job.stdout

    fake = tmp_path / "fake_slurm"
    fake.mkdir()
    for tool in ("srun", "scontrol", "scancel"):
        (fake / tool).write_text(f'#!/bin/sh\necho "{tool} $*" >> {fake}/calls\n')
        (fake / tool).chmod(0o755)
    script = (f'source {REPO}/slurm/common.sh; '
              f'_halotrans_requeue_check=("$PY" -m halotrans.launch.rundir --config {TINY} {" ".join(sets(*overrides))}); '
              '(sleep 1; kill -USR1 $$) & halotrans_run_requeueable sleep 30; echo "rc=$?"')
    env = {**subprocess_env(), "SLURM_JOB_ID": "77", "PATH": f"{fake}{os.pathsep}{subprocess_env()['PATH']}"}
    stopped = subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True, timeout=120, check=False)
    assert "rc=3" in stopped.stdout and "not requeueing job 77" in stopped.stdout, stopped.stdout + stopped.stderr
    assert "scontrol requeue" not in (fake / "calls").read_text() if (fake / "calls").exists() else True

    divergence.clear(out)  # the same job on a healthy run is requeued
    requeued = subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True, timeout=120,
                              check=False)
    assert requeued.returncode == 0 and "requeueing job 77" in requeued.stdout, requeued.stdout + requeued.stderr
    assert "scontrol requeue 77" in (fake / "calls").read_text()


# --- SIGKILL at random points, then the same command ------------------------------------------------
#: where in an uninterrupted run's duration the kill lands: from start-up to past the middle (room for a
#: machine that runs the killed job faster than the reference)
KILL_FRACTION = (0.1, 0.6)


def kill_point(seed: int, seconds: float) -> float:
    return float(np.random.default_rng(seed).uniform(*KILL_FRACTION)) * seconds


def kill_somewhere(cmd: list[str], delay: float, reset, attempts: int = 4, **kw) -> None:
    """SIGKILL ``cmd`` ``delay`` s in (see :func:`kill_at`). A delay planned from a run timed under
    another load may outlast a faster run: then ``reset()`` its output and try again at half the
    delay, so the test always kills the job while it runs."""
    for _ in range(attempts):
        if kill_at(cmd, delay, **kw):
            return
        reset()
        delay /= 2
    pytest.fail(f"{' '.join(map(str, cmd[:4]))} finished before it was killed, {attempts} times")


def logged_steps(run_dir: Path, k: int):
    """A predicate: the run has logged at least ``k`` steps (a point of the loop, whatever the machine's speed)."""
    def reached() -> bool:
        path = run_dir / "metrics.csv"
        return path.is_file() and len(path.read_text().splitlines()) > k
    return reached


def loop_point(seed: int) -> tuple[float, int]:
    """A random point of the 6-step loop: (delay in s, after step k in 1..5); a checkpoint is written every 2."""
    rng = np.random.default_rng(seed)
    return float(rng.uniform(0.0, 0.3)), int(rng.integers(1, 6))


def timed_run(cmd: list[str], **kw) -> float:
    t0 = time.perf_counter()
    run(cmd, timeout=600, **kw)
    return time.perf_counter() - t0


def simulate_cmd(out: Path) -> list[str]:
    return [sys.executable, "-m", "halotrans", "simulate", "--config", "sims/tiny", "--seeds", "0-1",
            "--set", f"sim.out_dir={out}"]


@pytest.fixture(scope="module")
def simulated(tmp_path_factory) -> tuple[Path, float]:
    """Two boxes simulated without interruption, and the seconds the command took."""
    out = tmp_path_factory.mktemp("simulated") / "boxes"
    return out, timed_run(simulate_cmd(out))


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2])
def test_killed_simulate_resumes_to_the_same_boxes(simulated, tmp_path, seed):
    straight, seconds = simulated
    out = tmp_path / "killed"
    kill_somewhere(simulate_cmd(out), kill_point(seed, seconds), lambda: shutil.rmtree(out, ignore_errors=True))
    for name in finals(out) if out.exists() else []:  # a file under a final name is complete
        assert is_complete(out / name, ("delta", "halo_mass", "halo_id", "halos/n_members")), name
    run(simulate_cmd(out))
    assert sorted(os.listdir(out)) == ["box_0000.h5", "box_0001.h5"]  # no temporaries left
    assert snapshot(out) == snapshot(straight)  # byte-identical


def shear_cmd(root: Path) -> list[str]:
    return [sys.executable, "-m", "halotrans", "shear", str(root), "--set", "shear.smoothing=1.0"]


@pytest.fixture(scope="module")
def sheared(tmp_path_factory) -> tuple[Path, Path, float]:
    """Six 64³ boxes without shear of that setting, the same boxes after an uninterrupted run, its seconds."""
    root = tmp_path_factory.mktemp("sheared")
    boxes = write_synthetic_boxes(root / "boxes", range(6), n=64)
    reference = Path(shutil.copytree(boxes, root / "reference"))
    return boxes, reference, timed_run(shear_cmd(reference))


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_killed_shear_leaves_old_or_finished_boxes(sheared, tmp_path, seed):
    boxes, reference, seconds = sheared
    data = Path(shutil.copytree(boxes, tmp_path / "data"))
    before = snapshot(data)

    def fresh_copy() -> None:
        shutil.rmtree(data)
        shutil.copytree(boxes, data)

    kill_somewhere(shear_cmd(data), kill_point(seed, seconds), fresh_copy)
    for name in finals(data):
        with h5py.File(data / name) as f:
            done = f["tidal"].attrs.get("smoothing") == 1.0
        if not done:
            assert (data / name).read_bytes() == before[name], name  # untouched, or finished (below)
    run(shear_cmd(data))
    assert finals(data) == finals(reference)  # at most the killed job's temporary besides
    for name in finals(data):
        with h5py.File(data / name) as a, h5py.File(reference / name) as b:
            np.testing.assert_array_equal(a["tidal/T"][...], b["tidal/T"][...])
            np.testing.assert_array_equal(a["delta"][...], b["delta"][...])


@pytest.mark.slow
def test_killed_lightcones_resume_without_losing_a_light_cone(tmp_path):
    """Killed at a random point after the first light cone was stored: the rerun keeps that one as it
    was (bit for bit), computes the rest, and the data set has each seed once with its own parameters."""
    from halotrans.config import load_config
    from halotrans.skatr.priors import sample_params
    from tests.helpers import TINY_LIGHTCONES

    sets_ = sets("lightcone.tau_max=1", "lightcone.x_hi_max=1", "lightcone.workers=1")
    args = ["lightcones", "-c", TINY_LIGHTCONES, "--out", "out/lc.h5", "--n", "2", "--no-progress", *sets_]
    parts = tmp_path / "out" / "lc.h5.parts"
    delay = float(np.random.default_rng(7).uniform(0.0, 4.0))  # into the second light cone or its consolidation
    kill_somewhere([sys.executable, "-m", "halotrans", *args], delay,
                   lambda: shutil.rmtree(tmp_path / "out", ignore_errors=True), cwd=tmp_path,
                   after=lambda: bool(list(parts.glob("seed_*.h5"))))
    left = finals(tmp_path)  # complete parts, or the complete data set; temporaries never under a final name
    assert set(left) <= {"out/lc.h5", "out/lc.h5.parts/seed_00000000.h5", "out/lc.h5.parts/seed_00000001.h5"}, left
    kept = {}
    for name in left:
        with h5py.File(tmp_path / name) as f:
            if "parts" in name:
                kept[int(f.attrs["seed"])] = f["brightness_temp"][...]
            else:
                kept.update((int(s), f["brightness_temp"][i]) for i, s in enumerate(f["seeds"][...]))
    assert kept, left
    halotrans_cli(*args, cwd=tmp_path, timeout=600)
    assert everything(tmp_path) == ["out/lc.h5"]  # parts consumed, stale temporaries removed
    cfg = load_config(TINY_LIGHTCONES, ["lightcone.tau_max=1", "lightcone.x_hi_max=1"]).lightcone
    with h5py.File(tmp_path / "out/lc.h5") as f:
        assert list(f["seeds"][...]) == [0, 1] and np.isfinite(f["brightness_temp"][...]).all()
        np.testing.assert_array_equal(f["params"][...], np.stack([sample_params(cfg, s) for s in (0, 1)]))
        for seed, cube in kept.items():  # no good light cone lost or changed
            np.testing.assert_array_equal(f["brightness_temp"][seed], cube)


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2])
def test_killed_train_resumes_to_the_uninterrupted_run(reference_run, read_only_boxes, tmp_path, seed):
    from halotrans.train.checkpoint import latest_tag

    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "halotrans", "train", "--config", TINY, "--resume",
           *sets(f"data.root={read_only_boxes[0]}", f"train.out_dir={out}", *TRAIN)]
    delay, k = loop_point(seed)  # a random point of the training loop, checkpoint writes included
    assert kill_at(cmd, delay, after=logged_steps(out, k)), "the run finished before it was killed"
    tag = latest_tag(out)
    if tag is not None:  # `latest` only ever names a complete checkpoint
        assert (out / "checkpoints" / tag / "mp_rank_00_model_states.pt").is_file()
    res = run(cmd)
    if tag is not None:
        assert f"resumed from step {int(tag.split('_')[1])}" in res.stdout
    same_weights(reference_run / "model.pt", out / "model.pt")
    a, b = metrics(reference_run), metrics(out)
    assert [r["step"] for r in a] == [r["step"] for r in b]
    np.testing.assert_allclose([float(r["loss"]) for r in b], [float(r["loss"]) for r in a], rtol=1e-5)


@pytest.mark.slow
def test_killed_sweep_resumes_to_the_uninterrupted_run(reference_run, read_only_boxes, tmp_path):
    from halotrans.launch.rundir import run_status

    sweep = tmp_path / "sweep.yaml"
    settings = dict(s.split("=") for s in TRAIN)
    sweep.write_text(f"config: {TINY}\nout_dir: {tmp_path / 'out'}\n"
                     f"set: {{data.root: {read_only_boxes[0]}, {', '.join(f'{k}: {v}' for k, v in settings.items())}}}\n"
                     "grid: {train.seed: [0]}\nresources: {timeout_min: 10}\n")
    cmd = [sys.executable, "-m", "halotrans", "sweep", "submit", str(sweep), "--executor", "local"]
    run_dir = tmp_path / "out" / "000_0"
    delay, k = loop_point(5)
    assert kill_at(cmd, delay, after=logged_steps(run_dir, k)), "the sweep finished before it was killed"
    res = run(cmd)
    assert "submitted 1 runs" in res.stdout or "all runs already done" in res.stdout
    assert run_status(run_dir) == ("done", "")
    same_weights(reference_run / "model.pt", run_dir / "model.pt")


# --- a full disk, a read-only directory ------------------------------------------------------------
def test_full_disk_simulate_and_shear(tmp_path, boxes, monkeypatch, capsys):
    """Writes into a full file system: one line naming the file, exit 2; old files intact, no temporaries."""
    disk = tmp_path / "disk"
    with tmpfs(disk, "96k") as mounted:
        if not mounted:  # inject the error the write would raise
            from halotrans.sims import boxio

            class FullDisk:
                def __init__(self, path, mode="r", **kw):
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

            monkeypatch.setattr(boxio.h5py, "File", FullDisk)
        rc = main(["simulate", "--config", "sims/tiny", "--seeds", "0", *sets(f"sim.out_dir={disk / 'sim'}",
                                                                              "sim.n_steps=4")])
        err = capsys.readouterr().err
        assert rc == 2 and f"cannot write {box_path(disk / 'sim', 0)}: No space left on device" in err, err
        assert finals(disk) == [] and not list(disk.rglob("*.tmp-*"))
        monkeypatch.undo()

    size = box_path(boxes, 0).stat().st_size
    with tmpfs(disk, f"{(size // 4096 + 4) * 4}k", {"box_0000.h5": box_path(boxes, 0)}) as mounted:
        if not mounted:
            pytest.skip("no tmpfs for the shear case (needs root and mount)")
        before = (disk / "box_0000.h5").read_bytes()
        assert main(["shear", str(disk), "--set", "shear.smoothing=1.0"]) == 2
        err = capsys.readouterr().err
        assert f"cannot write {disk / 'box_0000.h5'}: No space left on device" in err, err
        assert sorted(os.listdir(disk)) == ["box_0000.h5"] and (disk / "box_0000.h5").read_bytes() == before


@pytest.mark.slow
def test_full_disk_during_training(boxes, tmp_path):
    disk = tmp_path / "disk"
    with tmpfs(disk, "2m") as mounted:
        if not mounted:
            pytest.skip("a full run directory needs a size-limited tmpfs (root and mount)")
        out = disk / "run"
        proc = halotrans_cli("train", "--config", TINY, *sets(f"data.root={boxes}", f"train.out_dir={out}", *TRAIN),
                             check=False)
        assert proc.returncode == 2, proc.stderr[-3000:]
        assert f"cannot write {out / 'checkpoints' / 'step_00000002'}: No space left on device" in proc.stderr
        assert "Traceback" not in proc.stderr
        assert not (out / "model.pt").exists() and not (out / "checkpoints" / "latest").exists()
        assert not list((out / "checkpoints").glob("step_*"))  # the partial checkpoint is removed


def test_read_only_data_directory(read_only_boxes, reference_run, capsys):
    """Reading is fine (the reference run trained from there, without its stats cache); writing is one line."""
    root, really_read_only = read_only_boxes
    if not really_read_only:
        pytest.skip("root without mount: chmod does not stop root from writing")
    before = snapshot(root)
    assert main(["shear", str(root), "--set", "shear.smoothing=1.0"]) == 2
    err = capsys.readouterr().err
    assert f"cannot write {box_path(root, 0)}: " in err and ("Read-only file system" in err or "Permission" in err)
    assert snapshot(root) == before
    assert (reference_run / "model.pt").is_file()


if __name__ == "__main__":  # python -m tests.test_faults train|rundir ...: with FaultTask registered
    register_fault_task()
    if sys.argv[1] == "rundir":
        from halotrans.launch.rundir import main as rundir_main

        sys.exit(rundir_main(sys.argv[2:]))
    sys.exit(main(sys.argv[1:]))
