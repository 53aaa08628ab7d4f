"""Launching: grid sweeps as submitit job arrays, self-requeueing training jobs, result tables.

    from halotrans.launch import load_sweep, submit_sweep, wait, collect, write_table
    sweep = load_sweep("sweeps/segment_ablation")
    wait(submit_sweep(sweep, executor="slurm"))
    write_table(collect(sweep.out_dir), sweep.out_dir)

The batch scripts in ``slurm/`` are the other half: ``sbatch slurm/train_vipr.sh CONFIG``.
"""

from halotrans.launch.collect import collect, write_table
from halotrans.launch.grid import Run, Sweep, load_sweep
from halotrans.launch.job import TrainJob
from halotrans.launch.sweep import submit_sweep, wait

__all__ = ["Run", "Sweep", "TrainJob", "collect", "load_sweep", "submit_sweep", "wait", "write_table"]
