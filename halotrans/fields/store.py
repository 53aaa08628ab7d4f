"""The ``/tidal`` group of a box file: checks, resumability and slab-wise writing with serial h5py.

``/tidal/T`` float32 (N,N,N) is the scalar shear, ``/tidal/Tij`` float32 (6,N,N,N) the optional
components (xx, yy, zz, xy, xz, yz); the group's attrs record the settings (``definition``,
``smoothing`` [Mpc/h]) so that a re-run skips boxes already done with the same ones.

Writers never touch the box under its own name: the file is copied to a temporary name
(:func:`halotrans.io.atomic_path`), the old ``/tidal`` group is dropped, the datasets are created
(:func:`prepare_output`), filled slab by slab (:func:`write_slab`, one writer at a time), and the
temporary file is renamed onto the box. A killed job leaves the box as it was. A ``/delta`` with
NaN/±Inf is refused when the box is inspected, a non-finite result before it is written.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from halotrans import __version__
from halotrans.fields.config import ShearConfig
from halotrans.io import DataError, open_h5, require_cubic, require_datasets, require_finite
from halotrans.sims.boxio import NON_FINITE_HINT

GROUP = "tidal"


def shear_settings(cfg: ShearConfig) -> dict[str, Any]:
    """The settings a stored ``/tidal/T`` must match to count as done."""
    return {"definition": cfg.definition, "smoothing": float(cfg.smoothing)}


def inspect_box(path: str | os.PathLike) -> tuple[int, float]:
    """Return (N, box_size [Mpc/h]) of a box file with a cubic, finite ``/delta``; else :class:`DataError`."""
    with open_h5(path) as f:
        require_datasets(f, ["delta"], path)
        n = require_cubic(f["delta"].shape, f"{path}:/delta")
        require_finite(f["delta"], f"{path}:/delta", NON_FINITE_HINT)
        if "box_size" not in f.attrs:
            raise DataError(f"{path}: missing attr 'box_size' (Mpc/h); it has {sorted(f.attrs)}")
        box_size = float(f.attrs["box_size"])
    if not box_size > 0:
        raise DataError(f"{path}: box_size must be positive (Mpc/h), got {box_size}")
    return n, box_size


def is_done(path: str | os.PathLike, settings: dict[str, Any], save_tensor: bool) -> bool:
    """True if the box already has ``/tidal/T`` (and ``Tij`` if asked) made with ``settings``."""
    with h5py.File(path, "r") as f:
        group = f.get(GROUP)
        if not isinstance(group, h5py.Group) or "T" not in group or (save_tensor and "Tij" not in group):
            return False
        return all(k in group.attrs and group.attrs[k] == v for k, v in settings.items())


def read_delta_slab(path: str | os.PathLike, start: int, stop: int) -> np.ndarray:
    """Rows ``start:stop`` along axis 0 (x) of ``/delta`` as float64 (stop−start, N, N)."""
    with h5py.File(path, "r") as f:
        return f["delta"][start:stop].astype(np.float64)


def prepare_output(src: str | os.PathLike, tmp: str | os.PathLike, n: int, settings: dict[str, Any],
                   save_tensor: bool) -> None:
    """Copy the box ``src`` to ``tmp`` and give it an empty ``/tidal`` group for ``settings``."""
    from halotrans.fields.tidal import COMPONENTS

    shutil.copyfile(src, tmp)
    with h5py.File(tmp, "r+") as f:
        if GROUP in f:
            del f[GROUP]
        group = f.create_group(GROUP)
        group.create_dataset("T", shape=(n, n, n), dtype=np.float32)
        if save_tensor:
            group.create_dataset("Tij", shape=(6, n, n, n), dtype=np.float32)
        group.attrs.update(settings)
        group.attrs["components"] = ",".join(COMPONENTS)
        group.attrs["nyquist"] = "first-derivative factors k_i are 0 on their Nyquist plane"
        group.attrs["code_version"] = __version__


def require_finite_shear(path: str | os.PathLike, shear: np.ndarray, tij: np.ndarray | None) -> None:
    """:class:`DataError` if the computed shear of box ``path`` holds NaN/±Inf (checked before writing)."""
    for name, arr in (("T", shear), ("Tij", tij)):
        if arr is not None:
            require_finite(arr, f"{path}:/{GROUP}/{name}", "refusing to write non-finite values; the box is unchanged")


def write_slab(tmp: str | os.PathLike, start: int, shear: np.ndarray, tij: np.ndarray | None = None) -> None:
    """Write rows ``start:start+len(shear)`` (axis 0 = x) of ``/tidal/T`` (and ``Tij``) into ``tmp``."""
    stop = start + shear.shape[0]
    with h5py.File(Path(tmp), "r+") as f:
        f[GROUP]["T"][start:stop] = shear.astype(np.float32, copy=False)
        if tij is not None:
            f[GROUP]["Tij"][:, start:stop] = tij.astype(np.float32, copy=False)
