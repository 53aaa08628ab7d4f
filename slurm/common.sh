# shellcheck shell=bash
# Sourced by the job scripts in slurm/. It finds the repository and its Python, chooses how many
# ranks to start per node, and launches a stage either inside a SLURM job (srun: one torchrun per
# node with a c10d rendezvous on the first host, or one MPI rank per task) or, without SLURM, on
# this machine (torchrun --standalone, mpiexec) so `bash slurm/<script>.sh ...` works anywhere.
#
# Inside SLURM the running stage can be requeued: the scripts ask for `--signal=B:USR1@<s>`, and on
# that signal the handler here stops the stage with SIGTERM (the trainer checkpoints on it and also
# checkpoints every `train.checkpoint_every` steps), then `scontrol requeue`s the job. The restarted
# job (SLURM_RESTART_COUNT > 0, same log with --open-mode=append) resumes from the last checkpoint.
# A training run that diverged (non-finite loss or gradient norm: exit status 3, diverged.json in its
# run directory) is not requeued, and a job that starts on such a run with the same settings stops
# at once with status 3 (halotrans.launch.rundir) instead of training into the same failure.
#
# Environment knobs: HALOTRANS_PYTHON (interpreter; default: active venv, then <repo>/.venv, then
# python3), HALOTRANS_NPROC (ranks per node; default: GPUs on the node, else CPU cores).

HALOTRANS_REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export PYTHONPATH="$HALOTRANS_REPO${PYTHONPATH:+:$PYTHONPATH}"
if [ -n "${HALOTRANS_PYTHON:-}" ]; then PY=$HALOTRANS_PYTHON
elif [ -n "${VIRTUAL_ENV:-}" ] && [ -x "$VIRTUAL_ENV/bin/python" ]; then PY=$VIRTUAL_ENV/bin/python
elif [ -x "$HALOTRANS_REPO/.venv/bin/python" ]; then PY=$HALOTRANS_REPO/.venv/bin/python
else PY=$(command -v python3 || command -v python); fi

halotrans_log() { echo "[halotrans $(date '+%F %T')] $*"; }

# A command that must succeed before a stopped stage is requeued (set by halotrans_train).
declare -a _halotrans_requeue_check=()

# True inside a SLURM job step launcher (an allocation and srun to use).
halotrans_in_slurm() { [ -n "${SLURM_JOB_ID:-}" ] && command -v srun >/dev/null 2>&1; }

halotrans_gpus() {
  if [ -n "${SLURM_GPUS_ON_NODE:-}" ]; then echo "$SLURM_GPUS_ON_NODE"
  elif [ -n "${CUDA_VISIBLE_DEVICES:-}" ]; then echo "$CUDA_VISIBLE_DEVICES" | tr ',' '\n' | grep -c .
  elif command -v nvidia-smi >/dev/null 2>&1; then nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true
  else echo 0; fi
}

halotrans_cpus() { echo "${SLURM_CPUS_PER_TASK:-$(nproc)}"; }

# Ranks per node into HALOTRANS_RANKS: HALOTRANS_NPROC, else one per GPU, else one per core
# (then DeepSpeed runs on the CPU); OMP_NUM_THREADS shares the cores among the ranks.
halotrans_set_ranks() {
  local gpus cpus
  gpus=$(halotrans_gpus); cpus=$(halotrans_cpus)
  if [ "$gpus" -gt 0 ]; then HALOTRANS_RANKS=${HALOTRANS_NPROC:-$gpus}
  else HALOTRANS_RANKS=${HALOTRANS_NPROC:-$cpus}; export DS_ACCELERATOR=${DS_ACCELERATOR:-cpu}; fi
  export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$(( cpus / HALOTRANS_RANKS > 0 ? cpus / HALOTRANS_RANKS : 1 ))}
}

