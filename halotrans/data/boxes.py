"""Box data set for proto-halo segmentation: periodic crops of box files with the cube symmetries.

Each box file (:mod:`halotrans.sims.boxio`) gives the input channels, in the order of ``inputs``:
``delta`` = ``/delta``, ``T`` = ``/tidal/T`` and the physics channels ``delta_R<r>``, ``collapse_R<r>``,
``collapse_max`` = ``/features/<name>`` (:mod:`halotrans.fields.channels`), each standardised with the training-set
``norm_stats`` ((x − mean)/std), and the per-voxel mass class binned from ``/halo_mass`` (log10 M
in M☉/h) at load time with ``class_edges``. Arrays are (C, N, N, N), C order, axis 1 = x.
A box holding NaN or ±Inf in an input or in ``/halo_mass`` is refused with a :class:`DataError`
naming the file, the dataset and the count (checked once per file as it is read).

Sampling is a pure function of ``(seed, step, rank, micro)``: the same call always returns the
same crops, so a resumed run sees exactly the batches an uninterrupted one would.

    ds = BoxDataset(paths, ("delta", "T"), (13.0, 13.5, 14.0), norm_stats, crop=64)
    x, y = ds.batch(batch_size=2, seed=0, step=10, rank=0)   # (2,2,64,64,64) float32, (2,64,64,64) int64
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator, Mapping, Sequence

import h5py
import numpy as np
import torch

from halotrans.data.stats import INPUT_DATASETS
from halotrans.data.symmetries import N_SYMMETRIES, apply_symmetry
from halotrans.fields.channels import compute_hint
from halotrans.io import DataError, open_h5, require_cubic, require_finite
from halotrans.sims.boxio import NON_FINITE_HINT

#: label of voxels that count nowhere (padding crops of the validation tiling)
IGNORE_INDEX = -100


def mass_to_class(halo_mass: np.ndarray, class_edges: Sequence[float]) -> np.ndarray:
    """Mass class per voxel from log10(M / (M☉/h)) (0 = no halo) → int64 of the same shape.

    Class 0: no halo (``halo_mass <= 0``); class k ≥ 1: halo with ``edges[k-2] <= m < edges[k-1]``
    (class 1 below the first edge, the last class at or above the last edge).
    """
    halo_mass = np.asarray(halo_mass)
    cls = 1 + np.searchsorted(np.asarray(class_edges, dtype=np.float64), halo_mass, side="right")
    return np.where(halo_mass > 0, cls, 0).astype(np.int64)


def _open(path: Path) -> h5py.File:
    return open_h5(path, missing=f"box file not found: {path}")


def _check_inputs(f: h5py.File, path: Path, inputs: Sequence[str]) -> None:
    for name in inputs:
        if name not in INPUT_DATASETS:
            raise DataError(f"unknown input '{name}' (choose from {list(INPUT_DATASETS)})")
        ds = INPUT_DATASETS[name]
        if ds not in f:
            hint = compute_hint(name, str(path.parent))
            hint = f"; {hint}" if hint else ""
            raise DataError(f"{path}: missing dataset /{ds} (input '{name}'){hint}")


def check_box_files(paths: Sequence[str | os.PathLike], inputs: Sequence[str], labels: bool = False) -> None:
    """Raise :class:`DataError` for the first missing box file, missing input dataset or input
    holding NaN/±Inf (one read of each input); with ``labels`` also for ``/halo_mass``."""
    for p in map(Path, paths):
        with _open(p) as f:
            _check_inputs(f, p, inputs)
            if labels and "halo_mass" not in f:
                raise DataError(f"{p}: missing dataset /halo_mass (Lagrangian halo labels)")
            for ds in [INPUT_DATASETS[name] for name in inputs] + (["halo_mass"] if labels else []):
                require_finite(f[ds], f"{p}:/{ds}", NON_FINITE_HINT)


def load_inputs(path: str | os.PathLike, inputs: Sequence[str], norm_stats: Mapping[str, Mapping[str, float]]) -> np.ndarray:
    """Normalised input channels of a whole box → (C, N, N, N) float32, C in the order of ``inputs``."""
    path = Path(path)
    with _open(path) as f:
        _check_inputs(f, path, inputs)
        missing = [name for name in inputs if name not in norm_stats]
        if missing:
            raise DataError(f"no normalisation statistics for input(s) {missing} (have {sorted(norm_stats)})")
        channels = []
        for name in inputs:
            a = f[INPUT_DATASETS[name]][...]
            require_cubic(a.shape, f"{path}:/{INPUT_DATASETS[name]}")
            require_finite(a, f"{path}:/{INPUT_DATASETS[name]}", NON_FINITE_HINT)
            s = norm_stats[name]
            channels.append(((a - s["mean"]) / s["std"]).astype(np.float32))
    if len({c.shape for c in channels}) != 1:
        raise DataError(f"{path}: input fields have different shapes {[c.shape for c in channels]}")
    return np.stack(channels)


def load_classes(path: str | os.PathLike, class_edges: Sequence[float]) -> np.ndarray:
    """Mass class of every voxel of a box file → (N, N, N) int64 (see :func:`mass_to_class`)."""
    path = Path(path)
    with _open(path) as f:
        if "halo_mass" not in f:
            raise DataError(f"{path}: missing dataset /halo_mass (Lagrangian halo labels)")
        m = f["halo_mass"][...]
    require_cubic(m.shape, f"{path}:/halo_mass")
    require_finite(m, f"{path}:/halo_mass", NON_FINITE_HINT)
    return mass_to_class(m, class_edges)


def periodic_crop(a: np.ndarray, origin: Sequence[int], size: int) -> np.ndarray:
    """The cube ``[o, o+size)`` along each of the last three axes of ``a``, wrapping around the box."""
    idx = [(o + np.arange(size)) % n for o, n in zip(origin, a.shape[-3:])]
    return a[(Ellipsis, *np.ix_(*idx))]


class BoxDataset:
    """Box files held in memory (normalised inputs float32, classes int8), sampled as periodic crops.

    ``crop`` (voxels) may not exceed a box; ``augment`` draws one of the 48 cube symmetries per crop.
    """

    def __init__(self, paths: Sequence[str | os.PathLike], inputs: Sequence[str], class_edges: Sequence[float],
                 norm_stats: Mapping[str, Mapping[str, float]], crop: int, augment: bool = True):
        self.paths = [Path(p) for p in paths]
        self.inputs = tuple(inputs)
        self.n_classes = len(class_edges) + 2
        self.crop = int(crop)
        self.augment = augment
        self.x: list[np.ndarray] = []
        self.y: list[np.ndarray] = []
        for p in self.paths:
            x = load_inputs(p, self.inputs, norm_stats)
            y = load_classes(p, class_edges)
            if y.shape != x.shape[1:]:
                raise DataError(f"{p}: /halo_mass shape {y.shape} differs from the inputs {x.shape[1:]}")
            if self.crop > y.shape[0]:
                raise DataError(f"{p}: crop {self.crop} is larger than the box ({y.shape[0]}³ voxels); "
                                f"set data.crop <= {y.shape[0]}")
            self.x.append(x)
            self.y.append(y.astype(np.int8))

    def __len__(self) -> int:
        return len(self.paths)

    def class_counts(self) -> np.ndarray:
        """Voxels per class over all boxes → (n_classes,) int64."""
        return sum(np.bincount(y.ravel(), minlength=self.n_classes) for y in self.y)

    def crop_at(self, box: int, origin: Sequence[int], symmetry: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """Inputs (C,c,c,c) and classes (c,c,c) of one periodic crop, with a cube symmetry applied."""
        x = apply_symmetry(periodic_crop(self.x[box], origin, self.crop), symmetry)
        y = apply_symmetry(periodic_crop(self.y[box], origin, self.crop), symmetry)
        return x, y

    def batch(self, batch_size: int, seed: int, step: int, rank: int, micro: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """Random crops drawn from ``rng(seed, step, rank, micro)`` → x (B,C,c,c,c) float32, y (B,c,c,c) int64."""
        rng = np.random.default_rng([seed, step, rank, micro])
        xs, ys = [], []
        for _ in range(batch_size):
            box = int(rng.integers(len(self.x)))
            origin = rng.integers(self.y[box].shape[0], size=3)
            symmetry = int(rng.integers(N_SYMMETRIES)) if self.augment else 0
            x, y = self.crop_at(box, origin, symmetry)
            xs.append(x)
            ys.append(y)
        return _stack(xs, ys)

    def tiles(self, max_crops: int) -> list[tuple[int, tuple[int, int, int]]]:
        """(box, origin) of crops tiling every box (the last ones wrap), at most ``max_crops`` evenly chosen."""
        out = []
        for b, y in enumerate(self.y):
            starts = range(0, y.shape[0], self.crop)
            out += [(b, (i, j, k)) for i in starts for j in starts for k in starts]
        if len(out) > max_crops:
            out = [out[i] for i in np.linspace(0, len(out) - 1, max_crops).round().astype(int)]
        return out

    def tile_batches(self, max_crops: int, batch_size: int, rank: int, world_size: int
                     ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """This rank's share of :meth:`tiles` in batches; every rank gets the same number of batches
        (the last ones padded with crops labelled :data:`IGNORE_INDEX`)."""
        tiles = self.tiles(max_crops)
        per_rank = -(-len(tiles) // world_size)
        per_rank = -(-per_rank // batch_size) * batch_size
        mine = tiles[rank::world_size]
        for start in range(0, per_rank, batch_size):
            xs, ys = [], []
            for i in range(start, start + batch_size):
                x, y = self.crop_at(*(mine[i] if i < len(mine) else tiles[0]))
                xs.append(x)
                ys.append(y if i < len(mine) else np.full_like(y, IGNORE_INDEX))
            yield _stack(xs, ys)


def _stack(xs: list[np.ndarray], ys: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.from_numpy(np.ascontiguousarray(np.stack(xs)))
    y = torch.from_numpy(np.stack(ys).astype(np.int64))
    return x, y
