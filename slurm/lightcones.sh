#!/usr/bin/env bash
#SBATCH --job-name=halotrans-lightcones
#SBATCH --nodes=1
#SBATCH --ntasks=1
#SBATCH --cpus-per-task=32
#SBATCH --time=12:00:00
#SBATCH --output=%x-%j.log
#SBATCH --open-mode=append
#SBATCH --requeue
#SBATCH --signal=B:USR1@300
#
# 21cmFAST light cones for SKATR, one worker process per core, into one HDF5 data set.
#
#   sbatch slurm/lightcones.sh [CONFIG] [--n 5000] [--set lightcone.out=data/lc.h5]
#   bash slurm/lightcones.sh skatr/lightcones_tiny.yaml --n 4     # no SLURM: all cores here
#
# Default CONFIG: skatr/lightcones_lowres.yaml. lightcone.workers defaults to the job's cores (a
# --set of it wins). Finished light cones are kept, so a requeued job (USR1 before the time limit)
# continues where it stopped.
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

config=skatr/lightcones_lowres.yaml
if [ $# -gt 0 ] && [ "${1#-}" = "$1" ]; then config=$1; shift; fi
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
set -- --set "lightcone.workers=$(halotrans_cpus)" "$@"
halotrans_log "lightcones: config $config $*"
halotrans_run_requeueable "$PY" -m halotrans lightcones --config "$config" "$@"
