"""Light-cone data set for SKATR: accepted 21cmFAST light cones, normalised parameters, noise.

Reads the HDF5 file of ``python -m halotrans lightcones`` (layout in
:mod:`halotrans.skatr.store`). Each item is ``(x, theta)``: ``x`` (1, X, Y, Z) float32
brightness temperature in mK (X, Y transverse, Z the line of sight from low to high redshift),
``theta`` (P,) float32, the P sampled parameters (six, or five when m_WDM was not sampled) mapped
to [0, 1] by their uniform priors (:func:`normalize_params`, inverse :func:`denormalize_params`).

Splits: the accepted light cones are shuffled with ``split_seed`` and cut into train/val/test by
the ``fractions`` (by index, so the split is the same on every call; extending the data set
re-draws it, so use a separate seed range for a strict hold-out set).

Line of sight: Z is cropped (``crop``: drops the highest-redshift slices) or zero-padded at the
high-redshift end (``pad``) to a multiple of ``los_multiple`` (the ViT patch length), e.g. 470 →
470 and 537 → 530 (crop) or 540 (pad) for patches of 10.

Thermal noise (at load time, so one clean set serves every noise level): per slice at redshift z
(frequency ν = 1420.4 MHz / (1+z)), Gaussian noise is drawn white in the uv plane on the measured
baselines — every k⊥ ≠ 0 (an interferometer does not see the slice mean) up to
k⊥,max = 2π b_max / (λ D_c(z)) if a longest baseline b_max is given — and scaled to a real-space
rms σ(z) = σ_ref T_sys(z) / T_sys(z_ref), with the SKA-low-like system temperature
T_sys = T_rcv + 60 K (ν / 300 MHz)^−2.55. The signal itself is left untouched.

    ds = LightConeDataset("data/skatr/lightcones_cpu.h5", split="train", los_multiple=10, noise_mk=5.0)
    x, theta = ds[0]                           # (1, 14, 14, 530), (6,)
    physical = denormalize_params(theta.numpy(), ds.priors)
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal, Sequence

import h5py
import numpy as np
import torch

from halotrans.io import DataError, open_h5, require_datasets, require_finite
from halotrans.skatr.config import LightConeConfig

NU_21CM_MHZ = 1420.40575177
LAMBDA_21CM_M = 0.21106114
_SPLITS = ("train", "val", "test")
_REQUIRED = ("brightness_temp", "params", "seeds", "redshifts", "comoving_distance")


def normalize_params(theta: np.ndarray, priors: np.ndarray) -> np.ndarray:
    """Physical parameters (..., P) → [0, 1] by the prior bounds ``priors`` (P, 2)."""
    lo, hi = np.asarray(priors, dtype=np.float64).T
    return (np.asarray(theta, dtype=np.float64) - lo) / np.where(hi > lo, hi - lo, 1.0)


def denormalize_params(u: np.ndarray, priors: np.ndarray) -> np.ndarray:
    """Inverse of :func:`normalize_params`: values in [0, 1] (..., P) → physical units."""
    lo, hi = np.asarray(priors, dtype=np.float64).T
    return lo + np.asarray(u, dtype=np.float64) * (hi - lo)


def split_indices(n: int, fractions: Sequence[float], seed: int) -> dict[str, np.ndarray]:
    """Disjoint sorted index arrays ``train``/``val``/``test`` of ``n`` items, shuffled with ``seed``."""
    bounds = np.round(np.cumsum(fractions) * n).astype(int).clip(0, n)
    perm = np.random.default_rng(seed).permutation(n)
    edges = np.concatenate(([0], bounds))
    return {name: np.sort(perm[edges[i]:edges[i + 1]]) for i, name in enumerate(_SPLITS)}


def system_temperature(redshifts: np.ndarray, t_receiver_k: float) -> np.ndarray:
    """SKA-low-like T_sys [K] = T_rcv + 60 K (ν/300 MHz)^−2.55 at the 21cm frequency of ``redshifts``."""
    nu = NU_21CM_MHZ / (1.0 + np.asarray(redshifts, dtype=np.float64))
    return t_receiver_k + 60.0 * (nu / 300.0) ** -2.55


def thermal_noise_sigma(redshifts: np.ndarray, sigma_ref_mk: float, z_ref: float, t_receiver_k: float) -> np.ndarray:
    """Real-space noise rms σ(z) [mK] per slice: ``sigma_ref_mk`` at ``z_ref``, scaled with T_sys."""
    t_sys = system_temperature(redshifts, t_receiver_k)
    return sigma_ref_mk * t_sys / system_temperature(np.array([z_ref]), t_receiver_k)[0]


def uv_coverage(n_side: int, cell_mpc: float, redshifts: np.ndarray, distances_mpc: np.ndarray,
                max_baseline_m: float | None) -> np.ndarray:
    """(X, Y, Z) bool: the transverse Fourier modes k⊥ measured in each slice (k⊥ ≠ 0, ≤ k⊥,max)."""
    k = 2 * np.pi * np.fft.fftfreq(n_side, d=cell_mpc)
    k_perp = np.hypot(k[:, None], k[None, :])[..., None]
    if max_baseline_m is None:
        return np.broadcast_to(k_perp > 0, (n_side, n_side, len(redshifts)))
    wavelength = LAMBDA_21CM_M * (1.0 + np.asarray(redshifts, dtype=np.float64))
    k_max = 2 * np.pi * max_baseline_m / (wavelength * np.asarray(distances_mpc, dtype=np.float64))
    return (k_perp > 0) & (k_perp <= k_max)


def thermal_noise(sigma: np.ndarray, coverage: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(X, Y, Z) float32 noise: white in uv on ``coverage`` (X, Y, Z), rms ``sigma`` (Z,) [mK] per slice."""
    white = rng.standard_normal(coverage.shape)
    uv = np.fft.fft2(white, axes=(0, 1)) * coverage
    noise = np.fft.ifft2(uv, axes=(0, 1)).real
    kept = coverage.sum(axis=(0, 1))
    scale = np.where(kept > 0, np.sqrt(coverage.shape[0] * coverage.shape[1] / np.maximum(kept, 1)), 0.0)
    return (noise * scale * sigma).astype(np.float32)


