"""The one DeepSpeed training loop, shared by every task (segment, jepa, regress, npe).

``train(cfg, task, resume)`` reads top to bottom like nanoGPT's ``train.py``: join the process
group, build the model, let the task load its data, ``deepspeed.initialize`` with a config dict
built from ``cfg.train`` (printed once), optionally resume from the latest checkpoint, then loop:
set the learning rate, ``grad_accum`` micro-batches of forward/backward, ``engine.step()``, log,
validate, checkpoint. It stops at ``train.steps`` or when ``train.time_budget_s`` would be
exceeded (at the same step on every rank), writes a final checkpoint and ``model.pt``, and
leaves the process group. On SIGTERM (SLURM's pre-timeout signal, ``scancel``) it finishes the
step, checkpoints and exits without ``model.pt``, so the requeued job resumes.

Divergence: the step's loss is all-reduced every step (one small collective, so every rank takes
the same decision) and checked with the gradient norm (when DeepSpeed computes one: ZeRO >= 1 or
bf16); the weights are checked before every checkpoint. At the first NaN/±Inf the run stops with
:class:`~halotrans.train.divergence.TrainingDiverged` (exit status 3) naming the step and the last
good checkpoint, which it keeps; nothing is written from those weights (no checkpoint, no
``model.pt``, no metrics row), and ``diverged.json`` makes a repeat with the same settings refuse
(:mod:`halotrans.train.divergence`).

A task is a :class:`~halotrans.train.task.Task` (hooks and their defaults documented there; the
registry :mod:`halotrans.train.registry` maps ``train.task`` to it; :mod:`halotrans.train.segment`
is the reference implementation).

Reproducibility: model init uses ``train.seed``; before each step torch's RNG is reseeded from
(seed, step, DP rank), and batches depend only on (seed, step, micro, DP rank), so a resumed run
continues the uninterrupted loss curve exactly (fp32).

Sequence parallelism (``train.sp > 1``, :mod:`halotrans.parallel`): the ranks form groups of
``sp`` that work on the same samples (data keyed by the DP rank ``rank // sp``), each on 1/sp of
the tokens (Ulysses attention) and, for vipr/copra, of the crop (slabs along axis 0, halo
exchange). The groups go to ``deepspeed.initialize(..., mpu=...)``; DeepSpeed then sums gradients
over the SP ranks (ZeRO 0-2; under ZeRO-3 it averages them, and the loop multiplies the loss by
``sp`` to make up), so the ranks' losses must add up to the sample's loss: a task that shards its
batches into slabs (``shard_slabs(sp)``, segment) normalises each slab's loss by the group's total
weight; for other tasks the model keeps whole outputs on every rank and the loop divides the loss
(and the validation sums) by ``sp``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import signal
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from tqdm import tqdm

from halotrans.config import Config, ConfigError, load_config, save_config
from halotrans.io import atomic_path
from halotrans.parallel.distributed import all_reduce_sums, any_rank, device, init_distributed, shutdown
from halotrans.parallel.groups import init_sequence_parallel
from halotrans.parallel.shard import sequence_parallel
from halotrans.train import checkpoint, divergence
from halotrans.train.divergence import TrainingDiverged
from halotrans.train.ds_config import deepspeed_config
from halotrans.train.logbook import MetricsLog
from halotrans.train.optim import lr_at, param_groups
from halotrans.train.task import Task


def train(cfg: Config, task: Task, resume: bool = False) -> dict:
    """Train ``task`` as configured → ``{"step", "loss", "val", "stopped", "run_dir"}``.

    ``stopped`` is None (all ``train.steps`` done), ``"time_budget"`` or ``"signal"`` (SIGTERM:
    checkpointed but no ``model.pt``, the run is to be resumed). A non-finite loss, gradient norm or
    weights raise :class:`TrainingDiverged` (every rank, same step).
    """
    t_start = time.time()
    rank, world, _ = init_distributed()
    try:
        return _train(cfg, task, resume, rank, world, t_start)
    finally:
        shutdown()


def _train(cfg: Config, task: Task, resume: bool, rank: int, world: int, t_start: float) -> dict:
    import deepspeed

    logging.getLogger("DeepSpeed").setLevel(logging.WARNING)
    tc = cfg.train
    run_dir = Path(tc.out_dir)
    sp = init_sequence_parallel(tc.sp) if tc.sp > 1 else None
    dp_rank, dp_size = (sp.dp_rank, sp.dp_size) if sp else (rank, world)
    has_checkpoint = checkpoint.latest_tag(run_dir) is not None
    if has_checkpoint and not resume:
        raise ConfigError(f"{run_dir} already holds checkpoints: pass --resume, or set another train.out_dir")
    if has_checkpoint:
        checkpoint.check_same_model(load_config(run_dir / "config.yaml"), cfg, str(run_dir / "config.yaml"),
                                    task.model_keys)
    refusal = divergence.refusal(run_dir, cfg)
    if refusal:
        raise TrainingDiverged(refusal)
    diverged_before = divergence.read(run_dir)
    if rank == 0 and diverged_before:
        print(f"[halotrans] {run_dir} diverged at step {diverged_before.get('step')} before; trying again with "
              f"changed settings: {'; '.join(divergence.changed(diverged_before, cfg))}", flush=True)

    # --- data, model, engine -------------------------------------------------------------------
    torch.manual_seed(tc.seed)
    model = task.build_model()
    share = sequence_parallel(task, model, sp) if sp else 1.0  # this rank's share of the loss
    # DeepSpeed sums gradients over the SP ranks under ZeRO 0-2 but averages them under ZeRO-3 (measured)
    grad_scale = share * (tc.sp if sp and tc.zero_stage == 3 else 1)
    task.setup(run_dir, resume)
    task.prepare_model(model)  # data-dependent initialisation (input statistics), before DeepSpeed wraps it
    ds_cfg = deepspeed_config(tc, task.micro_batch_size)
    if rank == 0:
        save_config(cfg, run_dir / "config.yaml")
        with atomic_path(run_dir / "ds_config.json") as tmp:
            tmp.write_text(json.dumps(ds_cfg, indent=2))
        n_params = sum(p.numel() for p in model.parameters())
        print(f"[halotrans] task {task.name}, model {cfg.model.name}: {n_params / 1e6:.3f} M parameters, "
              f"activation checkpointing {'on' if cfg.model.activation_checkpointing else 'off'}; "
              f"{world} rank(s) on {device()}" + (f" (dp {dp_size} x sp {tc.sp})" if sp else "") +
              f", global batch {task.micro_batch_size * tc.grad_accum * dp_size}")
        print(f"[halotrans] DeepSpeed config:\n{json.dumps(ds_cfg, indent=2)}", flush=True)
    engine, *_ = deepspeed.initialize(model=model, model_parameters=param_groups(model, tc.weight_decay),
                                      config=ds_cfg, mpu=sp.mpu if sp else None)
    float_dtype = torch.bfloat16 if tc.bf16 else torch.float32
    start = checkpoint.resume(engine, run_dir) if resume else None
    if rank == 0 and resume:
        print(f"[halotrans] resumed from step {start} of {run_dir}" if start is not None
              else f"[halotrans] no checkpoint in {run_dir}: starting from step 0", flush=True)
    log = MetricsLog(run_dir, ["lr", "loss", "grad_norm", "time_s", *(f"val_{m}" for m in task.metric_names)],
                     start) if rank == 0 else None

    def validate() -> dict[str, float]:
        engine.eval()
        totals: dict[str, float] = {}
        with torch.no_grad():
            for batch in task.val_batches(dp_rank, dp_size):
                _, sums = task.loss(engine, _to(batch, engine.device, float_dtype))
                for k, v in sums.items():
                    totals[k] = totals.get(k, 0.0) + float(v) * share
        engine.train()
        if not totals:
            return {}
        return {f"val_{k}": v for k, v in task.summarize(all_reduce_sums(totals)).items()}

    # --- the loop ------------------------------------------------------------------------------
    step = start or 0
    t0 = time.time()
    step_times: list[float] = []
    checkpoint_s = 0.0
    row: dict[str, float] = {}
    if start is None and tc.eval_every:
        row = validate()
        if log:
            log.write(0, row)
    best = checkpoint.read_best(run_dir) if tc.keep_best and start is not None else None  # train.keep_best
    out_of_patience = False
    bar = tqdm(total=tc.steps, initial=step, desc=f"train {task.name}", disable=rank != 0, dynamic_ncols=True)
    stopped = None
    diverged: str | None = None  # what became non-finite
    with _sigterm_flag() as sigterm:
        while step < tc.steps:
            t_step = time.time()
            lr = lr_at(step, tc.lr, tc.min_lr, tc.warmup_steps, tc.steps)
            for group in engine.optimizer.param_groups:
                group["lr"] = lr
            torch.manual_seed(int(np.random.SeedSequence([tc.seed, step, dp_rank]).generate_state(1)[0]))
            step_loss = torch.zeros((), device=engine.device)
            for micro in range(tc.grad_accum):
                loss, _ = task.loss(engine, _to(task.train_batch(step, micro, dp_rank), engine.device, float_dtype))
                engine.backward(loss * grad_scale)
                engine.step()
                step_loss += loss.detach().float() * share / tc.grad_accum
            task.after_step(engine.module, step)
            step += 1
            step_times.append(time.time() - t_step)

            # every step, on every rank alike: the summed loss is non-finite if any rank's is
            grad_norm = engine.get_global_grad_norm()  # None where DeepSpeed does not compute it (ZeRO-0 fp32)
            grad_norm = None if grad_norm is None else float(grad_norm)
            sums = all_reduce_sums({"loss": step_loss.item(),
                                    "bad_grad": float(grad_norm is not None and not math.isfinite(grad_norm))})
            step_loss_mean = sums["loss"] / dp_size
            if not math.isfinite(step_loss_mean) or sums["bad_grad"]:
                diverged = (f"loss ({step_loss_mean})" if not math.isfinite(step_loss_mean)
                            else f"gradient norm ({grad_norm})")
                break

            row = {}
            if step % tc.log_every == 0 or step == tc.steps:
                row = {"lr": lr, "loss": step_loss_mean, "grad_norm": grad_norm, "time_s": time.time() - t0}
                bar.set_postfix(loss=f"{row['loss']:.4g}", lr=f"{lr:.2e}")
            if tc.eval_every and (step % tc.eval_every == 0 or step == tc.steps):
                row.update(validate())
                if tc.keep_best and math.isfinite(row.get("val_loss", math.nan)):
                    if best is None or row["val_loss"] < best["val_loss"]:
                        checkpoint.save_best(engine, run_dir, step, task.meta(), row["val_loss"])
                        best = {"tag": f"best_{step:08d}", "step": step, "val_loss": row["val_loss"], "evals_since": 0}
                    else:
                        best["evals_since"] += 1
                        if rank == 0:
                            checkpoint.write_best(run_dir, best)
                        out_of_patience = bool(tc.patience) and best["evals_since"] >= tc.patience
            if log and row:
                log.write(step, row)
            bar.update(1)

            # SIGTERM (SLURM pre-timeout, scancel) or the time budget: stop at the same step on all ranks,
            # before the next step plus a checkpoint would overrun the budget.
            over_budget = (tc.time_budget_s is not None and time.time() - t_start + 2 * float(np.mean(step_times[-10:]))
                           + checkpoint_s > tc.time_budget_s)
            by_signal, by_budget = any_rank(bool(sigterm), over_budget)
            stopped = "signal" if by_signal else "time_budget" if by_budget else "patience" if out_of_patience else None
            if step % tc.checkpoint_every == 0 or step == tc.steps or stopped:
                t_save = time.time()
                if any_rank(not _weights_finite(engine))[0]:  # never a checkpoint from non-finite weights
                    diverged = "weights"
                    break
                checkpoint.save(engine, run_dir, step, task.meta(), tc.keep_checkpoints)
                checkpoint_s = time.time() - t_save
            if stopped:
                break
    bar.close()
    if diverged:
        _stop_diverged(cfg, run_dir, rank, step, diverged, log)

    if rank == 0 and stopped != "signal":  # a signalled run is not finished: it will be resumed
        path = checkpoint.write_model(run_dir, checkpoint.final_tag(run_dir, checkpoint.tag_for(step), tc.keep_best))
        divergence.clear(run_dir)  # an earlier divergence was overcome
        print(f"[halotrans] step {step}: wrote {path}" + (f" ({stopped.replace('_', ' ')} reached)" if stopped else ""), flush=True)
    if rank == 0 and stopped == "signal":
        print(f"[halotrans] SIGTERM: stopped at step {step} with a checkpoint; continue with --resume", flush=True)
    if log:
        log.close()
    torch.distributed.barrier()
    return {"step": step, "loss": row.get("loss"), "val": {k: v for k, v in row.items() if k.startswith("val_")},
            "stopped": stopped, "run_dir": str(run_dir)}


def _weights_finite(engine: Any) -> bool:
    """True if this rank's parameters (its ZeRO-3 shards) are all finite (one device sync)."""
    tensors = [getattr(p, "ds_tensor", p) for p in engine.module.parameters()]
    flags = [torch.isfinite(t).all() for t in tensors if t.numel() and t.is_floating_point()]
    return bool(torch.stack(flags).all()) if flags else True


