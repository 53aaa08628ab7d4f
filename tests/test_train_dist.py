"""The DeepSpeed loop for real: torchrun with 2 gloo ranks on the CPU, kill/resume, stops, clear errors."""

from __future__ import annotations

import csv
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
import torch

from halotrans.config import ConfigError
from halotrans.sims.boxio import box_path
from halotrans.train.checkpoint import latest_tag, load_for_inference
from tests.helpers import halotrans_cli, run, subprocess_env, val_loss_of, write_synthetic_boxes

pytestmark = [pytest.mark.dist, pytest.mark.slow]

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1", "--nproc_per_node=2",
            "-m", "halotrans", "train"]


@pytest.fixture(scope="module")
def boxes(sim_boxes) -> Path:
    """Four real simulated 32³ boxes (L = 32 Mpc/h) with /tidal/T (conftest's session fixture)."""
    return Path(sim_boxes)


def settings(boxes: Path, out: Path, *extra: str) -> list[str]:
    sets = [f"data.root={boxes}", f"train.out_dir={out}", *extra]
    return [a for s in sets for a in ("--set", s)]


def metrics(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def column(rows: list[dict[str, str]], name: str) -> dict[int, float]:
    return {int(r["step"]): float(r[name]) for r in rows if r[name]}


def kill_job(proc: subprocess.Popen, sig: int) -> None:
    """Send ``sig`` to torchrun and (for SIGKILL) to its workers, which torchrun starts in their own sessions."""
    victims = psutil.Process(proc.pid).children(recursive=True) if sig == signal.SIGKILL else []
    proc.send_signal(sig)
    for p in victims:
        try:
            p.send_signal(sig)
        except psutil.NoSuchProcess:
            pass


def wait_for(predicate, proc: subprocess.Popen, timeout: float = 240.0) -> None:
    t0 = time.time()
    while not predicate():
        if proc.poll() is not None:
            out, err = proc.communicate()
            raise AssertionError(f"training ended before the condition was met:\n{out[-3000:]}\n{err[-3000:]}")
        if time.time() - t0 > timeout:
            kill_job(proc, signal.SIGKILL)
            raise AssertionError("timed out waiting for the training run")
        time.sleep(0.02)


@pytest.fixture(scope="module")
def trained_run(boxes, tmp_path_factory):
    """``trained_run("tiny_vipr")``: a 2-rank run of 30 steps (validation at steps 0 and 30), made once."""
    done: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in done:
            out = tmp_path_factory.mktemp(name) / "run"
            run([*TORCHRUN, "--config", f"segment/{name}.yaml",
                 *settings(boxes, out, "train.steps=30", "train.eval_every=30", "train.checkpoint_every=15")],
                timeout=600)
            done[name] = out
        return done[name]

    return get


@pytest.mark.parametrize("name", ["tiny_vipr", "tiny_copra"])
def test_two_ranks_lower_the_loss_and_write_the_run(name, trained_run, boxes):
    out = trained_run(name)
    rows = metrics(out)
    val = column(rows, "val_loss")
    assert sorted(val) == [0, 30]
    assert val[30] < 0.92 * val[0], f"{name}: validation loss {val[0]:.4f} -> {val[30]:.4f}"
    assert sorted(column(rows, "loss")) == list(range(1, 31))
    assert latest_tag(out) == "step_00000030"
    assert sorted(p.name for p in (out / "checkpoints").glob("step_*")) == ["step_00000015", "step_00000030"]
    for f in ("config.yaml", "ds_config.json", "norm_stats.json", "model.pt"):
        assert (out / f).is_file(), f
    assert list((out / "tb").glob("events.out.tfevents.*"))

    # model.pt is the trained network, and meta has all it needs: its loss on the validation tiles is the logged one
    model, cfg, meta = load_for_inference(out, inputs=("delta", "T"), class_edges=(12.5, 13.0, 13.5))
    assert not model.training and meta["step"] == 30 and meta["n_classes"] == 5 and meta["in_channels"] == 2
    assert val_loss_of(model, cfg, meta, box_path(boxes, 2)) == pytest.approx(val[30], rel=1e-4)
    # the same weights from the DeepSpeed checkpoint
    ckpt_model, _, ckpt_meta = load_for_inference(out, tag="step_00000030")
    assert ckpt_meta["step"] == 30
    for (k, a), b in zip(model.state_dict().items(), ckpt_model.state_dict().values()):
        assert torch.equal(a, b), k


def test_checkpoint_classes_and_inputs_must_match(trained_run, boxes):
    name = "tiny_vipr"
    out = trained_run(name)
    with pytest.raises(ConfigError, match="class_edges"):
        load_for_inference(out, class_edges=(12.0, 12.5, 13.0, 13.5, 14.0))
    with pytest.raises(ConfigError, match="inputs"):
        load_for_inference(out, inputs=("delta",))
    # resuming the run with other classes, or starting over in it, is refused (exit 2, nothing changed)
    before = (out / "metrics.csv").read_text()
    proc = halotrans_cli("train", "--config", f"segment/{name}.yaml", "--resume",
                         *settings(boxes, out, "data.class_edges=[12.0,13.0]"), check=False)
    assert proc.returncode == 2 and "data.class_edges" in proc.stderr, proc.stderr[-2000:]
    proc = halotrans_cli("train", "--config", f"segment/{name}.yaml", *settings(boxes, out), check=False)
    assert proc.returncode == 2 and "--resume" in proc.stderr, proc.stderr[-2000:]
    assert (out / "metrics.csv").read_text() == before


def test_resume_after_kill_reproduces_the_loss_curve(boxes, tmp_path):
    common = ["--config", "segment/tiny_vipr.yaml"]
    extra = ("train.steps=12", "train.checkpoint_every=4", "train.eval_every=6", "train.keep_checkpoints=0")
    full, killed = tmp_path / "full", tmp_path / "killed"
    run([*TORCHRUN, *common, *settings(boxes, full, *extra)], timeout=600)

    proc = subprocess.Popen([*TORCHRUN, *common, *settings(boxes, killed, *extra)], env=subprocess_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    wait_for(lambda: latest_tag(killed) is not None, proc)
    kill_job(proc, signal.SIGKILL)
    proc.communicate()
    assert not (killed / "model.pt").exists(), "the run finished before it was killed"
    k = int(latest_tag(killed).split("_")[1])
    assert k < 12

    res = run([*TORCHRUN, *common, "--resume", *settings(boxes, killed, *extra)], timeout=600)
    assert f"resumed from step {k}" in res.stdout + res.stderr
    a, b = metrics(full), metrics(killed)
    assert [r["step"] for r in a] == [r["step"] for r in b] == [str(s) for s in range(13)]
    for name in ("loss", "lr", "val_loss", "val_acc", "grad_norm"):
        ca, cb = column(a, name), column(b, name)
        assert ca.keys() == cb.keys()
        np.testing.assert_allclose([cb[s] for s in ca], list(ca.values()), rtol=1e-5, atol=1e-7, err_msg=name)
    wa = torch.load(full / "model.pt", weights_only=False)["state_dict"]
    wb = torch.load(killed / "model.pt", weights_only=False)["state_dict"]
    for key in wa:
        torch.testing.assert_close(wb[key], wa[key], rtol=1e-5, atol=1e-6)


def test_sigterm_checkpoints_then_resume_finishes(boxes, tmp_path):
    out = tmp_path / "run"
    args = ["--config", "segment/tiny_copra.yaml"]
    proc = subprocess.Popen([*TORCHRUN, *args, *settings(boxes, out, "train.steps=400", "train.checkpoint_every=1000",
                                                         "train.eval_every=0")],
                            env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    wait_for(lambda: (out / "metrics.csv").is_file() and len(metrics(out)) >= 3, proc)
    kill_job(proc, signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode != 0
    tag = latest_tag(out)
    assert tag is not None, err[-3000:]
    k = int(tag.split("_")[1])
    assert 3 <= k < 400 and max(int(r["step"]) for r in metrics(out)) == k
    assert not (out / "model.pt").exists()
    res = run([*TORCHRUN, *args, "--resume", *settings(boxes, out, f"train.steps={k + 2}", "train.eval_every=0")],
              timeout=600)
    assert f"resumed from step {k}" in res.stdout + res.stderr
    assert torch.load(out / "model.pt", weights_only=False)["meta"]["step"] == k + 2


def test_time_budget_stops_every_rank_at_the_same_step(boxes, tmp_path):
    out = tmp_path / "run"
    res = run([*TORCHRUN, "--config", "segment/tiny_vipr.yaml",
               *settings(boxes, out, "train.steps=100000", "train.time_budget_s=6", "train.eval_every=0")], timeout=600)
    assert "time budget reached" in res.stdout + res.stderr
    step = int(latest_tag(out).split("_")[1])
    assert 0 < step < 100000
    assert torch.load(out / "model.pt", weights_only=False)["meta"]["step"] == step
    assert max(int(r["step"]) for r in metrics(out)) == step


def test_bad_input_is_a_clear_error(boxes, tmp_path):
    def train(*sets: str, root: Path = boxes) -> subprocess.CompletedProcess:
        proc = halotrans_cli("train", "--config", "segment/tiny_vipr.yaml",
                             *settings(root, tmp_path / "run", *sets), check=False)
        assert proc.returncode == 2, proc.stderr[-3000:]
        assert not (tmp_path / "run").exists()
        return proc

    assert "crop 64 is larger than the box" in train("data.crop=64").stderr
    assert "lrr" in train("train.lrr=1").stderr
    assert "model.name=vipr" in train("data.crop=20").stderr  # not a multiple of the ViT patch (8)
    no_shear = write_synthetic_boxes(tmp_path / "no_shear", range(3), n=16, with_shear=False)
    err = train("data.crop=16", root=no_shear).stderr
    assert "/tidal/T" in err and "python -m halotrans shear" in err
    assert "box file not found" in train("data.val_seeds=7").stderr
