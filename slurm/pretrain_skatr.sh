#!/usr/bin/env bash
#SBATCH --job-name=halotrans-skatr
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=1
#SBATCH --cpus-per-task=32
#SBATCH --gpus-per-node=4
#SBATCH --time=12:00:00
#SBATCH --output=%x-%j.log
#SBATCH --open-mode=append
#SBATCH --requeue
#SBATCH --signal=B:USR1@300
#
# SKATR: JEPA self-supervised pretraining of the 3D ViT on 21cm light cones, DeepSpeed.
#
#   sbatch slurm/pretrain_skatr.sh [CONFIG] [--set key=value ...] # default CONFIG: skatr/pretrain.yaml
#   sbatch -N 4 slurm/pretrain_skatr.sh CONFIG                 # 4 nodes: one torchrun per node
#   bash slurm/pretrain_skatr.sh CONFIG --set train.steps=10   # no SLURM: torchrun on this machine
#
# One torchrun per node (srun), one rank per GPU (per core on CPU nodes; HALOTRANS_NPROC overrides),
# c10d rendezvous on the first host. Five minutes before the time limit SLURM sends USR1: training
# stops with a checkpoint and the job requeues itself; the restart resumes from that checkpoint
# (as does any job whose run directory, train.out_dir, already holds one). Logs: %x-%j.log.
set -euo pipefail
# sbatch runs a copy of this script from its spool directory: find the original through scontrol.
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
if [ ! -f "$HERE/common.sh" ]; then
  HERE=$(scontrol show job "$SLURM_JOB_ID" | sed -n 's/^ *Command=\([^ ]*\).*/\1/p')
  HERE=${HERE%%$'\n'*}  # an array job lists every task
  HERE=$(cd "$SLURM_SUBMIT_DIR" && cd "$(dirname "$HERE")" && pwd)
fi
# shellcheck source=slurm/common.sh
source "$HERE/common.sh"

halotrans_train skatr/pretrain.yaml "$@"
