"""Checkpoints of a run directory: DeepSpeed engine state for resume, ``model.pt`` for inference.

Run directory layout (``cfg.train.out_dir``)::

    config.yaml        the full Config the run (last) started with
    ds_config.json     the DeepSpeed config dict
    norm_stats.json    input normalisation used (copied from the data set's stats.json)
    metrics.csv        step, lr, loss, grad_norm, time_s, val_<metric>...
    tb/                TensorBoard events
    checkpoints/step_00000100/   DeepSpeed checkpoint (tag ``step_<8 digits>``), client state
                                 {"step": int, "meta": dict}
    checkpoints/latest           name of the newest COMPLETE tag (written atomically after every
                                 rank finished writing; DeepSpeed's zero_to_fp32 reads it too)
    model.pt           {"state_dict": fp32 weights, "meta": dict} written at the end

``meta`` holds at least ``task``, ``in_channels``, ``n_classes``, ``inputs``, ``class_edges``,
``norm_stats``, ``img_size`` and ``step``.

    model, cfg, meta = load_for_inference("runs/vipr", class_edges=(13.0, 13.5, 14.0))
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.distributed as dist
from torch import nn

from halotrans.config import Config, ConfigError, config_to_dict, load_config
from halotrans.io import DataError, atomic_path, write_failure
from halotrans.train.registry import make_task

CHECKPOINT_DIR = "checkpoints"
MODEL_FILE = "model.pt"


def tag_for(step: int) -> str:
    return f"step_{step:08d}"


def latest_tag(run_dir: str | os.PathLike) -> str | None:
    """The newest complete checkpoint tag of a run, or None."""
    p = Path(run_dir) / CHECKPOINT_DIR / "latest"
    return p.read_text().strip() if p.is_file() else None


def save(engine: Any, run_dir: Path, step: int, meta: dict, keep: int) -> str:
    """Every rank: write the engine state as tag ``step_<step>``; then point ``latest`` at it and
    delete all but the newest ``keep`` tags (0 keeps all).

    A full disk or a read-only run directory is a :class:`~halotrans.io.WriteError`: the partial tag
    is removed and ``latest`` still names the last good checkpoint (none of which is deleted).
    """
    ckpt_dir = run_dir / CHECKPOINT_DIR
    tag = tag_for(step)
    try:
        engine.save_checkpoint(str(ckpt_dir), tag=tag, client_state={"step": step, "meta": meta}, save_latest=False)
    except (OSError, RuntimeError) as e:
        failure = write_failure(e, ckpt_dir / tag)
        if failure is None:
            raise
        shutil.rmtree(ckpt_dir / tag, ignore_errors=True)
        raise failure from e
    if dist.get_rank() == 0:  # save_checkpoint ended with a barrier: every rank's files are complete
        with atomic_path(ckpt_dir / "latest") as tmp:
            tmp.write_text(tag)
        tags = sorted(p.name for p in ckpt_dir.glob("step_*") if p.is_dir())
        for old in tags[:-keep] if keep else []:
            shutil.rmtree(ckpt_dir / old, ignore_errors=True)
    dist.barrier()
    return tag


#: the best validation so far of a ``train.keep_best`` run: {"tag", "step", "val_loss", "evals_since"}
BEST_FILE = "best.json"


def read_best(run_dir: str | os.PathLike) -> dict | None:
    """The best-validation record of a run (``best.json``), or None."""
    p = Path(run_dir) / BEST_FILE
    return json.loads(p.read_text()) if p.is_file() else None


def save_best(engine: Any, run_dir: Path, step: int, meta: dict, val_loss: float) -> None:
    """Every rank: keep the engine state as tag ``best_<step>`` (``latest`` is not touched); rank 0 then
    records it in ``best.json`` and deletes the older ``best_*`` tags."""
    ckpt_dir = run_dir / CHECKPOINT_DIR
    tag = f"best_{step:08d}"
    engine.save_checkpoint(str(ckpt_dir), tag=tag, client_state={"step": step, "meta": meta}, save_latest=False)
    if dist.get_rank() == 0:
        write_best(run_dir, {"tag": tag, "step": step, "val_loss": val_loss, "evals_since": 0})
        for old in ckpt_dir.glob("best_*"):
            if old.name != tag:
                shutil.rmtree(old, ignore_errors=True)
    dist.barrier()


def write_best(run_dir: Path, record: dict) -> None:
    with atomic_path(Path(run_dir) / BEST_FILE) as tmp:
        tmp.write_text(json.dumps(record))


def final_tag(run_dir: str | os.PathLike, tag: str, keep_best: bool) -> str:
    """The checkpoint ``model.pt`` is written from: the best validation's with ``keep_best``, else ``tag``."""
    best = read_best(run_dir) if keep_best else None
    return best["tag"] if best else tag


def resume(engine: Any, run_dir: Path) -> int | None:
    """Load the latest checkpoint into ``engine`` (model, optimizer, DeepSpeed state) → its step, or None."""
    tag = latest_tag(run_dir)
    if tag is None:
        return None
    path, client = engine.load_checkpoint(str(run_dir / CHECKPOINT_DIR), tag=tag)
    if path is None:
        raise DataError(f"{run_dir / CHECKPOINT_DIR / tag}: DeepSpeed could not load this checkpoint")
    return int(client["step"])


