"""JEPA (joint-embedding predictive architecture) on light cones: encoders, predictor, target EMA.

The context encoder (the shared :class:`~halotrans.models.vit.ViT3D`) sees only the context tokens
of each light cone; a narrow transformer predictor gets those embeddings plus one mask token per
target position (with its Fourier position features) and predicts the target encoder's embeddings
there. The target encoder is a copy of the context encoder that receives no gradient: after every
optimizer step it moves towards the context encoder by an exponential moving average (EMA),
updated IN PLACE (:func:`ema_update`; the SKATR reference code rebound a local name, so its target
never moved). Targets are layer-normed before the L1 / smooth-L1 loss (:func:`jepa_loss`).

    jepa = JEPA(ViT3D(1, (28, 28, 470), (4, 4, 10), 144, 4, 4, 288, pos_embed="fourier"))
    pred, target, context = jepa(x, masks.context, masks.target)
    loss = jepa_loss(pred, target)
    ...optimizer step...
    jepa.update_target(ema_momentum(step, total_steps, 0.996, 1.0))

EMA and parallelism: ZeRO stages 0-2 keep every parameter whole on every rank, and every rank
applies the same update to the same weights, so the target encoders stay identical. Under ZeRO-3
each rank holds a partition (``ds_tensor``) of each parameter; the target and context encoders
have the same shapes and hence the same partitioning, so the same elementwise update is applied
to the local partitions. Under bf16 the module's weights are bfloat16, too coarse for an EMA
step of 0.4 %: the update then runs on an fp32 shadow copy of the target weights (started from
the module's weights, e.g. again after a resume) and writes the rounded result back.
"""

from __future__ import annotations

import copy
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from halotrans.models.vit import Block, ViT3D, fourier_position_embedding, init_weights


def ema_momentum(step: int, total_steps: int, start: float = 0.996, end: float = 1.0) -> float:
    """Momentum of the EMA update after optimizer step ``step`` (0-based): linear from ``start`` to ``end``."""
    return start + (end - start) * min(1.0, step / max(1, total_steps - 1))


def _local(p: torch.Tensor) -> torch.Tensor:
    """The part of a parameter this rank holds: the ZeRO-3 partition, or the whole tensor."""
    return p.ds_tensor if hasattr(p, "ds_tensor") else p.data


@torch.no_grad()
def ema_update(target: Sequence[torch.Tensor], online: Sequence[torch.Tensor], momentum: float,
               shadow: Sequence[torch.Tensor] | None = None) -> None:
    """In place: target ← momentum · target + (1 − momentum) · online, for every pair of tensors.

    With ``shadow`` (fp32 copies of ``target``), the average is kept in ``shadow`` and copied
    (rounded) into ``target``: for low-precision weights.
    """
    if len(target) != len(online):
        raise ValueError(f"EMA needs as many target as online tensors, got {len(target)} and {len(online)}")
    acc = list(shadow) if shadow is not None else list(target)
    src = [o if o.dtype == a.dtype else o.to(a.dtype) for o, a in zip(online, acc)]
    torch._foreach_lerp_(acc, src, 1.0 - momentum)  # acc + (1 - m)(src - acc): one pass per tensor
    if shadow is not None:
        torch._foreach_copy_(list(target), acc)


