"""A training run that stopped on a non-finite loss or gradient norm: its error and its marker.

When the loop (:mod:`halotrans.train.loop`) sees a NaN/±Inf loss (all-reduced every step, so every
rank decides alike) or gradient norm, it stops at once: no checkpoint and no ``model.pt`` from
those weights, the last good checkpoint kept. Rank 0 writes ``<run_dir>/diverged.json`` (the step,
the values, the last good checkpoint and the full config) and every rank raises
:class:`TrainingDiverged`; ``python -m halotrans train`` prints it as one line and exits with
:data:`EXIT_DIVERGED` (3; under torchrun the launcher itself exits 1 and logs the workers' 3).

Resumes are exact, so continuing with the same settings would diverge again at the same step:
:func:`refusal` makes ``train`` (and the SLURM scripts' start-up check, ``halotrans.launch.rundir``)
refuse with the same status until a setting that changes the trajectory differs (``--set
train.lr=...``, ``train.grad_clip``, ``train.warmup_steps``, the data...) or the marker is deleted.
A requeued or resubmitted job therefore stops at once instead of training into the same failure.
A run that then finishes removes the marker.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from halotrans.io import atomic_path
from halotrans.yaml_config import config_to_dict, flatten

DIVERGED_FILE = "diverged.json"
#: exit status of ``train`` that stopped on a non-finite loss or gradient norm, or that refuses to
#: repeat such a run unchanged (2 is bad input, 143 a SIGTERM stop to be resumed)
EXIT_DIVERGED = 3
#: config keys (sections or dotted keys) that do not change the training trajectory
NOT_TRAJECTORY = ("sim", "shear", "eval", "train.out_dir", "train.log_every", "train.eval_every",
                  "train.checkpoint_every", "train.keep_checkpoints", "train.time_budget_s")


class TrainingDiverged(RuntimeError):
    """Training stopped on a non-finite loss or gradient norm (``exit_status`` 3, see the module doc)."""

    exit_status = EXIT_DIVERGED


def _trajectory(cfg_dict: dict) -> dict[str, Any]:
    """The settings that fix the training trajectory, flat and JSON-normalised."""
    flat = json.loads(json.dumps(flatten(cfg_dict)))
    return {k: v for k, v in flat.items()
            if not any(k == p or k.startswith(p + ".") for p in NOT_TRAJECTORY)}


def read(run_dir: str | os.PathLike) -> dict | None:
    """The marker of a run that diverged, or None."""
    path = Path(run_dir) / DIVERGED_FILE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        return {"step": "?", "config": None}


def mark(run_dir: str | os.PathLike, cfg: Any, step: int, what: str, last_checkpoint: str | None) -> Path:
    """Rank 0: write ``diverged.json`` (atomically) for the run ``cfg`` that stopped at ``step``."""
    path = Path(run_dir) / DIVERGED_FILE
    record = {"step": step, "what": what, "last_checkpoint": last_checkpoint, "time": time.time(),
              "config": config_to_dict(cfg)}
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(record, indent=1, default=str))
    return path


def clear(run_dir: str | os.PathLike) -> None:
    (Path(run_dir) / DIVERGED_FILE).unlink(missing_ok=True)


def changed(marker: dict, cfg: Any) -> list[str]:
    """Trajectory settings of ``cfg`` that differ from the diverged run's (``key: old -> new``)."""
    if not isinstance(marker.get("config"), dict):
        return ["(unreadable marker)"]
    old, new = _trajectory(marker["config"]), _trajectory(config_to_dict(cfg))
    return [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]


def refusal(run_dir: str | os.PathLike, cfg: Any) -> str | None:
    """The error for starting ``cfg`` in ``run_dir`` if the run diverged there with the same settings, else None."""
    marker = read(run_dir)
    if marker is None or changed(marker, cfg):
        return None
    path = Path(run_dir) / DIVERGED_FILE
    last = marker.get("last_checkpoint")
    return (f"{run_dir} stopped at step {marker.get('step')} on a non-finite {marker.get('what', 'loss')} "
            f"({path}); resuming is exact, so the same settings would diverge again at that step"
            + (f" (the last good checkpoint is {last})" if last else "")
            + ": change a setting such as --set train.lr=... or train.grad_clip=..., "
            f"or delete {path.name} to retry as it is")