class LightConeDataset(torch.utils.data.Dataset):
    """Accepted light cones of one split as ``(x (1, X, Y, Z'), theta (P,))`` float32 tensors.

    ``path``: the HDF5 data set; ``split``: train | val | test | all; ``fractions`` and
    ``split_seed``: the split; ``los_multiple``/``los_fit``: the line-of-sight length Z';
    ``noise_mk`` (σ at ``noise_z_ref``), ``noise_receiver_k``, ``noise_max_baseline_m``: thermal
    noise (0 = clean); ``noise_seed``: None draws fresh noise on every access, an int gives each
    light cone the same noise every time (validation, test). ``labelled`` False: an unlabelled pool
    (JEPA pretraining): ``/params`` is never read and ``theta`` is an empty (0,) tensor.

    Light cones or sampled parameters of the split holding NaN/±Inf are a :class:`DataError` (checked
    once, when the data set is opened).

    Attributes: ``param_names``, ``priors`` (P, 2), ``redshifts`` (Z',) (NaN in padded slices),
    ``noise_sigma`` (Z',) [mK], ``indices`` (rows of the file in this split), ``seeds``.
    """

    def __init__(self, path: str | os.PathLike, split: Literal["train", "val", "test", "all"] = "train",
                 fractions: Sequence[float] = (0.8, 0.1, 0.1), split_seed: int = 0, los_multiple: int = 1,
                 los_fit: Literal["crop", "pad"] = "crop", noise_mk: float = 0.0, noise_z_ref: float = 8.0,
                 noise_receiver_k: float = 100.0, noise_max_baseline_m: float | None = None,
                 noise_seed: int | None = None, labelled: bool = True):
        self.path = Path(path)
        if split not in (*_SPLITS, "all"):
            raise ValueError(f"split must be one of {[*_SPLITS, 'all']}, got {split!r}")
        if los_fit not in ("crop", "pad") or los_multiple < 1:
            raise ValueError(f"need los_fit in ('crop', 'pad') and los_multiple >= 1, got {los_fit!r}, {los_multiple}")
        missing = f"light-cone data set not found: {self.path} (make it with `python -m halotrans lightcones`)"
        with open_h5(self.path, missing=missing) as f:
            require_datasets(f, _REQUIRED, self.path)
            missing = [a for a in ("param_names", "priors", "sampled", "cell_size_mpc") if a not in f.attrs]
            if missing:
                raise DataError(f"{self.path}: missing attribute(s) {missing}; not a light-cone data set")
            shape = f["brightness_temp"].shape
            n = shape[0]
            if len(shape) != 4 or shape[1] != shape[2] or f["params"].shape[0] != n or f["redshifts"].shape != (shape[3],):
                raise DataError(f"{self.path}: inconsistent shapes: brightness_temp {shape}, params "
                                f"{f['params'].shape}, redshifts {f['redshifts'].shape}")
            sampled = np.asarray(f.attrs["sampled"], dtype=bool)
            self.param_names = [str(s) for s, keep in zip(f.attrs["param_names"], sampled) if keep]
            self.priors = np.asarray(f.attrs["priors"], dtype=np.float64)[sampled]
            params = f["params"][...][:, sampled] if labelled else np.zeros((n, 0))  # unlabelled: never read
            all_seeds = f["seeds"][...]
            redshifts = f["redshifts"][...]
            distances = f["comoving_distance"][...]
            cell = float(f.attrs["cell_size_mpc"])
        self.indices = np.arange(n) if split == "all" else split_indices(n, fractions, split_seed)[split]
        hint = "the data set is corrupt: regenerate it with `python -m halotrans lightcones`"
        require_finite(params[self.indices], f"{self.path}:/params (sampled columns, {split} split)", hint)
        with open_h5(self.path) as f:  # once per split, one light cone at a time
            require_finite(f["brightness_temp"], f"{self.path}:/brightness_temp ({split} split)", hint,
                           rows=self.indices)
        self.seeds = all_seeds[self.indices]
        self.theta = (normalize_params(params[self.indices], self.priors) if labelled
                      else params[self.indices]).astype(np.float32)
        z_len = shape[3]
        self.los_length = (z_len // los_multiple if los_fit == "crop" else -(-z_len // los_multiple)) * los_multiple
        if self.los_length == 0:
            raise DataError(f"{self.path}: {z_len} line-of-sight slices, fewer than los_multiple={los_multiple}")
        self._kept = min(z_len, self.los_length)
        self.redshifts = np.full(self.los_length, np.nan)
        self.redshifts[:self._kept] = redshifts[:self._kept]
        self.noise_sigma = np.zeros(self.los_length)
        self._coverage = None
        if noise_mk > 0:
            self.noise_sigma[:self._kept] = thermal_noise_sigma(redshifts[:self._kept], noise_mk, noise_z_ref,
                                                                noise_receiver_k)
            self._coverage = uv_coverage(shape[1], cell, redshifts[:self._kept], distances[:self._kept],
                                         noise_max_baseline_m)
        self.noise_seed = noise_seed
        self._file: h5py.File | None = None
        self._pid = -1

    @classmethod
    def from_config(cls, cfg: LightConeConfig, split: Literal["train", "val", "test", "all"] = "train",
                    noise_seed: int | None = None, path: str | os.PathLike | None = None,
                    labelled: bool = True) -> "LightConeDataset":
        """The data set ``cfg.out`` (or ``path``) with the loading settings of the ``lightcone`` config section."""
        return cls(cfg.out if path is None else path, split, labelled=labelled, fractions=cfg.split,
                   split_seed=cfg.split_seed, los_multiple=cfg.los_multiple,
                   los_fit=cfg.los_fit, noise_mk=cfg.noise_mk, noise_z_ref=cfg.noise_z_ref,
                   noise_receiver_k=cfg.noise_receiver_k, noise_max_baseline_m=cfg.noise_max_baseline_m,
                   noise_seed=noise_seed)

    def __len__(self) -> int:
        return len(self.indices)

    def _h5(self) -> h5py.File:
        if self._file is None or self._pid != os.getpid():  # one handle per DataLoader worker
            self._file = h5py.File(self.path, "r")
            self._pid = os.getpid()
        return self._file

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        row = int(self.indices[i])
        cube = self._h5()["brightness_temp"][row, :, :, :self._kept].astype(np.float32)
        if self._coverage is not None:
            rng = np.random.default_rng(None if self.noise_seed is None else [self.noise_seed, row])
            cube += thermal_noise(self.noise_sigma[:self._kept], self._coverage, rng)
        if self.los_length > self._kept:
            cube = np.pad(cube, ((0, 0), (0, 0), (0, self.los_length - self._kept)))
        return torch.from_numpy(cube[None]), torch.from_numpy(self.theta[i])

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_file"] = None
        return state
