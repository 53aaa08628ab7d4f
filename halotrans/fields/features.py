"""Physics input channels of a box: δ smoothed on several scales and its ellipsoidal collapse time.

This is the information PINOCCHIO computes from δ, as optional network inputs next to δ and T.
For every radius R [Mpc/h] of ``shear.feature_radii`` the shear stage adds to a box file
(channel names: :mod:`halotrans.fields.channels`):

* ``/features/delta_R<r>`` float32 (N,N,N): δ at z_init (the units of ``/delta``) smoothed on R with
  ``shear.feature_window`` (gaussian by default; :mod:`halotrans.fields.smoothing`);
* ``/features/collapse_R<r>`` float32 (N,N,N): F = 1/D(z_c), the inverse linear growth factor
  (D(z=0) = 1) at which the voxel's ellipsoid collapses along its first axis, from the eigenvalues of
  the tidal tensor of δ0,R = δ_R/D(z_init) (:mod:`halotrans.fields.collapse`; its k = 0 mode is dropped,
  so λ1+λ2+λ3 = δ0,R − mean, = δ0,R for a box's zero-mean δ); 0 = never collapses,
  F ≥ 1 = collapsed by z = 0, F = δ0,R/1.686 in the spherical case;
* ``/features/collapse_max`` float32 (N,N,N): max over the radii of F (PINOCCHIO's Fmax).

The group's attrs record ``radii`` [Mpc/h], ``window`` and ``growth_z_init`` (D at z_init used to
extrapolate δ to z = 0: the box's ``growth_z_init`` attr, else computed from its ``cosmology`` and
``z_init`` attrs). A box whose ``/features`` was made with the same radii and window is skipped.
Each box is rewritten atomically (copy, replace ``/features``, rename); nothing non-finite is written.

Serial torch FFT (float64) on ``shear.device``. Under ``mpiexec`` the MPI shear runs first and rank 0
then computes the features serially (no slab-parallel version).

    arrays = compute_features(delta, box_size=64.0, radii=(2, 4, 8), growth=0.0127)   # name -> tensor
    print(add_features(box_files(["data/boxes"]), cfg.shear))
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch
from tqdm import tqdm

from halotrans import __version__
from halotrans.fields.channels import GROUP, feature_names, radius_tag
from halotrans.fields.collapse import DELTA_C, F_MAX, inverse_collapse_time, tidal_eigenvalues
from halotrans.fields.config import ShearConfig
from halotrans.fields.smoothing import smoothed_density
from halotrans.fields.tidal import tidal_tensor
from halotrans.io import DataError, atomic_path, require_finite


def compute_features(delta: torch.Tensor, box_size: float, radii: Sequence[float], window: str = "gaussian",
                     growth: float = 1.0) -> dict[str, torch.Tensor]:
    """The physics channels of δ at z_init (N,N,N) on a ``box_size`` Mpc/h cube → {name: (N,N,N) float64}.

    ``growth`` is D(z_init) (D(0) = 1): the collapse time uses δ0 = δ/growth. Names in
    :func:`halotrans.fields.channels.feature_names` order.
    """
    if not growth > 0:
        raise ValueError(f"growth factor D(z_init) must be positive, got {growth}")
    delta = torch.as_tensor(delta).to(torch.float64)
    out: dict[str, torch.Tensor] = {}
    f_max = None
    for r in radii:
        tag = radius_tag(r)
        smooth = smoothed_density(delta, box_size, float(r), window)
        lam = tidal_eigenvalues(tidal_tensor(smooth / growth, box_size))
        f = inverse_collapse_time(*lam)
        del lam
        out[f"delta_R{tag}"], out[f"collapse_R{tag}"] = smooth, f
        f_max = f if f_max is None else torch.maximum(f_max, f)
    if f_max is not None:
        out["collapse_max"] = f_max
    return out


def growth_at_z_init(path: str | os.PathLike) -> float:
    """D(z_init) (D(0) = 1) of a box file: its ``growth_z_init`` attr, else from ``cosmology`` and ``z_init``."""
    from halotrans.sims.boxio import read_attrs

    attrs = read_attrs(path)
    if "growth_z_init" in attrs:
        growth = float(attrs["growth_z_init"])
    elif isinstance(attrs.get("cosmology"), dict) and "z_init" in attrs:
        from halotrans.sims.readers.importer import growth_factor

        try:
            growth = growth_factor(attrs["cosmology"], float(attrs["z_init"]))
        except DataError as e:
            raise DataError(f"{path}: {e}") from None
    else:
        raise DataError(f"{path}: the collapse channels need D(z_init): the box has neither a 'growth_z_init' "
                        "attr nor 'cosmology' (with Om0) and 'z_init' attrs")
    if not (np.isfinite(growth) and growth > 0):
        raise DataError(f"{path}: growth factor D(z_init) = {growth} is not a positive number")
    return growth


def feature_settings(cfg: ShearConfig) -> dict[str, Any]:
    """The settings a stored ``/features`` group must match to count as done."""
    return {"radii": [float(r) for r in cfg.feature_radii], "window": cfg.feature_window}


def is_done(path: str | os.PathLike, settings: Mapping[str, Any]) -> bool:
    """True if the box has every channel of ``settings`` in ``/features``, made with those settings."""
    with h5py.File(path, "r") as f:
        group = f.get(GROUP)
        if not isinstance(group, h5py.Group) or any(n not in group for n in feature_names(settings["radii"])):
            return False
        radii = np.asarray(group.attrs.get("radii", []), dtype=np.float64).ravel()
        return group.attrs.get("window") == settings["window"] and radii.tolist() == list(settings["radii"])


def write_features(path: str | os.PathLike, arrays: Mapping[str, np.ndarray], settings: Mapping[str, Any],
                   growth: float) -> None:
    """Replace the ``/features`` group of box ``path`` atomically (finite float32 arrays, attrs)."""
    for name, a in arrays.items():
        require_finite(a, f"{path}:/{GROUP}/{name}", "refusing to write non-finite values; the box is unchanged")
    with atomic_path(path) as tmp:
        shutil.copyfile(path, tmp)
        with h5py.File(tmp, "r+") as f:
            if GROUP in f:
                del f[GROUP]
            group = f.create_group(GROUP)
            for name, a in arrays.items():
                group.create_dataset(name, data=np.asarray(a, dtype=np.float32))
            group.attrs.update({
                "radii": np.asarray(settings["radii"], dtype=np.float64), "window": settings["window"],
                "radii_units": "Mpc/h", "growth_z_init": float(growth),
                "delta_R": "delta at z_init smoothed on R (units of /delta)",
                "collapse_R": "F = 1/D(z_c) of the smoothed field at z=0, 0 = never collapses "
                              f"(Monaco 1995 3rd-order ellipsoid, PINOCCHIO ell_classic; delta_c = {DELTA_C}; "
                              f"clipped to [0, {F_MAX:g}])",
                "collapse_max": "max over radii of collapse_R",
                "code_version": __version__,
            })


def add_features(paths: Sequence[Path], cfg: ShearConfig) -> str:
    """Add the physics channels of ``cfg.feature_radii`` to every box not already done; return a summary line.

    Every box is checked (cubic finite ``/delta``, ``box_size``, D(z_init)) before any is written.
    """
    from halotrans.fields.store import inspect_box, read_delta_slab

    settings = feature_settings(cfg)
    plan = []
    for path in paths:
        n, box_size = inspect_box(path)
        plan.append((path, n, box_size, growth_at_z_init(path)))
    todo = [b for b in plan if not is_done(b[0], settings)]
    t0 = time.perf_counter()
    for path, n, box_size, growth in tqdm(todo, desc="features", unit="box", file=sys.stderr):
        delta = torch.from_numpy(read_delta_slab(path, 0, n)).to(cfg.device)
        arrays = compute_features(delta, box_size, cfg.feature_radii, cfg.feature_window, growth)
        write_features(path, {k: v.cpu().numpy() for k, v in arrays.items()}, settings, growth)
    radii = ", ".join(radius_tag(r) for r in cfg.feature_radii)
    return (f"features: {len(todo)} box(es) computed, {len(plan) - len(todo)} skipped (already done with "
            f"radii=[{radii}] Mpc/h, window={cfg.feature_window}); {time.perf_counter() - t0:.3f} s compute+I/O, "
            f"serial torch on {cfg.device}")
