"""Accuracy table of the latest segmentation reference: per-class AUC and |ΔM/M| of vipr and copra
against MONAI UNETR / VNet (and the logistic-regression baseline), read from the published report.

Nothing is trained here: the rows come from ``benchmarks/reference/reference.json``, written by the
last full ``python -m halotrans.benchmark reference`` (or ``runs/reference_quick/reference.json``
with ``--quick``, the smoke run's). With no report yet, it says which command makes one and returns
no rows.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from halotrans.benchmark import REPO

sys.path.insert(0, str(Path(__file__).resolve().parent))  # harness.py next to this file
import harness  # noqa: E402

PUBLISHED = REPO / "benchmarks" / "reference" / "reference.json"
QUICK = REPO / "runs" / "reference_quick" / "reference.json"


def run(quick: bool) -> list[dict]:
    path = QUICK if quick and QUICK.is_file() and not PUBLISHED.is_file() else PUBLISHED
    if not path.is_file():
        print(f"no reference report at {path.relative_to(REPO)}: run `python -m halotrans.benchmark reference`")
        return []
    summary = json.loads(path.read_text())
    print(f"from {path.relative_to(REPO)} (run of {summary.get('date', '?')}, {summary.get('machine', '?')})")
    return harness.segmentation_rows(summary, "reference")
