"""Sequence parallelism in the real DeepSpeed loop: torchrun, gloo, ``train.sp`` against data parallelism.

dp 2 × sp 2 on 4 processes must follow the loss curve of dp 2 alone (same crops, the same
gradients: the slabs' losses add up to the crop's), with replicas that stay identical; ZeRO-3 too
(where DeepSpeed averages instead of summing over the SP ranks); and a JEPA run with sp 2 must
follow the single-process one. The replica check runs the loop through ``python
tests/test_parallel_train.py`` with a task that compares every rank's parameters after each step.
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from halotrans.sims.boxio import box_path
from halotrans.train.checkpoint import load_for_inference
from tests.helpers import val_loss_of

pytestmark = [pytest.mark.dist, pytest.mark.slow]

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1"]


class ReplicaCheck:
    """A task that behaves as ``task`` and, after every optimizer step, records the largest difference
    between this rank's parameters and rank 0's (ZeRO 0-2: every rank holds all parameters)."""

    def __init__(self, task):
        self.task = task
        self.worst = 0.0

    def __getattr__(self, name):
        return getattr(self.task, name)

    def after_step(self, model: torch.nn.Module, step: int) -> None:
        import torch.distributed as dist

        self.task.after_step(model, step)
        flat = torch.cat([p.detach().float().flatten() for p in model.parameters()])
        mine = flat.clone()
        dist.broadcast(flat, src=0)
        diff = (mine - flat).abs().max()
        dist.all_reduce(diff, op=dist.ReduceOp.MAX)
        self.worst = max(self.worst, float(diff))


def _replica_worker(out_json: str, config: str, *sets: str) -> None:
    import torch.distributed as dist

    from halotrans.config import load_config
    from halotrans.train.loop import train
    from halotrans.train.registry import make_task

    cfg = load_config(config, list(sets))
    task = ReplicaCheck(make_task(cfg))
    result = train(cfg, task)
    if int(__import__("os").environ["RANK"]) == 0:
        Path(out_json).write_text(json.dumps({"worst": task.worst, "step": result["step"]}))
    assert not dist.is_initialized()


# ---------------------------------------------------------------------------------------------


def metrics(run_dir: Path) -> dict[str, dict[int, float]]:
    with open(run_dir / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    return {k: {int(r["step"]): float(r[k]) for r in rows if r[k]} for k in rows[0] if k not in ("step", "time_s")}


def assert_same_curves(a: Path, b: Path, keys: tuple[str, ...], rtol: float = 1e-4) -> None:
    """Equal logged curves (fp32 round-off grows a little over the steps; an accuracy may flip a few voxels).

    The gradient norm gets 10× ``rtol``: a different summation order flips the LeakyReLU slope of a
    few voxels near zero, and Adam's normalised steps carry such differences into the next steps
    (measured: equal at step 1, 2e-4 relative by step 4, while the losses stay within 1e-4)."""
    ma, mb = metrics(a), metrics(b)
    for key in keys:
        assert ma[key].keys() == mb[key].keys() and ma[key], key
        atol = 1e-3 if key.endswith("acc") else 0.0
        np.testing.assert_allclose([ma[key][s] for s in mb[key]], list(mb[key].values()),
                                   rtol=rtol * (10 if key == "grad_norm" else 1), atol=atol, err_msg=key)


def sets(*overrides: str) -> list[str]:
    return [a for o in overrides for a in ("--set", o)]


@pytest.fixture(scope="module")
def boxes(sim_boxes) -> Path:
    return Path(sim_boxes)


def test_dp2_sp2_follows_dp2_with_identical_replicas(boxes, tmp_path):
    from tests.helpers import run

    common = (f"data.root={boxes}", "train.steps=4", "train.eval_every=4", "train.checkpoint_every=4")
    sp_run, dp_run = tmp_path / "sp", tmp_path / "dp"
    out = tmp_path / "replicas.json"
    res = run([*TORCHRUN, "--nproc_per_node=4", __file__, str(out), "segment/tiny_vipr.yaml",
               f"train.out_dir={sp_run}", "train.sp=2", *common], timeout=600)
    assert "(dp 2 x sp 2)" in res.stdout
    run([*TORCHRUN, "--nproc_per_node=2", "-m", "halotrans", "train", "--config", "segment/tiny_vipr.yaml",
         *sets(f"train.out_dir={dp_run}", *common)], timeout=600)
    replicas = json.loads(out.read_text())
    assert replicas["step"] == 4 and replicas["worst"] == 0.0, replicas
    assert_same_curves(sp_run, dp_run, ("loss", "grad_norm", "val_loss", "val_acc"))
    # model.pt (zero_to_fp32 over the 4 ranks' partitions) holds the weights the SP run validated with
    model, cfg, meta = load_for_inference(sp_run)
    assert val_loss_of(model, cfg, meta, box_path(boxes, 2)) == pytest.approx(metrics(sp_run)["val_loss"][4], rel=1e-5)


def test_copra_sp2_under_zero3_has_the_dp_gradients(boxes, tmp_path):
    from tests.helpers import halotrans_cli, run

    common = (f"data.root={boxes}", "train.steps=3", "train.eval_every=3", "train.checkpoint_every=3",
              "train.zero_stage=3", "model.kernel_size=3")
    sp_run, dp_run = tmp_path / "sp", tmp_path / "dp"
    run([*TORCHRUN, "--nproc_per_node=4", "-m", "halotrans", "train", "--config", "segment/tiny_copra.yaml",
         *sets(f"train.out_dir={sp_run}", "train.sp=2", *common)], timeout=600)
    run([*TORCHRUN, "--nproc_per_node=2", "-m", "halotrans", "train", "--config", "segment/tiny_copra.yaml",
         *sets(f"train.out_dir={dp_run}", *common)], timeout=600)
    # step 1 has the same gradients (ZeRO-3 averages over the SP ranks: the loop scales the loss by sp);
    # Adam then amplifies round-off a little in steps on gradients near 0
    a, b = metrics(sp_run), metrics(dp_run)
    for key in ("loss", "grad_norm"):
        assert a[key][1] == pytest.approx(b[key][1], rel=1e-5), key
    assert_same_curves(sp_run, dp_run, ("loss", "grad_norm", "val_loss", "val_acc"), rtol=2e-3)

    # an SP size that does not divide the ranks is refused with exit status 2, nothing written
    proc = halotrans_cli("train", "--config", "segment/tiny_copra.yaml",
                         *sets(f"data.root={boxes}", f"train.out_dir={tmp_path / 'bad'}", "train.sp=2"), check=False)
    assert proc.returncode == 2 and "train.sp = 2 does not divide the 1 ranks" in proc.stderr, proc.stderr[-2000:]
    assert not (tmp_path / "bad").exists()


def test_jepa_with_sp2_follows_one_process(tmp_path):
    from tests.helpers import CPU, TINY_VIT, run, write_synthetic_lightcones

    data = write_synthetic_lightcones(tmp_path / "lc.h5", n=24)
    common = (f"lightcone.out={data}", *TINY_VIT, *CPU, "skatr.batch_size=4", "train.steps=3", "train.eval_every=3",
              "train.checkpoint_every=3", "model.activation_checkpointing=true")
    one, two = tmp_path / "one", tmp_path / "two"
    run([sys.executable, "-m", "halotrans", "train", "-c", "skatr/pretrain.yaml",
         *sets(f"train.out_dir={one}", *common)], timeout=600)
    run([*TORCHRUN, "--nproc_per_node=2", "-m", "halotrans", "train", "-c", "skatr/pretrain.yaml",
         *sets(f"train.out_dir={two}", "train.sp=2", *common)], timeout=600)
    assert_same_curves(two, one, ("loss", "grad_norm", "val_loss", "val_std_context", "val_std_pred"))


if __name__ == "__main__":
    _replica_worker(*sys.argv[1:])
