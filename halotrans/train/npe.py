"""The ``npe`` task: neural posterior estimation of the light-cone parameters with a normalising flow.

q(θ | x) is a rational-quadratic spline autoregressive flow (nflows) on the logit of the
prior-normalised parameters, conditioned on the summary: cached summaries of a frozen encoder
(``skatr.summary: frozen``) or a ViT trained jointly with the flow (``scratch``). The loss is the
negative log posterior density of the true parameters (in the normalised units); validation
reports its mean. Inputs, batches and data-efficiency subsets are those of
:class:`halotrans.train.regress.ParameterTask`. The flow runs in fp32 (``train.bf16`` is refused).

    python -m halotrans train --config configs/skatr/npe.yaml --set skatr.encoder_run=runs/skatr/pretrain
"""

from __future__ import annotations

import torch
from torch import nn

from halotrans.config import Config, ConfigError
from halotrans.models.heads import FlowPosterior
from halotrans.train.regress import Batch, ParameterTask


class NPETask(ParameterTask):
    """Flow posterior q(θ | summary) trained by maximum likelihood (see the module docstring)."""

    name = "npe"
    metric_names = ("loss",)

    def __init__(self, cfg: Config):
        if cfg.train.bf16:
            raise ConfigError("train.bf16: the spline flow of the npe task needs fp32 (set train.bf16=false)")
        super().__init__(cfg)

    def build_model(self) -> nn.Module:
        k, p = self.dims()
        s = self.cfg.skatr
        flow = FlowPosterior(p, k, s.flow_transforms, s.flow_hidden, s.flow_bins, unit_interval=True,
                             summary=self.summary_network())
        if self.train_stats is not None:
            flow.norm.set_stats(self.train_stats)
        return flow

    def loss(self, model: nn.Module, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Weighted mean negative log posterior density of the true parameters."""
        w = batch["w"].float()
        nll = -model(batch["theta"].float(), batch["inputs"]).float()
        loss = (nll * w).sum() / w.sum().clamp_min(1e-12)
        return loss, {"nll": (nll * w).sum().detach(), "n": w.sum()}

    @staticmethod
    def summarize(sums: dict[str, float]) -> dict[str, float]:
        return {"loss": sums["nll"] / max(sums["n"], 1e-12)}
