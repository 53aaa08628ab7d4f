"""Full-box inference with periodic sliding windows.

A box is periodic, so windows wrap around its faces instead of being zero-padded: window ``i``
along an axis of ``n`` voxels covers voxels ``(start_i + j) mod n``, ``j < window``. Window
outputs (softmax probabilities) are blended with separable weights (Gaussian, linear tent or
constant) and every voxel's result is the weighted mean of the windows covering it. ``margin``
voxels at each window face get weight 0, so a network whose receptive-field radius is at most
``margin`` gives, at every voxel, exactly what it gives on the whole box.

A window at least as large as the box (``window - 2·margin >= n``) runs the box once: the input
is the box wrapped periodically to the window size, centred, and only the central ``n`` voxels
are kept.

    probs = predict_periodic(model, x, window=64, overlap=0.5)   # x (C,N,N,N) -> (P,N,N,N)
"""

from __future__ import annotations

import itertools
import math
import os
from typing import Iterable, Iterator, Literal, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from halotrans.yaml_config import ConfigError

Blend = Literal["gaussian", "linear", "constant"]


def blend_profile(length: int, blend: Blend = "gaussian") -> np.ndarray:
    """1-D weights (length,) > 0: Gaussian with σ = length/8, linear tent, or constant."""
    x = np.arange(length) + 0.5 - length / 2
    if blend == "gaussian":
        return np.exp(-0.5 * (x / (0.125 * length)) ** 2)
    if blend == "linear":
        return 1.0 - np.abs(x) / (length / 2)
    if blend == "constant":
        return np.ones(length)
    raise ConfigError(f"eval.blend: unknown blend '{blend}' (use gaussian, linear or constant)")


