"""One training run as a submitit job that requeues itself and resumes from its checkpoint.

``TrainJob()(run_dir)`` trains the run whose full config is ``run_dir/config.yaml`` (written by
the sweep) through the ``train`` command, in this process: with several tasks (``tasks_per_node``
× ``nodes``) every task calls it and :class:`submitit.helpers.TorchDistributedEnvironment` exports
``RANK``/``WORLD_SIZE``/``MASTER_ADDR`` for DeepSpeed, as torchrun would. Before a SLURM time limit
or a preemption submitit calls :meth:`TrainJob.checkpoint`, which requeues the same run with
``resume=True``; the restarted job resumes from the newest checkpoint in ``run_dir/checkpoints``
(written every ``train.checkpoint_every`` steps; the steps after it are done again). A job that
raises records the error in ``run_dir/launch.json`` for the collector.
"""

from __future__ import annotations

import argparse
import importlib
import os
import traceback
from pathlib import Path
from typing import Any

import submitit

from halotrans.launch.rundir import clear_failed, final_metrics, has_checkpoint, mark_failed

TRAIN_MODULE = "halotrans.train.cli"


#: exit status of ``train`` stopped by SIGTERM at a checkpoint (not finished: resume it)
STOPPED_BY_SIGNAL = 143


class TrainJob(submitit.helpers.Checkpointable):
    """Callable submitted once per run: ``executor.map_array(TrainJob(), run_dirs)``."""

    def __call__(self, run_dir: str, resume: bool = False) -> dict[str, Any]:
        env = submitit.JobEnvironment()
        if env.num_tasks > 1 or "RANK" not in os.environ:
            submitit.helpers.TorchDistributedEnvironment().export(
                set_cuda_visible_devices=False, overwrite=True)
        resume = resume or has_checkpoint(run_dir)
        print(f"[halotrans] job {env.job_id} task {env.global_rank}/{env.num_tasks}: run {run_dir}"
              f"{' (resuming)' if resume else ''}", flush=True)
        module = importlib.import_module(TRAIN_MODULE)
        parser = argparse.ArgumentParser(prog="python -m halotrans train")
        module.add_arguments(parser)
        args = parser.parse_args(["--config", str(Path(run_dir) / "config.yaml"), *(["--resume"] if resume else [])])
        if env.global_rank == 0:
            clear_failed(run_dir)
        try:
            rc = module.run(args)
        except Exception:
            if env.global_rank == 0:
                mark_failed(run_dir, traceback.format_exc())
            raise
        if rc == STOPPED_BY_SIGNAL:
            raise RuntimeError(f"{run_dir}: stopped by SIGTERM at a checkpoint; submit again to resume")
        if rc:
            if env.global_rank == 0:
                mark_failed(run_dir, f"train exited with status {rc}")
            raise RuntimeError(f"{run_dir}: train exited with status {rc}")
        return final_metrics(run_dir)

    def checkpoint(self, run_dir: str, resume: bool = False) -> submitit.helpers.DelayedSubmission:
        """Called by submitit before the time limit / on preemption: requeue with resume on."""
        print(f"[halotrans] requeueing {run_dir} with resume", flush=True)
        return submitit.helpers.DelayedSubmission(TrainJob(), run_dir, resume=True)
