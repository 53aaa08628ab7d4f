#!/usr/bin/env bash
#SBATCH --job-name=halotrans-simulate
#SBATCH --array=0-15
#SBATCH --nodes=1
#SBATCH --ntasks=1
#SBATCH --cpus-per-task=8
#SBATCH --time=02:00:00
#SBATCH --output=%x-%A_%a.log
#SBATCH --open-mode=append
#SBATCH --requeue
#SBATCH --signal=B:USR1@120
#
# Particle-mesh boxes, one seed per array task: box_<seed>.h5 in sim.out_dir.
#
#   sbatch slurm/simulate.sh [CONFIG] [--set key=value ...]   # seeds 0-15 (the --array range)
#   sbatch --array=16-99%20 slurm/simulate.sh CONFIG          # other seeds, 20 at a time
#   bash slurm/simulate.sh CONFIG --seeds 0-3                 # no SLURM: these seeds here
#
# Default CONFIG: sims/box64.yaml.
# Boxes are written atomically and finished ones are skipped, so a requeued task (USR1 before the
# time limit) simply redoes its unfinished box. The tidal shear is the next stage: tidal_shear.sh.
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

config=sims/box64.yaml
if [ $# -gt 0 ] && [ "${1#-}" = "$1" ]; then config=$1; shift; fi
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$(halotrans_cpus)}
if [ -n "${SLURM_ARRAY_TASK_ID:-}" ]; then
  for arg in "$@"; do
    if [[ $arg == --seeds* ]]; then
      echo "simulate.sh: in an array job the task index is the seed (sbatch --array=...), not --seeds" >&2
      exit 2
    fi
  done
  set -- --seeds "$SLURM_ARRAY_TASK_ID" "$@"
fi
halotrans_log "simulate: config $config $*"
halotrans_run_requeueable "$PY" -m halotrans simulate --config "$config" "$@"
