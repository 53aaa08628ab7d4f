"""The light-cone data set on disk: one small file per finished seed, then one HDF5 file.

Every finished light cone (accepted or rejected) is first written atomically to
``<out>.parts/seed_<seed>.h5``; :func:`consolidate` then writes the whole data set atomically to
``out`` (the old ``out`` and the parts are merged by seed, so nothing is counted twice) and only
afterwards removes the parts it consumed. A SIGKILL at any moment therefore leaves a state from
which the next run continues with no duplicate and no missing seed. A light cone holding NaN/±Inf
(in an old data set or a part file) stops the command with a :class:`DataError` naming the file and
the seed before anything is written (:func:`check_finite_output` up front, each record as it is copied).

The data set holds the shortest run of consecutive seeds ``seed, seed+1, ...`` that contains
``n`` accepted light cones (or every seed tried, if ``max_attempts`` ran out first):

- ``/brightness_temp`` (n, X, Y, Z) float32 [mK], X, Y transverse, Z the line of sight with
  index 0 at ``z_min``; one HDF5 chunk per light cone;
- ``/params`` (n, 6) float64 in the order of ``attrs['param_names']`` (physical units,
  ``attrs['param_units']``; m_WDM is NaN in five-parameter mode); ``/seeds`` (n,) int64;
- ``/tau`` (n,), ``/x_hi_zmin`` (n,) (neutral fraction at ``z_min``), ``/x_hi`` and
  ``/mean_brightness_temp`` (n, K) at ``/node_redshifts`` (K,), ascending; ``/seconds`` (n,);
- ``/redshifts`` (Z,) and ``/comoving_distance`` (Z,) [Mpc, fiducial cosmology] of the slices;
- ``/rejected/{seeds,params,tau,x_hi_zmin,reason}`` for every rejected seed (reason ``screened ...``:
  skipped unsimulated by the τ screen, :mod:`halotrans.skatr.screen`; its τ and x_HI are NaN);
- attrs: ``priors`` (6, 2), ``sampled`` (6,), ``wdm_model``, ``py21cmfast_version``,
  ``settings`` (JSON of every generation setting), ``inputs_example`` (JSON of the 21cmFAST
  input structs of the first seed), ``cell_size_mpc``, units and layout.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
from collections.abc import Iterable, Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from halotrans.io import DataError, atomic_path, open_h5, require_finite
from halotrans.skatr.config import LightConeConfig
from halotrans.skatr.priors import PARAM_NAMES, PARAM_UNITS, prior_bounds, sampled_mask

FORMAT = "halotrans-lightcones-1"
#: config keys that do not change what a seed produces
_NOT_SETTINGS = {"out", "n", "max_attempts", "workers", "split", "split_seed", "los_multiple", "los_fit",
                 "noise_mk", "noise_z_ref", "noise_receiver_k", "noise_max_baseline_m", "screen_sigmas",
                 "screen_min_fit"}
_PART = re.compile(r"seed_(\d+)\.h5")


def generation_settings(cfg: LightConeConfig) -> str:
    """JSON of the settings that fix what each seed produces (must match to resume or extend)."""
    return json.dumps({k: v for k, v in asdict(cfg).items() if k not in _NOT_SETTINGS}, sort_keys=True)


def parts_dir(out: str | os.PathLike) -> Path:
    """The work directory of per-seed files next to ``out``."""
    out = Path(out)
    return out.with_name(out.name + ".parts")


def part_path(out: str | os.PathLike, seed: int) -> Path:
    return parts_dir(out) / f"seed_{seed:08d}.h5"


def write_part(out: str | os.PathLike, settings: str, result: dict[str, Any]) -> None:
    """Atomically write one finished light cone (``simulate_light_cone`` result) as its part file."""
    with atomic_path(part_path(out, result["seed"])) as tmp:
        with h5py.File(tmp, "w") as f:
            f.attrs.update(seed=result["seed"], reason=result["reason"], tau=result["tau"],
                           x_hi_zmin=result["x_hi_zmin"], seconds=result["seconds"], settings=settings,
                           inputs=result["inputs"])
            f["params"] = result["params"]
            f["x_hi"] = result["x_hi"]
            f["mean_brightness_temp"] = result["mean_brightness_temp"]
            if not result["reason"]:
                f["brightness_temp"] = result["brightness_temp"]


def _check_settings(path: Path, found: str, settings: str) -> None:
    if found != settings:
        want, have = json.loads(settings), json.loads(found)
        diff = [f"{k}: {have.get(k)!r} (file) vs {want.get(k)!r} (config)" for k in sorted(want | have)
                if have.get(k) != want.get(k)]
        raise DataError(f"{path} was made with other light-cone settings ({'; '.join(diff[:3])}); "
                        "use another `out` or remove it")


def _pid_alive(name: str) -> bool:
    m = re.search(r"\.tmp-(.+)-(\d+)$", name)
    if m is None or m.group(1) != socket.gethostname():
        return True
    try:
        os.kill(int(m.group(2)), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temporaries(out: str | os.PathLike) -> None:
    """Delete half-written files of killed jobs (``*.tmp-<host>-<pid>`` whose process is gone)."""
    out = Path(out)
    candidates = list(out.parent.glob(out.name + ".tmp-*"))
    if parts_dir(out).is_dir():
        candidates += list(parts_dir(out).glob("*.tmp-*"))
    for p in candidates:
        if not _pid_alive(p.name):
            p.unlink(missing_ok=True)


def done_seeds(out: str | os.PathLike, settings: str) -> dict[int, bool]:
    """Seed → accepted for every finished seed (in ``out`` or in a part file); checks the settings."""
    out = Path(out)
    done: dict[int, bool] = {}
    if out.exists():
        with _open_output(out) as f:
            _check_settings(out, f.attrs["settings"], settings)
            done.update((int(s), True) for s in f["seeds"][...])
            done.update((int(s), False) for s in f["rejected/seeds"][...])
    for seed, path in _part_files(out).items():
        with h5py.File(path, "r") as f:
            _check_settings(path, f.attrs["settings"], settings)
            done[seed] = not f.attrs["reason"]
    return done


#: what the message of a non-finite light cone adds
_CORRUPT = "the file is corrupt: remove it (its seeds are then simulated again) or restore it; nothing written"


def check_finite_output(out: str | os.PathLike) -> None:
    """:class:`DataError` if an existing data set ``out`` holds NaN/±Inf light cones (one pass)."""
    out = Path(out)
    if out.exists():
        with _open_output(out) as f:
            require_finite(f["brightness_temp"], f"{out}:/brightness_temp", _CORRUPT)


def _open_output(out: Path) -> h5py.File:
    f = open_h5(out)
    if f.attrs.get("format") != FORMAT:
        f.close()
        raise DataError(f"{out}: not a light-cone data set (attrs['format'] != {FORMAT!r})")
    return f


def _part_files(out: Path) -> dict[int, Path]:
    d = parts_dir(out)
    if not d.is_dir():
        return {}
    return {int(m.group(1)): p for p in d.iterdir() if (m := _PART.fullmatch(p.name))}


def generated_records(out: str | os.PathLike, settings: str, seeds: Iterable[int] | None = None,
                      with_cube: bool = True) -> Iterator[dict[str, Any]]:
    """Yield one dict per finished seed of a ``lightcones`` run (its data set ``out`` and its part
    files, the parts winning): ``seed``, ``params`` (6,), ``tau``, ``x_hi_zmin``, ``seconds`` (NaN where
    not kept), ``reason`` ('' = accepted) and ``brightness_temp`` (X, Y, Z) float32 [mK] for accepted
    light cones (the generator keeps no field of a rejected one: ``None``; ``with_cube`` False: none
    read). Only ``seeds`` if given;
    :class:`DataError` if ``out`` was made with other ``settings``."""
    out = Path(out)
    want = None if seeds is None else set(int(s) for s in seeds)
    parts = _part_files(out)
    if out.exists():
        with _open_output(out) as f:
            _check_settings(out, f.attrs["settings"], settings)
            seconds = f["seconds"][...] if "seconds" in f else np.full(len(f["seeds"]), np.nan)
            for i, s in enumerate(f["seeds"][...]):
                if (want is None or int(s) in want) and int(s) not in parts:
                    yield {"seed": int(s), "params": f["params"][i], "tau": float(f["tau"][i]),
                           "x_hi_zmin": float(f["x_hi_zmin"][i]), "seconds": float(seconds[i]), "reason": "",
                           "brightness_temp": f["brightness_temp"][i] if with_cube else None}
            rej = f["rejected"]
            for i, s in enumerate(rej["seeds"][...]):
                if (want is None or int(s) in want) and int(s) not in parts:
                    reason = rej["reason"][i]
                    yield {"seed": int(s), "params": rej["params"][i], "tau": float(rej["tau"][i]),
                           "x_hi_zmin": float(rej["x_hi_zmin"][i]), "seconds": float("nan"),
                           "reason": reason.decode() if isinstance(reason, bytes) else str(reason),
                           "brightness_temp": None}
    for s, path in sorted(parts.items()):
        if want is not None and s not in want:
            continue
        with h5py.File(path, "r") as f:
            _check_settings(path, f.attrs["settings"], settings)
            yield {"seed": s, "params": f["params"][...], "tau": float(f.attrs["tau"]),
                   "x_hi_zmin": float(f.attrs["x_hi_zmin"]), "seconds": float(f.attrs["seconds"]),
                   "reason": str(f.attrs["reason"]),
                   "brightness_temp": f["brightness_temp"][...] if with_cube and "brightness_temp" in f else None}


def select_seeds(first_seed: int, n: int, done: dict[int, bool]) -> list[int]:
    """The consecutive finished seeds from ``first_seed`` on, up to the ``n``-th accepted one."""
    seeds, accepted = [], 0
    s = first_seed
    while s in done and accepted < n:
        seeds.append(s)
        accepted += done[s]
        s += 1
    return seeds


class _Records:
    """Reads one seed's record from the old output or from its part file."""

    def __init__(self, out: Path):
        self.parts = _part_files(out)
        self.old = _open_output(out) if out.exists() else None
        self.old_index: dict[int, tuple[bool, int]] = {}
        if self.old is not None:
            self.old_index.update((int(s), (True, i)) for i, s in enumerate(self.old["seeds"][...]))
            self.old_index.update((int(s), (False, i)) for i, s in enumerate(self.old["rejected/seeds"][...]))

    def get(self, seed: int, with_cube: bool) -> dict[str, Any]:
        if seed in self.old_index:
            accepted, i = self.old_index[seed]
            f = self.old
            if accepted:
                rec = {k: f[k][i] for k in ("params", "tau", "x_hi_zmin", "x_hi", "mean_brightness_temp", "seconds")}
                rec["reason"] = ""
                if with_cube:
                    rec["brightness_temp"] = f["brightness_temp"][i]
                    require_finite(rec["brightness_temp"], f"{f.filename}:/brightness_temp (seed {seed})", _CORRUPT)
            else:
                g = f["rejected"]
                rec = {k: g[k][i] for k in ("params", "tau", "x_hi_zmin")}
                rec["reason"] = g["reason"][i].decode() if isinstance(g["reason"][i], bytes) else str(g["reason"][i])
            rec["inputs"] = f.attrs["inputs_example"]
            return rec
        with h5py.File(self.parts[seed], "r") as f:
            rec = {k: f.attrs[k] for k in ("reason", "tau", "x_hi_zmin", "seconds", "inputs")}
            rec.update({k: f[k][...] for k in ("params", "x_hi", "mean_brightness_temp")})
            if with_cube and not rec["reason"]:
                rec["brightness_temp"] = f["brightness_temp"][...]
                require_finite(rec["brightness_temp"], f"{self.parts[seed]}:/brightness_temp (seed {seed})", _CORRUPT)
        return rec

    def close(self) -> None:
        if self.old is not None:
            self.old.close()


