"""What an NPE flow is conditioned on: a compression of the frozen summaries, saved inside the model.

A flow conditioned on all K = 144 summary features of a few hundred light cones overfits
(issue 16: its posterior means reached R² 0.12 on ζ where the regression head reached 0.60).
These modules map summaries (B, S, K) of S transverse symmetries (or (B, K)) to a short
condition (B, D), averaging over the symmetries:

* :class:`SymmetryMean` of the identity: the summary itself (D = K);
* :class:`PCAProjection`: the leading principal components of the training summaries (D = C);
* a frozen :class:`~halotrans.models.heads.RegressionHead` of a finished frozen-summary regression
  run: its P outputs in [0, 1] (D = P), the regression estimate itself.

:class:`ConditionedPosterior` puts one in front of a :class:`~halotrans.models.heads.FlowPosterior`;
its buffers and the frozen head are part of the npe model's weights, so evaluating the run
applies exactly the compression it was trained with.

    post = ConditionedPosterior(SymmetryMean(fit_pca(train_summaries, 8)), FlowPosterior(5, 8))
    log_q = post(theta, summaries)   # summaries (B, 8, 144) -> condition (B, 8)
"""

from __future__ import annotations

import torch
from torch import nn

from halotrans.models.heads import FlowPosterior


class SymmetryMean(nn.Module):
    """``f`` applied to each symmetry's summary and averaged: (B, S, K) → (B, D); (B, K) is S = 1."""

    def __init__(self, f: nn.Module | None = None):
        super().__init__()
        self.f = f if f is not None else nn.Identity()

    def forward(self, s: torch.Tensor) -> torch.Tensor:
        if s.ndim == 2:
            return self.f(s)
        b, n_sym, k = s.shape
        return self.f(s.reshape(b * n_sym, k)).reshape(b, n_sym, -1).mean(1)


class PCAProjection(nn.Module):
    """(x − mean) projected on ``components`` (C, K): the leading principal components; buffers only."""

    def __init__(self, in_features: int, n_components: int):
        super().__init__()
        self.register_buffer("mean", torch.zeros(in_features))
        self.register_buffer("components", torch.zeros(n_components, in_features))
        self.out_features = n_components

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) @ self.components.T


def fit_pca(x: torch.Tensor, n_components: int) -> PCAProjection:
    """PCA of samples ``x`` (N, K) (float64 SVD); at most min(N − 1, K) components are kept."""
    x64 = x.double()
    mean = x64.mean(0)
    _, _, vh = torch.linalg.svd(x64 - mean, full_matrices=False)
    c = max(1, min(n_components, x.shape[1], max(1, x.shape[0] - 1)))
    pca = PCAProjection(x.shape[1], c)
    pca.mean.copy_(mean.float())
    pca.components.copy_(vh[:c].float())
    return pca


def frozen(module: nn.Module) -> nn.Module:
    """``module`` with gradients off (its weights are saved with the model but never trained)."""
    return module.requires_grad_(False).eval()


class ConditionedPosterior(nn.Module):
    """``flow(θ | compress(inputs))``: the interface of :class:`FlowPosterior` on raw summaries."""

    def __init__(self, compress: nn.Module, flow: FlowPosterior):
        super().__init__()
        self.compress = frozen(compress)
        self.flow = flow

    def train(self, mode: bool = True) -> "ConditionedPosterior":
        super().train(mode)
        self.compress.eval()  # a frozen compression never switches to training behaviour
        return self

    def forward(self, theta: torch.Tensor, inputs: torch.Tensor, condition: torch.Tensor | None = None) -> torch.Tensor:
        """log q(θ | compress(inputs)), or given the ``condition`` itself (cross-fitted training)."""
        return self.flow(theta, self.compress(inputs) if condition is None else condition)

    @torch.no_grad()
    def sample_and_log_prob(self, n: int, inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.flow.sample_and_log_prob(n, self.compress(inputs))

    @torch.no_grad()
    def log_prob_of(self, theta: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
        return self.flow.log_prob_of(theta, self.compress(inputs))
