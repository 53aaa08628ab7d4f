"""The networks: shared ViT3D, vipr (UNETR), copra (V-Net), their blocks and build_model."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from halotrans.config import ConfigError, config_from_dict
from halotrans.models.blocks import Conv3d, PointwiseConv
from halotrans.models.copra import CoPRA
from halotrans.models.registry import build_model
from halotrans.models.vipr import ViPR
from halotrans.models.vit import LocalAttention, ViT3D, fourier_position_embedding

TINY = dict(hidden_size=24, depth=3, num_heads=2, mlp_dim=48)


def tiny_vit(**kw) -> ViT3D:
    torch.manual_seed(0)
    args = dict(in_channels=2, img_size=16, patch_size=4, **TINY) | kw
    return ViT3D(**args)


@pytest.mark.parametrize("pos_embed", ["learnable", "fourier"])
@pytest.mark.parametrize("img_size, patch, grid", [(16, 4, (4, 4, 4)), ((8, 12, 40), (4, 4, 10), (2, 3, 4))])
def test_vit_shapes_and_hidden_states(pos_embed, img_size, patch, grid):
    vit = tiny_vit(img_size=img_size, patch_size=patch, pos_embed=pos_embed)
    size = (img_size,) * 3 if isinstance(img_size, int) else img_size
    x = torch.randn(3, 2, *size)
    tokens, hidden = vit(x, layers=(1, 3))
    n = grid[0] * grid[1] * grid[2]
    assert vit.grid_size == grid and vit.num_patches == n
    assert tokens.shape == (3, n, 24) and [h.shape for h in hidden] == [(3, n, 24)] * 2
    # the last requested block output is the final tokens before the final LayerNorm
    torch.testing.assert_close(vit.norm(hidden[1]), tokens)
    assert vit.tokens_to_volume(tokens).shape == (3, 24, *grid)
    learnable = [name for name, _ in vit.named_parameters() if name == "pos_embed"]
    assert learnable == (["pos_embed"] if pos_embed == "learnable" else [])


def test_patch_embedding_is_the_strided_convolution():
    vit = tiny_vit(patch_size=(2, 4, 8))
    x = torch.randn(2, 2, 16, 16, 16)
    weight = vit.patch_embed.proj.weight.view(24, 2, 2, 4, 8)
    conv = F.conv3d(x, weight, vit.patch_embed.proj.bias, stride=(2, 4, 8)).flatten(2).transpose(1, 2)
    torch.testing.assert_close(vit.patch_embed(x), conv, atol=1e-5, rtol=1e-5)


def test_fourier_position_embedding():
    emb = fourier_position_embedding((2, 3, 4), 16)  # 16 // 6 = 2 frequencies per axis, 4 zero features
    assert emb.shape == (24, 16) and emb.dtype == torch.float32
    assert torch.all(emb[:, 12:] == 0)
    # patch (0, 0, 0): sin = 0, cos = 1; patch (1, 2, 3) on axis z with frequency 1: sin(3)
    torch.testing.assert_close(emb[0, :12], torch.tensor([0, 0, 1, 1] * 3, dtype=torch.float32))
    assert emb[(1 * 3 + 2) * 4 + 3, 8].item() == pytest.approx(torch.sin(torch.tensor(3.0)).item(), abs=1e-6)
    assert len({tuple(r) for r in emb.tolist()}) == 24  # every patch has its own code
    with pytest.raises(ValueError, match="dim >= 6"):
        fourier_position_embedding((2, 2, 2), 4)


@pytest.mark.parametrize("pos_embed", ["learnable", "fourier"])
def test_keep_idx_selects_tokens_after_position_embedding(pos_embed):
    vit = tiny_vit(pos_embed=pos_embed).eval()
    x = torch.randn(2, 2, 16, 16, 16)
    keep = torch.stack([torch.randperm(64)[:10], torch.randperm(64)[:10]])
    full = vit.embed(x)
    subset = vit.embed(x, keep)
    torch.testing.assert_close(subset, torch.stack([full[b, keep[b]] for b in range(2)]))
    tokens, (h1,) = vit(x, keep_idx=keep, layers=(1,))
    torch.testing.assert_close(h1, vit.blocks[0](subset))
    assert tokens.shape == (2, 10, 24)
    with pytest.raises(ValueError, match="keep_idx must be"):
        vit(x, keep_idx=keep[0])


def test_activation_checkpointing_gives_the_same_gradients():
    plain, ckpt = tiny_vit(dropout=0.0), tiny_vit(activation_checkpointing=True)
    ckpt.load_state_dict(plain.state_dict())
    x = torch.randn(2, 2, 16, 16, 16)
    for vit in (plain, ckpt):
        tokens, hidden = vit(x, layers=(2,))
        (tokens.square().mean() + hidden[0].mean()).backward()
    for (name, a), b in zip(plain.named_parameters(), ckpt.parameters()):
        torch.testing.assert_close(a.grad, b.grad, msg=name)


def test_attention_core_is_swappable_on_b_s_h_d():
    vit = tiny_vit()
    seen = []

    class Recorder(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, q, k, v):
            seen.append(q.shape)
            return self.inner(q, k, v)

    x = torch.randn(2, 2, 16, 16, 16)
    ref = vit(x)[0]
    for block in vit.blocks:
        block.attn.core = Recorder(block.attn.core)
    torch.testing.assert_close(vit(x)[0], ref)
    assert seen == [(2, 64, 2, 12)] * 3  # [b, s, heads, head_dim]


def test_local_attention_is_softmax_attention():
    q, k, v = (torch.randn(2, 5, 3, 4) for _ in range(3))
    att = torch.softmax(torch.einsum("bqhd,bkhd->bhqk", q, k) / 2.0, dim=-1)
    torch.testing.assert_close(LocalAttention()(q, k, v), torch.einsum("bhqk,bkhd->bqhd", att, v))


def test_vit_rejects_bad_shapes():
    with pytest.raises(ValueError, match="not divisible by patch_size"):
        ViT3D(2, 20, 8)
    vit = tiny_vit()
    with pytest.raises(ValueError, match=r"expected input \(B, 2, 16, 16, 16\)"):
        vit(torch.randn(1, 2, 16, 16, 8))
    with pytest.raises(ValueError, match="layers must be in 1..3"):
        vit(torch.randn(1, 2, 16, 16, 16), layers=(4,))


def test_bf16_autocast_runs():
    torch.manual_seed(0)
    model = ViPR(2, 3, 16, patch_size=4, skip_layers=(2, 3), **TINY)
    x = torch.randn(1, 2, 16, 16, 16)
    dtypes = []
    model.vit.blocks[0].attn.core.register_forward_hook(lambda mod, args, out: dtypes.append(out.dtype))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(x)
    assert logits.dtype == torch.bfloat16 and dtypes == [torch.bfloat16]  # attention runs in bf16
    assert torch.isfinite(logits.float()).all()
    logits.float().mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def all_params_learn(model: torch.nn.Module, x: torch.Tensor, n_classes: int) -> torch.Tensor:
    logits = model(x)
    target = torch.randint(0, n_classes, (x.shape[0], *x.shape[2:]))
    F.cross_entropy(logits, target).backward()
    missing = [name for name, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, f"parameters without gradient: {missing}"
    return logits


def test_vipr_paper_structure_forward_backward():
    torch.manual_seed(0)
    model = ViPR(2, 5, 32, patch_size=16, hidden_size=32, depth=12, num_heads=4, mlp_dim=64)
    assert [type(m).__name__ for m in model.decoder] == ["UpBlock"] * 3 + ["FullResUpBlock"]
    assert model.head.in_channels == 10  # M = 2 P
    logits = all_params_learn(model, torch.randn(2, 2, 32, 32, 32), 5)
    assert logits.shape == (2, 5, 32, 32, 32)


@pytest.mark.parametrize("norm", ["instance", "batch", "group"])
def test_vipr_small_patch_and_norms(norm):
    torch.manual_seed(0)
    model = ViPR(1, 3, (16, 8, 24), patch_size=4, skip_layers=(2, 3), norm=norm, feature_size=8, **TINY)
    logits = all_params_learn(model, torch.randn(2, 1, 16, 8, 24), 3)
    assert logits.shape == (2, 3, 16, 8, 24)


def test_vipr_rejects_bad_arguments():
    with pytest.raises(ValueError, match="power of two"):
        ViPR(2, 3, 24, patch_size=6, **TINY)
    with pytest.raises(ValueError, match="skip_layers must be 2 increasing block numbers ending at depth=3"):
        ViPR(2, 3, 16, patch_size=4, skip_layers=(1, 2), **TINY)
    model = ViPR(2, 3, 16, patch_size=4, skip_layers=(2, 3), **TINY)
    with pytest.raises(ValueError, match=r"expected input \(B, 2, 16, 16, 16\), got \(1, 2, 32, 32, 32\)"):
        model(torch.randn(1, 2, 32, 32, 32))


@pytest.mark.parametrize("kernel_size", [3, 5])
def test_copra_forward_backward(kernel_size):
    torch.manual_seed(0)
    model = CoPRA(2, 4, kernel_size=kernel_size)
    assert model.head.in_channels == 8
    logits = all_params_learn(model, torch.randn(1, 2, 32, 32, 16), 4)
    assert logits.shape == (1, 4, 32, 32, 16)


def test_copra_rejects_bad_shapes():
    model = CoPRA(2, 4, feature_size=4, down_convs=(1, 1, 1), up_convs=(1,))
    assert model(torch.randn(1, 2, 12, 8, 4)).shape == (1, 4, 12, 8, 4)
    with pytest.raises(ValueError, match="divisible by 4"):
        model(torch.randn(1, 2, 12, 8, 6))
    with pytest.raises(ValueError, match=r"expected input \(B, 2, D, H, W\)"):
        model(torch.randn(1, 3, 8, 8, 8))
    with pytest.raises(ValueError, match="one up stage fewer than halvings"):
        CoPRA(2, 4, down_convs=(1, 1, 1), up_convs=(1, 1))


@pytest.mark.parametrize("padding", ["zeros", "circular"])
@pytest.mark.parametrize("shape, k", [((1, 56, 16, 16, 16), 3), ((1, 28, 32, 32, 32), 3), ((2, 14, 16, 16, 16), 3),
                                      ((1, 3, 9, 8, 8), 3), ((1, 4, 8, 6, 10), 5)])
def test_cpu_conv_paths_equal_the_plain_convolution(shape, k, padding):
    """Split batch (56 @ 16³), channels-last (28 @ 32³), plain (the rest; 5³: periodic_conv3d) routes =
    F.conv3d with zero padding, or of the circularly padded input, forward and backward."""
    torch.manual_seed(0)
    conv = Conv3d(shape[1], 6, k, padding_mode=padding)
    x = torch.randn(shape, requires_grad=True)
    x_ref = x.detach().clone().requires_grad_()
    g = torch.randn(shape[0], 6, *shape[2:])
    conv(x).backward(g)
    grad_w = conv.weight.grad.clone()
    conv.weight.grad = None
    if padding == "circular":
        y_ref = F.conv3d(F.pad(x_ref, (k // 2,) * 6, mode="circular"), conv.weight)
    else:
        y_ref = F.conv3d(x_ref, conv.weight, padding=k // 2)
    y_ref.backward(g)
    torch.testing.assert_close(conv(x), y_ref, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(x.grad, x_ref.grad, atol=1e-4, rtol=1e-4)
    # weight gradients sum ~3e4 products in another order: compare with their scale (~200 at 32³)
    assert (grad_w - conv.weight.grad).abs().max() <= 1e-5 * conv.weight.grad.abs().max()


def test_pointwise_head_equals_the_1x1_convolution():
    torch.manual_seed(0)
    head = PointwiseConv(5, 3)
    x = torch.randn(2, 5, 4, 6, 8, requires_grad=True)
    out = head(x)
    torch.testing.assert_close(out, F.conv3d(x, head.weight, head.bias))
    out.square().sum().backward()
    grads = [t.grad.clone() for t in (x, head.weight, head.bias)]
    for t in (x, head.weight, head.bias):
        t.grad = None
    F.conv3d(x, head.weight, head.bias).square().sum().backward()
    for got, t in zip(grads, (x, head.weight, head.bias)):
        torch.testing.assert_close(got, t.grad)


@pytest.mark.parametrize("name", ["vipr", "copra", "vit", "monai_unetr", "monai_vnet"])
def test_build_model_for_every_name(name):
    cfg = config_from_dict({"model": {"name": name, "hidden_size": 32, "num_heads": 2, "mlp_dim": 64,
                                      "patch_size": 16, "feature_size": 4}})
    model = build_model(cfg.model, 2, 5, 32)
    out = model(torch.randn(1, 2, 32, 32, 32))
    if name == "vit":
        assert out[0].shape == (1, 8, 32)
    else:
        assert out.shape == (1, 5, 32, 32, 32)
    if name == "monai_unetr":
        assert all(block.attn.use_flash_attention for block in model.vit.blocks)


def test_build_model_errors_name_the_keys():
    def cfg(**model):
        return config_from_dict({"model": model}).model

    with pytest.raises(ConfigError, match=r"model.name=vipr, data.crop \[40, 40, 40\]: img_size"):
        build_model(cfg(name="vipr"), 2, 5, 40)
    with pytest.raises(ConfigError, match="patch_size must be cubic"):
        build_model(cfg(name="vipr", patch_size=[4, 4, 8]), 2, 5, 32)
    with pytest.raises(ConfigError, match="MONAI UNETR has patch 16"):
        build_model(cfg(name="monai_unetr", patch_size=8), 2, 5, 32)
    with pytest.raises(ConfigError, match="divisible by 16"):
        build_model(cfg(name="copra"), 2, 5, 40)
    with pytest.raises(ConfigError, match="16 divisible by the input channels"):
        build_model(cfg(name="monai_vnet"), 3, 5, 32)
    with pytest.raises(ConfigError, match="kernel_size must be 3 or 5"):
        cfg(name="copra", kernel_size=7)


@pytest.mark.parametrize("name", ["vipr", "copra"])
def test_networks_learn_a_local_rule(name, one_thread):
    """Voxel class = sign of the input field smoothed over 3³: both networks fit it within 40 Adam steps."""
    torch.manual_seed(0)
    if name == "vipr":
        model = ViPR(1, 2, 16, patch_size=4, skip_layers=(2, 3), **TINY)
    else:
        model = CoPRA(1, 2, feature_size=4, down_convs=(1, 1, 1), up_convs=(1,))
    x = torch.randn(2, 1, 16, 16, 16)
    target = (F.avg_pool3d(F.pad(x, (1,) * 6, mode="circular"), 3, stride=1) > 0).long()[:, 0]
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(40):
        opt.zero_grad()
        loss = F.cross_entropy(model(x), target)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    accuracy = (model(x).argmax(1) == target).float().mean().item()
    assert losses[-1] < 0.3 * losses[0] and accuracy > 0.95, (losses[0], losses[-1], accuracy)


def test_cpu_conv_switch_gives_plain_pytorch_convolutions(monkeypatch):
    """The one switch: with it off, Conv3d never takes the CPU paths (and the result is the same)."""
    from halotrans.models import cpu_conv

    conv = Conv3d(28, 6, 3)
    x = torch.randn(1, 28, 32, 32, 32)
    calls = []
    monkeypatch.setattr(cpu_conv, "same_conv3d", lambda *a: calls.append(1) or None)
    conv(x)
    assert calls == [1]
    with cpu_conv.disabled():
        y_plain = conv(x)
    assert calls == [1] and cpu_conv.ENABLED
    torch.testing.assert_close(y_plain, F.conv3d(x, conv.weight, padding=1))


def test_periodic_conv_under_bf16_autocast():
    """The periodic route off the CPU fast paths (any device) runs in the autocast dtype like F.conv3d,
    and its gradients reach the fp32 input and weight."""
    from halotrans.models import cpu_conv

    torch.manual_seed(0)
    x = torch.randn(1, 3, 8, 8, 8, requires_grad=True)
    w = torch.randn(4, 3, 3, 3, 3, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = cpu_conv.periodic_conv3d(x, w)
        y_ref = F.conv3d(F.pad(x, (1,) * 6, mode="circular"), w)
    assert y.dtype == y_ref.dtype == torch.bfloat16
    torch.testing.assert_close(y, y_ref)
    y.float().sum().backward()
    assert x.grad.dtype == w.grad.dtype == torch.float32


@pytest.mark.parametrize("name", ["vipr", "copra"])
def test_paper_decoders_forward_backward(name):
    """decoder=paper: MONAI's full-resolution blocks (UNETR residual blocks, V-Net up stages on the
    concatenation), every parameter trained, logits at full resolution."""
    torch.manual_seed(0)
    if name == "vipr":
        model = ViPR(2, 5, 32, patch_size=16, hidden_size=32, depth=12, num_heads=4, mlp_dim=64, decoder="paper")
        assert [type(m).__name__ for m in model.decoder] == ["ResUpBlock"] * 4
        assert type(model.stem).__name__ == "ResBlock" and model.head.in_channels == 10
        x = torch.randn(2, 2, 32, 32, 32)
    else:
        model = CoPRA(2, 4, decoder="paper")
        assert [type(m).__name__ for m in model.up] == ["ConcatUpStage"] * 4 and model.full_res is None
        assert [s.residual.convs[-2].in_channels for s in model.up] == [128, 64, 32, 16]  # 2W: 16M ... 2M
        x = torch.randn(1, 2, 32, 32, 16)
    logits = all_params_learn(model, x, model.head[-1].out_channels if name == "copra" else 5)
    assert logits.shape == (x.shape[0], 5 if name == "vipr" else 4, *x.shape[2:])


@pytest.mark.parametrize("decoder", ["light", "paper"])
def test_circular_padding_makes_copra_periodic(decoder, one_thread):
    """padding=circular: copra commutes with periodic shifts by its total stride (16), faces included;
    with zero padding it does not."""
    torch.manual_seed(0)
    x = torch.randn(1, 2, 32, 16, 16, dtype=torch.float64)  # float64: no round-off from the reordered sums

    def shift(t):
        return torch.roll(t, shifts=(16, -16), dims=(2, 4))

    for padding in ("circular", "zeros"):
        torch.manual_seed(1)
        model = CoPRA(2, 3, feature_size=2, kernel_size=3, decoder=decoder, padding=padding).double().eval()
        with torch.no_grad():
            diff = (model(shift(x)) - shift(model(x))).abs().max().item()
        assert (diff < 1e-10) == (padding == "circular"), (padding, diff)


@pytest.mark.parametrize("decoder", ["light", "paper"])
def test_circular_padding_reaches_every_convolution(decoder):
    """set_padding switches every stride-1 k > 1 convolution of vipr and copra (and only those)."""
    from torch import nn

    from halotrans.models.blocks import set_padding

    for model in (ViPR(2, 3, 16, patch_size=4, skip_layers=(2, 3), decoder=decoder, padding="circular", **TINY),
                  CoPRA(2, 3, feature_size=2, decoder=decoder, padding="circular")):
        same = [m for m in model.modules() if isinstance(m, nn.Conv3d) and m.stride == (1, 1, 1)
                and max(m.kernel_size) > 1]
        assert same and all(isinstance(m, Conv3d) and m.padding_mode == "circular" for m in same)
        assert not any(m.padding_mode == "circular" for m in model.modules()
                       if isinstance(m, (nn.Conv3d, nn.ConvTranspose3d)) and m not in same)
    with pytest.raises(TypeError, match="not a halotrans Conv3d"):
        set_padding(nn.Sequential(nn.Conv3d(2, 2, 3, padding=1)), "circular")
    with pytest.raises(ValueError, match="padding must be one of"):
        set_padding(nn.Sequential(), "reflect")


@pytest.mark.parametrize("name", ["monai_vnet", "monai_unetr"])
def test_circular_padding_makes_the_monai_peers_periodic(name, one_thread):
    """padding=circular on the MONAI peers (our adaptation): VNet commutes with periodic shifts by its
    total stride (16); UNETR by whole patches once its learned position embedding is made the same
    for every token (the positions are not periodic; its convolutions are). Zero padding does not."""
    from halotrans.models.config import ModelConfig

    torch.manual_seed(0)
    x = torch.randn(1, 2, 32, 32, 48, dtype=torch.float64)

    def shift(t):
        return torch.roll(t, shifts=(16, -16), dims=(2, 4))

    for padding in ("circular", "zeros"):
        torch.manual_seed(1)
        cfg = ModelConfig(name=name, hidden_size=32, num_heads=2, mlp_dim=64, feature_size=4, padding=padding)
        model = build_model(cfg, 2, 3, x.shape[2:]).double().eval()
        if name == "monai_unetr":
            with torch.no_grad():
                model.vit.patch_embedding.position_embeddings.fill_(0.1)
        with torch.no_grad():
            diff = (model(shift(x)) - shift(model(x))).abs().max().item()
        assert (diff < 1e-10) == (padding == "circular"), (padding, diff)


# Forward multiply-adds per output voxel, 2 input channels, ViT of 12 blocks, 8 heads, patch 16, at 32³
# (attention adds ~100 per voxel more at 64³). REFERENCE = configs/reference/{vipr,copra,monai_*}.yaml
# (hidden 256, MLP 1024, feature_size null = 2 x 5 classes); PAPER = benchmarks/bench_models.py
# (hidden 512, MLP 2048, feature size 14, 7 classes), the figures of issue 18.
MACS = {
    "reference": ({"hidden_size": 256, "mlp_dim": 1024}, 5,
                  {"vipr": 15981, "monai_unetr": 26629, "copra": 51312, "copra_paper": 147375, "monai_vnet": 362841}),
    "paper": ({"hidden_size": 512, "mlp_dim": 2048, "feature_size": 14}, 7,
              {"vipr": 34736, "monai_unetr": 56693, "copra": 99172, "copra_paper": 287455, "monai_vnet": 370865}),
}


@pytest.mark.parametrize("setting", list(MACS))
def test_forward_macs_per_voxel(setting, one_thread):
    """The pinned figures, and decoder=paper doing MONAI's work: vipr = MONAI UNETR exactly; copra = MONAI
    VNet exactly at VNet's fixed 16 base filters (at its own feature size it does (M/16)² of it)."""
    from halotrans.models.config import ModelConfig
    from halotrans.models.macs import forward_macs_per_voxel

    size, n_classes, expected = MACS[setting][0], MACS[setting][1], MACS[setting][2]

    def macs(name, **kw):
        cfg = ModelConfig(name=name, depth=12, num_heads=8, patch_size=16, **(size | kw))
        return forward_macs_per_voxel(build_model(cfg, 2, n_classes, 32), 2, 32)

    got = {name: macs(name) for name in ("vipr", "monai_unetr", "copra", "monai_vnet")}
    got["copra_paper"] = macs("copra", decoder="paper")
    assert got == pytest.approx(expected, abs=1)
    assert macs("vipr", decoder="paper") == pytest.approx(got["monai_unetr"], rel=1e-6)
    assert macs("copra", decoder="paper", feature_size=16) == pytest.approx(got["monai_vnet"], rel=1e-6)
    assert macs("copra", decoder="paper", padding="circular") == pytest.approx(got["copra_paper"], rel=1e-6)


