"""The ``jepa`` task: self-supervised JEPA pretraining of the light-cone ViT (SKATR).

Each micro-batch is ``skatr.batch_size`` training light cones (fresh thermal noise, scaled by the
run's ``norm_stats``) plus their multi-block tube masks (:mod:`halotrans.data.masks`), drawn
together as index tensors. The loss is the L1 / smooth-L1 distance between the predictor's output
and the layer-normed target-encoder tokens; after every optimizer step the target encoder takes
an in-place EMA step (momentum ``jepa.ema_start`` → ``jepa.ema_end`` over ``train.steps``).
Validation logs the loss and three collapse monitors (``metrics.csv``: ``val_std_target``,
``val_std_context``, ``val_std_pred``): the spread over all tokens of the batch of each embedding
feature, averaged over features; a value going to 0 means the embeddings collapsed.

    python -m halotrans train --config configs/skatr/pretrain.yaml

EMA and ZeRO: stages 0-2 and 3 are supported (see :mod:`halotrans.models.jepa`); the target
encoder is part of the module, so checkpoints, resume and ``model.pt`` include it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch
from torch import nn

from halotrans.config import Config
from halotrans.data.masks import sample_tube_masks
from halotrans.models.jepa import JEPA, embedding_spread, ema_momentum, jepa_loss
from halotrans.train.skatr_data import (
    build_vit, derived_seed, light_cone_shape, open_split, patch_size, random_rows, read_items, run_norm_stats,
    shard_batches,
)

Batch = dict[str, torch.Tensor]


class JEPATask:
    """JEPA pretraining on light cones (see the module docstring)."""

    name = "jepa"
    metric_names = ("loss", "std_target", "std_context", "std_pred")

    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.micro_batch_size = cfg.skatr.batch_size
        self.img_size: tuple[int, int, int] | None = None
        self.norm_stats: dict[str, float] | None = None

    def setup(self, run_dir: Path, resume: bool) -> None:
        self.norm_stats = run_norm_stats(self.cfg, run_dir, resume)
        self.train_set = open_split(self.cfg, "train", fixed_noise=False)
        self.val_set = open_split(self.cfg, "val", fixed_noise=True)
        self.img_size = light_cone_shape(self.train_set)
        self.grid = tuple(s // p for s, p in zip(self.img_size, patch_size(self.cfg)))
        self.train_pool = np.arange(len(self.train_set))

    def configure_from_meta(self, meta: dict) -> None:
        """The light-cone shape of a trained run (checkpoint meta), so that ``build_model`` needs no data."""
        self.img_size = tuple(meta["img_size"])

    def build_model(self) -> nn.Module:
        if self.img_size is None:  # rebuilding a trained run (load_for_inference): shape from the data set
            self.img_size = light_cone_shape(open_split(self.cfg, "all", fixed_noise=True))
        j = self.cfg.jepa
        return JEPA(build_vit(self.cfg, self.img_size), j.predictor_dim, j.predictor_depth, j.predictor_heads,
                    j.predictor_mlp_dim)

    def _masked_batch(self, x: torch.Tensor, seed: int) -> Batch:
        j = self.cfg.jepa
        masks = sample_tube_masks(x.shape[0], self.grid, j.mask_targets, j.target_scale, j.target_los, j.aspect,
                                  j.context_scale, rng=seed)
        return {"x": x, "context": masks.context, "target": masks.target, "w": torch.ones(x.shape[0])}

    def train_batch(self, step: int, micro: int, rank: int) -> Batch:
        # three independent streams of (seed, step, micro, rank): light cones, their noise (1), masks (2)
        seed = self.cfg.train.seed
        rows = random_rows(self.train_pool, self.micro_batch_size, derived_seed(seed, step, micro, rank))
        x, _ = read_items(self.train_set, rows, self.norm_stats, noise_seed=derived_seed(seed, step, micro, rank, 1))
        return self._masked_batch(x, derived_seed(seed, step, micro, rank, 2))

    def val_batches(self, rank: int, world_size: int) -> Iterable[Batch]:
        for b, (items, w) in enumerate(shard_batches(len(self.val_set), self.micro_batch_size, rank, world_size)):
            x, _ = read_items(self.val_set, items, self.norm_stats)
            batch = self._masked_batch(x, derived_seed(self.cfg.skatr.noise_seed, rank, b, 3))
            batch["w"] = w
            yield batch

    def loss(self, model: nn.Module, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """JEPA loss of the batch; sums of the loss and the collapse monitors weighted by light cones."""
        pred, target, context = model(batch["x"], batch["context"], batch["target"])
        loss = jepa_loss(pred, target, self.cfg.jepa.loss)
        n = batch["w"].float().sum()
        sums = {"loss": loss.detach() * n, "std_target": embedding_spread(target) * n,
                "std_context": embedding_spread(context) * n, "std_pred": embedding_spread(pred) * n, "n": n}
        return loss, sums

    @staticmethod
    def summarize(sums: dict[str, float]) -> dict[str, float]:
        n = max(sums["n"], 1e-12)
        return {k: sums[k] / n for k in ("loss", "std_target", "std_context", "std_pred")}

    def after_step(self, model: nn.Module, step: int) -> None:
        """EMA step of the target encoder with this step's momentum."""
        j = self.cfg.jepa
        model.update_target(ema_momentum(step, self.cfg.train.steps, j.ema_start, j.ema_end))

    def meta(self) -> dict[str, Any]:
        ds = self.train_set
        return {"task": self.name, "model": self.cfg.model.name, "in_channels": 1, "n_classes": 0,
                "inputs": ["brightness_temp"], "class_edges": [], "norm_stats": self.norm_stats,
                "img_size": list(self.img_size), "data": str(ds.path), "param_names": ds.param_names,
                "priors": ds.priors.tolist()}
