"""Multi-block tube masks for JEPA pretraining on light cones, sampled for a whole batch at once.

Tokens live on the ViT's patch grid (g0, g1, g2) in C order (token ``(i*g1 + j)*g2 + k``), axis 2
being the line of sight. For each light cone of a batch:

* ``n_targets`` target blocks: each covers a fraction ``target_scale`` of the transverse patch
  grid (aspect ratio g0:g1 drawn log-uniformly in ``aspect``) and a fraction ``target_los`` of
  the line of sight; (1, 1) makes them tubes through the whole light cone, as in SKATR
  (Ore, Heneka & Plehn 2024), so a target is a patch of sky at every redshift;
* one context block covering a fraction ``context_scale`` of the transverse grid (square, full
  line of sight), minus every target token (I-JEPA's scheme; context and targets are disjoint).

As in I-JEPA, block sizes are drawn once per batch (so every light cone has the same number of
target tokens) and positions per light cone. Context blocks lose different numbers of tokens to
the targets; every light cone keeps the batch's smallest count, a uniformly random subset of
its own context tokens. Everything is array arithmetic over the batch, no per-sample loop, in
numpy: these arrays are small (B × tokens), and torch would split each op over its CPU threads,
whose synchronisation costs more than the op (measured 20× slower on a busy 2-core machine).

    masks = sample_tube_masks(64, (7, 7, 47), n_targets=4, target_scale=(0.15, 0.2), rng=0)
    masks.context   # (64, Nc) int64 torch tensor of token indices, sorted; masks.target (64, Nt)

SKATR's own scheme (:func:`sample_skatr_masks`, ``jepa.mask_scheme: skatr``) differs: targets
alternate between long ones (a fraction ``long_scale`` of the sky, 60-80 % in SKATR) and short ones
(``short_scale``, 10-20 %), full-depth tubes, and EACH target has its own context, its complement
(every other token), so the context encoder and the predictor run once per target block:

    pairs = sample_skatr_masks(64, (7, 7, 26), n_targets=4, rng=0)
    [(p.context.shape, p.target.shape) for p in pairs]   # long, short, long, short; Nc + Nt = 7*7*26
"""

from __future__ import annotations

import math
from typing import NamedTuple, Sequence

import numpy as np
import torch


class TubeMasks(NamedTuple):
    """Token indices of one batch: ``context`` (B, Nc), sorted; ``target`` (B, Nt), the target
    blocks one after the other (``block_sizes`` (h, w, d) each, so Nt = Σ h·w·d; blocks may overlap)."""

    context: torch.Tensor
    target: torch.Tensor
    block_sizes: list[tuple[int, int, int]]


def sample_block_size(grid: Sequence[int], scale: tuple[float, float], aspect: tuple[float, float],
                      los: tuple[float, float], rng: np.random.Generator) -> tuple[int, int, int]:
    """(h, w, d) patches of one block: h·w ≈ scale · g0·g1 with h/w ≈ aspect, d ≈ los · g2 (each >= 1)."""
    g0, g1, g2 = grid
    columns = rng.uniform(*scale) * g0 * g1
    ratio = math.exp(rng.uniform(math.log(aspect[0]), math.log(aspect[1])))
    h = min(g0, max(1, round(math.sqrt(columns * ratio))))
    w = min(g1, max(1, round(columns / h)))
    d = min(g2, max(1, round(rng.uniform(*los) * g2)))
    return h, w, d


def _corners(batch: int, grid: Sequence[int], size: Sequence[int], rng: np.random.Generator) -> np.ndarray:
    """(B, 3) lowest corners of blocks of ``size`` placed uniformly inside ``grid``."""
    return rng.integers(0, [g - s + 1 for g, s in zip(grid, size)], size=(batch, 3))


def block_indices(corners: np.ndarray, size: Sequence[int], grid: Sequence[int]) -> np.ndarray:
    """Token indices (B, h·w·d) of the blocks of ``size`` with lowest corners ``corners`` (B, 3)."""
    _, g1, g2 = grid
    i, j, k = np.ix_(*(np.arange(s) for s in size))
    offsets = ((i * g1 + j) * g2 + k).ravel()
    base = (corners[:, 0] * g1 + corners[:, 1]) * g2 + corners[:, 2]
    return base[:, None] + offsets[None, :]


def block_membership(corners: np.ndarray, size: Sequence[int], grid: Sequence[int]) -> np.ndarray:
    """(B, L) bool: which tokens lie in each light cone's block."""
    inside = [(np.arange(g) >= corners[:, a, None]) & (np.arange(g) < corners[:, a, None] + size[a])
              for a, g in enumerate(grid)]
    return (inside[0][:, :, None, None] & inside[1][:, None, :, None] & inside[2][:, None, None, :]).reshape(
        len(corners), -1)