def test_speed_rows_say_equal_configuration_only_at_equal_work():
    """benchmarks/bench_models.py: a speed row names its work ("equal configuration" only where the forward
    MACs per voxel agree), gives GFLOP/s = 3 x 2 x MACs x voxels/s and its fraction of the matmul peak, and
    splits a less-work speed-up into the MAC ratio times the speed per unit of work."""
    from halotrans.benchmark import load

    bench = load("models")
    got = {"voxels": 64**3, "peak_gflops": 100.0, "fastest": {"a": 1.0, "b": 2.0, "c": 4.0},
           "seconds": {"a": 1.1, "b": 2.2, "c": 4.4}, "macs": {"a": 50e3, "b": 50e3 * (1 + 1e-5), "c": 200e3}}
    equal = bench.speed_row("a", "b", got, "64³ CPU fp32", "measured peak")
    assert equal["work"] == "equal configuration" and "equal configuration" in equal["metric"]
    assert equal["ratio"] == pytest.approx(2.0) and equal["per_work_ratio"] == pytest.approx(2.0, rel=1e-4)
    assert equal["gflops"] == pytest.approx(6 * 50e3 * 64**3 / 1e9)
    assert equal["peak_fraction"] == pytest.approx(equal["gflops"] / 100.0)
    assert "forward MACs/voxel 50.0k vs 50.0k" in equal["note"]
    less = bench.speed_row("a", "c", got, "64³ CPU fp32", "measured peak")
    assert less["work"] == "less work (0.25× the MACs)" and less["ratio"] == pytest.approx(4.0)
    assert less["per_work_ratio"] == pytest.approx(1.0)
    assert less["note"].startswith("less work: speed-up 4.00× = 4.00× from the MAC ratio × 1.00× per unit of work")
    assert bench.work_label(2.0, 1.0) == "more work (2.00× the MACs)"


