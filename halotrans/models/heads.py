"""SKATR heads on a summary: the mean-pooled ViT summary, an MLP regressor and a normalising-flow posterior.

A summary network maps a light cone (B, 1, X, Y, Z) to (B, K) features. The heads take either
light cones (with a summary network inside, trained end to end) or precomputed summaries of a
frozen encoder (``summary=None``); parameters θ are the prior-normalised ones in [0, 1]^P.

    reg = Regressor(RegressionHead(144, 6))                       # on cached summaries
    reg = Regressor(RegressionHead(144, 6), MeanPooledViT(vit))    # ViT trained from scratch
    npe = FlowPosterior(6, 144)                                    # q(θ | summary)
    log_q = npe(theta, s)            # (B,) log density in the normalised units
    samples = npe.sample(1000, s)    # (B, 1000, 6)
"""

from __future__ import annotations

import torch
from nflows.distributions.normal import StandardNormal
from nflows.flows.base import Flow
from nflows.transforms import CompositeTransform, Logit, ReversePermutation
from nflows.transforms.autoregressive import MaskedPiecewiseRationalQuadraticAutoregressiveTransform
from torch import nn

from halotrans.models.vit import ViT3D


class MeanPooledViT(nn.Module):
    """Summary network: the ViT's final tokens averaged over the patch grid, (B, C, X, Y, Z) → (B, K)."""

    def __init__(self, vit: ViT3D):
        super().__init__()
        self.vit = vit
        self.out_features = vit.hidden_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens, _ = self.vit(x)
        return tokens.mean(dim=1)


