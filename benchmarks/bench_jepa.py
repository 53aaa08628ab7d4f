"""JEPA pretraining step of the SKATR micro ViT: ours vs a re-implementation of the reference step.

Model (both sides, identical weights): ViT dim 144, depth 4, 4 heads, MLP 288, patches 4×4×10,
Fourier positions; predictor dim 48, depth 4; light cones 28×28×470 (7×7×47 = 2303 tokens;
quick: 28×28×200, 980 tokens), batch 4, AdamW. Inputs are random fields (data loading excluded).

* ours: multi-block tube masks sampled for the whole batch as index tensors
  (:func:`halotrans.skatr.masks.sample_tube_masks`: four tube targets, one context), one context-
  encoder pass, one target-encoder pass, SDPA attention, in-place ``_foreach_lerp_`` EMA; bf16 autocast
  on CUDA, fp32 on CPU.
* peer "SKATR reference step": a straightforward re-implementation of heidelberg-hepml/skatr's
  JEPA step, as it runs: masks built per light cone in Python (a dense grid per block, then
  ``nonzero``), four target groups alternating long (0.6-0.8 of the sky) and short (0.1-0.2)
  tubes, each with its own context (the complement), so the context encoder, the predictor and
  the target encoder run once per group; explicit softmax(QKᵀ)V attention; eager fp32; EMA as a
  Python loop of out-of-place updates (here correct: the reference's rebinding never updated).
* peer "same algorithm, naive": our masks, one context, one target pass, but explicit attention,
  per-light-cone mask loop and the Python-loop EMA: how much of the gain is implementation alone.

Rows: steps/s of each (median of 3 steps after a warm-up; quick: 2), and two micro-figures (mask
sets per second, EMA updates per second; fastest of 50 / 200 calls).
"""

from __future__ import annotations

import math
import statistics
import time
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from halotrans.benchmark import row
from halotrans.models.vit import ViT3D
from halotrans.skatr.jepa import JEPA, jepa_loss
from halotrans.skatr.masks import sample_tube_masks

PATCH = (4, 4, 10)
BATCH = 4


class NaiveAttention(nn.Module):
    """softmax(q kᵀ / √d) v with the attention matrix materialised: q, k, v [b, s, h, d] → [b, s, h, d]."""

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))
        attn = (q @ k.transpose(-2, -1)) * q.shape[-1] ** -0.5
        return (attn.softmax(dim=-1) @ v).transpose(1, 2)


def skatr_micro(img_size: tuple[int, int, int], naive: bool, seed: int = 0) -> JEPA:
    torch.manual_seed(seed)
    model = JEPA(ViT3D(1, img_size, PATCH, 144, 4, 4, 288, pos_embed="fourier"), 48, 4, 4, 96)
    if naive:
        for module in model.modules():
            if hasattr(module, "core"):
                module.core = NaiveAttention()
    return model


# --- the reference's masks: per light cone, per block, in Python ---------------------------------

def _reference_block_size(grid, spatial_frac, generator: torch.Generator) -> tuple[int, int, int]:
    frac = spatial_frac[0] + (spatial_frac[1] - spatial_frac[0]) * float(torch.rand((), generator=generator))
    while True:
        aspect = 0.75 + 0.75 * float(torch.rand((), generator=generator))
        h, w = math.sqrt(frac * aspect), math.sqrt(frac / aspect)
        if h <= 1 and w <= 1:
            break
    return max(1, round(h * grid[0])), max(1, round(w * grid[1])), grid[2]


