"""SKATR's training tasks: ``jepa`` (pretraining), ``regress`` and ``npe`` (downstream on a summary).

**jepa**: self-supervised JEPA pretraining of the light-cone ViT. Each micro-batch is
``skatr.batch_size`` light cones (fresh thermal noise, scaled by the run's ``norm_stats``) plus
their multi-block tube masks (:mod:`halotrans.skatr.masks`), drawn together as index tensors.
The light cones come from the labelled training split and from the unlabelled pool
``skatr.pretrain_data`` (every light cone of that file; no parameter is read for JEPA). With
``jepa.mask_scheme: skatr`` a batch holds one (context, target) pair per target block, long and
short alternating, and the loss averages the blocks. The loss is the L1 / smooth-L1 distance between the predictor's output
and the layer-normed target-encoder tokens; after every optimizer step the target encoder takes
an in-place EMA step (momentum ``jepa.ema_start`` → ``jepa.ema_end`` over ``train.steps``).
Validation logs the loss and three collapse monitors (``metrics.csv``: ``val_std_target``,
``val_std_context``, ``val_std_pred``): the spread over all tokens of the batch of each embedding
feature, averaged over features; a value going to 0 means the embeddings collapsed.

    python -m halotrans train --config configs/skatr/pretrain.yaml

EMA and ZeRO: stages 0-2 and 3 are supported (see :mod:`halotrans.skatr.jepa`); the target
encoder is part of the module, so checkpoints, resume and ``model.pt`` include it.

**regress**: ``skatr.summary: frozen`` trains an MLP head on the cached summaries of a pretrained
encoder (``skatr.encoder_run``; computed once, see :mod:`halotrans.skatr.summaries`): seconds per run,
the amortisation SKATR is about. ``skatr.summary: scratch`` trains the ViT of the ``model``
section end to end with the head on the light cones; its pooled ViT features are then the
"regression-pretrained" summary of another run (``encoder_run`` = this run). Targets are the
prior-normalised parameters in [0, 1]; the loss is their mean squared error or, with
``skatr.loss: l1``, their mean absolute error (SKATR); validation reports it and the mean R² over
parameters (``train.keep_best`` keeps the best validation, ``train.patience`` stops early). With
``skatr.symmetries: 8`` training sees one random transverse symmetry per light cone and step and
validation averages the predictions over all 8. ``skatr.train_fraction`` trains on a nested
subset of the training split (data-efficiency curves).

    python -m halotrans train --config configs/skatr/regress.yaml --set skatr.encoder_run=runs/skatr/pretrain

**npe**: q(θ | x) is a rational-quadratic spline autoregressive flow (nflows) on the logit of the
prior-normalised parameters, conditioned on the summary: cached summaries of a frozen encoder
(``skatr.summary: frozen``) or a ViT trained jointly with the flow (``scratch``). The loss is the
negative log posterior density of the true parameters (in the normalised units); validation
reports its mean. On frozen summaries the condition is ``skatr.npe_condition``: the summary, its
leading principal components or a regression head's outputs (:mod:`halotrans.skatr.compress`). Inputs, batches and data-efficiency subsets are those of
:class:`halotrans.skatr.tasks.ParameterTask`. The flow runs in fp32 (``train.bf16`` is refused).

    python -m halotrans train --config configs/skatr/npe.yaml --set skatr.encoder_run=runs/skatr/pretrain
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch
from torch import nn

from halotrans.config import Config, ConfigError, save_config
from halotrans.io import atomic_path
from halotrans.models.heads import FlowPosterior, MeanPooledViT, RegressionHead, Regressor
from halotrans.parallel.distributed import on_rank0
from halotrans.skatr.compress import ConditionedPosterior, PCAProjection, SymmetryMean, fit_pca
from halotrans.skatr.data import (
    build_vit,
    cv_fold_ids,
    derived_seed,
    input_norm_stats,
    light_cone_shape,
    open_pool,
    open_split,
    patch_size,
    random_rows,
    random_symmetries,
    read_items,
    run_norm_stats,
    shard_batches,
    train_items,
    transverse_symmetry,
)
from halotrans.skatr.dataset import LightConeDataset
from halotrans.skatr.jepa import JEPA, ema_momentum, embedding_spread, jepa_loss
from halotrans.skatr.masks import sample_skatr_masks, sample_tube_masks
from halotrans.skatr.summaries import encoder_config, ensure_summaries, load_run, read_summaries
from halotrans.train.checkpoint import MODEL_FILE
from halotrans.train.task import Task

Batch = dict[str, torch.Tensor]

#: ``lightcone`` keys that fix what a SKATR network sees (a resumed run must keep them)
LIGHTCONE_INPUT_KEYS = ("lightcone.split", "lightcone.split_seed", "lightcone.los_multiple", "lightcone.los_fit",
                        "lightcone.noise_mk", "lightcone.noise_z_ref", "lightcone.noise_receiver_k",
                        "lightcone.noise_max_baseline_m", "skatr.noise_seed")



class JEPATask(Task):
    """JEPA pretraining on light cones (see the module docstring)."""

    name = "jepa"
    metric_names = ("loss", "std_target", "std_context", "std_pred")
    model_keys = ("model", "jepa", *LIGHTCONE_INPUT_KEYS, "skatr.pretrain_data", "skatr.pretrain_labelled")

    def __init__(self, cfg: Config):
        super().__init__(cfg)
        self.micro_batch_size = cfg.skatr.batch_size
        self.img_size: tuple[int, int, int] | None = None
        self.norm_stats: dict[str, float] | None = None

    def setup(self, run_dir: Path, resume: bool) -> None:
        self.norm_stats = run_norm_stats(self.cfg, run_dir, resume)
        self.train_set = open_split(self.cfg, "train", fixed_noise=False)
        self.val_set = open_split(self.cfg, "val", fixed_noise=True)
        self.img_size = light_cone_shape(self.train_set)
        self.grid = tuple(s // p for s, p in zip(self.img_size, patch_size(self.cfg)))
        # JEPA's training light cones: (data set, rows) pairs, the labelled split first, then the pool
        self.sources: list[tuple[LightConeDataset, np.ndarray]] = []
        if self.cfg.skatr.pretrain_labelled:
            self.sources.append((self.train_set, np.arange(len(self.train_set))))
        if self.cfg.skatr.pretrain_data:
            pool = open_pool(self.cfg)
            if light_cone_shape(pool) != self.img_size:
                raise ConfigError(f"skatr.pretrain_data {pool.path}: light cones of {list(light_cone_shape(pool))} "
                                  f"voxels, the labelled set {self.cfg.lightcone.out} has {list(self.img_size)}")
            self.sources.append((pool, np.arange(len(pool))))
        self.train_pool = np.arange(sum(len(rows) for _, rows in self.sources))
        if len(self.train_pool) == 0:
            raise ConfigError("JEPA has no training light cones: skatr.pretrain_labelled is false and "
                              "skatr.pretrain_data is empty")

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
        if j.mask_scheme == "skatr":
            blocks = sample_skatr_masks(x.shape[0], self.grid, j.mask_targets, j.long_scale, j.short_scale, j.aspect,
                                        j.target_los, rng=seed)
            return {"x": x, "context": [b.context for b in blocks], "target": [b.target for b in blocks],
                    "w": torch.ones(x.shape[0])}
        masks = sample_tube_masks(x.shape[0], self.grid, j.mask_targets, j.target_scale, j.target_los, j.aspect,
                                  j.context_scale, rng=seed)
        return {"x": x, "context": masks.context, "target": masks.target, "w": torch.ones(x.shape[0])}

    def train_batch(self, step: int, micro: int, rank: int) -> Batch:
        # three independent streams of (seed, step, micro, rank): light cones, their noise (1), masks (2)
        seed = self.cfg.train.seed
        items = random_rows(self.train_pool, self.micro_batch_size, derived_seed(seed, step, micro, rank))
        parts, start = [], 0
        for i, (ds, rows) in enumerate(self.sources):  # the pool's noise: its own stream (1, i)
            mine = items[(items >= start) & (items < start + len(rows))] - start
            start += len(rows)
            if len(mine):
                parts.append(read_items(ds, rows[mine], self.norm_stats,
                                        noise_seed=derived_seed(seed, step, micro, rank, 1, i))[0])
        return self._masked_batch(torch.cat(parts), derived_seed(seed, step, micro, rank, 2))

    def val_batches(self, rank: int, world_size: int) -> Iterable[Batch]:
        for b, (items, w) in enumerate(shard_batches(len(self.val_set), self.micro_batch_size, rank, world_size)):
            x, _ = read_items(self.val_set, items, self.norm_stats)
            batch = self._masked_batch(x, derived_seed(self.cfg.skatr.noise_seed, rank, b, 3))
            batch["w"] = w
            yield batch

    def loss(self, model: nn.Module, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """JEPA loss of the batch; sums of the loss and the collapse monitors weighted by light cones."""
        pred, target, context = model(batch["x"], batch["context"], batch["target"])
        if not isinstance(pred, (list, tuple)):  # one shared context (mask_scheme ijepa)
            pred, target, context = [pred], [target], [context]
        loss = sum(jepa_loss(p, t, self.cfg.jepa.loss) for p, t in zip(pred, target)) / len(pred)
        n = batch["w"].float().sum()

        def spread(tensors: list[torch.Tensor]) -> torch.Tensor:
            return sum(embedding_spread(t) for t in tensors) / len(tensors)

        sums = {"loss": loss.detach() * n, "std_target": spread(target) * n, "std_context": spread(context) * n,
                "std_pred": spread(pred) * n, "n": n}
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
                "priors": ds.priors.tolist(), "pretrain_data": self.cfg.skatr.pretrain_data,
                "pretrain_light_cones": int(len(self.train_pool))}



def symmetric_predict(model: nn.Module, inputs: torch.Tensor, frozen: bool, n_symmetries: int = 1) -> torch.Tensor:
    """Regression estimate (B, P) averaged over the symmetries: summaries (B, S, K) → mean over S of the
    head's output; summaries (B, K) → the head's output; light cones (B, 1, X, Y, Z) → mean over the
    first ``n_symmetries`` transverse symmetries of the light cone (:func:`transverse_symmetry`)."""
    if frozen:
        if inputs.ndim == 3:
            b, n_sym, k = inputs.shape
            return model(inputs.reshape(b * n_sym, k)).reshape(b, n_sym, -1).mean(1)
        return model(inputs)
    if n_symmetries == 1:
        return model(inputs)
    return torch.stack([model(transverse_symmetry(inputs, k)) for k in range(n_symmetries)]).mean(0)


def write_untrained_encoder(cfg: Config, run_dir: str | os.PathLike) -> Path:
    """A run directory holding ``cfg``'s JEPA model at its initialisation (seed ``train.seed``), untrained.

    Its summaries are the baseline of the linear probes and the effective rank: what a randomly
    initialised encoder of the same architecture already gives. Input scaling from the training
    split, as a trained run's. Written once (kept if ``model.pt`` exists).
    """
    run_dir = Path(run_dir)
    if (run_dir / MODEL_FILE).is_file():
        return run_dir
    ds = open_split(cfg, "train", fixed_noise=True)
    shape = light_cone_shape(ds)
    task = JEPATask(cfg)
    task.configure_from_meta({"img_size": list(shape)})
    torch.manual_seed(cfg.train.seed)
    model = task.build_model()
    meta = {"task": "jepa", "model": cfg.model.name, "in_channels": 1, "n_classes": 0, "inputs": ["brightness_temp"],
            "class_edges": [], "norm_stats": input_norm_stats(ds), "img_size": list(shape), "data": str(ds.path),
            "param_names": ds.param_names, "priors": ds.priors.tolist(), "step": 0, "untrained": True}
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(replace(cfg, train=replace(cfg.train, out_dir=str(run_dir))), run_dir / "config.yaml")
    with atomic_path(run_dir / MODEL_FILE) as tmp:
        torch.save({"state_dict": {k: v.detach().float() for k, v in model.state_dict().items()}, "meta": meta}, tmp)
    return run_dir


class ParameterTask(Task):
    """Inputs (summaries or light cones) and normalised parameters θ for ``regress`` and ``npe``.

    After ``setup``: ``n_params``, ``param_names``, ``priors``, ``summary_dim`` and, for
    ``frozen``, the summaries of each split, (n, S, K) for S = ``skatr.symmetries``; for
    ``scratch``, the light-cone splits, ``img_size`` and ``norm_stats``. A batch is
    ``{"inputs", "theta", "w"}`` (w: 1 per item, 0 for padding); validation batches of the scratch
    ViT also carry ``n_sym`` (predictions averaged over that many symmetries).

    Symmetries (``skatr.symmetries`` = 8): a frozen regression head trains on one random symmetry's
    summary per light cone and step, the scratch ViT on a randomly transformed light cone;
    validation (and test, :mod:`halotrans.skatr.eval`) average the predictions over all 8.
    """

    model_keys = ("model", *LIGHTCONE_INPUT_KEYS, "skatr.summary", "skatr.encoder_run", "skatr.encoder_weights",
                  "skatr.train_fraction", "skatr.head_hidden", "skatr.head_depth", "skatr.head_input",
                  "skatr.flow_transforms", "skatr.flow_hidden", "skatr.flow_bins", "skatr.symmetries", "skatr.loss",
                  "skatr.npe_condition", "skatr.npe_components", "skatr.compress_run", "skatr.cv_folds",
                  "skatr.cv_fold", "skatr.compress_fold_runs")

    def __init__(self, cfg: Config):
        super().__init__(cfg)
        self.micro_batch_size = cfg.skatr.batch_size
        self.frozen = cfg.skatr.summary == "frozen"
        if self.frozen and not cfg.skatr.encoder_run:
            raise ConfigError("skatr.summary = frozen needs skatr.encoder_run (a jepa run, or a scratch regress run)")
        self.n_sym = cfg.skatr.symmetries
        self.img_size: tuple[int, int, int] | None = None
        self.n_params: int | None = None
        self.summary_dim: int | None = None
        self.norm_stats: dict[str, float] | None = None
        self.encoder: dict[str, Any] = {}
        self.train_stats: torch.Tensor | None = None
        #: a precomputed flow condition per training row (npe with compress_fold_runs), else None
        self.train_condition: torch.Tensor | None = None

    def setup(self, run_dir: Path, resume: bool) -> None:
        cfg = self.cfg
        if self.frozen:
            path, status = on_rank0(lambda: ensure_summaries(cfg))
            if torch.distributed.get_rank() == 0:
                print(f"[halotrans] summaries {status}: {path}", flush=True)
            s = read_summaries(path, cfg)
            self.encoder = s.encoder
            self.split_inputs = {k: torch.from_numpy(s.values[idx]) for k, idx in s.splits.items()}
            self.split_theta = {k: torch.from_numpy(s.theta[idx]) for k, idx in s.splits.items()}
            self.param_names, self.priors = s.param_names, s.priors
            self.summary_dim = s.values.shape[2]
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
        if cfg.skatr.cv_folds:  # cross-fitting: leave fold cv_fold of the pool out
            folds = cv_fold_ids(len(self.train_pool), cfg.skatr.cv_folds, cfg.lightcone.split_seed)
            self.train_pool = self.train_pool[folds != cfg.skatr.cv_fold]
        if self.frozen:
            self.train_stats = self.split_inputs["train"][self.train_pool]  # (n, S, K)

    def configure_from_meta(self, meta: dict) -> None:
        """Sizes of a trained run (from its checkpoint meta), so that ``build_model`` needs no data."""
        self.n_params = len(meta["param_names"])
        self.summary_dim = int(meta["summary_dim"])
        self.img_size = tuple(meta["img_size"]) if meta.get("img_size") else None

    def _configure_from_data(self) -> None:
        ds = open_split(self.cfg, "all", fixed_noise=True)
        self.n_params = len(ds.param_names)
        if self.frozen:
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

    def _frozen_train_inputs(self, rows: np.ndarray, seed: int) -> torch.Tensor:
        """Summaries of training rows ``rows``: (B, S, K) (every symmetry)."""
        return self.split_inputs["train"][rows]

    def train_batch(self, step: int, micro: int, rank: int) -> Batch:
        seed = self.cfg.train.seed
        rows = random_rows(self.train_pool, self.micro_batch_size, derived_seed(seed, step, micro, rank))
        w = torch.ones(len(rows))
        if self.frozen:
            inputs = self._frozen_train_inputs(rows, derived_seed(seed, step, micro, rank, 3))
            batch = {"inputs": inputs, "theta": self.split_theta["train"][rows], "w": w}
            if self.train_condition is not None:
                batch["condition"] = self.train_condition[torch.from_numpy(rows)]
            return batch
        x, theta = read_items(self.sets["train"], rows, self.norm_stats,
                              noise_seed=derived_seed(seed, step, micro, rank, 1))
        x = random_symmetries(x, self.n_sym, derived_seed(seed, step, micro, rank, 3))
        return {"inputs": x, "theta": theta, "w": w}

    def val_batches(self, rank: int, world_size: int) -> Iterable[Batch]:
        for items, w in shard_batches(self.sizes["val"], self.micro_batch_size, rank, world_size):
            if self.frozen:
                yield {"inputs": self.split_inputs["val"][items], "theta": self.split_theta["val"][items], "w": w}
            else:
                x, theta = read_items(self.sets["val"], items, self.norm_stats)
                yield {"inputs": x, "theta": theta, "w": w, "n_sym": self.n_sym}

    def meta(self) -> dict[str, Any]:
        s = self.cfg.skatr
        return {"task": self.name, "model": self.cfg.model.name if not self.frozen else "head", "in_channels": 1,
                "n_classes": 0, "inputs": ["summary" if self.frozen else "brightness_temp"], "class_edges": [],
                "norm_stats": self.norm_stats, "img_size": list(self.img_size) if self.img_size else None,
                "summary": s.summary, "encoder": self.encoder, "summary_dim": self.summary_dim,
                "param_names": self.param_names, "priors": np.asarray(self.priors).tolist(),
                "data": str(self.cfg.lightcone.out), "train_fraction": s.train_fraction,
                "n_train": int(len(self.train_pool)), "symmetries": s.symmetries, "cv_folds": s.cv_folds,
                "cv_fold": s.cv_fold}


class RegressTask(ParameterTask):
    """MLP regression of the normalised parameters (see the module docstring)."""

    name = "regress"
    metric_names = ("loss", "r2")

    def build_model(self) -> nn.Module:
        k, p = self.dims()
        s = self.cfg.skatr
        head = RegressionHead(k, p, s.head_hidden, s.head_depth, whiten=self.frozen and s.head_input == "whiten")
        return Regressor(head, self.summary_network())

    def prepare_model(self, model: nn.Module) -> None:
        """Standardise or whiten the head's input with the training summaries (every symmetry)."""
        if self.train_stats is not None:
            model.head.norm.set_stats(self.train_stats.flatten(0, 1))

    def _frozen_train_inputs(self, rows: np.ndarray, seed: int) -> torch.Tensor:
        """One random symmetry's summary per training row: (B, K)."""
        values = self.split_inputs["train"]
        sym = np.random.default_rng(seed).integers(0, values.shape[1], len(rows))
        return values[torch.from_numpy(rows), torch.from_numpy(sym)]

    def loss(self, model: nn.Module, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Weighted mean L1 or squared error (``skatr.loss``) of the symmetry-averaged estimate; sums for R²."""
        pred = symmetric_predict(model, batch["inputs"], self.frozen, batch.get("n_sym", 1)).float()
        theta, w = batch["theta"].float(), batch["w"].float()
        sq = (pred - theta) ** 2
        per_item = ((pred - theta).abs() if self.cfg.skatr.loss == "l1" else sq).mean(1)
        loss = (per_item * w).sum() / w.sum().clamp_min(1e-12)
        sums = {"n": w.sum(), "loss_sum": (per_item * w).sum().detach()}
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
        return {"loss": sums["loss_sum"] / n, "r2": float(np.mean(r2))}


class NPETask(ParameterTask):
    """Flow posterior q(θ | summary) trained by maximum likelihood (see the module docstring).

    On frozen summaries the flow is conditioned on ``skatr.npe_condition`` (:mod:`halotrans.skatr.compress`):
    the symmetry-averaged summary, its leading principal components, or the outputs of the frozen
    regression run ``skatr.compress_run``; the compression is part of the model.
    """

    name = "npe"
    metric_names = ("loss",)

    def __init__(self, cfg: Config):
        if cfg.train.bf16:
            raise ConfigError("train.bf16: the spline flow of the npe task needs fp32 (set train.bf16=false)")
        super().__init__(cfg)
        self.condition_dim: int | None = None

    def configure_from_meta(self, meta: dict) -> None:
        super().configure_from_meta(meta)
        self.condition_dim = meta.get("condition_dim")

    def _condition_dim(self) -> int:
        k, p = self.dims()
        s = self.cfg.skatr
        return {"summary": k, "pca": s.npe_components, "regression": p}[s.npe_condition]

    def _compressor(self) -> nn.Module:
        """The compression of (B, S, K) summaries into the flow's condition (see :mod:`~halotrans.skatr.compress`),
        shapes only: :meth:`prepare_model` fills it from the training data."""
        s = self.cfg.skatr
        k, p = self.dims()
        if s.npe_condition == "summary":
            return SymmetryMean()
        if s.npe_condition == "pca":
            return SymmetryMean(PCAProjection(k, s.npe_components))
        ccfg = encoder_config(s.compress_run)  # regression: the head of a frozen-summary regress run
        if ccfg.train.task != "regress" or ccfg.skatr.summary != "frozen":
            raise ConfigError(f"skatr.compress_run {s.compress_run}: a {ccfg.train.task} run on "
                              f"{ccfg.skatr.summary} summaries, not a frozen-summary regress run")
        h = ccfg.skatr
        return SymmetryMean(Regressor(RegressionHead(k, p, h.head_hidden, h.head_depth, whiten=h.head_input == "whiten")))

    def build_model(self) -> nn.Module:
        k, p = self.dims()
        s = self.cfg.skatr
        if not self.frozen:
            return FlowPosterior(p, k, s.flow_transforms, s.flow_hidden, s.flow_bins, unit_interval=True,
                                 summary=self.summary_network())
        self.condition_dim = self._condition_dim()
        flow = FlowPosterior(p, self.condition_dim, s.flow_transforms, s.flow_hidden, s.flow_bins, unit_interval=True)
        return ConditionedPosterior(self._compressor(), flow)

    def prepare_model(self, model: nn.Module) -> None:
        """Fill the compression from the training data (PCA) or the finished regression run (its head), then
        standardise the flow's condition with the training light cones'."""
        if self.train_stats is None:
            return
        s = self.cfg.skatr
        compress = model.compress.f
        if s.npe_condition == "pca":
            fitted = fit_pca(self.train_stats.mean(1), s.npe_components)
            compress.mean.copy_(fitted.mean)
            compress.components.zero_()
            compress.components[:fitted.components.shape[0]].copy_(fitted.components)  # fewer if N - 1 < C
        elif s.npe_condition == "regression":
            head, _, meta = self._load_head("compress_run", s.compress_run)
            if meta.get("cv_folds"):
                raise ConfigError(f"skatr.compress_run {s.compress_run} left fold {meta['cv_fold']} of "
                                  f"{meta['cv_folds']} out: name the head trained on the whole training pool")
            compress.load_state_dict(head.state_dict())
            if s.compress_fold_runs:
                self.train_condition = self._out_of_fold_conditions()
        with torch.no_grad():
            if self.train_condition is not None:
                model.flow.norm.set_stats(self.train_condition[torch.from_numpy(self.train_pool)])
            else:
                model.flow.norm.set_stats(model.compress(self.train_stats))

    def _load_head(self, key: str, run: str) -> tuple[nn.Module, Config, dict]:
        """A frozen-summary regress run of this run's encoder (``skatr.<key>`` = ``run``)."""
        s = self.cfg.skatr
        head, hcfg, meta = load_run(run)
        if meta.get("task") != "regress" or meta.get("summary") != "frozen":
            raise ConfigError(f"skatr.{key} {run}: a {meta.get('task')} run on {meta.get('summary')} summaries, "
                              "not a frozen-summary regress run")
        enc = meta.get("encoder", {})
        if (enc.get("checkpoint_sha256"), enc.get("weights")) != (self.encoder.get("checkpoint_sha256"),
                                                                  self.encoder.get("weights")):
            raise ConfigError(f"skatr.{key} {run} was trained on the summaries of another "
                              f"encoder ({enc.get('weights')} weights, checkpoint "
                              f"{str(enc.get('checkpoint_sha256'))[:12]}) than this run's {s.encoder_run} "
                              f"({s.encoder_weights} weights)")
        return head, hcfg, meta

    def _out_of_fold_conditions(self) -> torch.Tensor:
        """(n_train_split, P) head outputs (averaged over the symmetries) of every training-pool light
        cone by the head of ``skatr.compress_fold_runs`` that did not train on it; NaN off the pool."""
        s = self.cfg.skatr
        k = len(s.compress_fold_runs)
        folds = cv_fold_ids(len(self.train_pool), k, self.cfg.lightcone.split_seed)
        values = self.split_inputs["train"]
        cond = torch.full((values.shape[0], self.n_params), float("nan"))
        seen: set[int] = set()
        for run in s.compress_fold_runs:
            head, hcfg, _ = self._load_head("compress_fold_runs", run)
            h = hcfg.skatr
            if h.cv_folds != k or h.cv_fold in seen or h.train_fraction != s.train_fraction:
                raise ConfigError(f"skatr.compress_fold_runs: {run} is fold {h.cv_fold} of {h.cv_folds} at "
                                  f"train_fraction {h.train_fraction}; need each fold of {k} once at "
                                  f"train_fraction {s.train_fraction}")
            seen.add(h.cv_fold)
            rows = torch.from_numpy(self.train_pool[folds == h.cv_fold])
            with torch.no_grad():
                cond[rows] = SymmetryMean(head)(values[rows].float()).float()
        return cond

    def loss(self, model: nn.Module, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Weighted mean negative log posterior density of the true parameters."""
        w = batch["w"].float()
        if "condition" in batch:  # cross-fitted training: the out-of-fold head outputs, precomputed
            nll = -model(batch["theta"].float(), batch["inputs"], condition=batch["condition"].float()).float()
        else:
            nll = -model(batch["theta"].float(), batch["inputs"]).float()
        loss = (nll * w).sum() / w.sum().clamp_min(1e-12)
        return loss, {"nll": (nll * w).sum().detach(), "n": w.sum()}

    @staticmethod
    def summarize(sums: dict[str, float]) -> dict[str, float]:
        return {"loss": sums["nll"] / max(sums["n"], 1e-12)}

    def meta(self) -> dict[str, Any]:
        return {**super().meta(), "npe_condition": self.cfg.skatr.npe_condition, "condition_dim": self.condition_dim,
                "compress_run": self.cfg.skatr.compress_run}