class Standardize(nn.Module):
    """(x − mean) / std per feature; the statistics are buffers saved with the model (defaults 0 and 1)."""

    def __init__(self, features: int):
        super().__init__()
        self.register_buffer("mean", torch.zeros(features))
        self.register_buffer("std", torch.ones(features))

    def set_stats(self, x: torch.Tensor) -> None:
        """Take the statistics from samples ``x`` (N, features)."""
        self.mean.copy_(x.mean(0))
        self.std.copy_(x.std(0).clamp_min(1e-6) if x.shape[0] > 1 else torch.ones_like(self.std))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class Whiten(nn.Module):
    """PCA whitening ``(x − mean) @ transform``, ``transform = V (Λ + floor·λ_max)^−½`` from the
    covariance's eigenvectors V and eigenvalues Λ; buffers saved with the model (identity by default).

    Frozen JEPA summaries are strongly anisotropic (in the SKATR reference the standardised
    covariance's eigenvalues span ~30 to ~1e-6), which leaves gradient descent blind to the
    low-variance directions a least-squares fit uses; whitening equalises them. A direction of
    variance λ leaves with variance λ / (λ + floor·λ_max): 1 well above the floor, shrunk below it,
    so that directions of numerical noise are not blown up. It pays when the training samples far
    outnumber the features (the SKATR reference: 600 light cones × 8 symmetries, 144 features); with
    fewer samples than features it removes gradient descent's bias towards the leading directions
    and overfits sooner than per-feature standardisation.
    """

    def __init__(self, features: int, floor: float = 1e-2):
        super().__init__()
        self.floor = floor
        self.register_buffer("mean", torch.zeros(features))
        self.register_buffer("transform", torch.eye(features))

    def set_stats(self, x: torch.Tensor) -> None:
        """Take the statistics from samples ``x`` (N, features), N >= 2."""
        if x.shape[0] < 2 or not torch.isfinite(x).all():
            raise ValueError(f"whitening needs >= 2 finite samples, got {tuple(x.shape)} "
                             f"({int((~torch.isfinite(x)).sum())} non-finite values)")
        x64 = x.double()
        mean = x64.mean(0)
        lam, vec = torch.linalg.eigh(torch.cov((x64 - mean).T))
        lam = lam.clamp_min(0)
        scale = lam + self.floor * lam.max()
        self.mean.copy_(mean)
        self.transform.copy_(vec / scale.sqrt() if float(lam.max()) > 0 else torch.eye(len(mean)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) @ self.transform


def mlp(in_features: int, out_features: int, hidden: int, depth: int) -> nn.Sequential:
    """``depth`` hidden Linear+GELU layers of ``hidden`` features, then a Linear to ``out_features``."""
    layers: list[nn.Module] = []
    width = in_features
    for _ in range(depth):
        layers += [nn.Linear(width, hidden), nn.GELU()]
        width = hidden
    return nn.Sequential(*layers, nn.Linear(width, out_features))


class RegressionHead(nn.Module):
    """Standardise (or, with ``whiten``, PCA-whiten: :class:`Whiten`) the summary, MLP, sigmoid:
    (B, K) → (B, P) parameters in [0, 1] (prior-normalised)."""

    def __init__(self, in_features: int, n_params: int, hidden: int = 256, depth: int = 2, whiten: bool = False):
        super().__init__()
        self.norm = Whiten(in_features) if whiten else Standardize(in_features)
        self.mlp = mlp(in_features, n_params, hidden, depth)

    def forward(self, s: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.mlp(self.norm(s)))


class Regressor(nn.Module):
    """``head(summary(x))``, or ``head(x)`` when ``x`` already are summaries (``summary=None``)."""

    def __init__(self, head: RegressionHead, summary: nn.Module | None = None):
        super().__init__()
        self.head = head
        self.summary = summary

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.head(self.summary(inputs) if self.summary is not None else inputs)


class FlowPosterior(nn.Module):
    """Neural posterior estimate q(θ | x): rational-quadratic spline autoregressive flow (nflows).

    Args:
        n_params: P (>= 2). context_features: K of the summary.
        transforms: autoregressive spline layers (reversed order between them), each a MADE of
            ``hidden`` features and two residual blocks giving ``bins`` spline bins per parameter,
            linear tails beyond ±``tail_bound``.
        unit_interval: θ lives in (0, 1)^P (prior-normalised uniform priors): the flow models
            logit θ, so every sample respects the prior bounds; False: θ in R^P.
        summary: a summary network run on the inputs first (None: inputs are summaries).

    The context is standardised (statistics as buffers, see :class:`Standardize`) and embedded by
    an MLP trained with the flow. ``forward(theta, inputs)`` is the log density (B,).
    """

    def __init__(self, n_params: int, context_features: int, transforms: int = 4, hidden: int = 64, bins: int = 8,
                 unit_interval: bool = True, summary: nn.Module | None = None, tail_bound: float = 6.0):
        super().__init__()
        if n_params < 2:
            raise ValueError(f"the autoregressive flow needs at least 2 parameters, got {n_params}")
        self.summary = summary
        self.norm = Standardize(context_features)
        layers: list[nn.Module] = [Logit()] if unit_interval else []
        for _ in range(transforms):
            layers += [MaskedPiecewiseRationalQuadraticAutoregressiveTransform(
                n_params, hidden, context_features=hidden, num_bins=bins, tails="linear", tail_bound=tail_bound,
                num_blocks=2), ReversePermutation(n_params)]
        embed = mlp(context_features, hidden, hidden, 1)
        self.flow = Flow(CompositeTransform(layers), StandardNormal([n_params]), embedding_net=embed)

    def context(self, inputs: torch.Tensor) -> torch.Tensor:
        """Standardised summary (B, K) of light cones or summaries ``inputs``."""
        return self.norm(self.summary(inputs) if self.summary is not None else inputs)

    def forward(self, theta: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
        return self.flow.log_prob(theta, context=self.context(inputs))

    @torch.no_grad()
    def sample_and_log_prob(self, n: int, inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``n`` posterior samples per input, (B, n, P), and their log densities (B, n)."""
        return self.flow.sample_and_log_prob(n, context=self.context(inputs))

    @torch.no_grad()
    def log_prob_of(self, theta: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
        """log q(θ | x) (B,) without gradients."""
        return self.flow.log_prob(theta, context=self.context(inputs))
