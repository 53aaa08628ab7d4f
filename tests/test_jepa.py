"""JEPA pieces: multi-block tube masks (I-JEPA's and SKATR's), the in-place EMA of the target encoder,
gradients, loss, one predictor pass per target block."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from halotrans.config import ConfigError, load_config
from halotrans.models.vit import ViT3D
from halotrans.skatr.jepa import JEPA, ema_momentum, ema_update, embedding_spread, jepa_loss
from halotrans.skatr.masks import (
    block_indices,
    block_membership,
    sample_block_size,
    sample_skatr_masks,
    sample_tube_masks,
)
from halotrans.train.optim import param_groups


def tiny_jepa(seed: int = 0) -> JEPA:
    torch.manual_seed(seed)
    vit = ViT3D(1, (8, 8, 20), (4, 4, 5), hidden_size=24, depth=2, num_heads=2, mlp_dim=48, pos_embed="fourier")
    return JEPA(vit, predictor_dim=12, predictor_depth=1, predictor_heads=2, predictor_mlp_dim=24)


# --- masks -------------------------------------------------------------------------------------

def test_masks_shapes_disjoint_and_tubes_along_the_line_of_sight():
    grid = (7, 7, 47)
    m = sample_tube_masks(16, grid, n_targets=4, target_scale=(0.15, 0.2), rng=0)
    n_tokens = math.prod(grid)
    assert m.target.shape == (16, sum(h * w * d for h, w, d in m.block_sizes))
    assert m.context.ndim == 2 and m.context.shape[0] == 16 and m.context.dtype == torch.int64
    assert all(d == grid[2] for _, _, d in m.block_sizes)  # full line of sight: tubes
    for b in range(16):
        ctx, tgt = set(m.context[b].tolist()), set(m.target[b].tolist())
        assert len(ctx) == m.context.shape[1] and not ctx & tgt
        assert min(ctx | tgt) >= 0 and max(ctx | tgt) < n_tokens
        assert torch.equal(m.context[b], m.context[b].sort().values)
    # each target block is one transverse rectangle of h x w columns, each column the whole line of sight
    start = 0
    for h, w, d in m.block_sizes:
        block = m.target[:, start:start + h * w * d]
        i, j, k = block // (grid[1] * grid[2]), (block // grid[2]) % grid[1], block % grid[2]
        assert ((i.amax(1) - i.amin(1)) == h - 1).all() and ((j.amax(1) - j.amin(1)) == w - 1).all()
        assert (k.amin(1) == 0).all() and (k.amax(1) == grid[2] - 1).all()
        start += h * w * d


def test_mask_fractions_match_the_requested_ratios():
    grid = (12, 12, 6)
    n_tokens = math.prod(grid)
    g = np.random.default_rng(1)
    target_fracs, context_fracs = [], []
    for _ in range(200):
        m = sample_tube_masks(8, grid, n_targets=2, target_scale=(0.1, 0.3), target_los=(0.5, 1.0),
                              context_scale=(0.6, 0.8), rng=g)
        target_fracs += [h * w * d / n_tokens for h, w, d in m.block_sizes]
        union = torch.zeros(8, n_tokens, dtype=torch.bool)
        union[torch.arange(8)[:, None], m.target] = True
        context_fracs.append((m.context.shape[1] + union.sum(1).float().mean().item()) / n_tokens)
    # a block covers scale x los of the grid: E = 0.2 * 0.75
    assert np.mean(target_fracs) == pytest.approx(0.2 * 0.75, rel=0.1)
    # the context block (before the targets are removed) covers context_scale: E = 0.7; context + targets
    # can only fall below it (targets outside the block, the batch minimum)
    assert 0.45 < np.mean(context_fracs) <= 0.7 * 1.1

    # exact case: one target of 1/4 of the transverse grid through the whole line of sight, context = the rest
    m = sample_tube_masks(4, (8, 8, 5), n_targets=1, target_scale=(0.25, 0.25), aspect=(1.0, 1.0),
                          context_scale=(1.0, 1.0), rng=g)
    assert m.block_sizes == [(4, 4, 5)]
    assert m.target.shape == (4, 80) and m.context.shape == (4, 320 - 80)


def test_masks_are_reproducible_and_drawn_per_light_cone():
    a = sample_tube_masks(8, (7, 7, 10), rng=5)
    b = sample_tube_masks(8, (7, 7, 10), rng=5)
    c = sample_tube_masks(8, (7, 7, 10), rng=6)
    assert torch.equal(a.context, b.context) and torch.equal(a.target, b.target)
    assert not torch.equal(a.target, c.target)
    assert len({tuple(row) for row in a.target.tolist()}) > 1  # positions differ between light cones


def test_block_helpers_and_impossible_masks():
    corners = np.array([[1, 2, 0], [0, 0, 0]])
    idx = block_indices(corners, (2, 1, 3), (4, 4, 3))
    inside = block_membership(corners, (2, 1, 3), (4, 4, 3))
    assert idx.shape == (2, 6) and list(idx[1]) == [0, 1, 2, 12, 13, 14]
    for b in range(2):
        assert sorted(idx[b]) == list(np.flatnonzero(inside[b]))
    assert sample_block_size((7, 7, 47), (1.0, 1.0), (1.0, 1.0), (1.0, 1.0), np.random.default_rng()) == (7, 7, 47)
    with pytest.raises(ValueError, match="context tokens"):
        sample_tube_masks(4, (2, 2, 3), n_targets=1, target_scale=(1.0, 1.0), rng=0)


# --- EMA -----------------------------------------------------------------------------------------

def test_skatr_masks_alternate_long_and_short_tubes_each_with_its_complement_as_context():
    grid = (7, 7, 13)
    n_tokens = math.prod(grid)
    blocks = sample_skatr_masks(32, grid, n_targets=4, long_scale=(0.6, 0.8), short_scale=(0.1, 0.2), rng=0)
    assert [b.kind for b in blocks] == ["long", "short", "long", "short"]
    for b in blocks:
        h, w, d = b.size
        assert d == grid[2]  # full depth: every target is a patch of sky at all redshifts
        sky = h * w / (grid[0] * grid[1])
        assert (0.5 <= sky <= 0.9) if b.kind == "long" else (0.05 <= sky <= 0.25), (b.kind, b.size)
        assert b.target.shape == (32, h * w * d) and b.context.shape == (32, n_tokens - h * w * d)
        for i in range(32):
            ctx, tgt = b.context[i], b.target[i]
            assert torch.equal(torch.cat([ctx, tgt]).sort().values, torch.arange(n_tokens))  # complement
            assert torch.equal(ctx, ctx.sort().values) and torch.equal(tgt, tgt.sort().values)
            cols = {(int(t) // grid[2]) for t in tgt}  # (i, j) sky columns of the target: whole tubes
            assert len(cols) == h * w and len(tgt) == len(cols) * grid[2]
    # positions drawn per light cone, sizes per batch; the same seed gives the same masks
    assert len({tuple(t.tolist()) for t in blocks[0].target}) > 1
    again = sample_skatr_masks(32, grid, n_targets=4, rng=0)
    assert all(torch.equal(a.context, b.context) and torch.equal(a.target, b.target) for a, b in zip(blocks, again))
    # sky fractions over many batches follow the requested ranges (rounding to whole patches aside)
    long = [b.size[0] * b.size[1] / 49 for seed in range(60) for b in sample_skatr_masks(1, grid, 2, rng=seed)[:1]]
    assert 0.6 <= np.mean(long) <= 0.8


def test_skatr_masks_on_a_tiny_grid_leave_a_context():
    for seed in range(20):
        for b in sample_skatr_masks(4, (2, 2, 4), n_targets=2, long_scale=(0.99, 1.0), rng=seed):
            assert b.context.shape[1] >= 4  # never the whole sky: at least one column of context


def test_one_predictor_pass_per_target_block_and_the_target_encoder_once():
    jepa = tiny_jepa()
    x = torch.randn(3, 1, 8, 8, 20)
    blocks = sample_skatr_masks(3, jepa.encoder.grid_size, n_targets=2, rng=1)
    calls = {"target": 0, "context": 0, "predictor": 0}
    jepa.target_encoder.register_forward_hook(lambda *_: calls.__setitem__("target", calls["target"] + 1))
    jepa.encoder.register_forward_hook(lambda *_: calls.__setitem__("context", calls["context"] + 1))
    jepa.predictor.register_forward_hook(lambda *_: calls.__setitem__("predictor", calls["predictor"] + 1))
    pred, target, context = jepa(x, [b.context for b in blocks], [b.target for b in blocks])
    assert calls == {"target": 1, "context": 2, "predictor": 2}
    for p, t, c, b in zip(pred, target, context, blocks):
        assert p.shape == t.shape == (3, b.target.shape[1], 24) and c.shape == (3, b.context.shape[1], 24)
    # the single-pair form is the old interface, and agrees with the list form
    p1, t1, c1 = jepa(x, blocks[0].context, blocks[0].target)
    torch.testing.assert_close(p1, pred[0])
    torch.testing.assert_close(t1, target[0])


def test_ema_update_is_in_place_and_exact():
    torch.manual_seed(0)
    target, online = [torch.randn(5, 3), torch.randn(7)], [torch.randn(5, 3), torch.randn(7)]
    before = [t.clone() for t in target]
    ids = [id(t) for t in target]
    ema_update(target, online, 0.9)
    assert [id(t) for t in target] == ids
    for t, b, o in zip(target, before, online):
        torch.testing.assert_close(t, 0.9 * b + 0.1 * o)
    kept = [t.clone() for t in target]
    ema_update(target, online, 1.0)
    for t, k in zip(target, kept):
        assert torch.equal(t, k)


def test_ema_of_bf16_weights_accumulates_in_fp32():
    online = [torch.full((64,), 1.0, dtype=torch.bfloat16)]
    naive = [torch.zeros(64, dtype=torch.bfloat16)]
    target = [torch.zeros(64, dtype=torch.bfloat16)]
    shadow = [torch.zeros(64)]
    for _ in range(1000):
        ema_update(naive, online, 0.999)
        ema_update(target, online, 0.999, shadow)
    expected = 1 - 0.999**1000  # 0.632
    assert float(target[0][0]) == pytest.approx(expected, rel=0.01)
    assert float(naive[0][0]) < 0.85 * expected  # without the fp32 shadow, rounding stalls it (at 0.5)


def test_momentum_schedule():
    assert ema_momentum(0, 100, 0.996, 1.0) == pytest.approx(0.996)
    assert ema_momentum(99, 100, 0.996, 1.0) == pytest.approx(1.0)
    assert ema_momentum(49, 100, 0.996, 1.0) == pytest.approx(0.998, abs=1e-4)


def test_only_the_context_side_gets_gradients_and_the_target_moves_by_the_schedule():
    jepa = tiny_jepa()
    x = torch.randn(3, 1, 8, 8, 20)
    m = sample_tube_masks(3, jepa.encoder.grid_size, n_targets=2, target_scale=(0.25, 0.25),
                          rng=0)
    pred, target, context = jepa(x, m.context, m.target)
    assert pred.shape == target.shape == (3, m.target.shape[1], 24) and context.shape == (3, m.context.shape[1], 24)
    jepa_loss(pred, target).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in jepa.encoder.parameters())
    assert all(p.grad is not None for p in jepa.predictor.parameters())
    assert all(p.grad is None and not p.requires_grad for p in jepa.target_encoder.parameters())
    # the optimizer sees no target-encoder parameter, and decays no norm, bias or mask token
    groups = param_groups(jepa, 0.05)
    optimised = {id(p) for g in groups for p in g["params"]}
    assert not optimised & {id(p) for p in jepa.target_encoder.parameters()}
    decayed = {id(p) for g in groups if g["weight_decay"] > 0 for p in g["params"]}
    plain = [p for p in jepa.parameters() if p.requires_grad and p.ndim < 2]
    assert plain and not decayed & {id(p) for p in plain} and id(jepa.predictor.mask_token) not in decayed

    with torch.no_grad():  # a stand-in optimizer step
        for p in jepa.encoder.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    tgt0 = [p.clone() for p in jepa.target_encoder.parameters()]
    ctx = [p.clone() for p in jepa.encoder.parameters()]
    jepa.update_target(1.0)
    assert all(torch.equal(p, t) for p, t in zip(jepa.target_encoder.parameters(), tgt0))
    jepa.update_target(0.99)
    for p, t, c in zip(jepa.target_encoder.parameters(), tgt0, ctx):
        torch.testing.assert_close(p, 0.99 * t + 0.01 * c)
    assert any(not torch.equal(p, t) for p, t in zip(jepa.target_encoder.parameters(), tgt0))


def test_loss_uses_layer_normed_targets_and_collapse_monitor():
    target = torch.randn(2, 5, 8) * 10 + 3
    normed = torch.nn.functional.layer_norm(target, (8,))
    assert jepa_loss(normed, target).item() == pytest.approx(0.0, abs=1e-6)
    assert jepa_loss(normed, target, "smooth_l1").item() == pytest.approx(0.0, abs=1e-6)
    assert embedding_spread(torch.ones(2, 5, 8)).item() == 0.0
    assert embedding_spread(torch.randn(4, 50, 8)).item() == pytest.approx(1.0, rel=0.15)
    with pytest.raises(ValueError):
        jepa_loss(normed, target, "l2")


def test_jepa_config_checks_of_the_skatr_scheme():
    cfg = load_config("skatr/pretrain_skatr_cpu.yaml")
    assert cfg.jepa.mask_scheme == "skatr" and cfg.jepa.long_scale == (0.6, 0.8) and cfg.jepa.short_scale == (0.1, 0.2)
    assert cfg.model.patch_size == [2, 2, 40] or tuple(cfg.model.patch_size) == (2, 2, 40)
    # 14 x 14 x 537 cropped to 520: 7 x 7 across the sky, at most ~1.5k tokens
    grid = (14 // 2, 14 // 2, (537 // cfg.lightcone.los_multiple) * cfg.lightcone.los_multiple // 40)
    assert grid[:2] == (7, 7) and math.prod(grid) <= 1500
    with pytest.raises(ConfigError, match="long_scale"):
        load_config("skatr/pretrain.yaml", ["jepa.long_scale=[0.8,0.6]"])
    with pytest.raises(ConfigError, match="mask_scheme"):
        load_config("skatr/pretrain.yaml", ["jepa.mask_scheme=random"])


def test_jepa_config_checks():
    cfg = load_config("skatr/pretrain.yaml")
    assert (cfg.model.hidden_size, cfg.model.depth, cfg.model.num_heads, tuple(cfg.model.patch_size)) == \
        (144, 4, 4, (4, 4, 10))
    assert (cfg.jepa.predictor_dim, cfg.jepa.predictor_depth, cfg.jepa.ema_start) == (48, 4, 0.996)
    for bad in ("jepa.ema_start=1.5", "jepa.target_scale=[0.5,0.2]", "jepa.predictor_heads=5", "jepa.mask_targets=0"):
        with pytest.raises(ConfigError):
            load_config("skatr/pretrain.yaml", [bad])