def sample_tube_masks(batch: int, grid: Sequence[int], n_targets: int = 4,
                      target_scale: tuple[float, float] = (0.15, 0.2), target_los: tuple[float, float] = (1.0, 1.0),
                      aspect: tuple[float, float] = (0.75, 1.5), context_scale: tuple[float, float] = (0.85, 1.0),
                      rng: np.random.Generator | int | None = None, min_context: int = 1,
                      max_tries: int = 20) -> TubeMasks:
    """Context and target token indices for ``batch`` light cones on the patch ``grid`` (g0, g1, g2).

    ``rng``: a numpy Generator or a seed. If some light cone would keep fewer than ``min_context``
    context tokens (targets covering its whole context block), the batch is drawn again, up to
    ``max_tries`` times; then ValueError.
    """
    grid = tuple(int(g) for g in grid)
    if len(grid) != 3 or min(grid) < 1:
        raise ValueError(f"grid must be three positive ints, got {grid}")
    rng = np.random.default_rng(rng)
    rows = np.arange(batch)[:, None]
    for _ in range(max_tries):
        sizes = [sample_block_size(grid, target_scale, aspect, target_los, rng) for _ in range(n_targets)]
        target = np.concatenate([block_indices(_corners(batch, grid, s, rng), s, grid) for s in sizes], axis=1)
        ctx_size = sample_block_size(grid, context_scale, (1.0, 1.0), (1.0, 1.0), rng)
        allowed = block_membership(_corners(batch, grid, ctx_size, rng), ctx_size, grid)
        allowed[rows, target] = False
        n_context = int(allowed.sum(1).min())
        if n_context >= min_context:
            # a uniformly random subset of n_context allowed tokens per light cone: the smallest random keys
            keys = rng.random(allowed.shape) + 2.0 * ~allowed
            context = np.sort(np.argpartition(keys, n_context - 1, axis=1)[:, :n_context], axis=1)
            return TubeMasks(torch.from_numpy(context), torch.from_numpy(target), sizes)
    raise ValueError(f"targets (n_targets={n_targets}, target_scale={list(target_scale)}) leave fewer than "
                     f"{min_context} context tokens on the {grid} patch grid in {max_tries} draws")


class TargetBlock(NamedTuple):
    """One target block of a batch and its own context: ``context`` (B, L − Nt) and ``target`` (B, Nt)
    token indices, each sorted; ``size`` (h, w, d) patches of the block; ``kind`` "long" or "short"."""

    context: torch.Tensor
    target: torch.Tensor
    size: tuple[int, int, int]
    kind: str


def sample_skatr_masks(batch: int, grid: Sequence[int], n_targets: int = 4,
                       long_scale: tuple[float, float] = (0.6, 0.8), short_scale: tuple[float, float] = (0.1, 0.2),
                       aspect: tuple[float, float] = (0.75, 1.5), target_los: tuple[float, float] = (1.0, 1.0),
                       rng: np.random.Generator | int | None = None) -> list[TargetBlock]:
    """SKATR's masks for ``batch`` light cones on the patch ``grid``: ``n_targets`` blocks, long, short, long, ...

    Block ``i`` covers a fraction of the transverse grid drawn in ``long_scale`` (i even) or
    ``short_scale`` (i odd), aspect ratio in ``aspect``, and a fraction ``target_los`` of the line of
    sight ((1, 1): full-depth tubes). Its size is drawn once per batch, its position per light cone;
    its context is the complement (every token outside it), so context and target never overlap
    and together cover the grid. A block never covers the whole grid (ValueError if it must).
    """
    grid = tuple(int(g) for g in grid)
    if len(grid) != 3 or min(grid) < 1:
        raise ValueError(f"grid must be three positive ints, got {grid}")
    rng = np.random.default_rng(rng)
    n_tokens = math.prod(grid)
    out = []
    for i in range(n_targets):
        kind = "long" if i % 2 == 0 else "short"
        size = sample_block_size(grid, long_scale if kind == "long" else short_scale, aspect, target_los, rng)
        if math.prod(size) >= n_tokens:  # leave one column of sky to the context
            size = (size[0], size[1] - 1, size[2]) if size[1] > 1 else (size[0] - 1, size[1], size[2])
        if min(size) < 1:
            raise ValueError(f"a {kind} target on the {grid} patch grid leaves no context")
        corners = _corners(batch, grid, size, rng)
        inside = block_membership(corners, size, grid)
        target = block_indices(corners, size, grid)  # ascending: C order inside the block
        context = np.nonzero(~inside)[1].reshape(batch, n_tokens - math.prod(size))  # row-major: sorted per row
        out.append(TargetBlock(torch.from_numpy(context), torch.from_numpy(target), size, kind))
    return out
