"""Pieces of the segmentation reference (benchmarks/bench_reference.py): configs, budget, goals, RESULTS block.

The reference run itself takes ~75 minutes (``python -m halotrans.benchmark reference``); these
tests check its parts on small inputs, and the resume of a killed training stage on real boxes.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from halotrans.benchmark import load
from halotrans.config import ConfigError, load_config, save_config
from halotrans.io import DataError
from halotrans.models.build import build_model
from tests.conftest import REPO, subprocess_env

ref = load("reference")


def test_the_four_configs_share_one_recipe():
    cfgs = ref.network_configs()
    assert list(cfgs) == ["vipr", "copra", "MONAI UNETR", "MONAI VNet"]
    recipes = [ref.recipe(c) for c in cfgs.values()]
    assert all(r == recipes[0] for r in recipes)
    first = cfgs["vipr"]
    # issue 9's data: configs/sims/box64.yaml, 20 boxes split 16/2/2, delta and T, 5 classes
    assert ref.recipe(first)["sim"] == {**ref.recipe(load_config("sims/box64"))["sim"], "out_dir": "data/reference/boxes"}
    assert ref.all_seeds(first) == list(range(20))
    d = first.data
    assert (d.train_seeds, d.val_seeds, d.test_seeds) == ("0-15", "16-17", "18-19")
    assert list(d.inputs) == ["delta", "T"] and d.n_classes == 5
    assert first.train.bf16 is False and first.train.time_budget_s > 0
    for name, cfg in cfgs.items():
        assert cfg.model.name == ref.NETWORKS[name] and cfg.train.out_dir.endswith(ref.NETWORKS[name])


def test_every_network_takes_the_crop_and_the_eval_window():
    for cfg in ref.network_configs().values():
        model = build_model(cfg.model, len(cfg.data.inputs), cfg.data.n_classes, cfg.data.crop).eval()
        w = cfg.eval.window or cfg.data.crop
        with torch.no_grad():
            out = model(torch.zeros(1, len(cfg.data.inputs), w, w, w))
        assert out.shape == (1, cfg.data.n_classes, w, w, w)


def test_a_config_that_differs_outside_model_is_refused(tmp_path, monkeypatch):
    for f in (REPO / "configs" / "reference").glob("*.yaml"):
        (tmp_path / f.name).write_text(f.read_text().replace("../sims/box64.yaml", str(REPO / "configs/sims/box64.yaml")))
    with open(tmp_path / "copra.yaml", "a") as f:
        f.write("data:\n  crop: 64\n")
    monkeypatch.setattr(ref, "CONFIG_DIR", tmp_path)
    with pytest.raises(ConfigError, match="differs from vipr.yaml outside `model`: data.crop"):
        ref.network_configs()


def test_budget_ledger_counts_each_process_up_to_its_last_checkpoint():
    ledger = {"segments": [{"start": 100.0, "end": None}]}
    ref.close_segments(ledger, last_checkpoint=160.0)  # killed after a checkpoint at t = 160
    assert ledger["segments"][0]["end"] == 160.0 and ref.used_seconds(ledger) == 60.0
    ledger["segments"].append({"start": 200.0, "end": None})
    ref.close_segments(ledger, last_checkpoint=160.0)  # killed before its first checkpoint: 0 s
    assert ref.used_seconds(ledger) == 60.0
    ledger["segments"].append({"start": 300.0, "end": None})
    ref.close_segments(ledger, last_checkpoint=390.5)
    assert ref.used_seconds(ledger) == 150.5
    assert [s["end"] for s in ledger["segments"]] == [160.0, 200.0, 390.5]  # closed segments stay closed
    assert ref.close_segments({"segments": [{"start": 5.0, "end": None}]}, None)["segments"][0]["end"] == 5.0


def test_planned_steps_fill_the_budget():
    assert ref.planned_steps(900.0, 0.5, 50) == int((900 - ref.SETUP_S) / 0.5)
    assert ref.planned_steps(20.0, 0.5, 5) == 6  # never fewer than warmup + 1


def _models(vipr_auc, unetr_auc, vipr_err, unetr_err, base_auc=0.8):
    def m(aucs, errs):
        return {"per_class": [{"auc": a, "mass_rel_error": e} for a, e in zip(aucs, [0.0, *errs])]}

    return {"vipr": m(vipr_auc, vipr_err), "MONAI UNETR": m(unetr_auc, unetr_err),
            "logistic regression": m([base_auc] * 3, [0.5, 0.5])}


def test_goal_checks_report_margins():
    checks = ref.goal_checks(_models([0.97, 0.96, 0.99], [0.95, 0.90, 0.98], [0.05, -0.08], [0.2, 0.1]), 3)
    assert [c["met"] for c in checks] == [True, True, True, True, True]
    checks = {c["goal"]: c for c in ref.goal_checks(
        _models([0.97, 0.93, 0.99], [0.98, 0.90, 0.98], [0.05, -0.15], [0.2, 0.1]), 3)}
    assert not checks["vipr AUC > MONAI UNETR AUC, every class"]["met"]
    assert "-0.0100" in checks["vipr AUC > MONAI UNETR AUC, every class"]["detail"]
    assert not checks["vipr |ΔM/M| < MONAI UNETR |ΔM/M|, every halo class"]["met"]
    assert "0.0200 short" in checks["vipr AUC >= 0.95 every class"]["detail"]
    assert "5.00 pp over" in checks["vipr |ΔM/M| <= 10% every halo class"]["detail"]


def test_results_block_is_rewritten_in_place(tmp_path):
    md = tmp_path / "RESULTS.md"
    md.write_text("# R\n\n<!-- reference:segmentation:begin -->\nold\n<!-- reference:segmentation:end -->\n"
                  "<!-- reference:skatr:begin -->\nkeep\n<!-- reference:skatr:end -->\ntail\n")
    ref.update_results_block(md, "segmentation", "new table\n| a |")
    text = md.read_text()
    assert "old" not in text and "new table\n| a |\n<!-- reference:segmentation:end -->" in text
    assert "keep" in text and text.endswith("tail\n")
    ref.update_results_block(md, "segmentation", "again")
    assert text.replace("new table\n| a |", "again") == md.read_text()
    with pytest.raises(DataError, match="no '<!-- reference:other:begin -->'"):
        ref.update_results_block(md, "other", "x")


@pytest.mark.slow
@pytest.mark.dist
def test_killed_training_resumes_with_the_budget_it_has_left(sim_boxes, tmp_path):
    """Kill the training stage after its first checkpoint; the rerun resumes and the budget adds up."""
    cfg = load_config("segment/tiny_vipr.yaml", [f"data.root={sim_boxes}", f"train.out_dir={tmp_path / 'run'}",
                                                  "train.time_budget_s=45", "train.warmup_steps=2"])
    config_file = tmp_path / "vipr.yaml"
    save_config(cfg, config_file)
    stage = ("import sys; from pathlib import Path; from halotrans.benchmark import load; "
             "from halotrans.config import load_config; ref = load('reference'); "
             "ref.stage_train('vipr', load_config(sys.argv[1]), Path(sys.argv[1]))")
    proc = subprocess.Popen([sys.executable, "-c", stage, str(config_file)], cwd=REPO, env=subprocess_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    run_dir = tmp_path / "run"
    deadline = time.time() + 300
    while ref.checkpoint_time(run_dir) is None and proc.poll() is None and time.time() < deadline:
        time.sleep(0.5)
    assert proc.poll() is None, "the first training process ended before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    first = json.loads((run_dir / "budget.json").read_text())
    assert len(first["segments"]) == 1 and first["segments"][0]["end"] is None
    assert not (run_dir / "model.pt").exists()

    ledger = ref.stage_train("vipr", cfg, config_file)
    assert len(ledger["segments"]) == 2 and ledger["steps"] == first["steps"]
    s0, s1 = ledger["segments"]
    assert s0["start"] <= s0["end"] <= s1["start"] < s1["end"]
    # each process counts until its last checkpoint; together they stay within the budget (+ set-up slack)
    assert ref.used_seconds(ledger) <= 45 + 20
    blob = torch.load(run_dir / "model.pt", map_location="cpu", weights_only=False)
    assert blob["meta"]["step"] > 0
    rows = (run_dir / "metrics.csv").read_text().splitlines()
    steps = [int(r.split(",")[0]) for r in rows[1:]]
    assert steps == sorted(set(steps))  # the resumed log continues the first without repeats
    assert ref.stage_train("vipr", cfg, config_file) == ledger  # finished: nothing more to do
