"""Pieces of the SKATR reference (benchmarks/bench_skatr_reference.py): configs, goals, tables, and the
whole command on real tiny 21cmFAST light cones (``--quick``).

The full run takes ~2.5 hours on 2 cores (``python -m halotrans.benchmark skatr_reference``).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from halotrans.benchmark import load
from halotrans.config import ConfigError
from tests.conftest import REPO, run

sk = load("skatr_reference")


def test_the_stages_read_one_light_cone_set_and_the_scratch_peer_is_the_same_vit(tmp_path):
    cfgs = sk.stage_configs(work=tmp_path)
    assert list(cfgs) == ["pretrain", "regress", "npe", "scratch", "regpre"]
    lc = cfgs["pretrain"].lightcone
    # issue 9: >= 600 light cones of the CPU set (14 x 14 x 537, 38 nodes, spin temperature on)
    assert lc.n >= 600 and (lc.hii_dim, lc.n_los, lc.zprime_step_factor) == (14, 537, 1.05) and lc.spin_temperature
    assert (lc.z_min, lc.z_max) == (5.0, 35.0) and lc.tau_max == 0.089 and lc.x_hi_max == 0.1
    assert cfgs["pretrain"].train.task == "jepa" and cfgs["pretrain"].train.bf16 is False
    assert 0 < cfgs["pretrain"].train.time_budget_s <= 45 * 60  # "JEPA pretraining within ~45 minutes"
    for stage in ("regress", "npe"):
        assert cfgs[stage].skatr.encoder_run == str(tmp_path / "pretrain")
    # the regression-pretrained summary: the scratch ViT frozen, under the same head as the JEPA summary
    assert cfgs["regpre"].skatr.encoder_run == str(tmp_path / "scratch") and cfgs["regpre"].skatr.summary == "frozen"
    assert cfgs["regpre"].skatr.head_hidden == cfgs["regress"].skatr.head_hidden
    assert cfgs["regpre"].train.steps == cfgs["regress"].train.steps
    for stage in ("regress", "npe", "regpre"):
        assert cfgs[stage].train.time_budget_s is None
    assert cfgs["scratch"].model == cfgs["pretrain"].model and cfgs["scratch"].skatr.summary == "scratch"
    assert {Path(c.train.out_dir).name for c in cfgs.values()} == set(sk.STAGES)
    quick = sk.stage_configs(sk.QUICK_SET, tmp_path, quick=True)
    assert quick["regress"].train.steps == sk.QUICK_STEPS["regress"] and quick["pretrain"].lightcone.n == 10


def _copy_configs(tmp_path: Path) -> None:
    for f in (REPO / "configs" / "reference").glob("skatr_*.yaml"):
        (tmp_path / f.name).write_text(f.read_text().replace("../skatr/", str(REPO / "configs/skatr") + "/"))


@pytest.mark.parametrize("stem, extra, error", [
    ("skatr_scratch", "model:\n  depth: 6\n", "skatr_scratch.yaml: its `model` differs"),  # another ViT as peer
    ("skatr_npe", "lightcone:\n  out: data/other.h5\n", "skatr_npe.yaml: its `lightcone` section differs"),
])
def test_a_stage_that_breaks_the_comparison_is_refused(tmp_path, monkeypatch, stem, extra, error):
    _copy_configs(tmp_path)
    with open(tmp_path / f"{stem}.yaml", "a") as f:
        f.write(extra)
    monkeypatch.setattr(sk, "CONFIG_DIR", tmp_path)
    with pytest.raises(ConfigError, match=error):
        sk.stage_configs(work=tmp_path / "w")


def _metrics(rel: dict, r2: float = 0.5, **extra) -> dict:
    return {"relative_error": rel, "r2": {p: r2 for p in rel}, **extra}


PARAMS = ("m_wdm", "omega_m", "e0", "log10_lx", "log10_tvir", "zeta")


def test_goal_checks_compare_each_parameter_with_its_margin():
    scratch = _metrics(dict.fromkeys(PARAMS, 0.10))
    frozen = _metrics({**dict.fromkeys(PARAMS, 0.10), "omega_m": 0.114, "zeta": 0.12, "m_wdm": 0.5})
    checks = sk.goal_checks(frozen, scratch, {"calibration_error": 0.08})
    assert [c["met"] for c in checks] == [True, True, True, False, True]  # Ω_m, L_X, T_vir, ζ, coverage
    assert "1.20×" in checks[3]["detail"] and "zeta" in checks[3]["goal"]  # m_wdm is not a goal parameter
    assert not sk.goal_checks(frozen, scratch, {"calibration_error": 0.12})[-1]["met"]


def _summary() -> dict:
    runs = {"regress": _metrics(dict.fromkeys(PARAMS, 0.2)), "scratch": _metrics(dict.fromkeys(PARAMS, 0.1)),
            "regpre": _metrics(dict.fromkeys(PARAMS, 0.15)),
            "npe": _metrics(dict.fromkeys(PARAMS, 0.25), log_posterior=3.2, calibration_error=0.07)}
    s = {"date": "2026-12-04 10:00", "machine": "cpu", "command": sk.COMMAND, "seconds": 600.0,
         "lightcones": {"path": "x.h5", "accepted": 600, "shape": [14, 14, 537], "rejected": 400,
                        "reasons": {"tau": 390, "x_HI(z=5)": 10}},
         "param_names": list(PARAMS), "splits": [420, 60, 120], "pretrain": {"steps": 900},
         "timing": {"pretrain_s": 1200.0, "summaries_s": 30.0, "head_s": 40.0, "npe_s": 60.0,
                    "frozen_route_s": 1270.0, "scratch_s": 1260.0},
         "runs": {k: {"metrics": v} for k, v in runs.items()}}
    s["goals"] = sk.goal_checks(runs["regress"], runs["scratch"], runs["npe"])
    return s


def test_tables_show_every_parameter_the_ratios_and_the_missed_goals():
    s = _summary()
    md = sk.summary_markdown(s)
    assert md.count("| 0.2000 | 0.1000 | 2.00 | 0.1500 |") == len(PARAMS) and "18× less" in md  # 1260 / (30 + 40)
    block = sk.results_block(s)
    assert "600 light cones" in block and "Goals met: 1 of 5: missed" in block and "2.00×" in block
    rows = sk.rows_of(s)
    assert rows[0]["ratio"] == pytest.approx(0.5) and rows[-2]["ratio"] == pytest.approx(18.0)


@pytest.mark.slow
def test_quick_run_goes_through_every_stage_and_resumes_without_redoing_work(tmp_path):
    """The whole command on 10 real tiny 21cmFAST light cones, then again: everything is found done."""
    cmd = [str(REPO / "benchmarks" / "bench_skatr_reference.py"), "--quick", "--work", str(tmp_path / "w"),
           "--set", f"lightcone.out={tmp_path / 'lc.h5'}"]
    first = run([sys.executable, *cmd], timeout=900, cwd=REPO)
    s = json.loads((tmp_path / "w" / "report" / "reference_skatr.json").read_text())
    assert s["lightcones"]["accepted"] == 10 and s["lightcones"]["rejected"] > 0
    assert sum(s["splits"]) == 10 and s["timing"]["scratch_budget_s"] == pytest.approx(s["timing"]["frozen_route_s"], abs=0.1)
    assert len(s["goals"]) == 5 and set(s["runs"]) == {"regress", "npe", "scratch", "regpre"}
    for f in ("reference_skatr.md", "skatr_report.md", "npe_coverage.png", "scratch_recovery.png", "regpre_recovery.png"):
        assert (tmp_path / "w" / "report" / f).is_file(), f
    again = run([sys.executable, *cmd], timeout=600, cwd=REPO)
    assert "(finished)" in again.stdout and "summaries" in again.stdout and "cached" in again.stdout
    assert "=== python -m halotrans train" not in again.stdout  # nothing trained the second time
    assert "computed 0 light cones" in again.stdout
    assert first.returncode == again.returncode == 0
