"""Pieces of the segmentation reference (benchmarks/bench_reference.py): configs and goals.

The reference run itself takes ~75 minutes (``python -m halotrans.benchmark reference``); these
tests check its parts on small inputs. What it shares with the other reference benchmarks (the
budget ledger, the training stage and its resume, the RESULTS.md blocks) is tested in test_harness.py.
"""

from __future__ import annotations

import pytest
import torch

from halotrans.benchmark import load
from halotrans.config import ConfigError, load_config
from halotrans.models.registry import build_model
from tests.helpers import REPO

ref = load("reference")


def test_the_four_configs_share_one_recipe():
    cfgs = ref.network_configs()
    assert list(cfgs) == ["vipr", "copra", "MONAI UNETR", "MONAI VNet"]
    recipes = [ref.recipe(c) for c in cfgs.values()]
    assert all(r == recipes[0] for r in recipes)
    first = cfgs["vipr"]
    # issue 9's data: configs/sims/box64.yaml, 20 boxes split 16/2/2, delta and T, 5 classes
    assert ref.recipe(first)["sim"] == {**ref.recipe(load_config("sims/box64"))["sim"], "out_dir": "data/reference/boxes"}
    assert ref.harness.all_seeds(first) == list(range(20))
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
