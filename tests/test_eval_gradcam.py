"""Grad-CAM maps: exact values on networks whose gradients are known, and the real vipr."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from halotrans.eval.gradcam import default_layer, grad_cam


def pointwise_net() -> nn.Module:
    """conv1: feature = input; head: logit_1 = +feature, logit_0 = -feature (all 1x1x1)."""
    net = nn.Sequential(nn.Conv3d(1, 1, 1), nn.ReLU(), nn.Conv3d(1, 2, 1))
    with torch.no_grad():
        net[0].weight.fill_(1.0)
        net[0].bias.zero_()
        net[2].weight.copy_(torch.tensor([-1.0, 1.0]).view(2, 1, 1, 1, 1))
        net[2].bias.zero_()
    return net


@pytest.mark.filterwarnings("ignore:Full backward hook is firing")
def test_conv_gradcam_exact_on_a_pointwise_net():
    x = torch.randn(1, 6, 6, 6, generator=torch.Generator().manual_seed(0))
    net = pointwise_net()
    # target conv1 (pre-ReLU output A = x). Class 1: dS/dA = 1 where x > 0, so the channel weight is the
    # fraction of positive voxels and the map is relu(w x) / max = relu(x) / max(x).
    cam = grad_cam(net, x, [1, 0], layer="0")
    relu = np.maximum(x[0].numpy(), 0)
    np.testing.assert_allclose(cam[0], relu / relu.max(), atol=1e-6)
    # Class 0: dS/dA = -1 where x > 0: negative weight, map relu(-w x) is the negative voxels.
    neg = np.maximum(-x[0].numpy(), 0)
    np.testing.assert_allclose(cam[1], neg / neg.max(), atol=1e-6)
    assert net[0].weight.grad is None  # the caller's network is untouched (a copy ran)


def test_default_layer_is_the_bottleneck():
    net = nn.Sequential(
        nn.Conv3d(2, 4, 3, padding=1), nn.ReLU(),
        nn.Conv3d(4, 8, 3, stride=2, padding=1), nn.ReLU(),
        nn.Conv3d(8, 8, 3, padding=1), nn.ReLU(),
        nn.Upsample(scale_factor=2), nn.Conv3d(8, 3, 1))
    x = torch.randn(2, 8, 8, 8)
    assert default_layer(net, x[None]) == "5"  # the activation after the last conv at 4³
    cam = grad_cam(net, x, [1, 2])
    assert cam.shape == (2, 8, 8, 8) and cam.min() >= 0 and cam.max() == pytest.approx(1.0)


class TinyTokenNet(nn.Module):
    """Patch embedding (patch 4) -> one transformer-like block -> per-patch linear head, repeated per voxel."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Conv3d(1, 3, 4, stride=4)
        self.blocks = nn.ModuleList([nn.Linear(3, 3)])
        self.head = nn.Linear(3, 2)

    def forward(self, x):
        t = self.embed(x).flatten(2).transpose(1, 2)  # (B, 8, 3) on a 2x2x2 grid
        for b in self.blocks:
            t = b(t)
        logits = self.head(t).transpose(1, 2).reshape(x.shape[0], 2, 2, 2, 2)
        return logits.repeat_interleave(4, 2).repeat_interleave(4, 3).repeat_interleave(4, 4)


def test_token_gradcam_exact_on_a_patch_grid():
    torch.manual_seed(1)
    net = TinyTokenNet()
    x = torch.randn(1, 8, 8, 8)
    assert default_layer(net, x[None]) == "blocks.0"
    cam = grad_cam(net, x, [1])[0]
    # dS/dt_{l,d} = 64 W[1, d] for every token, so the map is relu(t_l · W[1]) on the 2³ grid, upsampled.
    with torch.no_grad():
        t = net.blocks[0](net.embed(x[None]).flatten(2).transpose(1, 2))[0]
        coarse = F.relu(t @ net.head.weight[1]).view(1, 1, 2, 2, 2)
        want = F.interpolate(coarse, size=(8, 8, 8), mode="trilinear", align_corners=False)[0, 0]
    np.testing.assert_allclose(cam, (want / want.max()).numpy(), atol=1e-5)


def test_vipr_gradcam_on_last_vit_block():
    from halotrans.models.vipr import ViPR

    torch.manual_seed(0)
    net = ViPR(2, 4, 16, patch_size=4, hidden_size=16, depth=2, num_heads=2, mlp_dim=32, skip_layers=(1, 2))
    x = torch.randn(2, 16, 16, 16)
    assert default_layer(net, x[None]) == "vit.blocks.1"
    cam = grad_cam(net, x, [1, 3])
    assert cam.shape == (2, 16, 16, 16) and np.isfinite(cam).all() and cam.min() >= 0 and cam.max() <= 1
    decoder = grad_cam(net, x, [1], layer="head")  # any conv layer by name goes through MONAI
    assert decoder.shape == (1, 16, 16, 16)
    with pytest.raises(ValueError, match="no module 'nope'"):
        grad_cam(net, x, [1], layer="nope")


@pytest.mark.slow
@pytest.mark.parametrize("name, layer", [("copra", "down.3"), ("monai_unetr", "vit.blocks.11")])
def test_default_layers_of_the_project_networks(name, layer):
    from halotrans.config import load_config
    from halotrans.models.registry import build_model

    cfg = load_config(None, [f"model.name={name}", "model.hidden_size=16", "model.num_heads=2",
                             "model.mlp_dim=32", "model.feature_size=4"])
    torch.manual_seed(0)
    net = build_model(cfg.model, 2, 3, 32)
    x = torch.randn(2, 32, 32, 32)
    assert default_layer(net, x[None]) == layer
    cam = grad_cam(net, x, [2])
    assert cam.shape == (1, 32, 32, 32) and np.isfinite(cam).all() and cam.max() == pytest.approx(1.0)
