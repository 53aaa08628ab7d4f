"""Training-set statistics: input normalisation and class weights.

The mean and standard deviation of each input field (δ, T) over every voxel of the TRAINING boxes
are computed once and stored next to the boxes in ``<root>/stats.json`` (one entry per training
split, with the size and mtime of each file so a regenerated box is noticed). A run copies the
entry it used into its own directory, so evaluation normalises exactly as training did.

    norm = training_stats("data/boxes", [0, 1, 2])   # {"delta": {"mean": .., "std": ..}, "T": ...}
    w = class_weights(counts, "inverse_sqrt")
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Sequence

import h5py
import numpy as np

from halotrans.fields.channels import InputDatasets
from halotrans.io import DataError, WriteError, atomic_path, require_finite
from halotrans.sims.boxio import NON_FINITE_HINT, box_path

#: input name -> dataset in the box file (delta, T and the physics channels of halotrans.fields.channels)
INPUT_DATASETS = InputDatasets()
STATS_FILE = "stats.json"


def _signature(path: Path) -> list:
    st = path.stat()
    return [path.name, st.st_size, st.st_mtime_ns]


def compute_stats(paths: Sequence[Path]) -> dict:
    """Mean and std (float64 sums) of every input field present in ALL ``paths`` (a field holding
    NaN/±Inf is a :class:`DataError`, so ``stats.json`` never holds non-finite statistics)."""
    sums: dict[str, np.ndarray] = {}
    present: set[str] | None = None
    n = 0
    for path in paths:
        with h5py.File(path, "r") as f:
            here = set(INPUT_DATASETS.present_in(f))  # delta, T and every /features channel
            present = here if present is None else present & here
            for name in present:
                a = f[INPUT_DATASETS[name]][...].astype(np.float64)
                require_finite(a, f"{path}:/{INPUT_DATASETS[name]}", NON_FINITE_HINT)
                s = sums.setdefault(name, np.zeros(2))
                s += (a.sum(), np.square(a).sum())
            n += f["delta"].size
    out = {}
    for name in sorted(present or ()):
        mean = sums[name][0] / n
        var = max(sums[name][1] / n - mean**2, 0.0)
        out[name] = {"mean": float(mean), "std": float(np.sqrt(var)) or 1.0}
    return out


def training_stats(root: str | os.PathLike, seeds: Sequence[int]) -> dict:
    """Normalisation of the training split ``seeds`` under ``root``: read from, or computed into, ``stats.json``.

    Returns ``{input: {"mean": float, "std": float}}`` for each input present in every box.
    """
    root = Path(root)
    paths = [box_path(root, s) for s in seeds]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise DataError(f"training box file(s) not found: {', '.join(missing[:4])}"
                        + (f" and {len(missing) - 4} more" if len(missing) > 4 else ""))
    key = ",".join(map(str, sorted(seeds)))
    signature = [_signature(p) for p in paths]
    stats_path = root / STATS_FILE
    table = {}
    if stats_path.is_file():
        try:
            table = json.loads(stats_path.read_text())
        except json.JSONDecodeError:
            table = {}
    entry = table.get(key)
    if entry is None or entry.get("files") != signature:
        entry = {"files": signature, "inputs": compute_stats(paths)}
        table[key] = entry
        try:
            with atomic_path(stats_path) as tmp:
                tmp.write_text(json.dumps(table, indent=1))
        except (OSError, WriteError):  # a read-only data set (or a full disk): recompute next time
            pass
    return entry["inputs"]


def class_weights(counts: np.ndarray, mode: str) -> np.ndarray:
    """Per-class loss weights from training-set voxel counts (n_classes,).

    ``none``: all 1; ``inverse``: ∝ 1/f_k; ``inverse_sqrt``: ∝ 1/√f_k, with f_k the class frequency,
    normalised so the mean weight per training voxel, Σ f_k w_k, is 1. Classes absent from the
    training set get weight 0.
    """
    counts = np.asarray(counts, dtype=np.float64)
    if mode == "none":
        return np.ones_like(counts)
    freq = counts / counts.sum()
    power = {"inverse": 1.0, "inverse_sqrt": 0.5}[mode]
    w = np.zeros_like(freq)
    w[freq > 0] = freq[freq > 0] ** -power
    return w / (freq * w).sum()
