"""Sequence/slab parallelism against one process: real gloo ranks under torchrun, tiny fp32 models.

Each case runs as ``torchrun --nproc_per_node 2 tests/test_parallel_sp.py CASE OUT``: every rank
runs the sharded model, rank 0 also the same model unsharded (same initial weights), and writes
the largest differences of the forward outputs, the input gradients and the parameter gradients
to ``OUT/CASE.json``; the tests assert them. Gradients of the sharded runs are summed over the
ranks, as DeepSpeed does over an SP group.
"""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
TOL = 1e-5

pytestmark = [pytest.mark.dist]


# ---------------------------------------------------------------------------------------------
# worker side (runs under torchrun)


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    """Largest |a − b| relative to the largest |b| (scale-free), 0 for two zero tensors."""
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


def _summed_grads(model: torch.nn.Module, group=None) -> dict[str, torch.Tensor]:
    import torch.distributed as dist

    grads = {}
    for name, p in model.named_parameters():
        g = p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p)
        dist.all_reduce(g, group=group)
        grads[name] = g
    return grads


def _grad_diffs(reference: torch.nn.Module, grads: dict[str, torch.Tensor]) -> float:
    worst = 0.0
    for name, p in reference.named_parameters():
        if p.grad is None:
            assert grads[name].abs().max() == 0, f"{name}: sharded gradient where the reference has none"
            continue
        worst = max(worst, _max_diff(grads[name], p.grad))
    return worst


def _gather_slabs(t: torch.Tensor, dim: int) -> torch.Tensor:
    import torch.distributed as dist

    parts = [torch.empty_like(t) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, t.contiguous())
    return torch.cat(parts, dim=dim)


def case_vit(sp) -> dict:
    """Bare ViT (sequence mode): 9 tokens on 2 ranks (padded), hidden states, JEPA-like keep_idx."""
    import torch.distributed as dist

    from halotrans.models.vit import ViT3D
    from halotrans.parallel.shard import parallelize

    torch.manual_seed(0)
    ref = ViT3D(2, (12, 4, 12), 4, hidden_size=16, depth=3, num_heads=2, mlp_dim=32, activation_checkpointing=True)
    model = copy.deepcopy(ref)
    assert parallelize(model, sp) == "sequence"
    x = torch.randn(2, 2, 12, 4, 12)
    keep = torch.stack([torch.randperm(9)[:7].sort().values for _ in range(2)])
    w_tok, w_hid = torch.randn(2, 9, 16), torch.randn(2, 7, 16)

    def loss(net, xin):
        tokens, (h1,) = net(xin, layers=(1,))
        ctx, _ = net(xin, keep_idx=keep)
        return (tokens * w_tok).sum() + (h1 * w_tok).sum() + (ctx * w_hid).sum(), tokens

    x_sp = x.clone().requires_grad_(True)
    ref.train(), model.train()
    l_sp, out_sp = loss(model, x_sp)
    (l_sp / sp.size).backward()  # every rank computes the whole loss: its share is 1/sp
    grads = _summed_grads(model)
    gx = x_sp.grad.clone()
    dist.all_reduce(gx)
    x_ref = x.clone().requires_grad_(True)
    l_ref, out_ref = loss(ref, x_ref)
    l_ref.backward()
    return {"forward": _max_diff(out_sp, out_ref), "loss": _max_diff(l_sp.detach(), l_ref.detach()),
            "input_grad": _max_diff(gx, x_ref.grad), "param_grad": _grad_diffs(ref, grads)}


def _slab_case(sp, ref: torch.nn.Module, x: torch.Tensor, periodic: bool = False) -> dict:
    """A slab-parallel segmentation net against ``ref``: logits, input and parameter gradients."""
    from halotrans.parallel.shard import parallelize, slab_of

    model = copy.deepcopy(ref)
    assert parallelize(model, sp, periodic) == "slab"
    assert model.state_dict().keys() == ref.state_dict().keys()
    weights = torch.randn(x.shape[0], 3, *x.shape[2:], dtype=x.dtype)
    x_mine = slab_of(x, sp, 2).requires_grad_(True)
    logits = model(x_mine)
    (logits * slab_of(weights, sp, 2)).sum().backward()  # this slab's share of the loss
    grads = _summed_grads(model)
    x_ref = x.clone().requires_grad_(True)
    logits_ref = ref(x_ref)
    (logits_ref * weights).sum().backward()
    return {"forward": _max_diff(_gather_slabs(logits.detach(), 2), logits_ref.detach()),
            "input_grad": _max_diff(_gather_slabs(x_mine.grad, 2), x_ref.grad), "param_grad": _grad_diffs(ref, grads)}


