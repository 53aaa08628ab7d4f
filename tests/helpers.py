"""Helpers shared by the test modules (fixtures live in ``conftest.py``): child processes of this venv,
synthetic boxes, the tiny light-cone config.

    from tests.helpers import halotrans_cli, run, write_synthetic_boxes
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np

from halotrans.sims.boxio import box_path, write_box
from halotrans.skatr.priors import PARAM_NAMES

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent

def subprocess_env(**extra: str) -> dict[str, str]:
    """Environment for child processes: this venv's bin first, CPU DeepSpeed, repo importable."""
    env = dict(os.environ)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = f"{REPO}{os.pathsep}{env.get('PYTHONPATH', '')}"
    env.setdefault("DS_ACCELERATOR", "cpu")
    env.setdefault("OMPI_ALLOW_RUN_AS_ROOT", "1")
    env.setdefault("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
    env.update(extra)
    return env


def run(cmd: list[str], *, timeout: float = 600, check: bool = True, cwd: str | Path | None = None,
        **env: str) -> subprocess.CompletedProcess:
    """Run ``cmd`` and return the completed process (stdout/stderr as text); on failure show both."""
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=cwd or REPO,
                          env=subprocess_env(**env))
    if check and proc.returncode != 0:
        raise AssertionError(
            f"command failed ({proc.returncode}): {' '.join(map(str, cmd))}\n"
            f"--- stdout ---\n{proc.stdout[-4000:]}\n--- stderr ---\n{proc.stderr[-4000:]}"
        )
    return proc


def halotrans_cli(*args: str, **kw) -> subprocess.CompletedProcess:
    """``python -m halotrans <args>`` in a child process."""
    return run([sys.executable, "-m", "halotrans", *map(str, args)], **kw)


#: the tiny 21cmFAST config of the light-cone tests (8 x 8 x 45 cells, 8 redshift nodes)
TINY_LIGHTCONES = "skatr/lightcones_tiny.yaml"


def synthetic_box(n: int, seed: int, with_shear: bool = True) -> tuple[np.ndarray, np.ndarray, dict]:
    """A smooth random δ whose high peaks are 'halos' (log10 M from the peak height) and a T field.

    Not physics, but labels are a local function of the inputs, so a network can learn them.
    """
    rng = np.random.default_rng(seed)
    k = np.fft.fftfreq(n) * n
    k2 = k[:, None, None] ** 2 + k[None, :, None] ** 2 + k[None, None, :] ** 2
    delta = np.fft.ifftn(np.fft.fftn(rng.standard_normal((n, n, n))) * np.exp(-k2 / 2 / 4.0**2)).real
    delta /= delta.std()
    smooth = np.fft.ifftn(np.fft.fftn(delta) * np.exp(-k2 / 2 / 2.0**2)).real
    smooth /= smooth.std()
    halo_mass = np.where(smooth > 0.8, 11.5 + smooth, 0.0).astype(np.float32)
    extra = {"tidal/T": np.abs(np.gradient(smooth, axis=0)) + 0.5 * np.abs(np.gradient(smooth, axis=1))} if with_shear else {}
    return delta.astype(np.float32), halo_mass, extra


def write_synthetic_boxes(root, seeds, n: int = 32, with_shear: bool = True):
    for s in seeds:
        delta, halo_mass, extra = synthetic_box(n, s, with_shear)
        write_box(box_path(root, s), delta, halo_mass, {"box_size": float(n), "seed": s, "z_init": 99.0}, extra)
    return root


#: the SKATR priors of the six parameters (PARAM_NAMES order)
PRIORS = np.array([[0.3, 10.0], [0.2, 0.4], [100.0, 1500.0], [38.0, 42.0], [4.0, 5.3], [10.0, 250.0]])


def write_synthetic_lightcones(path: str | Path, n: int = 40, side: int = 8, los: int = 40, seed: int = 0) -> Path:
    """A light-cone data set in the layout of ``python -m halotrans lightcones`` whose brightness
    temperature [mK] depends on three of the five sampled parameters (u = prior-normalised):
    fluctuation amplitude ∝ u(Ω_m), a line-of-sight ramp ∝ u(log10 L_X), a mean offset ∝ u(ζ).
    For tests that cannot afford 21cmFAST (seconds per light cone)."""
    rng = np.random.default_rng(seed)
    u = rng.random((n, 6))
    params = PRIORS[:, 0] + u * (PRIORS[:, 1] - PRIORS[:, 0])
    params[:, 0] = np.nan  # five-parameter mode: m_WDM not sampled
    z = np.linspace(0.0, 1.0, los)
    field = rng.standard_normal((n, side, side, los))
    tb = (5.0 + 20.0 * u[:, 1, None, None, None]) * field + 30.0 * u[:, 3, None, None, None] * z \
        - 25.0 * u[:, 5, None, None, None]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        f["brightness_temp"] = tb.astype(np.float32)
        f["params"] = params
        f["seeds"] = np.arange(n, dtype=np.int64)
        f["redshifts"] = np.linspace(5.0, 35.0, los)
        f["comoving_distance"] = np.linspace(6000.0, 9000.0, los)
        f.attrs.update(format="halotrans-lightcones-1", param_names=list(PARAM_NAMES), priors=PRIORS,
                       sampled=np.array([False, True, True, True, True, True]), cell_size_mpc=5.0,
                       settings=f'{{"synthetic": {seed}}}')
    return path


#: ``--set`` overrides of a tiny SKATR ViT + predictor, and of CPU training
TINY_VIT = ("model.hidden_size=48", "model.mlp_dim=96", "model.depth=2", "jepa.predictor_dim=24",
            "jepa.predictor_mlp_dim=48", "jepa.predictor_depth=2", "jepa.mask_targets=2",
            "jepa.target_scale=[0.25,0.25]")
CPU = ("train.bf16=false", "train.torch_adam=true", "train.warmup_steps=2", "train.log_every=1")


def val_loss_of(model, cfg, meta: dict, box_file: Path) -> float:
    """The class-weighted cross-entropy of a loaded segmentation ``model`` on the validation tiles of
    ``box_file``, as the training loop logs ``val_loss`` (``cfg.data.val_max_crops`` tiles, batches of 2)."""
    import torch
    import torch.nn.functional as F

    from halotrans.data.boxes import IGNORE_INDEX, BoxDataset

    val_set = BoxDataset([box_file], meta["inputs"], meta["class_edges"], meta["norm_stats"], meta["img_size"],
                         augment=False)
    w = torch.tensor(meta["class_weights"])
    loss_sum = weight_sum = 0.0
    with torch.no_grad():
        for x, y in val_set.tile_batches(cfg.data.val_max_crops, 2, rank=0, world_size=1):
            loss_sum += float(F.cross_entropy(model(x), y, weight=w, ignore_index=IGNORE_INDEX, reduction="sum"))
            weight_sum += float(w[y[y != IGNORE_INDEX]].sum())
    return loss_sum / weight_sum
