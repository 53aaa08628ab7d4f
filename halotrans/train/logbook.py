"""Metrics of a run: one CSV row per logged step (``metrics.csv``) and TensorBoard scalars (``tb/``).

A resumed run first drops the rows past its checkpoint (a killed run may have logged a few more
steps, or half a line), so the CSV of a resumed run equals that of an uninterrupted one.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Sequence

from halotrans.io import atomic_path


class MetricsLog:
    """Append-only CSV with fixed ``columns`` (first column ``step``) plus TensorBoard; rank 0 only."""

    def __init__(self, run_dir: Path, columns: Sequence[str], resume_step: int | None):
        from torch.utils.tensorboard import SummaryWriter

        self.path = run_dir / "metrics.csv"
        self.columns = ["step", *columns]
        rows = self._rows_until(resume_step) if resume_step is not None else []
        with atomic_path(self.path) as tmp, open(tmp, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(self.columns)
            w.writerows(rows)
        self.file = open(self.path, "a", newline="")
        self.writer = csv.writer(self.file)
        self.tb = SummaryWriter(str(run_dir / "tb"), purge_step=None if resume_step is None else resume_step + 1)

    def _rows_until(self, step: int) -> list[list[str]]:
        """Complete rows of the existing CSV (same columns) with step <= ``step``."""
        if not self.path.is_file():
            return []
        with open(self.path, newline="") as f:
            rows = list(csv.reader(f))
        if not rows or rows[0] != self.columns:
            return []
        keep = []
        for r in rows[1:]:
            if len(r) == len(self.columns) and r[0].isdigit() and int(r[0]) <= step:
                keep.append(r)
        return keep

    def write(self, step: int, values: dict[str, float]) -> None:
        self.writer.writerow([step] + [_fmt(values.get(c)) for c in self.columns[1:]])
        self.file.flush()
        for k, v in values.items():
            if v is not None and math.isfinite(v):
                self.tb.add_scalar(k, v, step)

    def close(self) -> None:
        self.file.close()
        self.tb.close()


def _fmt(v: float | None) -> str:
    return "" if v is None else repr(float(v))