def consolidate(cfg: LightConeConfig, settings: str, grid: dict[str, np.ndarray], version: str) -> dict[str, int]:
    """Write ``cfg.out`` from the old output and the part files; remove the parts it consumed.

    ``grid`` holds ``redshifts``, ``comoving_distance`` (Z,) and ``node_redshifts`` (K,, ascending).
    Returns the numbers of accepted and rejected light cones in the data set.
    """
    out = Path(cfg.out)
    done = done_seeds(out, settings)
    records = _Records(out)
    try:
        n_old = sum(accepted for accepted, _ in records.old_index.values())
        seeds = select_seeds(cfg.seed, max(cfg.n, n_old), done)  # never shrink an existing data set
        acc = [s for s in seeds if done[s]]
        rej = [s for s in seeds if not done[s]]
        first = records.get((acc or seeds)[0], with_cube=False) if seeds else {"inputs": ""}
        with atomic_path(out) as tmp:
            with h5py.File(tmp, "w") as f:
                _write_attrs(f, cfg, settings, version, first["inputs"])
                for name, values in grid.items():
                    f[name] = values
                f["redshifts"].attrs["units"] = "redshift of each line-of-sight slice"
                f["comoving_distance"].attrs["units"] = "Mpc (fiducial Planck18)"
                cube_shape = _cube_shape(cfg, grid)
                tb = f.create_dataset("brightness_temp", (len(acc), *cube_shape), dtype=np.float32,
                                      chunks=(1, *cube_shape) if acc else None)
                tb.attrs["units"] = "mK"
                n_nodes = len(grid["node_redshifts"])
                cols = {"params": (len(PARAM_NAMES),), "x_hi": (n_nodes,), "mean_brightness_temp": (n_nodes,),
                        "tau": (), "x_hi_zmin": (), "seconds": ()}
                arrays = {k: np.zeros((len(acc), *shape)) for k, shape in cols.items()}
                for i, s in enumerate(acc):
                    rec = records.get(s, with_cube=True)
                    tb[i] = rec["brightness_temp"]
                    for k in cols:
                        arrays[k][i] = rec[k]
                for k, v in arrays.items():
                    f[k] = v
                f["seeds"] = np.array(acc, dtype=np.int64)
                g = f.create_group("rejected")
                rrec = [records.get(s, with_cube=False) for s in rej]
                g["seeds"] = np.array(rej, dtype=np.int64)
                g["params"] = np.array([r["params"] for r in rrec]).reshape(len(rej), len(PARAM_NAMES))
                g["tau"] = np.array([r["tau"] for r in rrec], dtype=np.float64)
                g["x_hi_zmin"] = np.array([r["x_hi_zmin"] for r in rrec], dtype=np.float64)
                g.create_dataset("reason", data=[r["reason"] for r in rrec], dtype=h5py.string_dtype())
    finally:
        records.close()
    for s in seeds:
        part_path(out, s).unlink(missing_ok=True)
    d = parts_dir(out)
    if d.is_dir() and not any(d.iterdir()):
        shutil.rmtree(d)
    return {"accepted": len(acc), "rejected": len(rej)}


