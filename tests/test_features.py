"""The feature study benchmark (benchmarks/bench_features.py): configs, goals, table, and a tiny real run."""

from __future__ import annotations

import json

import pytest
import torch

from halotrans.benchmark import load
from halotrans.config import config_to_dict

feat = load("features")


def test_six_runs_differ_only_in_inputs():
    cfgs = feat.run_configs()
    assert list(cfgs) == ["vipr δ", "vipr T", "vipr δ+T", "copra δ", "copra T", "copra δ+T"]
    assert {tuple(c.data.inputs) for c in cfgs.values()} == {("delta",), ("T",), ("delta", "T")}
    assert len({c.train.out_dir for c in cfgs.values()}) == 6
    for net in feat.NETWORKS:
        dicts = []
        for name, cfg in cfgs.items():
            if name.startswith(net + " "):
                assert cfg.model.name == net and cfg.train.time_budget_s == feat.BUDGET_S
                d = config_to_dict(cfg)
                d["train"].pop("out_dir")
                d["data"].pop("inputs")
                dicts.append(d)
        assert all(d == dicts[0] for d in dicts)
    # an override reaches every run, the input sets stay
    cfgs = feat.run_configs(["train.time_budget_s=17", "data.inputs=[T]"])
    assert {c.train.time_budget_s for c in cfgs.values()} == {17}
    assert [tuple(c.data.inputs) for c in cfgs.values()][:3] == [("delta",), ("T",), ("delta", "T")]


def _models(v_auc, c_auc, v_err):
    """Same figures for every input set: vipr (v_auc, v_err) and copra (c_auc, no mass error)."""
    def one(aucs, errs):
        return {"accuracy": 0.8, "per_class": [{"auc": a, "mass_rel_error": e} for a, e in zip(aucs, [None, *errs])]}
    out = {}
    for label in feat.INPUT_SETS:
        out[f"vipr {label}"] = one(v_auc, v_err)
        out[f"copra {label}"] = one(c_auc, [0.0] * len(v_err))
    return out


def test_goal_checks_state_margins():
    checks = feat.goal_checks(_models([0.97, 0.96, 0.99], [0.95, 0.90, 0.98], [0.04, -0.03]), 3)
    assert len(checks) == 9 and all(c["met"] for c in checks)
    checks = {c["goal"]: c for c in feat.goal_checks(_models([0.97, 0.93, 0.99], [0.98, 0.90, 0.98], [0.04, -0.08]), 3)}
    g = checks["vipr AUC > copra AUC, every class (δ)"]
    assert not g["met"] and "-0.0100, +0.0300, +0.0100" in g["detail"]
    assert "0.0200 short" in checks["vipr AUC >= 0.95 every class (T)"]["detail"]
    assert "3.0 pp over" in checks["vipr |ΔM/M| < 5% every halo class (δ+T)"]["detail"]


def test_table_and_rows_carry_every_run():
    models = _models([0.97, 0.93, 0.99], [0.98, 0.90, 0.98], [0.04, -0.08])
    s = {"class_names": ["no halo", "<13", "≥13"], "models": models,
         "training": {name: {"steps": 10 + i} for i, name in enumerate(models)},
         "date": "2026-12-04 13:00", "machine": "test", "command": feat.COMMAND, "budget_s": 300.0,
         "goals": feat.goal_checks(models, 3)}
    block = feat.results_block(s)
    for name in models:
        assert f"| {name} |" in block
    assert "| vipr δ | 10 | 0.9300 | 0.970, 0.930, 0.990 | +4.0%, -8.0% | 0.8000 |" in block
    rows = feat.rows_of(s)
    assert len(rows) == 3 * 2 + 2 * 2
    auc = next(r for r in rows if r["metric"] == "vipr min AUC over classes, inputs δ")
    assert auc["peer"] == "copra δ" and auc["ratio"] == pytest.approx(0.93 / 0.90)
    err = next(r for r in rows if r["metric"] == "vipr max |ΔM/M| halo classes, inputs T")
    assert err["value"] == pytest.approx(0.08)


@pytest.mark.slow
@pytest.mark.dist
def test_tiny_feature_study_runs_and_resumes(sim_boxes, tmp_path, capfd):
    """Six real trainings (a small ViT) on the tiny boxes, evaluated; the rerun trains nothing."""
    overrides = [f"data.root={sim_boxes}", f"sim.out_dir={sim_boxes}", "sim.box_size=32.0", "sim.n_grid=32",
                 "sim.n_steps=20", "data.train_seeds=0-1", "data.val_seeds=2", "data.test_seeds=3",
                 "data.val_max_crops=2", "train.time_budget_s=40", "train.warmup_steps=2", "model.hidden_size=32",
                 "model.depth=4", "model.num_heads=2", "model.mlp_dim=64", "model.skip_layers=[1,2,3,4]",
                 "model.kernel_size=3", "eval.batch_size=2", "data.crop=32", "eval.window=32", "data.batch_size=2"]
    s = feat.features(overrides, tmp_path, publish=False)
    assert set(s["models"]) == set(feat.run_configs())
    for name, t in s["training"].items():
        assert t["steps"] >= 3, name
    for name, cfg in feat.run_configs(overrides, tmp_path).items():
        blob = torch.load(f"{cfg.train.out_dir}/model.pt", map_location="cpu", weights_only=False)
        assert list(blob["meta"]["inputs"]) == list(cfg.data.inputs), name
        m = s["models"][name]
        assert len(m["per_class"]) == 5 and 0.0 <= m["accuracy"] <= 1.0
    summary = json.loads((tmp_path / "report" / "features.json").read_text())
    assert summary["goals"] == s["goals"] and (tmp_path / "report" / "roc.png").stat().st_size > 0
    capfd.readouterr()
    again = feat.features(overrides, tmp_path, publish=False)
    out = capfd.readouterr().out
    assert out.count("(finished)") == 6 and "=== python -m halotrans train" not in out
    assert again["models"] == s["models"]