def case_vipr(sp) -> dict:
    """vipr (UNETR) slab-parallel: Ulysses ViT on the slab's tokens, halo-exchanging decoder, checkpointing."""
    from halotrans.models.vipr import ViPR

    torch.manual_seed(0)
    ref = ViPR(2, 3, 16, patch_size=4, hidden_size=16, depth=2, num_heads=2, mlp_dim=32, skip_layers=(1, 2),
               activation_checkpointing=True)
    return _slab_case(sp, ref, torch.randn(2, 2, 16, 16, 16))


def case_copra(sp) -> dict:
    """copra (V-Net) slab-parallel: halos of 3³ and 5³ convs, strided and transposed convs, synced norms."""
    from halotrans.models.copra import CoPRA

    torch.manual_seed(0)
    # float64: in fp32 the ~1e-7 round-off of a sharded sum flips the LeakyReLU slope of a few of the
    # 32³ voxels, which moves summed parameter gradients by ~1e-3 relative (a kink, not an error)
    ref = CoPRA(2, 3, feature_size=4, kernel_size=3).double()
    return _slab_case(sp, ref, torch.randn(1, 2, 32, 32, 32, dtype=torch.float64))


def case_circular(sp) -> dict:
    """vipr and copra with padding=circular (and both decoders) on slabs of a periodic box = one process.
    ``periodic=True`` as for whole boxes; copra also with ``periodic=False``: a convolution that pads
    periodically wraps its halos itself."""
    from halotrans.models.copra import CoPRA
    from halotrans.models.vipr import ViPR

    out = {}
    for decoder in ("light", "paper"):
        torch.manual_seed(0)
        vipr = ViPR(2, 3, 16, patch_size=4, hidden_size=16, depth=2, num_heads=2, mlp_dim=32, skip_layers=(1, 2),
                    decoder=decoder, padding="circular").double()
        for key, value in _slab_case(sp, vipr, torch.randn(2, 2, 16, 16, 16, dtype=torch.float64), True).items():
            out[f"vipr_{decoder}_{key}"] = value
        torch.manual_seed(0)
        # float64 as in case_copra; kernel 5 at the coarsest level: slabs of 2 rows need halos of 2
        copra = CoPRA(2, 3, feature_size=2, kernel_size=5, decoder=decoder, padding="circular").double()
        x = torch.randn(1, 2, 64, 16, 16, dtype=torch.float64)
        for periodic in (True, False):
            for key, value in _slab_case(sp, copra, x, periodic).items():
                out[f"copra_{decoder}_periodic={periodic}_{key}"] = value
            copra.zero_grad()
    return out


def case_halo_periodic(sp) -> dict:
    """Periodic halos: a conv stack on slabs of a periodic box = the stack on the circularly padded box."""
    import torch.nn.functional as F
    from torch import nn

    from halotrans.models.blocks import Conv3d
    from halotrans.parallel.halo import shard_convolutions
    from halotrans.parallel.shard import slab_of

    torch.manual_seed(0)
    ref = nn.Sequential(Conv3d(2, 4, 3), nn.GroupNorm(2, 4), nn.LeakyReLU(0.01), Conv3d(4, 3, 5))
    model = copy.deepcopy(ref)
    shard_convolutions(model, sp.group, periodic=True)
    x = torch.randn(1, 2, 8, 6, 6)
    weights = torch.randn(1, 3, 8, 6, 6)
    x_mine = slab_of(x, sp, 2).requires_grad_(True)
    out = model(x_mine)
    (out * slab_of(weights, sp, 2)).sum().backward()
    grads = _summed_grads(model)

    class Periodic(nn.Module):  # circular along axis 0 only; the norm sees the box once
        def forward(self, xin):
            h = ref[0](F.pad(xin, (0, 0, 0, 0, 1, 1), mode="circular"))[:, :, 1:-1]
            h = ref[2](ref[1](h))
            return ref[3](F.pad(h, (0, 0, 0, 0, 2, 2), mode="circular"))[:, :, 2:-2]

    x_ref = x.clone().requires_grad_(True)
    out_ref = Periodic()(x_ref)
    (out_ref * weights).sum().backward()
    return {"forward": _max_diff(_gather_slabs(out.detach(), 2), out_ref.detach()),
            "input_grad": _max_diff(_gather_slabs(x_mine.grad, 2), x_ref.grad), "param_grad": _grad_diffs(ref, grads)}


