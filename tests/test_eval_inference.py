"""Periodic sliding-window inference equals whole-box inference of translation-equivariant nets."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from halotrans.config import ConfigError
from halotrans.eval.inference import axis_layout, predict_periodic


def circular_net(in_ch: int = 2, n_classes: int = 3, layers: int = 2, seed: int = 0) -> nn.Module:
    """Conv net with circular padding: translation-equivariant on a periodic box, receptive radius = layers."""
    torch.manual_seed(seed)
    mods: list[nn.Module] = []
    ch = in_ch
    for _ in range(layers):
        mods += [nn.Conv3d(ch, 6, 3, padding=1, padding_mode="circular"), nn.GELU()]
        ch = 6
    mods.append(nn.Conv3d(ch, n_classes, 1))
    return nn.Sequential(*mods).eval()


def whole_box(model: nn.Module, x: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return torch.softmax(model(x[None]), dim=1)[0].numpy()


@pytest.mark.parametrize("n, window, overlap, margin, blend, batch", [
    (13, 8, 0.5, 2, "gaussian", 1),    # 13 not divisible by the stride 4
    (13, 8, 0.0, 2, "gaussian", 4),    # no overlap: cores of 4 voxels tile the box
    (16, 9, 0.3, 2, "linear", 3),
    (14, 10, 0.6, 2, "constant", 2),
    (12, 16, 0.5, 2, "gaussian", 1),   # window larger than the box: wrapped whole box
    (11, 11, 0.5, 2, "gaussian", 2),   # window = box but the margin forces several windows
])
def test_sliding_window_equals_whole_box(n, window, overlap, margin, blend, batch):
    model = circular_net(layers=2)  # receptive radius 2 = margin
    x = torch.randn(2, n, n, n, generator=torch.Generator().manual_seed(n))
    probs = predict_periodic(model, x, window, overlap, batch, margin=margin, blend=blend, progress=False)
    assert probs.shape == (3, n, n, n) and probs.dtype == np.float32
    np.testing.assert_allclose(probs, whole_box(model, x), atol=2e-6)
    np.testing.assert_allclose(probs.sum(axis=0), 1.0, atol=1e-5)


def test_window_equal_to_box_is_one_whole_box_pass():
    model = circular_net()
    x = torch.randn(2, 10, 10, 10)
    starts, weights = axis_layout(10, 10, 0.5)
    assert starts == [0] and np.all(weights > 0)
    np.testing.assert_allclose(predict_periodic(model, x, 10, 0.5, progress=False), whole_box(model, x), atol=1e-6)


def test_pointwise_model_needs_no_margin():
    model = circular_net(layers=0)  # 1x1x1 convolution only
    x = np.random.default_rng(1).normal(size=(2, 15, 15, 15)).astype(np.float32)
    probs = predict_periodic(model, x, 7, 0.5, batch_size=2, progress=False)
    np.testing.assert_allclose(probs, whole_box(model, torch.from_numpy(x)), atol=1e-6)


def test_without_margin_window_edges_differ():
    """The margin matters: window faces wrap onto themselves, not onto the box neighbours."""
    model = circular_net(layers=2)
    x = torch.randn(2, 12, 12, 12)
    probs = predict_periodic(model, x, 6, 0.5, progress=False)
    assert np.abs(probs - whole_box(model, x)).max() > 1e-3


@pytest.mark.parametrize("n", [5, 12, 13, 31, 64])
@pytest.mark.parametrize("window, overlap, margin", [(4, 0.0, 0), (6, 0.5, 1), (8, 0.25, 3), (9, 0.9, 2), (70, 0.5, 2)])
def test_axis_layout_covers_every_voxel(n, window, overlap, margin):
    starts, weights = axis_layout(n, window, overlap, margin)
    total = np.zeros(n)
    for s in starts:
        np.add.at(total, (s + np.arange(window)) % n, weights)
    assert np.all(total > 0)
    assert np.all(weights[:margin] == 0) and np.all(weights[window - margin:] == 0)
    if window - 2 * margin >= n:
        assert len(starts) == 1


def test_bf16_flag_is_ignored_on_cpu():
    model = circular_net()
    x = torch.randn(2, 8, 8, 8)
    a = predict_periodic(model, x, 8, 0.5, progress=False)
    b = predict_periodic(model, x, 8, 0.5, bf16=True, progress=False)
    np.testing.assert_array_equal(a, b)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_cuda_matches_cpu():
    model = circular_net()
    x = torch.randn(2, 12, 12, 12)
    cpu = predict_periodic(model, x, 8, 0.5, margin=2, progress=False)
    gpu = predict_periodic(model.cuda(), x, 8, 0.5, margin=2, progress=False)
    np.testing.assert_allclose(gpu, cpu, atol=1e-4)
    bf16 = predict_periodic(model, x, 8, 0.5, margin=2, bf16=True, progress=False)
    np.testing.assert_allclose(bf16, cpu, atol=5e-2)


class FixedSize(nn.Module):
    """Accepts only 8³ inputs, like a ViT with a learnable position embedding."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv3d(1, 2, 1)

    def forward(self, x):
        if x.shape[2:] != (8, 8, 8):
            raise ValueError(f"expected 8³ input, got {tuple(x.shape[2:])}")
        return self.conv(x)


def test_bad_inputs_raise_clear_errors():
    x = torch.randn(1, 12, 12, 12)
    with pytest.raises(ConfigError, match="eval.window: the model rejected"):
        predict_periodic(FixedSize(), x, 6, 0.5, progress=False)
    assert predict_periodic(FixedSize(), x, 8, 0.5, progress=False).shape == (2, 12, 12, 12)
    with pytest.raises(ValueError, match=r"\(C, D, H, W\)"):
        predict_periodic(FixedSize(), x[0], 8, 0.5)
    with pytest.raises(ConfigError, match="margin"):
        predict_periodic(FixedSize(), x, 8, 0.5, margin=4)