# Run "$@"; inside SLURM, USR1 (the pre-timeout signal) stops it with SIGTERM and requeues the job.
# An srun stage gets SIGTERM through `scancel --signal` (srun itself would kill its step outright),
# so torchrun shuts its workers down gracefully; any other stage gets it directly.
halotrans_run_requeueable() {
  if ! halotrans_in_slurm; then "$@"; return; fi
  _halotrans_requeue=0 _halotrans_trapped=0 _halotrans_srun=0
  [ "$1" != srun ] || _halotrans_srun=1
  trap '_halotrans_trapped=1 _halotrans_requeue=1
        halotrans_log "pre-timeout signal: stopping the stage with SIGTERM, then requeue"
        if [ "$_halotrans_srun" = 1 ]; then scancel --signal=TERM "$SLURM_JOB_ID" || true
        else kill -TERM "$_halotrans_pid" 2>/dev/null || true; fi' USR1
  "$@" &
  _halotrans_pid=$!
  local rc
  while :; do
    rc=0; wait "$_halotrans_pid" || rc=$?
    if [ "$_halotrans_trapped" = 1 ]; then _halotrans_trapped=0; continue; fi  # the trap interrupted wait
    break
  done
  trap - USR1
  if [ "$_halotrans_requeue" = 1 ]; then
    local check=0
    if [ "${#_halotrans_requeue_check[@]}" -gt 0 ]; then "${_halotrans_requeue_check[@]}" >/dev/null || check=$?; fi
    if [ "$check" != 0 ]; then
      halotrans_log "stage stopped ($rc); not requeueing job $SLURM_JOB_ID: the run cannot continue as it is (status $check)"
      return "$check"
    fi
    halotrans_log "stage stopped ($rc); requeueing job $SLURM_JOB_ID (restart $(( ${SLURM_RESTART_COUNT:-0} + 1 )))"
    scontrol requeue "$SLURM_JOB_ID"
    exit 0
  fi
  return "$rc"
}

# torchrun of `python -m <module> args...`: under SLURM one agent per node via srun, rendezvous
# (c10d) on the first host of the allocation; otherwise standalone on this machine.
halotrans_torchrun() {
  halotrans_set_ranks
  if halotrans_in_slurm; then
    local nodes=${SLURM_JOB_NUM_NODES:-1} master port
    master=$(scontrol show hostnames "$SLURM_JOB_NODELIST")
    master=${master%%$'\n'*}
    port=$(( 20000 + (SLURM_JOB_ID * 7 + ${SLURM_RESTART_COUNT:-0}) % 30000 ))
    set -- srun --kill-on-bad-exit=1 --nodes="$nodes" --ntasks="$nodes" --ntasks-per-node=1 \
      --cpus-per-task="$(halotrans_cpus)" \
      "$PY" -m torch.distributed.run --nnodes="$nodes" --nproc_per_node="$HALOTRANS_RANKS" \
      --rdzv_id="$SLURM_JOB_ID" --rdzv_backend=c10d --rdzv_endpoint="$master:$port" "$@"
  else
    set -- "$PY" -m torch.distributed.run --standalone --nnodes=1 --nproc_per_node="$HALOTRANS_RANKS" "$@"
  fi
  halotrans_log "$*"
  halotrans_run_requeueable "$@"
}

# MPI run of `python -m <module> args...` over SLURM_NTASKS ranks (or HALOTRANS_NPROC/cores locally).
# mpiexec (from the Python's venv first) works with Open MPI and MPICH inside and outside SLURM.
halotrans_mpirun() {
  local mpiexec n
  mpiexec=$(dirname "$PY")/mpiexec; [ -x "$mpiexec" ] || mpiexec=$(command -v mpiexec)
  n=${SLURM_NTASKS:-${HALOTRANS_NPROC:-$(nproc)}}
  local extra=()
  if "$mpiexec" --version 2>/dev/null | grep -q "Open MPI"; then
    extra=(--bind-to none)
    if [ -z "${SLURM_JOB_ID:-}" ]; then extra+=(--oversubscribe); fi
    if [ "$(id -u)" = 0 ]; then extra+=(--allow-run-as-root); fi
  fi
  export OMP_NUM_THREADS=${OMP_NUM_THREADS:-${SLURM_CPUS_PER_TASK:-1}}
  set -- "$mpiexec" -n "$n" "${extra[@]}" "$PY" "$@"
  halotrans_log "$*"
  halotrans_run_requeueable "$@"
}

# Training with resume: halotrans_train DEFAULT_CONFIG [CONFIG] [--set key=value ...] [train options]
# Resumes (--resume) when the run directory of that config already has a checkpoint, e.g. after
# a requeue (SLURM_RESTART_COUNT > 0) or when a crashed job is submitted again.
halotrans_train() {
  local config=$1; shift
  if [ $# -gt 0 ] && [ "${1#-}" = "$1" ]; then config=$1; shift; fi
  local resume
  # exits 2 on a bad config and 3 on a run that diverged with these settings: the job stops here
  resume=$("$PY" -m halotrans.launch.rundir --config "$config" "$@")
  _halotrans_requeue_check=("$PY" -m halotrans.launch.rundir --config "$config" "$@")
  halotrans_log "job ${SLURM_JOB_ID:-local} restart ${SLURM_RESTART_COUNT:-0} on $(hostname -s):" \
    "config $config $* ${resume:+(resuming from checkpoint)}"
  halotrans_torchrun -m halotrans train --config "$config" "$@" ${resume:+"$resume"}
}
