"""Grad-CAM maps of segmentation networks (which input regions drive a class's logits).

The class score is the class logit summed over all voxels of the input window (as in
``monai.visualize.GradCAM``); its gradient with respect to a target layer's activations, averaged
over positions, weights the activation channels; the map is ReLU(Σ_c w_c A_c), upsampled
trilinearly to the input grid and divided by its maximum (so 0 means "no contribution" and 1 the
strongest; an all-zero map stays zero).

* Layers returning 3-D feature maps (B, C, D, H, W) (copra, the V-Net peers, vipr's decoder):
  ``monai.visualize.GradCAM`` on the named module. The automatic choice for a network without a
  transformer is the bottleneck: of the modules returning a feature map with the fewest voxels,
  the last to finish (for copra the whole deepest stage ``down.<last>``, after its residual and
  activation). Its maps are as coarse as the bottleneck (crop/16 for copra); name a shallower
  stage (e.g. ``down.1``) for finer maps.
* Layers returning tokens (B, L, K) (vipr's and MONAI UNETR's ViT encoder): the same formula on
  the tokens, channels K on the patch grid (the encoder's ``grid_size`` if it has one, else a
  cubic grid of L or L − 1 patches, a leading class token dropped). The automatic choice is the
  last transformer block (a module ``...blocks.<i>`` returning tokens). It shows what the deep
  encoder path sees; the decoder also takes skip connections from shallower blocks and the input.
"""

from __future__ import annotations

import copy
import math
from typing import Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


def unit_max(cam: torch.Tensor) -> torch.Tensor:
    """Divide each map of a (B, 1, ...) batch by its maximum (maps are ≥ 0 after the ReLU)."""
    peak = cam.flatten(1).amax(dim=1).clamp_min(torch.finfo(cam.dtype).tiny)
    return cam / peak.view(-1, *([1] * (cam.ndim - 1)))


def layer_outputs(model: nn.Module, x: torch.Tensor) -> list[tuple[str, tuple[int, ...]]]:
    """(name, output shape) of every submodule returning a tensor, in the order they finish on ``x``."""
    fired: list[tuple[str, tuple[int, ...]]] = []

    def record(name: str):
        def hook(_m, _i, out):
            if isinstance(out, torch.Tensor):
                fired.append((name, tuple(out.shape)))
        return hook

    hooks = [mod.register_forward_hook(record(name)) for name, mod in model.named_modules() if name]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in hooks:
            h.remove()
    return fired


def _is_block(name: str) -> bool:
    parent, _, last = name.rpartition(".")
    return last.isdigit() and parent.rpartition(".")[2] == "blocks"


def default_layer(model: nn.Module, x: torch.Tensor) -> str:
    """The last transformer block if the model has one, else the bottleneck feature map (module doc)."""
    return _choose(model, layer_outputs(model, x))


def _choose(model: nn.Module, fired: list[tuple[str, tuple[int, ...]]]) -> str:
    blocks = [name for name, shape in fired if len(shape) == 3 and _is_block(name)]
    if blocks:
        return blocks[-1]
    maps = [(name, math.prod(shape[2:])) for name, shape in fired if len(shape) == 5]
    if not maps:
        raise ValueError(f"{type(model).__name__} has no 3-D feature maps nor transformer blocks for Grad-CAM")
    smallest = min(size for _, size in maps)
    return [name for name, size in maps if size == smallest][-1]


def _patch_grid(n_tokens: int, spatial: Sequence[int]) -> tuple[int, ...]:
    for n in (n_tokens, n_tokens - 1):
        g = round(n ** (1 / 3))
        if g**3 == n and all(s % g == 0 for s in spatial):
            return (g, g, g)
    raise ValueError(f"cannot place {n_tokens} tokens on a cubic patch grid of a {tuple(spatial)} input")


def _token_cam(model: nn.Module, x: torch.Tensor, class_idx: int, layer: nn.Module,
               grid: Sequence[int] | None) -> torch.Tensor:
    store: dict[str, torch.Tensor] = {}

    def keep(_m, _i, out):
        out.retain_grad()
        store["a"] = out

    handle = layer.register_forward_hook(keep)
    try:
        logits = model(x)
    finally:
        handle.remove()
    model.zero_grad(set_to_none=True)
    logits[:, class_idx].sum().backward()
    acts, grads = store["a"].detach(), store["a"].grad
    b, n_tok, _ = acts.shape
    spatial = x.shape[2:]
    grid = tuple(grid) if grid is not None else _patch_grid(n_tok, spatial)
    if n_tok == math.prod(grid) + 1:  # class token first
        acts, grads = acts[:, 1:], grads[:, 1:]
    weights = grads.mean(dim=1, keepdim=True)  # (B, 1, K)
    cam = F.relu((weights * acts).sum(-1)).view(b, 1, *grid)
    return F.interpolate(cam, size=spatial, mode="trilinear", align_corners=False)


def grad_cam(model: nn.Module, x: np.ndarray | torch.Tensor, classes: Sequence[int],
             layer: str = "") -> np.ndarray:
    """Grad-CAM maps (K, D, H, W) in [0, 1] of each class in ``classes`` for one window ``x`` (C, D, H, W).

    ``layer`` names a module of ``model`` ('' = :func:`default_layer`). A copy of the model runs
    (MONAI leaves hooks on the network it wraps) on the model's device, in eval mode.
    """
    from monai.visualize import GradCAM

    model = copy.deepcopy(model).eval()
    device = next(model.parameters()).device
    xt = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x,
                         dtype=torch.float32, device=device)[None]
    fired = layer_outputs(model, xt)
    name = layer or _choose(model, fired)
    modules = dict(model.named_modules())
    if name not in modules:
        raise ValueError(f"eval.gradcam_layer: {type(model).__name__} has no module '{name}'")
    ndim = {n: len(shape) for n, shape in fired}.get(name)
    maps = []
    with torch.enable_grad():
        if ndim == 3:
            encoder = modules[name.rpartition(".blocks.")[0]] if ".blocks." in name else model
            grid = getattr(encoder, "grid_size", None)
            maps = [unit_max(_token_cam(model, xt, int(c), modules[name], grid)) for c in classes]
        elif ndim == 5:
            cam = GradCAM(nn_module=model, target_layers=name, postprocessing=unit_max)
            maps = [cam(x=xt, class_idx=int(c)) for c in classes]
        else:
            raise ValueError(f"eval.gradcam_layer: module '{name}' returns no (B, C, D, H, W) feature map "
                             "nor (B, L, K) tokens")
    return torch.cat(maps)[:, 0].detach().float().cpu().numpy()
