"""The box file: one HDF5 file per simulated (or imported) periodic box.

Layout (C order, axis 0 = x, voxel (i,j,k) at Lagrangian position ((i,j,k)+½)·L/N or i·L/N as
recorded in ``attrs['grid_origin']``):

* ``/delta``      float32 (N,N,N): linear overdensity at ``z_init``.
* ``/halo_mass``  float32 (N,N,N): log10(M / (M☉/h)) of the z=0 halo the voxel's particle ends in, 0 = none.
* ``/halo_id``    int32 (N,N,N), optional: index of that halo in the box's FoF catalogue, −1 = none.
* ``/tidal/T``    float32 (N,N,N): scalar tidal shear of ``/delta`` (written by the shear stage);
  ``/tidal/Tij`` float32 (6,N,N,N) optional (xx, yy, zz, xy, xz, yz).
* attrs: ``box_size`` [Mpc/h], ``n_grid``, ``seed``, ``z_init``, ``cosmology`` (JSON),
  ``generator`` (JSON of every setting), ``particle_mass`` [M☉/h], ``code_version``, ``format_version``.

Every write is atomic (:func:`halotrans.io.atomic_path`): a file under its final name is complete.
Fields are finite: :func:`write_box` and :func:`update_box` refuse NaN/±Inf before writing, and
:func:`load_box` refuses them on reading (:func:`halotrans.io.require_finite`, one pass per file).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, Iterable, Mapping

import h5py
import numpy as np

from halotrans.io import DataError, atomic_path, open_h5, require_cubic, require_datasets, require_finite

FORMAT_VERSION = 1
REQUIRED = ("delta", "halo_mass")
#: what a reader adds to the message when a box holds NaN or ±Inf
NON_FINITE_HINT = "the box is corrupt (or came from a failed run): regenerate or re-import it"


def box_path(root: str | os.PathLike, seed: int) -> Path:
    """``<root>/box_<seed:04d>.h5``."""
    return Path(root) / f"box_{int(seed):04d}.h5"


def encode_attr(value: Any) -> Any:
    """Numbers and strings as they are; anything else (dict, list, None, bool) as a JSON string."""
    if isinstance(value, (bool, type(None), dict, list, tuple)):
        return json.dumps(value)
    return value


def decode_attr(value: Any) -> Any:
    if isinstance(value, bytes):
        value = value.decode()
    if isinstance(value, str):
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    if isinstance(value, np.generic):
        return value.item()
    return value


def _stored(arr: np.ndarray) -> np.ndarray:
    """Integer arrays (ids) keep an int dtype; everything else is stored as float32."""
    arr = np.asarray(arr)
    return arr if np.issubdtype(arr.dtype, np.integer) else arr.astype(np.float32, copy=False)


def write_box(
    path: str | os.PathLike,
    delta: np.ndarray,
    halo_mass: np.ndarray,
    attrs: Mapping[str, Any],
    extra: Mapping[str, np.ndarray] | None = None,
) -> Path:
    """Write a complete box file atomically. ``extra`` maps dataset names (e.g. ``tidal/T``) to arrays."""
    n = require_cubic(np.shape(delta), "delta")
    if np.shape(halo_mass) != np.shape(delta):
        raise DataError(f"halo_mass shape {np.shape(halo_mass)} differs from delta shape {np.shape(delta)}")
    for key in ("box_size", "seed", "z_init"):
        if key not in attrs:
            raise DataError(f"box attrs must include '{key}'")
    path = Path(path)
    _require_finite_fields(path, {"delta": delta, "halo_mass": halo_mass, **(extra or {})})
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as f:
            f.create_dataset("delta", data=np.asarray(delta, dtype=np.float32))
            f.create_dataset("halo_mass", data=np.asarray(halo_mass, dtype=np.float32))
            for name, arr in (extra or {}).items():
                f.create_dataset(name, data=_stored(arr))
            f.attrs["n_grid"] = n
            f.attrs["format_version"] = FORMAT_VERSION
            for k, v in attrs.items():
                f.attrs[k] = encode_attr(v)
    return path


def _require_finite_fields(path: Path, arrays: Mapping[str, np.ndarray]) -> None:
    """:class:`DataError` naming ``path`` and the dataset if an array to be written holds NaN or ±Inf."""
    for name, arr in arrays.items():
        require_finite(np.asarray(arr), f"{path}:/{name}", "refusing to write non-finite values; nothing written")


def read_attrs(path: str | os.PathLike) -> dict[str, Any]:
    """All attrs of a box file, JSON values decoded."""
    with h5py.File(path, "r") as f:
        return {k: decode_attr(v) for k, v in f.attrs.items()}


def is_complete(path: str | os.PathLike, required: Iterable[str] = REQUIRED,
                expect: Mapping[str, Any] | None = None) -> bool:
    """True if ``path`` opens, has the ``required`` datasets and its attrs equal ``expect``."""
    path = Path(path)
    if not path.is_file():
        return False
    try:
        with h5py.File(path, "r") as f:
            if any(r not in f for r in required):
                return False
            attrs = {k: decode_attr(v) for k, v in f.attrs.items()}
    except OSError:
        return False
    return all(attrs.get(k) == v for k, v in (expect or {}).items())


def load_box(path: str | os.PathLike, keys: Iterable[str] = REQUIRED) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Read ``keys`` (dataset names) and attrs; clear :class:`DataError` on missing, malformed or
    non-finite data."""
    path = Path(path)
    keys = list(keys)
    with open_h5(path, missing=f"box file not found: {path}") as f:
        require_datasets(f, keys, path)
        arrays = {k: f[k][...] for k in keys}
        attrs = {k: decode_attr(v) for k, v in f.attrs.items()}
    for k, a in arrays.items():
        require_finite(a, f"{path}:/{k}", NON_FINITE_HINT)
    for k, a in arrays.items():
        if k.endswith("Tij"):
            require_cubic(a.shape[1:], f"{path}:/{k}[c]")
        else:
            require_cubic(a.shape, f"{path}:/{k}")
    return arrays, attrs


def update_box(path: str | os.PathLike, datasets: Mapping[str, np.ndarray], attrs: Mapping[str, Any] | None = None) -> None:
    """Add or replace datasets/attrs of an existing box file atomically (copy, write, rename)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"box file not found: {path}")
    _require_finite_fields(path, datasets)
    with atomic_path(path) as tmp:
        shutil.copyfile(path, tmp)
        with h5py.File(tmp, "a") as f:
            for name, arr in datasets.items():
                if name in f:
                    del f[name]
                f.create_dataset(name, data=_stored(arr))
            for k, v in (attrs or {}).items():
                f.attrs[k] = encode_attr(v)