def test_forward_macs_counts_cpu_attention():
    """scaled_dot_product_attention on the CPU counts 2·L²·d multiply-adds per head (PyTorch counts none)."""
    from halotrans.models.macs import forward_macs

    vit = tiny_vit()  # 64 tokens, 2 heads of 12, 3 blocks
    assert forward_macs(vit, 2, 16)["_scaled_dot_product_flash_attention_for_cpu"] == 3 * 2 * 2 * 64 * 64 * 12


def test_decoder_and_padding_keys():
    """model.decoder / model.padding: validated by the loader; the MONAI peers take periodic padding
    (our adaptation), MONAI VNet from 32³ (torch's circular pad wraps at most once)."""
    def cfg(**model):
        return config_from_dict({"model": model}).model

    assert (cfg().decoder, cfg().padding) == ("light", "zeros")
    assert cfg(name="copra", decoder="paper", padding="circular").padding == "circular"
    with pytest.raises(ConfigError, match=r"model.decoder: 'full' is not one of \['paper', 'light'\]"):
        cfg(decoder="full")
    with pytest.raises(ConfigError, match=r"model.padding: 'reflect' is not one of \['zeros', 'circular'\]"):
        cfg(padding="reflect")
    for name in ("monai_unetr", "monai_vnet"):
        peer = build_model(cfg(name=name, hidden_size=32, num_heads=2, mlp_dim=64, padding="circular"), 2, 5, 32)
        assert {m.padding_mode for m in peer.modules() if isinstance(m, torch.nn.Conv3d)
                and m.stride == (1, 1, 1) and max(m.kernel_size) > 1} == {"circular"}
    with pytest.raises(ConfigError, match="circular for monai_vnet needs every side >= 32"):
        build_model(cfg(name="monai_vnet", padding="circular"), 2, 5, [32, 32, 16])
    model = build_model(cfg(name="vipr", hidden_size=32, num_heads=2, mlp_dim=64, decoder="paper",
                            padding="circular"), 2, 5, 32)
    assert type(model.stem).__name__ == "ResBlock" and model.stem.convs[0][0].padding_mode == "circular"


