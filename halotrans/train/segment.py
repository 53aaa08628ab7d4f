"""The segmentation task: box crops → per-voxel mass class, class-weighted cross-entropy.

Inputs δ and/or T, standardised with the training-set statistics; labels binned from
``/halo_mass`` with ``data.class_edges`` (class 0 = no halo). Validation tiles the validation boxes
and reports the weighted loss and the voxel accuracy.

Under sequence parallelism (``train.sp > 1``, :meth:`SegmentTask.shard_slabs`) every rank of an SP
group draws the same crops and keeps its slab along axis 0 (inputs and labels); each slab's loss
is divided by the weight of the whole crop (summed over the group), so the group's losses add up
to the crop's loss, and the validation sums of the slabs add up to the crop's.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from halotrans.config import Config
from halotrans.data.boxes import IGNORE_INDEX, BoxDataset, check_box_files
from halotrans.data.config import split_seeds
from halotrans.data.stats import class_weights, training_stats
from halotrans.io import atomic_path
from halotrans.models.registry import build_model
from halotrans.parallel.distributed import on_rank0
from halotrans.parallel.groups import SequenceParallel
from halotrans.parallel.shard import check_slab_config, slab_of
from halotrans.sims.boxio import box_path
from halotrans.train.task import Task

Batch = tuple[torch.Tensor, torch.Tensor]
NORM_FILE = "norm_stats.json"


class SegmentTask(Task):
    """Proto-halo segmentation with ``vipr``/``copra`` (or the MONAI peers) on periodic box crops."""

    name = "segment"
    metric_names = ("loss", "acc")
    model_keys = ("model", "data.inputs", "data.class_edges", "data.crop")

    def __init__(self, cfg: Config):
        super().__init__(cfg)
        self.in_channels = len(cfg.data.inputs)
        self.n_classes = cfg.data.n_classes
        self.micro_batch_size = cfg.data.batch_size
        self.sp: SequenceParallel | None = None

    def shard_slabs(self, sp: SequenceParallel) -> None:
        """Give this rank only its slab of every crop (checks that the crop splits for the model)."""
        check_slab_config(self.cfg.model, self.cfg.data.crop, sp.size)
        self.sp = sp

    def _mine(self, batch: Batch) -> Batch:
        if self.sp is None:
            return batch
        x, y = batch
        return slab_of(x, self.sp, dim=2), slab_of(y, self.sp, dim=1)

    def setup(self, run_dir: Path, resume: bool) -> None:
        """Normalisation (the run's own copy on resume), training/validation boxes, class weights."""
        d = self.cfg.data
        train_paths = [box_path(d.root, s) for s in split_seeds(d.train_seeds)]
        val_paths = [box_path(d.root, s) for s in split_seeds(d.val_seeds)]
        norm_file = run_dir / NORM_FILE

        def norm_stats() -> dict:
            check_box_files(train_paths + val_paths, d.inputs, labels=True)  # before stats.json is written
            if resume and norm_file.is_file():
                return json.loads(norm_file.read_text())
            return training_stats(d.root, split_seeds(d.train_seeds))

        self.norm_stats = on_rank0(norm_stats)
        self.train_set = BoxDataset(train_paths, d.inputs, d.class_edges, self.norm_stats, d.crop, d.augment)
        self.val_set = BoxDataset(val_paths, d.inputs, d.class_edges, self.norm_stats, d.crop, augment=False)
        self.class_counts = self.train_set.class_counts()
        self.weights = torch.tensor(class_weights(self.class_counts, d.class_weights), dtype=torch.float32)
        if torch.distributed.get_rank() == 0:
            with atomic_path(norm_file) as tmp:
                tmp.write_text(json.dumps(self.norm_stats, indent=1))

    def build_model(self) -> nn.Module:
        return build_model(self.cfg.model, self.in_channels, self.n_classes, self.cfg.data.crop)

    def train_batch(self, step: int, micro: int, rank: int) -> Batch:
        return self._mine(self.train_set.batch(self.micro_batch_size, self.cfg.train.seed, step, rank, micro))

    def val_batches(self, rank: int, world_size: int) -> Iterable[Batch]:
        if len(self.val_set) == 0:
            return []
        return map(self._mine, self.val_set.tile_batches(self.cfg.data.val_max_crops, self.micro_batch_size, rank,
                                                         world_size))

    def loss(self, model: nn.Module, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Class-weighted mean cross-entropy, and sums for validation metrics."""
        x, y = batch
        logits = model(x).float()
        w = self.weights.to(logits.device)
        loss_sum = F.cross_entropy(logits, y, weight=w, ignore_index=IGNORE_INDEX, reduction="sum")
        valid = y != IGNORE_INDEX
        weight = w[y[valid]].sum()
        correct = ((logits.argmax(1) == y) & valid).sum()
        sums = {"loss_sum": loss_sum.detach(), "weight": weight, "correct": correct, "voxels": valid.sum()}
        crop_weight = self.sp.all_reduce(weight) if self.sp else weight
        return loss_sum / crop_weight.clamp_min(1e-12), sums

    @staticmethod
    def summarize(sums: dict[str, float]) -> dict[str, float]:
        return {"loss": sums["loss_sum"] / max(sums["weight"], 1e-12), "acc": sums["correct"] / max(sums["voxels"], 1)}

    def meta(self) -> dict:
        d = self.cfg.data
        return {"task": self.name, "model": self.cfg.model.name, "in_channels": self.in_channels,
                "n_classes": self.n_classes, "inputs": list(d.inputs), "class_edges": list(d.class_edges),
                "norm_stats": self.norm_stats, "img_size": d.crop,
                "class_counts": self.class_counts.tolist(), "class_weights": self.weights.tolist()}
