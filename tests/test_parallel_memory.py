"""The memory model behind the lever choice: exact saved-tensor counts, ZeRO arithmetic, lever order."""

from __future__ import annotations

import pytest
import torch

from halotrans.models.config import ModelConfig
from halotrans.models.registry import build_model
from halotrans.parallel.memory import (
    Levers,
    activation_bytes_per_voxel,
    candidate_levers,
    fixed_bytes,
    main,
    parameter_count,
    plan_levers,
    saved_bytes,
    training_bytes,
)

TINY = ModelConfig(name="vipr", patch_size=8, hidden_size=32, depth=3, num_heads=4, mlp_dim=64, skip_layers=(1, 2, 3))
PAPER = ModelConfig(name="vipr", feature_size=14)


@pytest.mark.parametrize("checkpointing", [False, True])
def test_meta_device_count_matches_a_real_forward_pass(checkpointing):
    """The count on the meta device (shapes only) = the count of a real CPU forward pass (float64: the
    plain convolution path that GPUs take too, not the CPU-only fast paths; the meta device's
    attention keeps its softmax weights, a few % more at this size)."""
    cfg = ModelConfig(**{**TINY.__dict__, "activation_checkpointing": checkpointing})
    torch.manual_seed(0)
    real = saved_bytes(build_model(cfg, 2, 5, 32).double(), torch.randn(1, 2, 32, 32, 32, dtype=torch.float64))
    with torch.device("meta"):
        meta = saved_bytes(build_model(cfg, 2, 5, 32).double(), torch.empty(1, 2, 32, 32, 32, dtype=torch.float64))
    assert meta == pytest.approx(real, rel=0.04)
    assert activation_bytes_per_voxel(TINY, 2, 5, checkpointing=checkpointing) == pytest.approx(meta / 2 / 32**3,
                                                                                                rel=0.01)


def test_levers_lower_the_activation_memory():
    fp32 = activation_bytes_per_voxel(PAPER, 2, 7)
    ckpt = activation_bytes_per_voxel(PAPER, 2, 7, checkpointing=True)
    bf16 = activation_bytes_per_voxel(PAPER, 2, 7, bf16=True)
    assert ckpt < 0.9 * fp32 and bf16 == pytest.approx(fp32 / 2, rel=0.1)
    peer = activation_bytes_per_voxel(ModelConfig(name="monai_unetr", feature_size=14), 2, 7)
    assert fp32 < 0.6 * peer
    fixed, act = training_bytes(PAPER, 2, 7, 256, Levers(True, False, 4, 1), world=4)
    fixed1, act1 = training_bytes(PAPER, 2, 7, 256, Levers(True, False, 1, 1), world=4)
    assert act == pytest.approx(act1 / 4) and fixed == fixed1


def test_fixed_bytes_follow_the_zero_stages():
    assert fixed_bytes(1000, bf16=False, zero_stage=0, world=4) == 16000
    assert fixed_bytes(1000, bf16=False, zero_stage=1, world=4) == 1000 * (4 + 4 + 2)
    assert fixed_bytes(1000, bf16=True, zero_stage=2, world=4) == 1000 * (2 + 1 + 3)
    assert fixed_bytes(1000, bf16=True, zero_stage=3, world=4) == 1000 * 18 / 4
    # vipr's learnable position embedding grows with the crop
    assert parameter_count(PAPER, 2, 7, 512) - parameter_count(PAPER, 2, 7, 256) == (32**3 - 16**3) * 512


def test_plan_tries_checkpointing_before_sharding_and_respects_heads():
    order = candidate_levers(PAPER, 512, world=16, bf16=True)
    assert [(lv.checkpointing, lv.sp) for lv in order[:4]] == [(False, 1), (True, 1), (False, 2), (True, 2)]
    assert max(lv.sp for lv in order) == 8  # 8 heads: Ulysses shards whole heads
    assert max(lv.sp for lv in candidate_levers(PAPER, 48, world=16, bf16=True)) == 1  # 3 patch rows
    small = plan_levers(PAPER, 2, 7, 128, 80 * 2**30, world=4)
    assert small.fits and small.levers == Levers(True, False, 1, 1)
    big = plan_levers(PAPER, 2, 7, 1024, 80 * 2**30, world=8)
    assert big.fits and big.levers.sp > 1 and big.bytes_per_rank < 78 * 2**30
    impossible = plan_levers(PAPER, 2, 7, 2048, 16 * 2**30, world=2)
    assert not impossible.fits and impossible.levers.sp == 2 and impossible.levers.checkpointing


def test_command_prints_the_table_and_the_choice(capsys):
    assert main(["--crop", "512", "--device-gib", "80", "--gpus", "4"]) == 0
    out = capsys.readouterr().out
    assert "choice: --set train.bf16=true" in out and "| True | True | 4 |" in out
    assert main(["--crop", "2048", "--device-gib", "16", "--gpus", "1"]) == 1
