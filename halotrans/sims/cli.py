"""Particle-mesh boxes -> one HDF5 file per seed (linear δ at z_init and Lagrangian halo labels).

    python -m halotrans simulate --config sims/box64 --seeds 0-15
    python -m halotrans simulate --config sims/tiny --seeds 0-3 --set sim.out_dir=data/tiny

Box ``seed`` goes to ``<sim.out_dir>/box_<seed:04d>.h5`` (written atomically) with ``/delta``,
``/halo_mass``, ``/halo_id`` and ``/halos/n_members``; its attrs hold every generator setting. A
re-run skips boxes already complete with the same settings, so a killed job resumes where it
stopped. If a file exists that was made with different settings, nothing is written and the
command exits with status 2, as it does (writing nothing) if a box's fields come out NaN/±Inf. The
tidal shear is the next stage: ``python -m halotrans shear DIR``.
"""

from __future__ import annotations

import argparse
import os
import socket
from pathlib import Path

import torch
from tqdm import tqdm

from halotrans.cli import add_config_arguments, config_from_args
from halotrans.io import DataError, parse_seeds
from halotrans.sims.boxio import box_path, is_complete, read_attrs, write_box
from halotrans.sims.config import SimConfig
from halotrans.yaml_config import ConfigError, config_to_dict

#: SimConfig keys that do not change a box's content (where it goes, what runs next); a GPU
#: box differs from a CPU box only at round-off level, so ``device`` does not count either
NOT_GENERATOR_KEYS = ("out_dir", "device")
BOX_DATASETS = ("delta", "halo_mass", "halo_id", "halos/n_members")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser)
    parser.add_argument("--seeds", default="0", help="seeds to simulate, e.g. 0-15 or 0,3,7-9 (default 0)")


def generator_settings(sim: SimConfig | dict) -> dict:
    """The settings that define a box's content (all of ``sim`` but :data:`NOT_GENERATOR_KEYS`)."""
    d = sim if isinstance(sim, dict) else config_to_dict(sim)
    return {k: v for k, v in d.items() if k not in NOT_GENERATOR_KEYS}


def boxes_to_simulate(sim: SimConfig, seeds: list[int]) -> list[int]:
    """Seeds whose box file is missing; :class:`DataError` if any existing file does not match ``sim``."""
    wanted = generator_settings(sim)
    todo = []
    for seed in seeds:
        path = box_path(sim.out_dir, seed)
        if not path.exists():
            todo.append(seed)
            continue
        if not is_complete(path, BOX_DATASETS):
            raise DataError(f"{path} exists but is not a complete simulated box; move it away or use another sim.out_dir")
        found = generator_settings(read_attrs(path).get("generator", {}))
        if found != wanted:
            diff = [f"{k}: {found.get(k)!r} in the file, {wanted.get(k)!r} now"
                    for k in sorted(set(found) | set(wanted)) if found.get(k) != wanted.get(k)]
            raise DataError(f"{path} was simulated with different settings ({'; '.join(diff)}); "
                            "use another sim.out_dir or delete the file")
    return todo


def remove_stale_temporaries(path: Path) -> None:
    """Delete ``<path>.tmp-<host>-<pid>`` files left by killed runs of this host (pid no longer alive)."""
    host = socket.gethostname()
    for tmp in path.parent.glob(f"{path.name}.tmp-*"):
        tmp_host, _, pid = tmp.name[len(path.name) + 5:].rpartition("-")
        if tmp_host == host and pid.isdigit() and not _alive(int(pid)):
            tmp.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _check_device(device: str) -> None:
    try:
        dev = torch.device(device)
    except RuntimeError as e:
        raise ConfigError(f"sim.device: {e}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"sim.device: '{device}' requested but torch.cuda.is_available() is False")


def run(args: argparse.Namespace) -> int:
    from halotrans.sims.box import simulate_box
    from halotrans.sims.cosmology import Cosmology

    sim = config_from_args(args).sim
    try:
        seeds = parse_seeds(args.seeds)
    except ValueError as e:
        raise ConfigError(f"--seeds: {e}") from None
    _check_device(sim.device)
    try:
        Cosmology(sim.cosmology, sim.sigma8, sim.power_spectrum)
    except ValueError as e:
        raise ConfigError(f"sim.cosmology: {e}") from None
    todo = set(boxes_to_simulate(sim, seeds))

    bar = tqdm(seeds, desc="simulate", unit="box", dynamic_ncols=True)
    for seed in bar:
        path = box_path(sim.out_dir, seed)
        if seed not in todo:
            bar.set_postfix_str(f"box {seed}: complete, skipped")
            continue
        remove_stale_temporaries(path)

        def on_step(i: int, seed: int = seed) -> None:
            bar.set_postfix_str(f"box {seed}: PM step {i + 1}/{sim.n_steps}")

        arrays, attrs = simulate_box(sim, seed, on_step=on_step)
        bar.set_postfix_str(f"box {seed}: {attrs['n_halos']} halos, {attrs['halo_fraction']:.0%} of voxels")
        write_box(path, arrays.pop("delta"), arrays.pop("halo_mass"), attrs, extra=arrays)
    bar.close()
    print(f"{len(todo)} box(es) simulated, {len(seeds) - len(todo)} already complete, in {sim.out_dir}")
    print(f"next: python -m halotrans shear {sim.out_dir}   (adds the tidal shear /tidal/T to each box)")
    return 0
