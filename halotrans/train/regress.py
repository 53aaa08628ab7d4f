"""The ``regress`` task: light-cone parameters from a summary, and the data plumbing shared with ``npe``.

``skatr.summary: frozen`` trains an MLP head on the cached summaries of a pretrained encoder
(``skatr.encoder_run``; computed once, see :mod:`halotrans.train.summaries`): seconds per run,
the amortisation SKATR is about. ``skatr.summary: scratch`` trains the ViT of the ``model``
section end to end with the head on the light cones; its pooled ViT features are then the
"regression-pretrained" summary of another run (``encoder_run`` = this run). Targets are the
prior-normalised parameters in [0, 1]; the loss is their mean squared error; validation
reports it and the mean R² over parameters. ``skatr.train_fraction`` trains on a nested subset
of the training split (data-efficiency curves).

    python -m halotrans train --config configs/skatr/regress.yaml --set skatr.encoder_run=runs/skatr/pretrain
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch
from torch import nn

from halotrans.config import Config, ConfigError
from halotrans.models.heads import MeanPooledViT, RegressionHead, Regressor
from halotrans.train.skatr_data import (
    build_vit, derived_seed, light_cone_shape, open_split, random_rows, read_items, run_norm_stats, shard_batches,
    train_items,
)

Batch = dict[str, torch.Tensor]


class ParameterTask:
    """Inputs (summaries or light cones) and normalised parameters θ for ``regress`` and ``npe``.

    After ``setup``: ``n_params``, ``param_names``, ``priors``, ``summary_dim`` and, for
    ``frozen``, the summaries of each split; for ``scratch``, the light-cone splits, ``img_size``
    and ``norm_stats``. A batch is ``{"inputs", "theta", "w"}`` (w: 1 per item, 0 for padding).
    """

    name = ""
    metric_names: tuple[str, ...] = ()

    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.micro_batch_size = cfg.skatr.batch_size
        self.frozen = cfg.skatr.summary == "frozen"
        if self.frozen and not cfg.skatr.encoder_run:
            raise ConfigError("skatr.summary = frozen needs skatr.encoder_run (a jepa run, or a scratch regress run)")
        self.img_size: tuple[int, int, int] | None = None
        self.n_params: int | None = None
        self.summary_dim: int | None = None
        self.norm_stats: dict[str, float] | None = None
        self.encoder: dict[str, Any] = {}
        self.train_stats: torch.Tensor | None = None

    def setup(self, run_dir: Path, resume: bool) -> None:
        cfg = self.cfg
        if self.frozen:
            from halotrans.train.distributed import on_rank0
            from halotrans.train.summaries import ensure_summaries, read_summaries

            path, status = on_rank0(lambda: ensure_summaries(cfg))
            if torch.distributed.get_rank() == 0:
                print(f"[halotrans] summaries {status}: {path}", flush=True)
            s = read_summaries(path, cfg)
            self.encoder = s.encoder
            self.split_inputs = {k: torch.from_numpy(s.values[idx]) for k, idx in s.splits.items()}
            self.split_theta = {k: torch.from_numpy(s.theta[idx]) for k, idx in s.splits.items()}
            self.param_names, self.priors = s.param_names, s.priors
            self.summary_dim = s.values.shape[1]
            self.sizes = {k: len(idx) for k, idx in s.splits.items()}
        else:
            self.norm_stats = run_norm_stats(cfg, run_dir, resume)
            self.sets = {k: open_split(cfg, k, fixed_noise=k != "train") for k in ("train", "val")}
            self.img_size = light_cone_shape(self.sets["train"])
            self.param_names, self.priors = self.sets["train"].param_names, self.sets["train"].priors
            self.summary_dim = cfg.model.hidden_size
            self.sizes = {k: len(ds) for k, ds in self.sets.items()}
        if self.sizes["train"] == 0:
            raise ConfigError(f"{cfg.lightcone.out}: the training split is empty (lightcone.split)")
        self.n_params = len(self.param_names)
        self.train_pool = train_items(self.sizes["train"], cfg.skatr.train_fraction, cfg.lightcone.split_seed)
        if self.frozen:
            self.train_stats = self.split_inputs["train"][self.train_pool]

    def configure_from_meta(self, meta: dict) -> None:
        """Sizes of a trained run (from its checkpoint meta), so that ``build_model`` needs no data."""
        self.n_params = len(meta["param_names"])
        self.summary_dim = int(meta["summary_dim"])
        self.img_size = tuple(meta["img_size"]) if meta.get("img_size") else None

    def _configure_from_data(self) -> None:
        ds = open_split(self.cfg, "all", fixed_noise=True)
        self.n_params = len(ds.param_names)
        if self.frozen:
            from halotrans.train.summaries import encoder_config

            self.summary_dim = encoder_config(self.cfg.skatr.encoder_run).model.hidden_size
        else:
            self.summary_dim = self.cfg.model.hidden_size
            self.img_size = light_cone_shape(ds)

    def summary_network(self) -> nn.Module | None:
        """The end-to-end ViT summary (``scratch``), or None (inputs are cached summaries)."""
        if self.frozen:
            return None
        if self.n_params is None or self.img_size is None:
            self._configure_from_data()
        return MeanPooledViT(build_vit(self.cfg, self.img_size))

    def dims(self) -> tuple[int, int]:
        """(summary features K, parameters P), from setup, a checkpoint's meta or the data set."""
        if self.n_params is None:
            self._configure_from_data()
        return self.summary_dim, self.n_params

    def train_batch(self, step: int, micro: int, rank: int) -> Batch:
        seed = self.cfg.train.seed
        rows = random_rows(self.train_pool, self.micro_batch_size, derived_seed(seed, step, micro, rank))
        w = torch.ones(len(rows))
        if self.frozen:
            return {"inputs": self.split_inputs["train"][rows], "theta": self.split_theta["train"][rows], "w": w}
        x, theta = read_items(self.sets["train"], rows, self.norm_stats,
                              noise_seed=derived_seed(seed, step, micro, rank, 1))
        return {"inputs": x, "theta": theta, "w": w}

    def val_batches(self, rank: int, world_size: int) -> Iterable[Batch]:
        for items, w in shard_batches(self.sizes["val"], self.micro_batch_size, rank, world_size):
            if self.frozen:
                yield {"inputs": self.split_inputs["val"][items], "theta": self.split_theta["val"][items], "w": w}
            else:
                x, theta = read_items(self.sets["val"], items, self.norm_stats)
                yield {"inputs": x, "theta": theta, "w": w}

    def after_step(self, model: nn.Module, step: int) -> None:
        """Nothing after an optimizer step."""

    def meta(self) -> dict[str, Any]:
        s = self.cfg.skatr
        return {"task": self.name, "model": self.cfg.model.name if not self.frozen else "head", "in_channels": 1,
                "n_classes": 0, "inputs": ["summary" if self.frozen else "brightness_temp"], "class_edges": [],
                "norm_stats": self.norm_stats, "img_size": list(self.img_size) if self.img_size else None,
                "summary": s.summary, "encoder": self.encoder, "summary_dim": self.summary_dim,
                "param_names": self.param_names, "priors": np.asarray(self.priors).tolist(),
                "data": str(self.cfg.lightcone.out), "train_fraction": s.train_fraction,
                "n_train": int(len(self.train_pool))}


