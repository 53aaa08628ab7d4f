"""The networks: shared ViT3D, vipr (UNETR), copra (V-Net), their blocks and build_model."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from halotrans.config import ConfigError, config_from_dict
from halotrans.models.blocks import Conv3d, PointwiseConv
from halotrans.models.build import build_model
from halotrans.models.copra import CoPRA
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


@pytest.mark.parametrize("shape", [(1, 56, 16, 16, 16), (1, 28, 32, 32, 32), (2, 14, 16, 16, 16), (1, 3, 9, 8, 8)])
def test_cpu_conv_paths_equal_the_plain_convolution(shape):
    torch.manual_seed(0)
    conv = Conv3d(shape[1], 6, 3)
    x = torch.randn(shape, requires_grad=True)
    x_ref = x.detach().clone().requires_grad_()
    g = torch.randn(shape[0], 6, *shape[2:])
    conv(x).backward(g)
    grad_w = conv.weight.grad.clone()
    conv.weight.grad = None
    y_ref = F.conv3d(x_ref, conv.weight, padding=1)
    y_ref.backward(g)
    torch.testing.assert_close(conv(x), y_ref, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(x.grad, x_ref.grad, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(grad_w, conv.weight.grad, atol=1e-3, rtol=1e-4)


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


@pytest.fixture
def one_thread():
    """Tiny networks: one thread is as fast and does not fight other jobs for the cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


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
