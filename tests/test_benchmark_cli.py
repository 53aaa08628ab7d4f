"""``python -m halotrans.benchmark --quick``: the entry point runs real benchmarks and prints every
figure next to a named peer measured in the same run, with the ratio, and writes JSON.

CI runs the fast ones (eval, jepa: ~40 s on 2 cores); ``make benchmark`` runs them all (~12 min)."""

from __future__ import annotations

import json

import pytest

from halotrans.benchmark import BENCH_DIR, available, format_table, row
from tests.helpers import run


def test_row_ratio_is_times_better_in_both_directions():
    assert row("b", "speed", 4.0, "x/s", "peer", 2.0)["ratio"] == 2.0
    assert row("b", "time", 1.0, "s", "peer", 3.0, higher_is_better=False)["ratio"] == 3.0
    assert row("b", "time", 1.0, "s", "peer", 0.0, higher_is_better=False)["ratio"] is None
    table = format_table([row("b", "m", 1.5, "s", "peer", 3.0, higher_is_better=False)])
    assert "| b | m | 1.5 | s | peer | 3 | 2 |" in table


def test_the_reference_run_is_only_run_when_named():
    import sys

    listing = run([sys.executable, "-m", "halotrans.benchmark", "--list"], timeout=120).stdout
    assert set(available()) >= {"sims", "shear", "models", "memory", "eval", "jepa", "reference", "accuracy"}
    lines = {line.split()[0]: line for line in listing.splitlines() if line.strip()}
    # the reference runs take from minutes to hours: never part of a plain or --quick run
    named_only = {"reference", "skatr_reference", "features"}
    assert all("[only when named]" in lines[name] for name in named_only)
    assert not any("[only when named]" in line for name, line in lines.items() if name not in named_only)


@pytest.mark.slow
def test_quick_benchmarks_print_every_figure_with_its_peer(tmp_path):
    import sys

    out = tmp_path / "all.json"
    res = run([sys.executable, "-m", "halotrans.benchmark", "--quick", "eval", "jepa", "--json", str(out)],
              timeout=900)
    rows = json.loads(out.read_text())["rows"]
    assert {r["benchmark"] for r in rows} == {"eval", "jepa"} and len(rows) >= 6
    for r in rows:
        assert r["peer"] and r["peer_value"] is not None and r["ratio"] is not None and r["ratio"] > 0, r
    assert "| ratio (x better) |" in res.stdout and "== all ==" in res.stdout
    for name in ("eval", "jepa"):
        saved = json.loads((BENCH_DIR / "results" / f"{name}_quick.json").read_text())
        assert saved["quick"] and saved["rows"] and saved["machine"]
