"""``python -m halotrans train --config configs/segment/vipr.yaml [--resume] [--set key=value ...]``

Trains the task named by ``train.task`` with DeepSpeed. Runs as one process (it starts a world of
one), under ``torchrun --nproc_per_node R`` (CPU: gloo with DS_ACCELERATOR=cpu; GPUs: NCCL) or
``srun torchrun`` in a SLURM job. ``--resume`` continues from the latest checkpoint of
``train.out_dir`` (or starts afresh if there is none), reproducing the uninterrupted run.

Exit status: 0 done (or time budget reached, with ``model.pt``); 2 bad input or config; 3 the loss or
gradient norm became NaN/±Inf (the last good checkpoint is kept; a repeat with the same settings is
refused, :mod:`halotrans.train.divergence`); 143 stopped by SIGTERM at a checkpoint (resume it).
"""

from __future__ import annotations

import argparse

from halotrans.cli import add_config_arguments, config_from_args


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser, default="segment/vipr.yaml")
    parser.add_argument("--resume", action="store_true",
                        help="continue from the latest checkpoint in train.out_dir (if any)")


def run(args: argparse.Namespace) -> int:
    from halotrans.train.loop import train
    from halotrans.train.registry import make_task

    cfg = config_from_args(args)
    result = train(cfg, make_task(cfg), resume=args.resume)
    return 143 if result["stopped"] == "signal" else 0  # 128 + SIGTERM: not finished, resume it
