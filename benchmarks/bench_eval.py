"""Evaluation: periodic sliding-window inference vs MONAI's sliding window, exact AUC vs scipy.

* Full-box inference of copra (tiny config, random weights, fp32) on an (N,N,N) box with
  ``window`` and overlap 0.5, Gaussian blending, 2 windows per batch: ``predict_periodic`` vs
  ``monai.inferers.sliding_window_inference`` on the box padded circularly by window/4 per side
  and cropped back (MONAI does not wrap periodic boxes). Throughput in box voxels per second.
  N = 128, window 64 (quick: N = 48, window 32); best of 2.
* Periodic exactness: the largest difference from whole-box inference, for a conv net with circular
  padding (receptive radius 2): ours with margin 2, MONAI with the circular pre-padding.
* Exact one-vs-rest AUC of 7 classes on an N³ box (ties included): ``metrics.roc_auc`` vs the
  Mann-Whitney U of ``scipy.stats.mannwhitneyu`` (mid-ranks), N = 128 (quick: 64).
"""

from __future__ import annotations

import time

import numpy as np
import torch
import torch.nn.functional as F
from scipy.stats import mannwhitneyu
from torch import nn

from halotrans.benchmark import row
from halotrans.config import load_config
from halotrans.eval import metrics
from halotrans.eval.inference import predict_periodic


def _best(fn, repeats: int) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def _monai(model: nn.Module, x: torch.Tensor, window: int, pad: int) -> np.ndarray:
    from monai.inferers import sliding_window_inference

    padded = F.pad(x[None], (pad,) * 6, mode="circular")
    with torch.no_grad():
        out = sliding_window_inference(padded, window, 2, lambda t: torch.softmax(model(t), 1),
                                       overlap=0.5, mode="gaussian")
    n = x.shape[1]
    return out[0, :, pad:pad + n, pad:pad + n, pad:pad + n].numpy()


def run(quick: bool) -> list[dict]:
    from halotrans.models.registry import build_model

    n, window, repeats = (48, 32, 2) if quick else (128, 64, 2)
    torch.manual_seed(0)
    cfg = load_config("segment/tiny_copra.yaml")
    copra = build_model(cfg.model, 2, 5, window).eval()
    x = torch.randn(2, n, n, n)
    with torch.no_grad():  # warm up the convolution kernels for this window size
        copra(x[None, :, :window, :window, :window].repeat(2, 1, 1, 1, 1))
    ours_s, _ = _best(lambda: predict_periodic(copra, x, window, 0.5, 2, progress=False), repeats)
    peer_s, _ = _best(lambda: _monai(copra, x, window, window // 4), repeats)
    rows = [row("eval", f"copra full-box inference {n}³, window {window}, overlap 0.5", n**3 / ours_s / 1e6,
                "Mvox/s", "MONAI sliding_window_inference (circular pre-pad window/4)", n**3 / peer_s / 1e6,
                note="same model, fp32, Gaussian blend, 2 windows per batch")]

    torch.manual_seed(1)
    circ = nn.Sequential(nn.Conv3d(2, 8, 3, padding=1, padding_mode="circular"), nn.GELU(),
                         nn.Conv3d(8, 8, 3, padding=1, padding_mode="circular"), nn.GELU(),
                         nn.Conv3d(8, 5, 1)).eval()
    xs = torch.randn(2, 40, 40, 40)
    with torch.no_grad():
        whole = torch.softmax(circ(xs[None]), 1)[0].numpy()
    ours_err = np.abs(predict_periodic(circ, xs, 16, 0.5, 2, margin=2, progress=False) - whole).max()
    peer_err = np.abs(_monai(circ, xs, 16, 4) - whole).max()
    rows.append(row("eval", "max |p - p_whole-box|, circular conv net, 40³ box, window 16", float(ours_err), "",
                    "MONAI sliding_window_inference (circular pre-pad window/4)", float(peer_err),
                    higher_is_better=False, note="ours with margin 2 = receptive radius"))

    m = 64 if quick else 128
    rng = np.random.default_rng(2)
    labels = rng.integers(0, 7, size=(m, m, m))
    probs = rng.random((7, m, m, m), dtype=np.float32).round(3)  # rounded: many ties
    ours_s, ours = _best(lambda: [metrics.roc_auc(probs[c], labels == c) for c in range(7)], 1)

    def scipy_auc():
        out = []
        for c in range(7):
            pos = labels == c
            u = mannwhitneyu(probs[c][pos], probs[c][~pos], method="asymptotic").statistic
            out.append(u / (pos.sum() * (~pos).sum()))
        return out

    peer_s, peer = _best(scipy_auc, 1)
    diff = float(np.max(np.abs(np.array(ours) - np.array(peer))))
    rows.append(row("eval", f"exact AUC, 7 classes, {m}³ voxels", ours_s, "s", "scipy.stats.mannwhitneyu", peer_s,
                    higher_is_better=False, note=f"max |AUC difference| {diff:.1e}"))
    return rows
