"""Sweeps: grid expansion, config checks before submission, run states and the results table."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import pytest
import yaml

from halotrans.config import ConfigError
from halotrans.launch.collect import collect, write_table
from halotrans.launch.grid import load_sweep, run_name, sweep_from_dict
from halotrans.launch.rundir import final_metrics, mark_failed, run_status
from halotrans.launch.sweep import submit_sweep
from tests.helpers import REPO, halotrans_cli, run

SWEEP = {
    "name": "inputs",
    "set": {"train.steps": 7, "data.crop": 16},
    "grid": {
        "model.name": ["vipr", "copra"],
        "data.inputs": [["delta"], ["T"], ["delta", "T"]],
        "data.class_edges": [[13.0, 13.5, 14.0], [12.5, 13.0, 13.5, 14.0, 14.5]],
    },
}


def test_grid_is_the_cartesian_product_of_dotted_keys(tmp_path):
    sweep = sweep_from_dict({**SWEEP, "out_dir": str(tmp_path / "sw")})
    runs = sweep.runs()
    assert len(runs) == 2 * 3 * 2
    seen = {(r.config.model.name, r.config.data.inputs, r.config.data.class_edges) for r in runs}
    assert len(seen) == 12  # every combination exactly once
    assert ("copra", ("delta", "T"), (12.5, 13.0, 13.5, 14.0, 14.5)) in seen
    for r in runs:
        assert r.config.train.steps == 7 and r.config.data.crop == 16  # fixed keys in every run
        assert Path(r.config.train.out_dir) == r.run_dir == (tmp_path / "sw" / r.name).resolve()
        assert r.config.data.n_classes == len(r.config.data.class_edges) + 2
    assert len({r.name for r in runs}) == 12
    assert runs[0].name == "000_vipr_delta_13-13.5-14"
    assert runs[-1].values == {"model.name": "copra", "data.inputs": ["delta", "T"],
                               "data.class_edges": [12.5, 13.0, 13.5, 14.0, 14.5]}


def test_run_names_are_safe_file_names():
    assert run_name(3, ("a b/c", [0.5, 1.0])) == "003_a-b-c_0.5-1"
    assert run_name(12, ()) == "012"


@pytest.mark.parametrize("grid, match", [
    ({"model.nmae": ["vipr"]}, "nmae"),                         # misspelt key
    ({"data.inputs": [["delta"], ["rho"]]}, "inputs"),          # bad value of the 2nd run
    ({"train.steps": ["many"]}, r"train\.steps"),               # wrong type
    ({"trian.steps": [1]}, "trian"),                            # unknown section
])
def test_invalid_runs_are_rejected_before_anything_is_submitted(tmp_path, grid, match):
    sweep = sweep_from_dict({"grid": grid, "out_dir": str(tmp_path / "sw")}, "bad.yaml")
    with pytest.raises(ConfigError, match=match):
        submit_sweep(sweep, executor="local")
    assert not (tmp_path / "sw").exists()  # no run directory, no manifest, no submitit folder


@pytest.mark.parametrize("d, match", [
    ({"grid": {"train.lr": [1e-3]}, "resorces": {}}, "resorces"),
    ({"grid": {"train.lr": 1e-3}}, "non-empty list"),
    ({"grid": {}}, "non-empty mapping"),
    ({"grid": {"train.out_dir": ["a", "b"]}}, "out_dir"),
    ({"grid": {"lr": [1e-3]}}, "dotted"),
])
def test_malformed_sweep_files(d, match):
    with pytest.raises(ConfigError, match=match):
        sweep_from_dict(d, "bad.yaml")


def test_bad_resources_are_a_config_error(tmp_path):
    sweep = sweep_from_dict({"grid": {"train.lr": [1e-3]}, "out_dir": str(tmp_path / "sw"),
                             "resources": {"gpus_per_nod": 1}})
    with pytest.raises(ConfigError, match="gpus_per_nod"):
        submit_sweep(sweep, executor="local")


def test_cli_rejects_a_bad_sweep_with_status_2_and_writes_nothing(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"grid": {"model.nmae": ["vipr"]}, "out_dir": str(tmp_path / "sw")}))
    proc = halotrans_cli("sweep", "submit", path, "--executor", "local", check=False)
    assert proc.returncode == 2
    assert "nmae" in proc.stderr and "bad.yaml" in proc.stderr
    assert not (tmp_path / "sw").exists()


def test_sweep_overrides_and_dry_run(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({**SWEEP, "out_dir": str(tmp_path / "sw")}, sort_keys=False))
    sweep = load_sweep(path, ["train.lr=1e-3", f"out_dir={tmp_path / 'other'}"])
    assert sweep.out_dir == tmp_path / "other"
    assert all(r.config.train.lr == 1e-3 for r in sweep.runs())
    proc = halotrans_cli("sweep", "submit", path, "--dry-run")
    assert "12 runs" in proc.stdout and "011_copra_delta-T_12.5-13-13.5-14-14.5" in proc.stdout
    assert not (tmp_path / "sw").exists()


SWEEP_FILES = sorted(p for p in (REPO / "configs").rglob("*.yaml") if "grid" in (yaml.safe_load(p.read_text()) or {}))


@pytest.mark.parametrize("path", SWEEP_FILES, ids=lambda p: p.stem)
def test_shipped_sweeps_expand_into_valid_configs(path):
    sweep = load_sweep(path)
    runs = sweep.runs()
    assert len(runs) >= 2
    assert len({r.name for r in runs}) == len(runs)


# --- run states and the results table ---------------------------------------------------------

COLUMNS = ["step", "lr", "loss", "grad_norm", "time_s", "val_loss", "val_acc"]


def fake_run(run_dir: Path, rows: list[dict], finished: bool) -> None:
    """A run directory as the trainer leaves it (config, sparse metrics.csv, checkpoint, model.pt)."""
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text("train: {steps: 4}\n")
    with open(run_dir / "metrics.csv", "w", newline="") as f:
        w = csv.DictWriter(f, COLUMNS)
        w.writeheader()
        w.writerows(rows)
    (run_dir / "checkpoints" / "step_00000004").mkdir(parents=True)
    (run_dir / "checkpoints" / "latest").write_text("step_00000004")
    if finished:
        (run_dir / "model.pt").write_bytes(b"weights")


def test_final_metrics_take_the_last_value_of_each_sparse_column(tmp_path):
    fake_run(tmp_path / "r", [{"step": 0, "val_loss": 2.0, "val_acc": 0.1},
                              {"step": 2, "lr": 1e-3, "loss": 1.5, "time_s": 1.0},
                              {"step": 4, "lr": 5e-4, "loss": 1.2, "time_s": 2.0, "val_loss": 1.1, "val_acc": 0.6}],
             finished=True)
    (tmp_path / "r" / "eval").mkdir()
    (tmp_path / "r" / "eval" / "report.json").write_text(json.dumps({"accuracy": 0.7, "auc": {"1": 0.9},
                                                                     "name": "x", "ok": True}))
    m = final_metrics(tmp_path / "r")
    assert m["step"] == 4 and m["loss"] == 1.2 and m["val_acc"] == 0.6
    assert "grad_norm" not in m  # never logged
    assert m["eval.accuracy"] == 0.7 and m["eval.auc.1"] == 0.9 and "eval.name" not in m and "eval.ok" not in m


def test_run_states(tmp_path):
    fake_run(tmp_path / "done", [{"step": 4, "loss": 1.0}], finished=True)
    fake_run(tmp_path / "running", [{"step": 2, "loss": 1.5}], finished=False)
    (tmp_path / "failed").mkdir()
    mark_failed(tmp_path / "failed", "Traceback ...\nDataError: /nowhere/box_0000.h5: no such file\n")
    assert run_status(tmp_path / "done") == ("done", "")
    assert run_status(tmp_path / "running") == ("incomplete", "")
    assert run_status(tmp_path / "failed") == ("failed", "DataError: /nowhere/box_0000.h5: no such file")
    assert run_status(tmp_path / "never") == ("missing", "")


def test_collect_marks_failed_and_missing_runs(tmp_path):
    sw = tmp_path / "sw"
    runs = [{"name": n, "run_dir": str(sw / n), "values": {"model.name": m, "data.inputs": i}}
            for n, m, i in [("000_vipr", "vipr", ["delta"]), ("001_copra", "copra", ["delta", "T"]),
                            ("002_vipr", "vipr", ["T"])]]
    sw.mkdir()
    (sw / "sweep.json").write_text(json.dumps({"runs": runs}))
    fake_run(sw / "000_vipr", [{"step": 4, "loss": 1.25, "val_acc": 0.5}], finished=True)
    (sw / "001_copra").mkdir()
    mark_failed(sw / "001_copra", "RuntimeError: boom")
    rows = collect(sw)
    assert [(r["run"], r["status"]) for r in rows] == [("000_vipr", "done"), ("001_copra", "failed"),
                                                        ("002_vipr", "missing")]
    assert rows[0]["loss"] == 1.25 and rows[0]["data.inputs"] == "delta"
    assert rows[1]["error"] == "RuntimeError: boom" and "loss" not in rows[1]
    csv_path, md_path = write_table(rows, sw)
    with open(csv_path) as f:
        table = list(csv.DictReader(f))
    assert [r["status"] for r in table] == ["done", "failed", "missing"]
    assert table[0]["val_acc"] == "0.5" and table[2]["loss"] == "" and table[1]["data.inputs"] == "delta-T"
    md = md_path.read_text().splitlines()
    assert md[0].startswith("| run | status | model.name | data.inputs |") and md[0].endswith("| error |")
    assert len(md) == 2 + 3 and "| 002_vipr | missing |" in md[4]


def test_collect_cli_without_manifest_and_on_nothing(tmp_path):
    fake_run(tmp_path / "a", [{"step": 4, "loss": 0.5}], finished=True)
    proc = halotrans_cli("sweep", "collect", tmp_path)
    assert "| a | done |" in proc.stdout and (tmp_path / "results.csv").is_file()
    proc = halotrans_cli("sweep", "collect", tmp_path / "a" / "checkpoints", check=False)
    assert proc.returncode == 2 and "no sweep.json" in proc.stderr


def test_rundir_prints_resume_only_when_a_checkpoint_exists(tmp_path):
    run_dir = tmp_path / "run"
    cmd = [sys.executable, "-m", "halotrans.launch.rundir",
           "--set", f"train.out_dir={run_dir}", "--resume"]  # unknown train options pass through
    assert run(cmd).stdout == ""
    fake_run(run_dir, [], finished=False)
    assert run(cmd).stdout.strip() == "--resume"
    bad = run(cmd + ["--set", "train.stepz=3"], check=False)
    assert bad.returncode == 2 and "stepz" in bad.stderr