class JEPAPredictor(nn.Module):
    """Narrow transformer: context embeddings + mask tokens at the target positions → target embeddings.

    Args:
        grid_size: the encoder's patch grid (g0, g1, g2). encoder_dim: its token features K.
        dim, depth, num_heads, mlp_dim: the predictor's own width, blocks, heads and MLP features.

    ``forward(context (B, Nc, K), context_idx (B, Nc), target_idx (B, Nt)) → (B, Nt, K)``.
    """

    def __init__(self, grid_size: Sequence[int], encoder_dim: int, dim: int = 48, depth: int = 4,
                 num_heads: int = 4, mlp_dim: int = 96):
        super().__init__()
        self.embed = nn.Linear(encoder_dim, dim)
        self.mask_token = nn.Parameter(torch.zeros(dim))
        self.register_buffer("pos_embed", fourier_position_embedding(grid_size, dim))
        self.blocks = nn.ModuleList(Block(dim, num_heads, mlp_dim) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.proj = nn.Linear(dim, encoder_dim)
        self.apply(init_weights)
        nn.init.trunc_normal_(self.mask_token, std=0.02)

    def forward(self, context: torch.Tensor, context_idx: torch.Tensor, target_idx: torch.Tensor) -> torch.Tensor:
        n_context = context.shape[1]
        tokens = torch.cat([self.embed(context) + self.pos_embed[context_idx],
                            self.mask_token + self.pos_embed[target_idx]], dim=1)
        for block in self.blocks:
            tokens = block(tokens)
        return self.proj(self.norm(tokens[:, n_context:]))


class JEPA(nn.Module):
    """Context encoder, EMA target encoder and predictor of JEPA pretraining.

    Args:
        encoder: the context encoder (a :class:`ViT3D`); the target encoder starts as its copy.
        predictor_dim, predictor_depth, predictor_heads, predictor_mlp_dim: the predictor.

    ``forward(x, context_idx, target_idx)`` → ``(pred, target, context)``: predicted (B, Nt, K) and
    target-encoder (B, Nt, K, no gradient, not normalised) embeddings at the target tokens, and
    the context encoder's output (B, Nc, K).

    SKATR's scheme (each target block with its own context, :func:`~halotrans.skatr.masks.sample_skatr_masks`):
    ``context_idx`` and ``target_idx`` are equally long lists, one pair per block; the target encoder
    runs once on the whole light cone, the context encoder and the predictor once per pair, and
    ``pred``, ``target``, ``context`` are lists of the per-pair tensors.
    """

    def __init__(self, encoder: ViT3D, predictor_dim: int = 48, predictor_depth: int = 4, predictor_heads: int = 4,
                 predictor_mlp_dim: int = 96):
        super().__init__()
        self.encoder = encoder
        self.target_encoder = copy.deepcopy(encoder).requires_grad_(False)
        self.predictor = JEPAPredictor(encoder.grid_size, encoder.hidden_size, predictor_dim, predictor_depth,
                                       predictor_heads, predictor_mlp_dim)
        self._shadow: list[torch.Tensor] | None = None

    def forward(self, x: torch.Tensor, context_idx: torch.Tensor,
                target_idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        pairs = isinstance(context_idx, (list, tuple))
        contexts, targets = (list(context_idx), list(target_idx)) if pairs else ([context_idx], [target_idx])
        if len(contexts) != len(targets) or any(c.shape[0] != x.shape[0] or t.shape[0] != x.shape[0]
                                                for c, t in zip(contexts, targets)):
            raise ValueError(f"masks for batches {[c.shape[0] for c in contexts]}/{[t.shape[0] for t in targets]}, "
                             f"inputs {x.shape[0]}")
        with torch.no_grad():
            tokens, _ = self.target_encoder(x)
        out_pred, out_target, out_context = [], [], []
        for c_idx, t_idx in zip(contexts, targets):
            context, _ = self.encoder(x, keep_idx=c_idx)
            out_pred.append(self.predictor(context, c_idx, t_idx))
            out_target.append(tokens.gather(1, t_idx[..., None].expand(-1, -1, tokens.shape[-1])))
            out_context.append(context)
        if pairs:
            return out_pred, out_target, out_context
        return out_pred[0], out_target[0], out_context[0]

    def update_target(self, momentum: float) -> None:
        """EMA step of the target encoder towards the context encoder (in place, see the module doc)."""
        target = [_local(p) for p in self.target_encoder.parameters()]
        online = [_local(p) for p in self.encoder.parameters()]
        if target[0].dtype == torch.float32:
            ema_update(target, online, momentum)
            return
        if self._shadow is None or len(self._shadow) != len(target):
            self._shadow = [t.float() for t in target]
        ema_update(target, online, momentum, self._shadow)


def jepa_loss(pred: torch.Tensor, target: torch.Tensor, kind: str = "l1") -> torch.Tensor:
    """Mean L1 (``l1``) or smooth-L1 (``smooth_l1``, β = 1) distance of ``pred`` to the layer-normed ``target``."""
    target = F.layer_norm(target.float(), target.shape[-1:])
    if kind == "l1":
        return F.l1_loss(pred.float(), target)
    if kind == "smooth_l1":
        return F.smooth_l1_loss(pred.float(), target)
    raise ValueError(f"JEPA loss must be 'l1' or 'smooth_l1', got {kind!r}")


def embedding_spread(tokens: torch.Tensor) -> torch.Tensor:
    """Collapse monitor: std over all tokens of the batch (B·N) of each feature, averaged over features."""
    return tokens.detach().float().flatten(0, -2).std(dim=0).mean()
