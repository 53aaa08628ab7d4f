"""The benchmark harness (benchmarks/harness.py): the published reports it renders, the budget ledger,
the training stage and its resume, the RESULTS.md blocks, the number formats.

The published reports are pure functions of their published JSON: each ``benchmarks/<name>/<stem>.md``
(and the segmentation ``report.md``) and each ``reference:<block>`` block of ``benchmarks/RESULTS.md``
is re-rendered here from its JSON by today's code and must be byte-identical to the committed text
(dates and machines are read from the JSON, so nothing is left out of the comparison).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

from halotrans.benchmark import REPO, load
from halotrans.config import load_config, save_config
from halotrans.io import DataError
from tests.helpers import subprocess_env

sys.path.insert(0, str(REPO / "benchmarks"))  # as the bench scripts do: harness.py is a plain module there
import harness  # noqa: E402

#: benchmark name -> (published directory and file stem, RESULTS.md block)
PUBLISHED = {"reference": ("reference", "segmentation"), "features": ("features", "features"),
             "skatr_reference": ("reference_skatr", "skatr")}


def _published(stem: str) -> dict:
    return json.loads((REPO / "benchmarks" / stem / f"{stem}.json").read_text(encoding="utf-8"))


@pytest.mark.parametrize("name", list(PUBLISHED))
def test_published_report_is_rendered_byte_identical_from_its_json(name):
    stem, _ = PUBLISHED[name]
    md = load(name).summary_markdown(_published(stem))
    assert md == (REPO / "benchmarks" / stem / f"{stem}.md").read_text(encoding="utf-8")


@pytest.mark.parametrize("stem", ["reference", "features"])
def test_published_segmentation_report_is_rendered_byte_identical_from_its_json(stem):
    from halotrans.eval.report import markdown

    report = json.loads((REPO / "benchmarks" / stem / "report.json").read_text(encoding="utf-8"))
    assert markdown(report) == (REPO / "benchmarks" / stem / "report.md").read_text(encoding="utf-8")


def test_results_md_blocks_are_rewritten_byte_identical_from_the_published_json(tmp_path):
    copy = tmp_path / "RESULTS.md"
    shutil.copyfile(REPO / "benchmarks" / "RESULTS.md", copy)
    for name, (stem, block) in PUBLISHED.items():
        harness.update_results_block(copy, block, load(name).results_block(_published(stem)))
    assert copy.read_bytes() == (REPO / "benchmarks" / "RESULTS.md").read_bytes()


def test_the_accuracy_table_is_the_published_reference_compared_with_its_peers():
    s = _published("reference")
    rows = harness.segmentation_rows(s)
    assert rows == load("reference").rows_of(s)
    assert load("accuracy").run(quick=False) == rows  # bench_accuracy reads the published JSON
    k = len(s["class_names"])
    assert len(rows) == len(harness.PEERS) * (2 * k - 1)
    first = rows[0]
    assert (first["metric"], first["peer"]) == (f"vipr AUC {s['class_names'][0]}", "MONAI UNETR")
    assert first["value"] == s["models"]["vipr"]["per_class"][0]["auc"]
    err = next(r for r in rows if r["metric"] == f"copra |ΔM/M| {s['class_names'][1]}")
    assert err["value"] == abs(s["models"]["copra"]["per_class"][1]["mass_rel_error"]) and not err["higher_is_better"]


def test_numbers_are_formatted_alike_and_missing_ones_show_as_a_dash():
    assert harness.fmt(0.123456) == "0.1235" and harness.fmt(12.3, ".0f") == "12"
    assert harness.fmt(None) == harness.fmt(math.nan) == harness.fmt_pct(None) == harness.fmt_pct(math.inf) == "–"
    assert harness.fmt_pct(0.04) == "+4.0%" and harness.fmt_pct(-0.0849) == "-8.5%"
    assert math.isnan(harness.to_float(None)) and harness.to_float(1) == 1.0
    import numpy as np

    cleaned = harness.clean({1: np.float32(0.5), "a": (np.int64(3), math.nan), "b": np.array([1.0, np.inf])})
    assert cleaned == {"1": 0.5, "a": [3, None], "b": [1.0, None]}
    assert json.loads(json.dumps(cleaned)) == cleaned


def test_goals_read_as_a_table_and_as_a_sentence():
    goals = [{"goal": "a > b", "met": True, "detail": "+0.1"}, {"goal": "c < 5%", "met": False, "detail": "6%"}]
    assert harness.goal_lines(goals) == ["| goal | met | detail |", "|---|---|---|", "| a > b | yes | +0.1 |",
                                         "| c < 5% | **no** | 6% |"]
    assert harness.goal_lines(goals, no="no")[-1] == "| c < 5% | no | 6% |"
    assert harness.goals_sentence(goals) == "a > b: yes; c < 5%: no (6%)"


def test_the_summary_header_gives_the_command_that_reruns_it():
    t0 = time.time() - 5
    h = harness.run_header("python -m halotrans.benchmark x", ["train.lr=1"], False, t0)
    assert list(h) == ["date", "machine", "quick", "command", "seconds"] and 5 <= h["seconds"] < 60
    assert h["command"] == "python -m halotrans.benchmark x --set train.lr=1"
    quick = harness.run_header("python -m halotrans.benchmark x", ["data.val_seeds=4"], True, t0)
    assert quick["command"] == "python -m halotrans.benchmark x --quick" and quick["quick"]


def test_write_summary_publishes_the_report_and_its_block(tmp_path, monkeypatch):
    results = tmp_path / "RESULTS.md"
    results.write_text("x\n<!-- reference:features:begin -->\nold\n<!-- reference:features:end -->\n")
    monkeypatch.setattr(harness, "RESULTS_MD", results)
    out, pub = tmp_path / "run" / "report", tmp_path / "published"
    out.mkdir(parents=True)
    (out / "roc.png").write_bytes(b"png")
    summary = {"date": "2026-12-04 13:00", "name": "δ"}
    harness.write_summary(summary, "# md δ\n", out, "features", publish=False, publish_dir=pub,
                          files=("roc.png", "absent.png"), block="features", block_text="new")
    assert json.loads((out / "features.json").read_text(encoding="utf-8")) == summary
    assert "δ" in (out / "features.json").read_text(encoding="utf-8")  # not escaped
    assert (out / "features.md").read_text(encoding="utf-8") == "# md δ\n" and not pub.exists()
    assert "old" in results.read_text()
    harness.write_summary(summary, "# md δ\n", out, "features", publish=True, publish_dir=pub,
                          files=("roc.png", "absent.png"), block="features", block_text="new")
    assert sorted(f.name for f in pub.iterdir()) == ["features.json", "features.md", "roc.png"]
    assert results.read_text() == "x\n<!-- reference:features:begin -->\nnew\n<!-- reference:features:end -->\n"
    assert harness.read_notes(pub, publish=True) == []
    (pub / "NOTES.md").write_text("A reading.\n", encoding="utf-8")
    assert harness.read_notes(pub, publish=True) == ["A reading."] and harness.read_notes(pub, publish=False) == []


@pytest.mark.parametrize("argv, overrides, work, publish", [
    ([], [], "runs/x", True),
    (["--quick"], ["q=1"], "runs/x_quick", False),
    (["--quick", "--set", "a=2"], ["q=1", "a=2"], "runs/x_quick", False),
    (["--set", "a=2"], ["a=2"], "runs/x", False),
    (["--work", "/tmp/w"], [], "/tmp/w", False),
    (["--no-publish"], [], "runs/x", False),
])
def test_the_reference_command_line_publishes_only_a_full_default_run(argv, overrides, work, publish):
    calls = []

    def fn(o, w, publish, quick):
        calls.append((list(o), w, publish, quick))
        return {}

    assert harness.reference_cli(argv, fn, doc="x", quick_set=("q=1",), work=REPO / "runs" / "x",
                                 quick_work=REPO / "runs" / "x_quick", publish_dir=REPO / "benchmarks" / "x",
                                 quick_help="tiny") == 0
    assert calls == [(overrides, REPO / work, publish, "--quick" in argv)]


def test_budget_ledger_counts_each_process_up_to_its_last_checkpoint():
    ledger = {"segments": [{"start": 100.0, "end": None}]}
    harness.close_segments(ledger, last_checkpoint=160.0)  # killed after a checkpoint at t = 160
    assert ledger["segments"][0]["end"] == 160.0 and harness.used_seconds(ledger) == 60.0
    ledger["segments"].append({"start": 200.0, "end": None})
    harness.close_segments(ledger, last_checkpoint=160.0)  # killed before its first checkpoint: 0 s
    assert harness.used_seconds(ledger) == 60.0
    ledger["segments"].append({"start": 300.0, "end": None})
    harness.close_segments(ledger, last_checkpoint=390.5)
    assert harness.used_seconds(ledger) == 150.5
    assert [s["end"] for s in ledger["segments"]] == [160.0, 200.0, 390.5]  # closed segments stay closed
    assert harness.close_segments({"segments": [{"start": 5.0, "end": None}]}, None)["segments"][0]["end"] == 5.0


def test_planned_steps_fill_the_budget():
    assert harness.planned_steps(900.0, 0.5, 50) == int((900 - harness.SETUP_S) / 0.5)
    assert harness.planned_steps(20.0, 0.5, 5) == 6  # never fewer than warmup + 1


def test_results_block_is_rewritten_in_place(tmp_path):
    md = tmp_path / "RESULTS.md"
    md.write_text("# R\n\n<!-- reference:segmentation:begin -->\nold\n<!-- reference:segmentation:end -->\n"
                  "<!-- reference:skatr:begin -->\nkeep\n<!-- reference:skatr:end -->\ntail\n")
    harness.update_results_block(md, "segmentation", "new table\n| a |")
    text = md.read_text()
    assert "old" not in text and "new table\n| a |\n<!-- reference:segmentation:end -->" in text
    assert "keep" in text and text.endswith("tail\n")
    harness.update_results_block(md, "segmentation", "again")
    assert text.replace("new table\n| a |", "again") == md.read_text()
    with pytest.raises(DataError, match="no '<!-- reference:other:begin -->'"):
        harness.update_results_block(md, "other", "x")


@pytest.mark.slow
@pytest.mark.dist
def test_killed_training_resumes_with_the_budget_it_has_left(sim_boxes, tmp_path):
    """Kill the training stage after its first checkpoint; the rerun resumes and the budget adds up."""
    cfg = load_config("segment/tiny_vipr.yaml", [f"data.root={sim_boxes}", f"train.out_dir={tmp_path / 'run'}",
                                                  "train.time_budget_s=45", "train.warmup_steps=2"])
    config_file = tmp_path / "vipr.yaml"
    save_config(cfg, config_file)
    stage = ("import sys; from pathlib import Path; sys.path.insert(0, sys.argv[2]); import harness; "
             "from halotrans.config import load_config; "
             "harness.stage_train('vipr', load_config(sys.argv[1]), Path(sys.argv[1]))")
    proc = subprocess.Popen([sys.executable, "-c", stage, str(config_file), str(REPO / "benchmarks")], cwd=REPO,
                            env=subprocess_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    run_dir = tmp_path / "run"
    deadline = time.time() + 300
    while harness.checkpoint_time(run_dir) is None and proc.poll() is None and time.time() < deadline:
        time.sleep(0.5)
    assert proc.poll() is None, "the first training process ended before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    first = json.loads((run_dir / "budget.json").read_text())
    assert len(first["segments"]) == 1 and first["segments"][0]["end"] is None
    assert not (run_dir / "model.pt").exists()

    ledger = harness.stage_train("vipr", cfg, config_file)
    assert len(ledger["segments"]) == 2 and ledger["steps"] == first["steps"]
    s0, s1 = ledger["segments"]
    assert s0["start"] <= s0["end"] <= s1["start"] < s1["end"]
    # each process counts until its last checkpoint; together they stay within the budget (+ set-up slack)
    assert harness.used_seconds(ledger) <= 45 + 20
    blob = torch.load(run_dir / "model.pt", map_location="cpu", weights_only=False)
    assert blob["meta"]["step"] > 0
    rows = (run_dir / "metrics.csv").read_text().splitlines()
    steps = [int(r.split(",")[0]) for r in rows[1:]]
    assert steps == sorted(set(steps))  # the resumed log continues the first without repeats
    assert harness.stage_train("vipr", cfg, config_file) == ledger  # finished: nothing more to do