class RegressTask(ParameterTask):
    """MLP regression of the normalised parameters (see the module docstring)."""

    name = "regress"
    metric_names = ("loss", "r2")

    def build_model(self) -> nn.Module:
        k, p = self.dims()
        head = RegressionHead(k, p, self.cfg.skatr.head_hidden, self.cfg.skatr.head_depth)
        if self.train_stats is not None:
            head.norm.set_stats(self.train_stats)
        return Regressor(head, self.summary_network())

    def loss(self, model: nn.Module, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Weighted mean squared error; per-parameter sums for R²."""
        pred = model(batch["inputs"]).float()
        theta, w = batch["theta"].float(), batch["w"].float()
        sq = (pred - theta) ** 2
        loss = (sq.mean(1) * w).sum() / w.sum().clamp_min(1e-12)
        sums = {"n": w.sum()}
        for i in range(theta.shape[1]):
            sums[f"sse_{i}"] = (sq[:, i] * w).sum().detach()
            sums[f"sy_{i}"] = (theta[:, i] * w).sum()
            sums[f"syy_{i}"] = (theta[:, i] ** 2 * w).sum()
        return loss, sums

    @staticmethod
    def summarize(sums: dict[str, float]) -> dict[str, float]:
        n = max(sums["n"], 1e-12)
        p = sum(k.startswith("sse_") for k in sums)
        sse = [sums[f"sse_{i}"] for i in range(p)]
        sst = [sums[f"syy_{i}"] - sums[f"sy_{i}"] ** 2 / n for i in range(p)]
        r2 = [1.0 - e / t if t > 0 else float("nan") for e, t in zip(sse, sst)]
        return {"loss": sum(sse) / (n * p), "r2": float(np.mean(r2))}