def _cube_shape(cfg: LightConeConfig, grid: dict[str, np.ndarray]) -> tuple[int, int, int]:
    side = cfg.hii_dim // cfg.downsample
    return side, side, len(grid["redshifts"])


def _write_attrs(f: h5py.File, cfg: LightConeConfig, settings: str, version: str, inputs_json: str) -> None:
    from halotrans import __version__

    f.attrs.update(
        format=FORMAT,
        param_names=list(PARAM_NAMES),
        param_units=list(PARAM_UNITS),
        priors=prior_bounds(cfg),
        sampled=sampled_mask(cfg),
        wdm_model=(
            "Bode+2001 thermal-relic cutoff on the CLASS transfer table (halotrans.skatr.priors)"
            if cfg.wdm else
            "none: five-parameter mode, m_WDM neither sampled nor used (params column 0 is NaN)"
        ),
        py21cmfast_version=version,
        halotrans_version=__version__,
        settings=settings,
        inputs_example=inputs_json,
        cell_size_mpc=cfg.box_len / cfg.hii_dim * cfg.downsample,
        box_len_mpc=cfg.box_len,
        z_min=cfg.z_min,
        z_max=cfg.z_max,
        tau_max=cfg.tau_max,
        x_hi_max=cfg.x_hi_max,
        layout="brightness_temp (n, X, Y, Z) float32 mK; X, Y transverse; Z line of sight, index 0 at z_min",
    )
