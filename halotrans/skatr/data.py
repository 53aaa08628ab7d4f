"""Light-cone batches for the SKATR tasks: splits, input scaling, reproducible noisy batches, the ViT.

Every SKATR task reads the data set of the ``lightcone`` config section through
:class:`~halotrans.skatr.dataset.LightConeDataset`. Inputs are brightness temperatures in mK
scaled by the training split's mean and standard deviation (``norm_stats``, saved with the run).
A training batch is a pure function of (``train.seed``, step, micro-batch, rank): the light cones
AND their thermal noise (the noise seed is derived from the same numbers), so a resumed run sees
the same batches. Validation, test and cached summaries use the fixed ``skatr.noise_seed``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Iterator

import h5py
import numpy as np
import torch
from torch import nn

from halotrans.config import Config, ConfigError
from halotrans.io import atomic_path
from halotrans.parallel.distributed import on_rank0
from halotrans.skatr.dataset import LightConeDataset

#: light cones used to estimate the input mean/std
NORM_ITEMS = 64
#: the run's input scaling (the same name the segmentation task uses)
NORM_FILE = "norm_stats.json"


def derived_seed(*keys: int) -> int:
    """A 32-bit seed that depends on every key (numpy's SeedSequence hash)."""
    return int(np.random.SeedSequence([int(k) for k in keys]).generate_state(1)[0])


def open_split(cfg: Config, split: str, fixed_noise: bool) -> LightConeDataset:
    """The ``split`` (train | val | test | all) of ``cfg.lightcone.out``; noise fixed to ``skatr.noise_seed`` or fresh."""
    return LightConeDataset.from_config(cfg.lightcone, split, cfg.skatr.noise_seed if fixed_noise else None)


def open_pool(cfg: Config) -> LightConeDataset:
    """Every light cone of the unlabelled pool ``skatr.pretrain_data`` (fresh noise, parameters unread)."""
    return LightConeDataset.from_config(cfg.lightcone, "all", None, path=cfg.skatr.pretrain_data, labelled=False)


#: the transverse symmetries of a light cone: quarter turns in the sky plane (X, Y), then a reflection of X
N_SYMMETRIES = 8


def transverse_symmetry(x: torch.Tensor, k: int) -> torch.Tensor:
    """Symmetry ``k`` (0-7) of light cones ``x`` (..., X, Y, Z): ``k % 4`` quarter turns in the (X, Y) plane,
    then X reversed if ``k >= 4``; 0 is the identity. The line of sight (Z) is never touched."""
    if not 0 <= k < N_SYMMETRIES:
        raise ValueError(f"symmetry must be 0..{N_SYMMETRIES - 1}, got {k}")
    y = torch.rot90(x, k % 4, dims=(-3, -2)) if k % 4 else x
    return torch.flip(y, dims=(-3,)) if k >= 4 else y


def random_symmetries(x: torch.Tensor, n_symmetries: int, seed: int) -> torch.Tensor:
    """Each light cone of the batch ``x`` (B, C, X, Y, Z) under one of the first ``n_symmetries``
    symmetries, drawn with ``seed`` (augmentation)."""
    if n_symmetries == 1:
        return x
    ks = np.random.default_rng(seed).integers(0, n_symmetries, len(x))
    return torch.stack([transverse_symmetry(xi, int(k)) for xi, k in zip(x, ks)])


def light_cone_shape(ds: LightConeDataset) -> tuple[int, int, int]:
    """(X, Y, Z') voxels of the light cones the data set yields."""
    with h5py.File(ds.path, "r") as f:
        shape = f["brightness_temp"].shape
    return int(shape[1]), int(shape[2]), int(ds.los_length)


def input_norm_stats(ds: LightConeDataset) -> dict[str, float]:
    """Mean and std [mK] of the brightness temperature over up to :data:`NORM_ITEMS` light cones of ``ds``."""
    if len(ds) == 0:
        raise ConfigError(f"{ds.path}: the training split is empty (lightcone.split = fractions of {ds.path.name})")
    items = np.linspace(0, len(ds) - 1, min(len(ds), NORM_ITEMS)).round().astype(int)
    x = torch.stack([ds[int(i)][0] for i in np.unique(items)]).double()
    return {"mean": float(x.mean()), "std": float(x.std().clamp_min(1e-6))}


def read_items(ds: LightConeDataset, items: np.ndarray, norm: dict[str, float],
               noise_seed: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Scaled light cones (B, 1, X, Y, Z') and normalised parameters (B, P) of rows ``items`` of ``ds``.

    ``noise_seed`` (if given) replaces the data set's noise seed for this read: the noise of each
    light cone is then a function of (noise_seed, its row).
    """
    kept = ds.noise_seed
    if noise_seed is not None:
        ds.noise_seed = noise_seed
    try:
        pairs = [ds[int(i)] for i in items]
    finally:
        ds.noise_seed = kept
    x = torch.stack([p[0] for p in pairs])
    return (x - norm["mean"]) / norm["std"], torch.stack([p[1] for p in pairs])


def train_items(n: int, fraction: float, seed: int) -> np.ndarray:
    """The first ``fraction`` of a fixed permutation of ``n`` training items (nested for growing fractions)."""
    keep = max(1, int(round(fraction * n)))
    return np.sort(np.random.default_rng([seed, 7]).permutation(n)[:keep])


def cv_fold_ids(n: int, k: int, seed: int) -> np.ndarray:
    """Fold (0..k-1) of each of ``n`` training-pool items: a fixed permutation dealt round-robin, so
    the folds differ in size by at most one item."""
    folds = np.empty(n, dtype=np.int64)
    folds[np.random.default_rng([seed, 11]).permutation(n)] = np.arange(n) % k
    return folds


def random_rows(pool: np.ndarray, batch: int, seed: int) -> np.ndarray:
    """``batch`` rows of ``pool`` drawn with a seeded generator (without replacement when possible)."""
    rng = np.random.default_rng(seed)
    return pool[rng.choice(len(pool), batch, replace=len(pool) < batch)]


def shard_batches(n: int, batch: int, rank: int, world: int) -> Iterator[tuple[np.ndarray, torch.Tensor]]:
    """This rank's share of items 0..n-1 in batches: ``(items, weights)``, the SAME count on every rank.

    Ranks with fewer items pad with item 0 at weight 0 (every rank must run the same number of
    forward passes under ZeRO-3).
    """
    mine = np.arange(rank, n, world)
    n_batches = math.ceil(math.ceil(n / world) / batch)
    for b in range(n_batches):
        items = mine[b * batch:(b + 1) * batch]
        weights = torch.ones(len(items))
        if len(items) == 0:
            items, weights = np.zeros(1, dtype=int), torch.zeros(1)
        yield items, weights


def patch_size(cfg: Config) -> tuple[int, int, int]:
    """``model.patch_size`` as three ints."""
    patch = (cfg.model.patch_size,) if isinstance(cfg.model.patch_size, int) else tuple(cfg.model.patch_size)
    return patch * 3 if len(patch) == 1 else patch  # type: ignore[return-value]


def build_vit(cfg: Config, img_size: tuple[int, int, int]) -> nn.Module:
    """The light-cone ViT of the ``model`` section (``model.name: vit``), one input channel."""
    from halotrans.models.registry import build_model

    if cfg.model.name != "vit":
        raise ConfigError(f"model.name = {cfg.model.name!r}: the SKATR tasks use the bare encoder, model.name: vit")
    patch = patch_size(cfg)
    bad = [f"{s} by {p}" for s, p in zip(img_size, patch) if s % p]
    if bad:
        raise ConfigError(f"light cones of {list(img_size)} voxels do not divide into model.patch_size {list(patch)} "
                          f"({', '.join(bad)}); change the patch or lightcone.los_multiple")
    return build_model(cfg.model, 1, 0, img_size)


def run_norm_stats(cfg: Config, run_dir: Path, resume: bool) -> dict[str, float]:
    """Input scaling of a run, on every rank: the run's own ``norm_stats.json`` on resume, else
    computed from the training split on rank 0 (and written there)."""
    norm_file = run_dir / NORM_FILE

    def compute() -> dict[str, float]:
        if resume and norm_file.is_file():
            return json.loads(norm_file.read_text())
        return input_norm_stats(open_split(cfg, "train", fixed_noise=True))

    stats = on_rank0(compute)
    if torch.distributed.get_rank() == 0:
        with atomic_path(norm_file) as tmp:
            tmp.write_text(json.dumps(stats, indent=1))
    return stats