def reference_masks(batch: int, grid, generator: torch.Generator) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Four groups (long, short, long, short): (target (B, n_t), context (B, n_c)) each, built per light cone."""
    sizes = [_reference_block_size(grid, (0.6, 0.8) if i % 2 == 0 else (0.1, 0.2), generator) for i in range(4)]
    groups = []
    for h, w, d in sizes:
        targets, contexts = [], []
        for _ in range(batch):
            top = int(torch.randint(0, grid[0] - h + 1, (1,), generator=generator))
            left = int(torch.randint(0, grid[1] - w + 1, (1,), generator=generator))
            mask = torch.zeros(grid, dtype=torch.int64)
            mask[top:top + h, left:left + w, :d] = 1
            targets.append(torch.nonzero(mask.flatten()).squeeze(1))
            contexts.append(torch.nonzero((1 - mask).flatten()).squeeze(1))
        groups.append((torch.stack(targets), torch.stack(contexts)))
    return groups


def python_loop_ema(target: nn.Module, online: nn.Module, momentum: float) -> None:
    for pt, po in zip(target.parameters(), online.parameters()):
        pt.data = momentum * pt.data + (1.0 - momentum) * po.data


# --- the steps ---------------------------------------------------------------------------------

def our_step(model: JEPA, opt: torch.optim.Optimizer, x: torch.Tensor, rng: np.random.Generator,
             autocast: bool) -> None:
    masks = sample_tube_masks(x.shape[0], model.encoder.grid_size, 4, (0.15, 0.2), rng=rng)
    ctx, tgt = masks.context.to(x.device), masks.target.to(x.device)
    with torch.autocast("cuda", torch.bfloat16, enabled=autocast):
        pred, target, _ = model(x, ctx, tgt)
    loss = jepa_loss(pred, target)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    model.update_target(0.996)


def reference_step(model: JEPA, opt: torch.optim.Optimizer, x: torch.Tensor, generator: torch.Generator) -> None:
    loss = 0.0
    for tgt_idx, ctx_idx in reference_masks(x.shape[0], model.encoder.grid_size, generator):
        tgt_idx, ctx_idx = tgt_idx.to(x.device), ctx_idx.to(x.device)
        context, _ = model.encoder(x, keep_idx=ctx_idx)
        pred = model.predictor(context, ctx_idx, tgt_idx)
        with torch.no_grad():
            tokens, _ = model.target_encoder(x)
            target = tokens.gather(1, tgt_idx[..., None].expand(-1, -1, tokens.shape[-1]))
        loss = loss + F.l1_loss(pred, target)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    python_loop_ema(model.target_encoder, model.encoder, 0.996)


def naive_same_algorithm_step(model: JEPA, opt: torch.optim.Optimizer, x: torch.Tensor,
                              rng: np.random.Generator) -> None:
    grid = model.encoder.grid_size
    parts = [sample_tube_masks(1, grid, 4, (0.15, 0.2), rng=rng) for _ in range(x.shape[0])]
    n_ctx = min(p.context.shape[1] for p in parts)
    n_tgt = min(p.target.shape[1] for p in parts)
    ctx = torch.cat([p.context[:, :n_ctx] for p in parts]).to(x.device)
    tgt = torch.cat([p.target[:, :n_tgt] for p in parts]).to(x.device)
    pred, target, _ = model(x, ctx, tgt)
    loss = jepa_loss(pred, target)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    python_loop_ema(model.target_encoder, model.encoder, 0.996)


def _rate(fn: Callable[[], None], repeats: int, sync: Callable[[], None], best: bool = False) -> float:
    """Calls per second after one warm-up call: from the median of ``repeats`` timed calls, or from
    the fastest (``best``: for millisecond micro-figures, which a busy machine's scheduler can
    stretch 100-fold at random)."""
    fn()
    sync()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return 1.0 / (min(times) if best else statistics.median(times))


def run(quick: bool) -> list[dict]:
    cuda = torch.cuda.is_available()
    dev = torch.device("cuda" if cuda else "cpu")
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    img = (28, 28, 200) if quick else (28, 28, 470)
    repeats = 2 if quick else 3
    grid = tuple(s // p for s, p in zip(img, PATCH))
    x = torch.randn(BATCH, 1, *img, device=dev)
    where = f"{'CUDA bf16 autocast' if cuda else 'CPU fp32'}; light cones {img[0]}x{img[1]}x{img[2]} " \
            f"({math.prod(grid)} tokens), batch {BATCH}"

    ours = skatr_micro(img, naive=False).to(dev)
    opt = torch.optim.AdamW([p for p in ours.parameters() if p.requires_grad], lr=1e-4)
    rng = np.random.default_rng(0)
    ours_rate = _rate(lambda: our_step(ours, opt, x, rng, cuda), repeats, sync)
    del ours, opt

    ref = skatr_micro(img, naive=True).to(dev)
    opt = torch.optim.AdamW([p for p in ref.parameters() if p.requires_grad], lr=1e-4)
    g = torch.Generator().manual_seed(0)
    ref_rate = _rate(lambda: reference_step(ref, opt, x, g), repeats, sync)
    rng = np.random.default_rng(0)
    naive_rate = _rate(lambda: naive_same_algorithm_step(ref, opt, x, rng), repeats, sync)

    g = torch.Generator().manual_seed(0)
    rng = np.random.default_rng(0)
    masks_ours = _rate(lambda: sample_tube_masks(32, grid, 4, (0.15, 0.2), rng=rng), 50, sync, best=True)
    masks_ref = _rate(lambda: reference_masks(32, grid, g), 50, sync, best=True)
    masks_loop = _rate(lambda: [sample_tube_masks(1, grid, 4, (0.15, 0.2), rng=rng) for _ in range(32)], 50, sync,
                       best=True)
    n_params = sum(p.numel() for p in ref.target_encoder.parameters())
    n_tensors = len(list(ref.target_encoder.parameters()))
    ema_ours = _rate(lambda: ref.update_target(0.996), 200, sync, best=True)
    ema_loop = _rate(lambda: python_loop_ema(ref.target_encoder, ref.encoder, 0.996), 200, sync, best=True)
    return [
        row("jepa", "pretraining steps/s (SKATR micro)", ours_rate, "steps/s", "SKATR reference step re-implemented",
            ref_rate, note=where),
        row("jepa", "pretraining steps/s (SKATR micro)", ours_rate, "steps/s",
            "same algorithm: naive attention, per-sample masks, loop EMA", naive_rate, note=where),
        row("jepa", "mask sets/s (batch 32)", masks_ours, "batches/s", "reference per-sample mask loop", masks_ref,
            note=f"{grid} patch grid"),
        row("jepa", "mask sets/s (batch 32)", masks_ours, "batches/s", "our sampler called per light cone",
            masks_loop, note=f"{grid} patch grid"),
        row("jepa", "EMA updates/s", ema_ours, "updates/s", "Python loop, out of place", ema_loop,
            note=f"target encoder, {n_params / 1e6:.2f} M parameters in {n_tensors} tensors"),
    ]
