"""The README's main job end to end, shrunk: simulate → shear → train vipr → evaluate → REPORT.md."""

from __future__ import annotations

import json

import pytest

from tests.helpers import halotrans_cli


@pytest.mark.slow
def test_demo_runs_end_to_end_and_resumes(tmp_path):
    boxes, run = tmp_path / "boxes", tmp_path / "vipr"
    args = ["demo", "--set", "sim.box_size=32.0", "--set", "sim.n_grid=32", "--set", "sim.n_steps=10",
            "--set", f"sim.out_dir={boxes}", "--set", f"data.root={boxes}", "--set", f"train.out_dir={run}",
            "--set", "train.steps=6", "--set", "train.time_budget_s=null", "--set", "train.checkpoint_every=3",
            "--set", "train.eval_every=3", "--set", "eval.gradcam=false"]
    halotrans_cli(*args, timeout=900)
    report = (tmp_path / "REPORT.md").read_text()
    assert "| vipr |" in report and "| train |" in report
    result = json.loads((tmp_path / "eval" / "report.json").read_text())
    assert 0.0 <= result["models"]["vipr"]["accuracy"] <= 1.0
    assert sorted(p.name for p in boxes.glob("box_*.h5")) == [f"box_{s:04d}.h5" for s in range(6)]
    # A second run redoes nothing: boxes and shear are skipped, training is already complete.
    mtimes = {p: p.stat().st_mtime_ns for p in boxes.glob("box_*.h5")}
    out = halotrans_cli(*args, timeout=900).stdout
    assert "0 box(es) simulated, 6 already complete" in out
    assert {p: p.stat().st_mtime_ns for p in boxes.glob("box_*.h5")} == mtimes