def case_jepa(sp) -> dict:
    """One JEPA step (context + target encoders sequence-parallel, predictor replicated): loss, gradients,
    AdamW step and EMA target update."""
    from halotrans.models.vit import ViT3D
    from halotrans.parallel.shard import parallelize
    from halotrans.skatr.jepa import JEPA, jepa_loss
    from halotrans.skatr.masks import sample_tube_masks

    torch.manual_seed(0)
    ref = JEPA(ViT3D(1, (8, 8, 20), (4, 4, 5), 24, depth=2, num_heads=2, mlp_dim=48, pos_embed="fourier"),
               predictor_dim=12, predictor_depth=1, predictor_heads=2, predictor_mlp_dim=24)
    model = copy.deepcopy(ref)
    assert parallelize(model, sp) == "sequence"
    x = torch.randn(3, 1, 8, 8, 20)
    masks = sample_tube_masks(3, ref.encoder.grid_size, 2, (0.25, 0.25), rng=1)

    def step(net, share):
        opt = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], lr=1e-2)
        pred, target, _ = net(x, masks.context, masks.target)
        loss = jepa_loss(pred, target)
        (loss * share).backward()
        return loss.detach(), opt

    l_sp, opt = step(model, 1.0 / sp.size)
    grads = _summed_grads(model)
    l_ref, opt_ref = step(ref, 1.0)
    out = {"loss": _max_diff(l_sp, l_ref), "param_grad": _grad_diffs(ref, grads)}
    for name, p in model.named_parameters():  # the optimizer step sees the DeepSpeed-summed gradients
        if p.requires_grad:
            p.grad = grads[name]
    opt.step(), opt_ref.step()
    model.update_target(0.9), ref.update_target(0.9)
    out["params_after_step"] = max(_max_diff(a, b) for a, b in zip(model.state_dict().values(),
                                                                    ref.state_dict().values()))
    return out


def case_errors(sp) -> dict:
    """Clear errors: heads not divisible by sp, patch rows not divisible by sp, slabs thinner than halos."""
    from halotrans.config import ConfigError
    from halotrans.models.config import ModelConfig
    from halotrans.models.registry import build_model
    from halotrans.models.vit import ViT3D
    from halotrans.parallel.shard import check_slab_config, parallelize

    messages = {}
    for key, fn in {
        "heads": lambda: parallelize(ViT3D(1, 8, 4, hidden_size=12, depth=1, num_heads=3, mlp_dim=8), sp),
        "tokens": lambda: parallelize(build_model(ModelConfig(patch_size=8, hidden_size=16, depth=3, num_heads=2,
                                                              skip_layers=(1, 2, 3), mlp_dim=8), 1, 3, (24, 16, 16)),
                                      sp),
        "crop": lambda: check_slab_config(ModelConfig(name="vipr", patch_size=16), 48, sp.size),
        "halo": lambda: check_slab_config(ModelConfig(name="copra", kernel_size=5), 32, sp.size),
        "peer": lambda: check_slab_config(ModelConfig(name="monai_unetr"), 64, sp.size),
    }.items():
        try:
            fn()
            messages[key] = None
        except ConfigError as e:
            messages[key] = str(e)
    return messages


def _worker(case: str, out_dir: str) -> None:
    import torch.distributed as dist

    from halotrans.parallel.distributed import init_distributed, shutdown
    from halotrans.parallel.groups import init_sequence_parallel

    torch.set_num_threads(1)
    init_distributed()
    try:
        sp = init_sequence_parallel(dist.get_world_size())
        result = globals()[f"case_{case}"](sp)
        if dist.get_rank() == 0:
            Path(out_dir, f"{case}.json").write_text(json.dumps(result))
    finally:
        shutdown()


# ---------------------------------------------------------------------------------------------
# test side


def _run_case(case: str, tmp_path: Path) -> dict:
    from tests.helpers import run

    run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", __file__, case,
         str(tmp_path)], timeout=300)
    return json.loads((tmp_path / f"{case}.json").read_text())


@pytest.mark.parametrize("case", ["vit", "vipr", "copra", "jepa", "halo_periodic", "circular"])
def test_sharded_equals_one_process(case, tmp_path):
    diffs = _run_case(case, tmp_path)
    assert diffs, case
    for key, value in diffs.items():
        assert value < TOL, f"{case}: {key} differs by {value:.3g} (relative) from one process"


def test_unshardable_settings_are_clear_errors(tmp_path):
    msg = _run_case("errors", tmp_path)
    assert "num_heads = 3" in msg["heads"] and "train.sp = 2" in msg["heads"]
    assert "3 patch rows" in msg["tokens"] and "train.sp = 2" in msg["tokens"]
    assert "3 patch rows" in msg["crop"] and "data.crop=48" in msg["crop"]
    assert "thinner than the 2-row convolution halo" in msg["halo"]
    assert "MONAI" in msg["peer"]


if __name__ == "__main__":
    _worker(sys.argv[1], sys.argv[2])
