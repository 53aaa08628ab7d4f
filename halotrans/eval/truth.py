"""The ground truth of a test box: true classes, halo ids and masses, read as training read them."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import h5py
import numpy as np

from halotrans.io import DataError
from halotrans.sims.boxio import load_box

#: mean matter density ρ̄ / Ω_m = ρ_crit in (M☉/h) / (Mpc/h)³
RHO_CRIT = 2.775e11


@dataclass
class BoxTruth:
    """One box: ``labels`` (N,N,N) int64 classes, ``halo_log_mass`` (N,N,N) log10(M/(M☉/h)) (0 = none),
    ``halo_id`` (N,N,N) int (−1 = none) or None, ``delta`` (N,N,N) for pictures, ``voxel_mass`` M☉/h,
    ``box_size`` Mpc/h."""

    path: str
    labels: np.ndarray
    halo_log_mass: np.ndarray
    halo_id: np.ndarray | None
    delta: np.ndarray
    voxel_mass: float
    box_size: float

    @property
    def name(self) -> str:
        return Path(self.path).stem


def voxel_mass(attrs: dict, n: int, path: str | os.PathLike = "") -> float:
    """Mass of one Lagrangian voxel in M☉/h: ``particle_mass``, else Ω_m ρ_crit (L/N)³ from attrs."""
    if "particle_mass" in attrs:
        return float(attrs["particle_mass"])
    cosmo = attrs.get("cosmology") or {}
    om = cosmo.get("Om0", cosmo.get("Omega_m")) if isinstance(cosmo, dict) else None
    if om is None or "box_size" not in attrs:
        raise DataError(f"{path}: attrs have no 'particle_mass' nor cosmology Om0 and box_size, "
                        "so masses cannot be computed")
    return float(om) * RHO_CRIT * (float(attrs["box_size"]) / n) ** 3


def load_truth(path: str | os.PathLike, class_edges: Sequence[float]) -> BoxTruth:
    """Read ``/halo_mass``, ``/delta`` and (if present) ``/halo_id`` and bin classes as training did."""
    from halotrans.data.boxes import mass_to_class

    arrays, attrs = load_box(path, ["delta", "halo_mass"])
    with h5py.File(path, "r") as f:
        halo_id = f["halo_id"][...] if "halo_id" in f else None
    n = arrays["halo_mass"].shape[0]
    if halo_id is not None and halo_id.shape != arrays["halo_mass"].shape:
        raise DataError(f"{path}: /halo_id shape {halo_id.shape} differs from /halo_mass {arrays['halo_mass'].shape}")
    return BoxTruth(
        path=str(path),
        labels=np.asarray(mass_to_class(arrays["halo_mass"], class_edges), dtype=np.int64),
        halo_log_mass=arrays["halo_mass"],
        halo_id=halo_id,
        delta=arrays["delta"],
        voxel_mass=voxel_mass(attrs, n, path),
        box_size=float(attrs.get("box_size", np.nan)),
    )