def check_same_model(saved: Config, cfg: Config, source: str, keys: Sequence[str]) -> None:
    """Raise :class:`ConfigError` if ``cfg`` differs from ``saved`` in ``train.task`` or one of ``keys``
    (the task's ``model_keys``: dotted sections or keys that fix the network and its inputs)."""
    a, b = config_to_dict(saved), config_to_dict(cfg)
    for key in ("train.task", *keys):
        va, vb = a, b
        for part in key.split("."):
            va, vb = va[part], vb[part]
        if va != vb:
            raise ConfigError(f"{key} = {vb} does not match the checkpoint's {va} ({source}); "
                              f"use the run's settings or a new train.out_dir")


def _load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=False)


def checkpoint_state(run_dir: str | os.PathLike, tag: str) -> tuple[dict[str, torch.Tensor], dict]:
    """fp32 weights and client state of checkpoint ``tag`` (any ZeRO stage, fp32 or bf16).

    ZeRO and bf16 checkpoints are consolidated from the fp32 master partitions
    (DeepSpeed's zero_to_fp32), with frozen parameters that only the module state dict holds
    (ZeRO-1) taken from there; a plain fp32 stage-0 checkpoint holds the full module.
    """
    ckpt_dir = Path(run_dir) / CHECKPOINT_DIR
    tag_dir = ckpt_dir / tag
    model_states = sorted(tag_dir.glob("*model_states.pt"))
    if not model_states:
        raise DataError(f"{tag_dir}: no DeepSpeed checkpoint there")
    client = _load(model_states[0])
    if any(tag_dir.glob("*zero_pp_rank_*optim_states.pt")):
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        weights = get_fp32_state_dict_from_zero_checkpoint(str(ckpt_dir), tag=tag)
        # ZeRO-1 records frozen parameters (the JEPA target encoder) only in the module state dict;
        # ZeRO-2/3 also record them for zero_to_fp32 (there the module holds empty ZeRO-3 shards)
        for name, value in (client.get("module") or {}).items():
            if name not in weights and value.numel() > 0:
                weights[name] = value
    else:
        weights = client["module"]
    return {k: v.detach().float() if v.is_floating_point() else v for k, v in weights.items()}, client


def require_finite_weights(weights: dict[str, torch.Tensor], where: str | os.PathLike) -> None:
    """:class:`DataError` naming ``where`` if any floating weight is NaN or ±Inf (a diverged run)."""
    bad = {k: int((~torch.isfinite(v)).sum()) for k, v in weights.items()
           if v.is_floating_point() and not bool(torch.isfinite(v).all())}
    if bad:
        total = sum(v.numel() for v in weights.values() if v.is_floating_point())
        names = ", ".join(list(bad)[:3]) + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")
        raise DataError(f"{where}: {sum(bad.values())} of {total} weights are not finite (in {names}); the run "
                        "diverged: use an earlier checkpoint (--tag step_...) or train again")


def write_model(run_dir: Path, tag: str) -> Path:
    """``model.pt`` = fp32 weights + meta of checkpoint ``tag`` (rank 0 only; finite weights only)."""
    weights, client = checkpoint_state(run_dir, tag)
    require_finite_weights(weights, run_dir / CHECKPOINT_DIR / tag)
    with atomic_path(run_dir / MODEL_FILE) as tmp:
        torch.save({"state_dict": weights, "meta": {**client["meta"], "step": client["step"]}}, tmp)
    return run_dir / MODEL_FILE


def load_for_inference(run_dir: str | os.PathLike, tag: str | None = None, *, inputs: Sequence[str] | None = None,
                       class_edges: Sequence[float] | None = None) -> tuple[nn.Module, Config, dict]:
    """Network of a finished (``model.pt``) or running (``tag``, default latest) run, in eval mode.

    Returns ``(model, cfg, meta)``. If ``inputs`` or ``class_edges`` are given and differ from the
    checkpoint's, raises :class:`ConfigError` instead of returning a network that reads the wrong
    channels or predicts different classes; weights holding NaN/±Inf are a :class:`DataError`.
    """
    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise DataError(f"{run_dir}: not a training run directory (no config.yaml)")
    cfg = load_config(run_dir / "config.yaml")
    if tag is None and (run_dir / MODEL_FILE).is_file():
        blob = _load(run_dir / MODEL_FILE)
        weights, meta = blob["state_dict"], blob["meta"]
        require_finite_weights(weights, run_dir / MODEL_FILE)
    else:
        tag = tag or latest_tag(run_dir)
        if tag is None:
            raise DataError(f"{run_dir}: no {MODEL_FILE} and no checkpoint yet")
        weights, client = checkpoint_state(run_dir, tag)
        meta = {**client["meta"], "step": client["step"]}
        require_finite_weights(weights, run_dir / CHECKPOINT_DIR / tag)
    for key, want in (("inputs", inputs), ("class_edges", class_edges)):
        if want is not None and [float(v) if key == "class_edges" else v for v in want] != list(meta[key]):
            raise ConfigError(f"{run_dir}: the checkpoint was trained with {key} = {list(meta[key])}, "
                              f"but {list(want)} was asked for")
    task = make_task(cfg)
    task.configure_from_meta(meta)
    model = task.build_model()
    model.load_state_dict(weights)
    return model.eval(), cfg, meta
