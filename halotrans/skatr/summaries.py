"""Summaries of a frozen light-cone encoder: computed once per (encoder checkpoint, data set), cached in HDF5.

The summary of a light cone is its encoder's final tokens averaged over the patch grid, (K,).
The encoder is that of a finished run (``model.pt``): the target (EMA) or context encoder of a
``jepa`` run, or the ViT of a ``regress``/``npe`` run trained with ``skatr.summary: scratch``
(the "regression-pretrained" summary). Inputs are scaled with the encoder run's own
``norm_stats`` and carry the fixed thermal noise of ``skatr.noise_seed``.

With ``skatr.symmetries: 8`` each light cone is summarised under each of its 8 transverse rotations
and reflections (:func:`~halotrans.skatr.data.transverse_symmetry`, as the SKATR code does).

The cache (default ``<encoder_run>/summaries/<data set>_<weights>[_s8].h5``, written atomically) holds
``/summaries`` (n, S, K) float32 for every light cone of the data set in file order and each of
the S symmetries (files of older versions hold (n, K): read as S = 1), ``/params``
(n, P) prior-normalised, ``/seeds`` (n,), and ``attrs['key']``: a JSON record of the encoder
checkpoint (its SHA-256) and of the data set (SHA-256 of its seeds, parameters, generation
settings and shape, plus the loading and noise settings). A cache whose key differs from the
current one is stale and is recomputed; the splits are applied when reading.

    path, status = ensure_summaries(cfg)   # status: "cached", "computed" or "recomputed (...)"
    s = read_summaries(path, cfg)           # s.values[s.splits["train"]] -> (n_train, S, K)
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from halotrans.config import Config, ConfigError, load_config
from halotrans.io import DataError, atomic_path, open_h5, require_finite
from halotrans.models.heads import MeanPooledViT
from halotrans.skatr.data import light_cone_shape, open_split, read_items, transverse_symmetry
from halotrans.skatr.dataset import split_indices
from halotrans.train.checkpoint import MODEL_FILE, load_for_inference

SUMMARY_DIR = "summaries"


@dataclass
class Summaries:
    """A summaries file read back: ``values`` (n, S, K), ``theta`` (n, P) normalised, ``splits`` name → rows."""

    path: Path
    values: np.ndarray
    theta: np.ndarray
    splits: dict[str, np.ndarray]
    param_names: list[str]
    priors: np.ndarray
    encoder: dict[str, Any]


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def encoder_config(run_dir: str | os.PathLike) -> Config:
    """The config of a finished run (DataError if ``run_dir`` is not one)."""
    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file() or not (run_dir / MODEL_FILE).is_file():
        raise DataError(f"{run_dir}: not a finished training run (needs config.yaml and {MODEL_FILE})")
    return load_config(run_dir / "config.yaml")


def load_run(run_dir: str | os.PathLike) -> tuple[nn.Module, Config, dict]:
    """A finished SKATR run's network (eval mode, CPU), its config and its checkpoint meta.

    Built from the meta saved with the weights, so the data set need not be at hand.
    """
    encoder_config(run_dir)  # a finished run: config.yaml and model.pt
    model, cfg, meta = load_for_inference(run_dir)
    if meta.get("task") not in ("jepa", "regress", "npe"):
        raise DataError(f"{run_dir}: a {meta.get('task')!r} run, not a SKATR run (jepa, regress, npe)")
    return model, cfg, meta


def summary_network(model: nn.Module, meta: dict, weights: str, run_dir: str | os.PathLike) -> nn.Module:
    """Light cones (B, 1, X, Y, Z) → summaries (B, K) of a loaded run's encoder."""
    if meta["task"] == "jepa":
        return MeanPooledViT(model.target_encoder if weights == "target" else model.encoder)
    if meta.get("summary") == "scratch":
        return model.summary
    raise DataError(f"{run_dir}: a {meta['task']} run on frozen summaries has no light-cone encoder; "
                    "use a jepa run or a run with skatr.summary = scratch as skatr.encoder_run")


def cache_path(cfg: Config) -> Path:
    """Where the summaries of ``cfg.skatr.encoder_run`` on ``cfg.lightcone.out`` live."""
    s = cfg.skatr
    if s.summary_cache:
        return Path(s.summary_cache)
    which = s.encoder_weights if encoder_config(s.encoder_run).train.task == "jepa" else "vit"
    sym = f"_s{s.symmetries}" if s.symmetries > 1 else ""
    return Path(s.encoder_run) / SUMMARY_DIR / f"{Path(cfg.lightcone.out).stem}_{which}{sym}.h5"


def data_fingerprint(cfg: Config) -> dict[str, Any]:
    """What fixes the inputs of the summaries: the data set's content and the loading/noise settings."""
    lc = cfg.lightcone
    path = Path(lc.out)
    if not path.is_file():
        raise DataError(f"light-cone data set not found: {path} (make it with `python -m halotrans lightcones`)")
    h = hashlib.sha256()
    with h5py.File(path, "r") as f:
        for name in ("seeds", "params"):
            if name not in f:
                raise DataError(f"{path}: missing dataset /{name}; not a light-cone data set")
            h.update(np.ascontiguousarray(f[name][...]).tobytes())
        h.update(str(f.attrs.get("settings", "")).encode())
        h.update(str(f["brightness_temp"].shape).encode())
    return {"path": str(path.resolve()), "content_sha256": h.hexdigest(), "los_multiple": lc.los_multiple,
            "los_fit": lc.los_fit, "noise_mk": lc.noise_mk, "noise_z_ref": lc.noise_z_ref,
            "noise_receiver_k": lc.noise_receiver_k, "noise_max_baseline_m": lc.noise_max_baseline_m,
            "noise_seed": cfg.skatr.noise_seed, **({"symmetries": cfg.skatr.symmetries} if cfg.skatr.symmetries > 1 else {})}


