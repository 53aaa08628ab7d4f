#!/usr/bin/env bash
#SBATCH --job-name=halotrans-shear
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=16
#SBATCH --cpus-per-task=1
#SBATCH --time=01:00:00
#SBATCH --output=%x-%j.log
#SBATCH --open-mode=append
#SBATCH --requeue
#SBATCH --signal=B:USR1@120
#
# Tidal tensor and scalar shear of every box, MPI-parallel FFTs (mpi4py-fft slabs) over all ranks.
#
#   sbatch slurm/tidal_shear.sh DIR_OR_FILES... [--config CONFIG] [--set shear.smoothing=1.0]
#   sbatch -N 1 --ntasks-per-node=8 slurm/tidal_shear.sh data/boxes
#   bash slurm/tidal_shear.sh data/boxes                       # no SLURM: mpiexec -n <cores> here
#
# One MPI rank per SLURM task, started with mpiexec (Open MPI and MPICH both read the allocation).
# Each box gains /tidal/T atomically and finished boxes are skipped, so a requeue loses nothing.
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

[ $# -gt 0 ] || { echo "usage: tidal_shear.sh DIR_OR_FILES... [--config CONFIG] [--set key=value]" >&2; exit 2; }
halotrans_mpirun -m halotrans shear "$@"