def axis_layout(n: int, window: int, overlap: float, margin: int = 0,
                blend: Blend = "gaussian") -> tuple[list[int], np.ndarray]:
    """Window starts (periodic, may be negative) and per-position weights (window,) along one axis.

    The weighted "core" of each window (``window - 2·margin`` voxels) is what tiles the axis; the
    cores are spread evenly with spacing at most ``window·(1 − overlap)``, so every voxel is covered.
    """
    core = window - 2 * margin
    if core < 1:
        raise ConfigError(f"eval.margin: {margin} leaves no voxels of a {window}-voxel window")
    weights = np.zeros(window)
    if core >= n:
        offset = (window - n) // 2
        weights[offset:offset + n] = blend_profile(n, blend)
        return [-offset], weights
    stride = max(1, min(core, int(math.floor(window * (1.0 - overlap) + 1e-9))))
    n_windows = math.ceil(n / stride)
    weights[margin:margin + core] = blend_profile(core, blend)
    return [(i * n) // n_windows - margin for i in range(n_windows)], weights


def _wrapped_runs(start: int, length: int, n: int) -> list[tuple[slice, slice]]:
    """Contiguous pieces of the periodic range [start, start+length): (window slice, box slice)."""
    runs, j = [], 0
    while j < length:
        t = (start + j) % n
        k = min(length - j, n - t)
        runs.append((slice(j, j + k), slice(t, t + k)))
        j += k
    return runs


def _wrapped_index(start: int, length: int, n: int, device: torch.device) -> torch.Tensor:
    return torch.remainder(torch.arange(start, start + length, device=device), n)


def _model_device(model: torch.nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


@torch.no_grad()
def predict_periodic(
    model: torch.nn.Module,
    x: np.ndarray | torch.Tensor,
    window: int | Sequence[int],
    overlap: float = 0.5,
    batch_size: int = 1,
    *,
    margin: int = 0,
    blend: Blend = "gaussian",
    bf16: bool = False,
    progress: bool = True,
) -> np.ndarray:
    """Class probabilities (P, D, H, W) float32 of a periodic box ``x`` (C, D, H, W), C order.

    ``model`` maps (B, C, w, w, w) to logits (B, P, w, w, w); it runs on its own device (CPU or
    CUDA) in eval mode without gradients. ``window`` is an int (cubic) or one size per axis;
    ``bf16`` autocasts the forward pass on CUDA only (softmax and blending stay float32).
    """
    xt = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x)
    if xt.ndim != 4:
        raise ValueError(f"predict_periodic expects x of shape (C, D, H, W), got {tuple(xt.shape)}")
    shape = tuple(int(s) for s in xt.shape[1:])
    windows = (int(window),) * 3 if isinstance(window, (int, np.integer)) else tuple(int(w) for w in window)
    if len(windows) != 3 or min(windows) < 1:
        raise ConfigError(f"eval.window must be a positive int or three of them, got {window}")
    device = _model_device(model)
    xt = xt.to(device=device, dtype=torch.float32)
    layouts = [axis_layout(n, w, overlap, margin, blend) for n, w in zip(shape, windows)]
    weights = [torch.as_tensor(wt, dtype=torch.float32, device=device) for _, wt in layouts]
    weight3 = weights[0][:, None, None] * weights[1][None, :, None] * weights[2][None, None, :]
    # Sum of weights per box voxel: separable, one axis at a time.
    wsum_axes = []
    for (starts, wt), n in zip(layouts, shape):
        s = np.zeros(n)
        for st in starts:
            np.add.at(s, (st + np.arange(len(wt))) % n, wt)
        wsum_axes.append(torch.as_tensor(s, dtype=torch.float32, device=device))
    wsum = wsum_axes[0][:, None, None] * wsum_axes[1][None, :, None] * wsum_axes[2][None, None, :]

    grid = list(itertools.product(*(starts for starts, _ in layouts)))
    was_training = model.training
    model.eval()
    out: torch.Tensor | None = None
    autocast = torch.autocast(device_type=device.type, dtype=torch.bfloat16,
                              enabled=bf16 and device.type == "cuda")
    bar = tqdm(total=len(grid), desc="windows", unit="win", leave=False,
               disable=not progress or len(grid) < 2)
    try:
        for b0 in range(0, len(grid), batch_size):
            batch_starts = grid[b0:b0 + batch_size]
            crops = []
            for st in batch_starts:
                crop = xt
                for axis, (s0, w, n) in enumerate(zip(st, windows, shape)):
                    crop = crop.index_select(axis + 1, _wrapped_index(s0, w, n, device))
                crops.append(crop)
            inp = torch.stack(crops)
            try:
                with autocast:
                    logits = model(inp)
            except torch.OutOfMemoryError:
                raise
            except (RuntimeError, ValueError, AssertionError) as e:
                if b0 > 0:
                    raise
                raise ConfigError(
                    f"eval.window: the model rejected a {tuple(inp.shape)} input window ({e}); "
                    "choose a window it accepts, e.g. the training crop"
                ) from None
            if logits.ndim != 5 or tuple(logits.shape[2:]) != windows or logits.shape[0] != len(batch_starts):
                raise ValueError(f"model returned {tuple(logits.shape)} for input {tuple(inp.shape)}; "
                                 "expected logits (B, P, *window)")
            probs = F.softmax(logits.float(), dim=1) * weight3
            if out is None:
                out = torch.zeros((probs.shape[1], *shape), dtype=torch.float32, device=device)
            for p, st in zip(probs, batch_starts):
                runs = [_wrapped_runs(s0, w, n) for s0, w, n in zip(st, windows, shape)]
                for (jd, td), (jh, th), (jw, tw) in itertools.product(*runs):
                    out[:, td, th, tw] += p[:, jd, jh, jw]
            bar.update(len(batch_starts))
    finally:
        bar.close()
        model.train(was_training)
    assert out is not None
    return (out / wsum).cpu().numpy()


def predict_files(
    model: torch.nn.Module,
    paths: Iterable[str | os.PathLike],
    inputs: Sequence[str],
    norm_stats: Mapping,
    window: int,
    overlap: float = 0.5,
    batch_size: int = 1,
    **kw,
) -> Iterator[tuple[str, np.ndarray]]:
    """Yield ``(path, probs (P,N,N,N))`` for each box file, inputs prepared exactly as in training.

    ``inputs``/``norm_stats`` come from the checkpoint's meta; ``kw`` goes to :func:`predict_periodic`.
    """
    from halotrans.data.boxes import load_inputs

    for path in paths:
        x = load_inputs(path, inputs, norm_stats)
        yield str(path), predict_periodic(model, x, window, overlap, batch_size, **kw)