@pytest.mark.parametrize("shape, k", [((1, 2, 1, 3, 2), 5), ((1, 28, 1, 2, 4), 3), ((1, 2, 2, 4, 4), 5)])
def test_periodic_padding_wraps_more_than_once(shape, k):
    """A side shorter than the halo (the 1³ bottom of a 16³ copra crop under 5³ convs): the periodic
    signal is repeated, forward and backward (reference: the rows picked by index, mod n)."""
    torch.manual_seed(0)
    conv = Conv3d(shape[1], 3, k, padding_mode="circular")
    x = torch.randn(shape, requires_grad=True)
    y = conv(x)
    y.square().sum().backward()
    grads = x.grad.clone(), conv.weight.grad.clone()
    x.grad, conv.weight.grad = None, None
    p = k // 2
    xp = x
    for dim in (2, 3, 4):
        xp = xp.index_select(dim, torch.arange(-p, shape[dim] + p) % shape[dim])
    y_ref = F.conv3d(xp, conv.weight)
    y_ref.square().sum().backward()
    torch.testing.assert_close(y, y_ref)
    torch.testing.assert_close(grads, (x.grad, conv.weight.grad))


def test_periodic_conv_runs_on_the_meta_device():
    """The memory model (halotrans.parallel.memory) runs networks on the meta device: the periodic route
    must too, and it stores only the unpadded input for the backward pass."""
    from halotrans.parallel.memory import saved_bytes

    with torch.device("meta"):
        conv = Conv3d(4, 4, 5, padding_mode="circular")
        x = torch.empty(1, 4, 8, 8, 8, requires_grad=True)
    assert conv(x).shape == (1, 4, 8, 8, 8)
    assert saved_bytes(conv, x) == x.nbytes
