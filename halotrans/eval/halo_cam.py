"""Grad-CAM of one proto-halo at a time, as the paper uses it: which regions of the whole periodic
box, and which input fields, make the network give a halo's Lagrangian voxels their mass class.

Layouts and units: fields and masks are (N, N, N) arrays in C order (axis 0 = x, as in the box
files), the network input ``x`` is (C, N, N, N) float32 of normalised channels of the whole box;
``halo_id`` is (N, N, N) int (−1 = no halo) and ``halo_mass`` (N, N, N) float log10(M / (M☉/h))
per voxel, 0 = no halo (the box files' ``/halo_mass``, binned by
:func:`halotrans.data.boxes.mass_to_class`: class 0 = no halo, classes 1 .. len(edges) + 1).

* Score S = the target class's pre-softmax logit summed over the halo's voxels (logit units).
* CAM at a decoder layer with activations A_k: w_k = ⟨∂S/∂A_k⟩ over positions, map ReLU(Σ_k w_k A_k),
  upsampled trilinearly *periodically* to N³ if the layer is coarser (N/2), divided by its maximum
  (1 = strongest, an all-zero map stays 0). ``cam_in_halo`` = mean map inside / mean outside the halo.
* ``share``: gradient × input of S, Σ_voxels |x · ∂S/∂x| per channel group, as fractions of the total
  (they sum to 1; all 0 if the input attribution vanishes).

The default layer (:func:`decoder_layer`) is the last decoder stage at full resolution, not the
bottleneck used by :func:`halotrans.eval.gradcam.default_layer`: at 2³ a single proto-halo of a few
hundred voxels would be one or two cells.

    records, items = run_halo_cams(model, x, halo_id, halo_mass, (13.0, 13.5, 14.0), {"delta": [0], "T": [1]})
    halo_cam_figure("halo_cams.png", delta, items, ["none", "<13", "13-13.5", "13.5-14", ">14"])
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from halotrans.data.boxes import mass_to_class
from halotrans.eval.gradcam import layer_outputs, unit_max

#: largest value a log10(M / (M☉/h)) can plausibly take; larger means linear masses were passed
_MAX_LOG_MASS = 30.0


@dataclass
class HaloCam:
    """Attribution of one proto-halo's score (module doc).

    ``cam``: (N, N, N) float32 in [0, 1]; ``share``: channel group -> fraction of |x · ∂S/∂x|;
    ``score``: S in logit units; ``layer``: module name the CAM is taken at; ``cam_in_halo``: mean
    CAM inside / outside the halo (inf if the outside is 0, nan if the map is all 0).
    """

    cam: np.ndarray
    share: dict[str, float]
    score: float
    layer: str
    cam_in_halo: float


@dataclass
class CamItem:
    """One panel pair of :func:`halo_cam_figure`: the halo's class, id, log10(M / (M☉/h)),
    (N, N, N) bool mask and its :class:`HaloCam`."""

    cls: int
    halo_id: int
    log_mass: float
    mask: np.ndarray
    cam: HaloCam


def _is_stage(name: str) -> bool:
    """A top-level child (``full_res``) or an item of one (``up.3``): a network stage, not a layer inside."""
    parts = name.split(".")
    return len(parts) == 1 or (len(parts) == 2 and parts[1].isdigit())


def _as_input(x: np.ndarray | torch.Tensor) -> torch.Tensor:
    xt = x.detach() if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))
    if xt.ndim != 4:
        raise ValueError(f"x must be (C, N, N, N), got shape {tuple(xt.shape)}")
    return xt.to(torch.float32)


def decoder_layer(model: nn.Module, x: np.ndarray | torch.Tensor) -> str:
    """Name of the module :func:`halo_cam` attributes at by default.

    Rule, on the modules as they finish in a forward pass of ``x`` ((C, N, N, N) or batched):
    the head is the top-level child that finishes last (it makes the logits); the candidates are the
    network's stages (top-level children and the items of top-level lists, e.g. ``up.3``,
    ``full_res``, ``decoder.2``) outside the head that return a (B, C, D, H, W) map with every side
    ≥ half the input's and finish after the first coarsest map (the bottleneck, so the decoder);
    the last candidate wins. copra ``paper`` -> ``up.<last>``, ``light`` -> ``full_res``,
    vipr -> ``decoder.<last>`` (all at N). One forward pass without gradients.
    """
    xt = x.detach() if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))
    if xt.ndim not in (4, 5):
        raise ValueError(f"x must be (C, N, N, N) or (B, C, N, N, N), got shape {tuple(xt.shape)}")
    xt = (xt[None] if xt.ndim == 4 else xt).to(next(model.parameters()).device, torch.float32)
    fired = layer_outputs(model, xt)
    if not fired:
        raise ValueError(f"{type(model).__name__}: no submodule returns a tensor")
    head = fired[-1][0].split(".")[0]
    maps = [(i, name, shape[2:]) for i, (name, shape) in enumerate(fired) if len(shape) == 5]
    if not maps:
        raise ValueError(f"{type(model).__name__} has no 3-D feature maps for a halo Grad-CAM")
    coarsest = min(math.prod(s) for _, _, s in maps)
    bottleneck = next(i for i, _, s in maps if math.prod(s) == coarsest)
    half = [n / 2 for n in xt.shape[2:]]
    picks = [name for i, name, s in maps
             if i > bottleneck and _is_stage(name) and name.split(".")[0] != head and all(a >= h for a, h in zip(s, half))]
    if not picks:
        raise ValueError(f"{type(model).__name__}: no decoder stage at N or N/2 before the head '{head}'; "
                         "name a layer")
    return picks[-1]


def periodic_upsample(cam: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Trilinear upsampling of a (B, K, d, h, w) map of a periodic box to ``size`` (integer factors),
    wrapping around the faces (``align_corners=False`` voxel centres, as ``F.interpolate``)."""
    coarse = cam.shape[2:]
    factors = [s // c for s, c in zip(size, coarse)]
    if any(f < 1 or f * c != s for f, c, s in zip(factors, coarse, size)):
        raise ValueError(f"cannot upsample a {tuple(coarse)} map to {tuple(size)} by integer factors")
    if all(f == 1 for f in factors):
        return cam
    padded = F.pad(cam, (1, 1, 1, 1, 1, 1), mode="circular")
    up = F.interpolate(padded, size=[s + 2 * f for s, f in zip(size, factors)], mode="trilinear", align_corners=False)
    f0, f1, f2 = factors
    return up[..., f0:f0 + size[0], f1:f1 + size[1], f2:f2 + size[2]]


def periodic_centre(mask: np.ndarray) -> np.ndarray:
    """Centre of the True voxels of a periodic (N, N, N) mask, in voxels in [0, N) per axis: the circular
    mean of each coordinate (a halo split across a box face gets its centre across the face)."""
    mask = np.asarray(mask, dtype=bool)
    if not mask.any():
        raise ValueError("periodic_centre: empty mask")
    idx = np.nonzero(mask)
    centre = []
    for i, n in zip(idx, mask.shape):
        angle = 2 * np.pi * i / n
        mean = np.arctan2(np.sin(angle).mean(), np.cos(angle).mean())
        c = (mean * n / (2 * np.pi)) % n
        centre.append(c - n if c >= n else c)  # -1e-15 % n rounds to n
    return np.array(centre)


def _groups(channels: Mapping[str, Sequence[int]] | None, n_channels: int) -> dict[str, list[int]]:
    if channels is None:
        return {f"c{i}": [i] for i in range(n_channels)}
    groups = {str(k): [int(c) for c in v] for k, v in channels.items()}
    flat = sorted(c for v in groups.values() for c in v)
    if flat != list(range(n_channels)) or any(not v for v in groups.values()):
        raise ValueError(f"channels must split the {n_channels} input channels into non-empty groups, "
                         f"each channel in exactly one; got {dict(channels)}")
    return groups


class _Attribution:
    """One forward pass of the whole box with the layer's activations kept; each :meth:`halo` is one
    backward pass of that halo's score (the graph is kept, so many halos cost one forward)."""

    def __init__(self, model: nn.Module, x: np.ndarray | torch.Tensor, layer: str | None,
                 channels: Mapping[str, Sequence[int]] | None):
        xt = _as_input(x)
        self.groups = _groups(channels, xt.shape[0])
        self.layer = layer or decoder_layer(model, xt)
        modules = dict(model.named_modules())
        if self.layer not in modules:
            raise ValueError(f"{type(model).__name__} has no module '{self.layer}'")
        self.x = xt.to(next(model.parameters()).device)[None].requires_grad_(True)
        store: dict[str, torch.Tensor] = {}

        def keep(_m, _i, out):
            if isinstance(out, torch.Tensor):
                store["a"] = out
                return out.clone()  # later in-place ops change the clone, not the kept activations
            return None

        handle = modules[self.layer].register_forward_hook(keep)
        was_training = model.training
        model.eval()
        try:
            with torch.enable_grad():
                self.logits = model(self.x)[0]
        finally:
            handle.remove()
            model.train(was_training)
        acts = store.get("a")
        if acts is None or acts.ndim != 5:
            raise ValueError(f"module '{self.layer}' returns no (B, C, D, H, W) feature map")
        self.acts = acts

    def halo(self, halo_mask: np.ndarray, target_class: int, label: str | None = None) -> HaloCam:
        spatial = tuple(self.x.shape[2:])
        mask = _check_mask(halo_mask, spatial)
        if label is None:
            label = f"halo centred at voxel {tuple(int(c) for c in np.rint(periodic_centre(mask)))}"
        n_classes = self.logits.shape[0]
        if isinstance(target_class, bool) or not isinstance(target_class, (int, np.integer)) \
                or not 0 <= target_class < n_classes:
            raise ValueError(f"target_class must be an int in [0, {n_classes}), got {target_class!r}")
        mask_t = torch.as_tensor(mask, device=self.x.device)
        score = self.logits[int(target_class)][mask_t].sum()
        grad_a, grad_x = torch.autograd.grad(score, [self.acts, self.x], retain_graph=True, allow_unused=True)
        if grad_a is None:
            raise ValueError(f"layer '{self.layer}' does not influence the logits")
        if not torch.isfinite(score):
            raise ValueError(f"{label}: non-finite score {score.item()}")
        if not (torch.isfinite(grad_a).all() and grad_x is not None and torch.isfinite(grad_x).all()):
            raise ValueError(f"{label}: non-finite gradients of the score (layer '{self.layer}' or input)")

        weights = grad_a.mean(dim=(2, 3, 4), keepdim=True)
        cam = F.relu((weights * self.acts.detach()).sum(dim=1, keepdim=True))
        cam = unit_max(periodic_upsample(cam, spatial))[0, 0].float().cpu().numpy()
        inside, outside = float(cam[mask].mean()), float(cam[~mask].mean())
        ratio = inside / outside if outside > 0 else (math.inf if inside > 0 else math.nan)

        per_channel = (self.x.detach() * grad_x)[0].abs().flatten(1).sum(dim=1).double().cpu().numpy()
        total = per_channel.sum()
        share = {k: float(per_channel[v].sum() / total) if total > 0 else 0.0 for k, v in self.groups.items()}
        return HaloCam(cam=cam, share=share, score=float(score.item()), layer=self.layer, cam_in_halo=ratio)


def halo_cam(model: nn.Module, x: np.ndarray | torch.Tensor, halo_mask: np.ndarray, target_class: int,
             layer: str | None = None, channels: Mapping[str, Sequence[int]] | None = None,
             label: str | None = None) -> HaloCam:
    """Grad-CAM and channel-group shares of one proto-halo's score (module doc).

    ``x``: (C, N, N, N) normalised inputs of the whole periodic box; ``halo_mask``: (N, N, N) bool;
    ``target_class``: logit to explain; ``layer``: module name (None = :func:`decoder_layer`);
    ``channels``: group name -> input channels, a partition of 0..C-1 (None = ``c0``, ``c1``, ...);
    ``label``: names the halo in errors. Runs in eval mode (restored after), on the model's device,
    without touching the parameters' ``.grad``.
    """
    _check_halo_shape(x, halo_mask)
    _check_mask(halo_mask, tuple(x.shape[1:]))
    return _Attribution(model, x, layer, channels).halo(halo_mask, target_class, label)


def _check_halo_shape(x: np.ndarray | torch.Tensor, halo_mask: np.ndarray) -> None:
    shape = tuple(x.shape)
    if len(shape) != 4:
        raise ValueError(f"x must be (C, N, N, N), got shape {shape}")
    if np.shape(halo_mask) != shape[1:]:
        raise ValueError(f"halo_mask shape {np.shape(halo_mask)} differs from x's spatial shape {shape[1:]}")


def _check_mask(halo_mask: np.ndarray, spatial: tuple[int, ...]) -> np.ndarray:
    mask = np.asarray(halo_mask)
    if mask.shape != spatial:
        raise ValueError(f"halo_mask shape {mask.shape} differs from the input's spatial shape {spatial}")
    if mask.dtype != bool:
        raise ValueError(f"halo_mask must be a bool array, got {mask.dtype}")
    if not mask.any():
        raise ValueError("halo_mask is empty: the proto-halo has no voxels")
    if mask.all():
        raise ValueError("halo_mask covers the whole box: nothing outside the halo to compare with")
    return mask


def _halo_table(halo_id: np.ndarray, halo_mass: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(ids, log10 masses) of the halos in ``halo_id``; each halo must have one positive mass."""
    halo_id, halo_mass = np.asarray(halo_id), np.asarray(halo_mass)
    if halo_id.shape != halo_mass.shape:
        raise ValueError(f"halo_id shape {halo_id.shape} differs from halo_mass shape {halo_mass.shape}")
    if not np.issubdtype(halo_id.dtype, np.integer):
        raise ValueError(f"halo_id must be an integer array, got {halo_id.dtype}")
    sel = halo_id.ravel() >= 0
    hid, mass = halo_id.ravel()[sel], halo_mass.ravel()[sel].astype(np.float64)
    if not hid.size:
        return hid, mass
    order = np.argsort(hid, kind="stable")
    hid, mass = hid[order], mass[order]
    ids, start = np.unique(hid, return_index=True)
    lo, hi = np.minimum.reduceat(mass, start), np.maximum.reduceat(mass, start)
    bad = ~np.isfinite(lo) | ~np.isfinite(hi) | (lo != hi) | (lo <= 0)
    if bad.any():
        i = int(np.argmax(bad))
        raise ValueError(f"halo {ids[i]}: its voxels' halo_mass spans [{lo[i]}, {hi[i]}]; "
                         "expected one positive log10 mass per halo")
    if hi.max() > _MAX_LOG_MASS:
        raise ValueError(f"halo_mass reaches {hi.max():.3g}: expected log10(M / (M☉/h)) as in the box files' "
                         "/halo_mass (pass np.log10 of linear masses, 0 where there is no halo)")
    return ids, lo


def pick_halos(halo_id: np.ndarray, halo_mass: np.ndarray, class_edges: Sequence[float], per_class: int = 3,
               seed: int = 0) -> list[tuple[int, int]]:
    """(class, halo id) of up to ``per_class`` halos of each class 1 .. len(class_edges) + 1, class by
    class, ids ascending within a class; drawn without replacement by ``np.random.default_rng(seed)``.

    ``halo_id``: (N, N, N) int, −1 = no halo; ``halo_mass``: (N, N, N) log10(M / (M☉/h)), 0 = none.
    """
    if per_class < 0:
        raise ValueError(f"per_class must be >= 0, got {per_class}")
    edges = np.asarray(class_edges, dtype=np.float64)
    if edges.ndim != 1 or np.any(np.diff(edges) <= 0):
        raise ValueError(f"class_edges must be increasing log10 masses, got {list(class_edges)}")
    ids, log_mass = _halo_table(halo_id, halo_mass)
    classes = mass_to_class(log_mass, edges)
    rng = np.random.default_rng(seed)
    picked = []
    for c in range(1, len(edges) + 2):
        pool = ids[classes == c]
        chosen = rng.choice(pool, size=min(per_class, pool.size), replace=False) if pool.size else pool
        picked += [(c, int(h)) for h in np.sort(chosen)]
    return picked


def run_halo_cams(model: nn.Module, x: np.ndarray | torch.Tensor, halo_id: np.ndarray, halo_mass: np.ndarray,
                  class_edges: Sequence[float], channels: Mapping[str, Sequence[int]] | None = None,
                  per_class: int = 3, seed: int = 0, layer: str | None = None) -> tuple[list[dict], list[CamItem]]:
    """:func:`pick_halos`, then :func:`halo_cam` of each picked halo for its own class (one forward
    pass, one backward pass per halo). Returns (records, items): JSON-able dicts ``class``,
    ``halo_id``, ``log10_mass``, ``n_voxels``, ``layer``, ``share``, ``cam_in_halo`` (None if not
    finite), ``score``; and the :class:`CamItem` of each, for :func:`halo_cam_figure`."""
    halo_id = np.asarray(halo_id)
    _check_halo_shape(x, halo_id)
    picks = pick_halos(halo_id, halo_mass, class_edges, per_class, seed)
    if not picks:
        return [], []
    attribution = _Attribution(model, x, layer, channels)
    records, items = [], []
    for cls, hid in picks:
        mask = halo_id == hid
        log_mass = float(np.asarray(halo_mass)[mask].flat[0])
        cam = attribution.halo(mask, cls, f"halo {hid} (class {cls})")
        items.append(CamItem(cls, hid, log_mass, mask, cam))
        records.append({"class": cls, "halo_id": hid, "log10_mass": round(log_mass, 4), "n_voxels": int(mask.sum()),
                        "layer": cam.layer, "share": cam.share, "score": cam.score,
                        "cam_in_halo": cam.cam_in_halo if math.isfinite(cam.cam_in_halo) else None})
    return records, items


def _window(mask2d: np.ndarray, centre: Sequence[float], min_side: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """Periodic index ranges of a square window centred on the halo, ≥ 2.5× its extent (at most the box)."""
    idx = np.nonzero(mask2d)
    out = []
    for i, c, n in zip(idx, centre, mask2d.shape):
        r = np.abs((i - c + n / 2) % n - n / 2).max() if i.size else 0.0
        side = int(min(n, max(min_side, math.ceil(5 * r) + 4)))
        out.append((int(np.rint(c)) - side // 2 + np.arange(side)) % n)
    return out[0], out[1]


def halo_cam_figure(path: str | os.PathLike, delta: np.ndarray, items: Sequence[CamItem],
                    class_names: Sequence[str]) -> Path:
    """PNG (written atomically) of the halo CAMs: one row per class (ascending), per halo two panels:
    δ and the CAM on the x-slice (axis 0) through the halo's periodic centre, in a window centred on
    the halo (offsets in voxels, the halo outlined). Titles: id, log10(M / (M☉/h)), channel shares.

    ``delta``: (N, N, N) density contrast; ``items``: :class:`CamItem` (e.g. from :func:`run_halo_cams`);
    ``class_names[c]`` labels class c.
    """
    from matplotlib.figure import Figure

    from halotrans.eval.plots import save

    delta = np.asarray(delta)
    if not items:
        raise ValueError("halo_cam_figure: no halos to draw")
    for it in items:
        if it.mask.shape != delta.shape or it.cam.cam.shape != delta.shape:
            raise ValueError(f"halo {it.halo_id}: mask {it.mask.shape} / CAM {it.cam.cam.shape} differ from "
                             f"delta {delta.shape}")
        if not 0 <= it.cls < len(class_names):
            raise ValueError(f"halo {it.halo_id}: class {it.cls} has no name in class_names ({len(class_names)})")
    rows = sorted({it.cls for it in items})
    per_row = {c: [it for it in items if it.cls == c] for c in rows}
    n_cols = 2 * max(len(v) for v in per_row.values())
    fig = Figure(figsize=(2.7 * n_cols, 2.9 * len(rows)), layout="constrained")
    vmax = float(np.abs(delta).max()) or 1.0
    for r, c in enumerate(rows):
        for j, it in enumerate(per_row[c]):
            centre = periodic_centre(it.mask)
            counts = it.mask.sum(axis=(1, 2))
            n0 = delta.shape[0]
            i0 = int(np.rint(centre[0])) % n0
            if counts[i0] == 0:  # an oddly shaped halo: the nearest slice holding some of it
                dist = np.abs((np.arange(n0) - centre[0] + n0 / 2) % n0 - n0 / 2)
                i0 = int(np.argmin(np.where(counts > 0, dist, np.inf)))
            iy, iz = _window(it.mask[i0], centre[1:])
            sub = np.ix_(iy, iz)
            ny, nz = len(iy), len(iz)  # offsets of voxel centres from the voxel nearest the halo centre
            extent = (-(ny // 2) - 0.5, ny - ny // 2 - 0.5, -(nz // 2) - 0.5, nz - nz // 2 - 0.5)
            outline = it.mask[i0][sub].astype(float)
            shares = " ".join(f"{k} {v:.2f}" for k, v in it.cam.share.items())
            title = f"halo {it.halo_id}, log M {it.log_mass:.2f}\n{shares}"
            for k, (img, kw, line) in enumerate([
                    (delta[i0][sub], {"cmap": "RdBu_r", "vmin": -vmax, "vmax": vmax}, "k"),
                    (it.cam.cam[i0][sub], {"cmap": "inferno", "vmin": 0, "vmax": 1}, "c")]):
                ax = fig.add_subplot(len(rows), n_cols, r * n_cols + 2 * j + k + 1)
                ax.imshow(img.T, origin="lower", extent=extent, interpolation="nearest", **kw)
                if 0 < outline.sum() < outline.size:
                    ax.contour(outline.T, levels=[0.5], colors=line, linewidths=0.9, origin="lower", extent=extent)
                ax.set_title(("δ: " if k == 0 else f"CAM {it.cam.layer}: ") + title, fontsize=7)
                ax.tick_params(labelsize=6)
                if j == 0 and k == 0:
                    ax.set_ylabel(f"{class_names[c]}\nz − z_c [voxels]", fontsize=8)
                if r == len(rows) - 1:
                    ax.set_xlabel("y − y_c [voxels]", fontsize=7)
    return save(fig, path)