def cache_key(cfg: Config) -> dict[str, Any]:
    """The record a cache must match: encoder run, weights, checkpoint hash, and the data fingerprint."""
    run = Path(cfg.skatr.encoder_run)
    encoder_config(run)
    return {"encoder": {"run": str(run.resolve()), "weights": cfg.skatr.encoder_weights,
                        "checkpoint_sha256": _sha256(run / MODEL_FILE)},
            "data": data_fingerprint(cfg)}


def _stale_reason(path: Path, key: dict) -> str | None:
    """None if ``path`` is a complete cache made with ``key``, else why not."""
    if not path.is_file():
        return "missing"
    try:
        with h5py.File(path, "r") as f:
            old = json.loads(f.attrs["key"])
    except (OSError, KeyError, json.JSONDecodeError):
        return "unreadable"
    changed = [part for part in ("encoder", "data") if old.get(part) != key[part]]
    return f"{' and '.join(changed)} changed" if changed else None


def compute_summaries(cfg: Config, progress: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict]:
    """Summaries (n, S, K) of every light cone under each of ``skatr.symmetries`` symmetries, normalised θ
    (n, P) and seeds (n,), and the encoder meta."""
    if not cfg.skatr.encoder_run:
        raise ConfigError("skatr.encoder_run is empty: name the run whose encoder summarises the light cones")
    model, _, meta = load_run(cfg.skatr.encoder_run)
    net = summary_network(model, meta, cfg.skatr.encoder_weights, cfg.skatr.encoder_run)
    ds = open_split(cfg, "all", fixed_noise=True)
    shape = light_cone_shape(ds)
    if list(shape) != list(meta["img_size"]):
        raise DataError(f"{ds.path}: light cones of {list(shape)} voxels, but the encoder of "
                        f"{cfg.skatr.encoder_run} was trained on {meta['img_size']}")
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    net = net.to(dev)
    bs = cfg.skatr.batch_size
    n_sym = cfg.skatr.symmetries
    out, thetas = [], []
    with torch.no_grad():
        for start in tqdm(range(0, len(ds), bs), desc="summaries", unit="batch", disable=not progress):
            x, theta = read_items(ds, np.arange(start, min(start + bs, len(ds))), meta["norm_stats"])
            x = x.to(dev)
            out.append(torch.stack([net(transverse_symmetry(x, k)).float().cpu() for k in range(n_sym)], dim=1))
            thetas.append(theta)
    values = torch.cat(out).numpy() if out else np.zeros((0, n_sym, net.out_features), np.float32)
    theta = torch.cat(thetas).numpy() if thetas else np.zeros((0, len(ds.param_names)), np.float32)
    return values, theta, ds.seeds, {**meta, "param_names": ds.param_names, "priors": ds.priors.tolist()}


def ensure_summaries(cfg: Config, progress: bool = True) -> tuple[str, str]:
    """Make sure the cache of ``cfg`` is current → (path, "cached" | "computed" | "recomputed (<why>)")."""
    path = cache_path(cfg)
    key = cache_key(cfg)
    reason = _stale_reason(path, key)
    if reason is None:
        return str(path), "cached"
    values, theta, seeds, meta = compute_summaries(cfg, progress)
    require_finite(values, f"{path}:/summaries", "the encoder produced NaN/±Inf; nothing written")
    encoder = {**key["encoder"], "task": meta["task"], "step": int(meta.get("step", -1))}
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as f:
            f["summaries"] = values.astype(np.float32)
            f["summaries"].attrs["layout"] = ("(n, S, K): mean-pooled final encoder tokens, light cones in file order, "
                                              "S transverse symmetries (halotrans.skatr.data.transverse_symmetry)")
            f["params"] = theta.astype(np.float32)
            f["params"].attrs["units"] = "prior-normalised to [0, 1]"
            f["seeds"] = seeds
            f.attrs.update(key=json.dumps(key, sort_keys=True), encoder=json.dumps(encoder),
                           param_names=list(meta["param_names"]), priors=np.asarray(meta["priors"]))
    return str(path), "computed" if reason == "missing" else f"recomputed ({reason})"


def read_summaries(path: str | os.PathLike, cfg: Config) -> Summaries:
    """A summaries file with the splits of ``cfg.lightcone`` (``split``, ``split_seed``)."""
    path = Path(path)
    with open_h5(path, "summaries file") as f:
        missing = [k for k in ("summaries", "params") if k not in f] + [a for a in ("key", "encoder") if a not in f.attrs]
        if missing:
            raise DataError(f"{path}: not a summaries file (missing {missing})")
        values, theta = f["summaries"][...], f["params"][...]
        if values.ndim == 2:  # written before symmetries: one per light cone
            values = values[:, None, :]
        names, priors = [str(s) for s in f.attrs["param_names"]], np.asarray(f.attrs["priors"])
        encoder = json.loads(f.attrs["encoder"])
    splits = split_indices(len(values), cfg.lightcone.split, cfg.lightcone.split_seed)
    return Summaries(path, values, theta, splits, names, priors, encoder)