def _stop_diverged(cfg: Config, run_dir: Path, rank: int, step: int, what: str, log: MetricsLog | None) -> None:
    """Every rank: record the divergence (rank 0) and raise :class:`TrainingDiverged` with the step and the
    last good checkpoint; nothing is written from the non-finite state."""
    last = checkpoint.latest_tag(run_dir)
    last_path = str(run_dir / checkpoint.CHECKPOINT_DIR / last) if last else None
    if log:
        log.close()
    if rank == 0:
        divergence.mark(run_dir, cfg, step, what.split(" (")[0], last_path)
    torch.distributed.barrier()
    raise TrainingDiverged(
        f"training diverged at step {step}: non-finite {what}; stopped without writing a checkpoint or "
        f"{checkpoint.MODEL_FILE} from it. "
        + (f"The last good checkpoint is {last_path} (kept)" if last_path else "No checkpoint was written before it")
        + f". Lower train.lr (or raise train.warmup_steps, set train.grad_clip), then run again with --resume; "
        f"{divergence.DIVERGED_FILE} in the run directory refuses a repeat with the same settings")


@contextlib.contextmanager
def _sigterm_flag() -> Iterator[list[int]]:
    """A list that becomes non-empty when SIGTERM arrives (main thread only); the old handler is restored."""
    flag: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return
    previous = signal.signal(signal.SIGTERM, lambda *_: flag.append(1))
    try:
        yield flag
    finally:
        signal.signal(signal.SIGTERM, previous)


def _to(batch: Any, dev: torch.device, float_dtype: torch.dtype) -> Any:
    """Move a batch (tensors in tuples/lists/dicts) to ``dev``; floating tensors to ``float_dtype``."""
    if isinstance(batch, torch.Tensor):
        return batch.to(dev, float_dtype if batch.is_floating_point() else None, non_blocking=True)
    if isinstance(batch, (tuple, list)):
        return type(batch)(_to(b, dev, float_dtype) for b in batch)
    if isinstance(batch, dict):
        return {k: _to(v, dev, float_dtype) for k, v in batch.items()}
    return batch
