"""``python -m halotrans infer`` on 1, 3 and 2 (sp 2) gloo ranks equals ``predict_periodic`` on one process."""

from __future__ import annotations

import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from halotrans.data.boxes import load_inputs
from halotrans.eval.inference import predict_periodic
from halotrans.sims.boxio import box_path
from halotrans.train.checkpoint import load_for_inference
from tests.helpers import halotrans_cli, run

pytestmark = [pytest.mark.dist, pytest.mark.slow]

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1"]


@pytest.fixture(scope="module")
def tiny_run(sim_boxes, tmp_path_factory) -> Path:
    """A tiny vipr trained for 2 steps on 16³ crops of the real 32³ boxes (one process)."""
    out = tmp_path_factory.mktemp("infer") / "run"
    halotrans_cli("train", "--config", "segment/tiny_vipr.yaml",
                  *[a for s in (f"data.root={sim_boxes}", f"train.out_dir={out}", "data.crop=16", "train.steps=2",
                                "train.eval_every=0") for a in ("--set", s)])
    return out


@pytest.mark.parametrize("ranks,extra", [(1, ()), (3, ()), (2, ("--sp", "2"))], ids=["1rank", "3ranks", "sp2"])
def test_distributed_inference_equals_one_process(tiny_run, sim_boxes, tmp_path, ranks, extra):
    box = box_path(sim_boxes, 3)
    out = tmp_path / "pred.h5"
    res = run([*TORCHRUN, f"--nproc_per_node={ranks}", "-m", "halotrans", "infer", str(tiny_run), str(box),
               "--out", str(out), "--set", "eval.overlap=0.5", *extra], timeout=300)
    assert f"on {ranks} rank(s), 64 windows of 16³" in res.stdout
    assert not list(tmp_path.glob("*.tmp-*"))
    model, _, meta = load_for_inference(tiny_run)
    ref = predict_periodic(model, load_inputs(box, meta["inputs"], meta["norm_stats"]), 16, 0.5, progress=False)
    with h5py.File(out, "r") as f:
        probs, classes = f["probs"][...], f["classes"][...]
        assert f.attrs["window"] == 16 and f.attrs["ranks"] == ranks and list(f.attrs["inputs"]) == meta["inputs"]
    np.testing.assert_allclose(probs, ref, atol=1e-5)
    np.testing.assert_array_equal(classes, ref.argmax(0))


def test_bad_input_writes_nothing(tiny_run, sim_boxes, tmp_path):
    from tests.helpers import write_synthetic_boxes

    out = tmp_path / "pred.h5"
    no_shear = write_synthetic_boxes(tmp_path / "no_shear", [0], n=16, with_shear=False)
    proc = run([*TORCHRUN, "--nproc_per_node=2", "-m", "halotrans", "infer", str(tiny_run), str(box_path(no_shear, 0)),
                "--out", str(out)], check=False, timeout=300)
    assert proc.returncode != 0 and "/tidal/T" in proc.stderr
    proc = halotrans_cli("infer", tiny_run, box_path(sim_boxes, 3), "--out", out, "--sp", "2", check=False)
    assert proc.returncode == 2 and "--sp 2 must divide the 1 ranks" in proc.stderr
    proc = halotrans_cli("infer", tmp_path, box_path(sim_boxes, 3), "--out", out, check=False)
    assert proc.returncode == 2 and "not a training run directory" in proc.stderr
    assert not out.exists() and not list(tmp_path.glob("*.tmp-*"))
