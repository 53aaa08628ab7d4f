"""The 48 symmetries of the cube (the full octahedral group O_h) acting on periodic grids.

A symmetry is an axis permutation followed by flips of some output axes. It maps a scalar field
f on an (N,N,N) grid (C order, axis 0 = x) to f' = f ∘ R⁻¹, which for a grid is just
``transpose`` + ``flip`` of the last three (spatial) axes; leading axes (channels, batch) are
untouched. δ, the scalar tidal shear T and the per-voxel mass class are all scalars, so one
symmetry applied to the input channels and to the labels keeps them aligned. (The tensor T_ij
would also need its components rotated; it is not a network input.)

    y = apply_symmetry(x, 17)          # numpy array or torch tensor, (..., D, H, W)
    x_again = apply_symmetry(y, inverse_symmetry(17))
"""

from __future__ import annotations

import itertools
from typing import TypeVar

import numpy as np
import torch

Array = TypeVar("Array", np.ndarray, torch.Tensor)

#: (perm, flips): output axis j is input axis perm[j], then output axis j is reversed if flips[j].
CUBE_SYMMETRIES: tuple[tuple[tuple[int, int, int], tuple[bool, bool, bool]], ...] = tuple(
    (perm, flips)
    for perm in itertools.permutations(range(3))
    for flips in itertools.product((False, True), repeat=3)
)
N_SYMMETRIES = len(CUBE_SYMMETRIES)  # 48; index 0 is the identity


def apply_symmetry(x: Array, index: int) -> Array:
    """Apply symmetry ``index`` (0..47) to the last three axes of ``x`` (a view for numpy)."""
    perm, flips = CUBE_SYMMETRIES[index]
    lead = x.ndim - 3
    if lead < 0:
        raise ValueError(f"apply_symmetry needs at least 3 axes, got shape {tuple(x.shape)}")
    axes = tuple(range(lead)) + tuple(lead + p for p in perm)
    flip_axes = tuple(lead + j for j in range(3) if flips[j])
    if isinstance(x, torch.Tensor):
        y = x.permute(axes)
        return torch.flip(y, flip_axes) if flip_axes else y
    y = np.transpose(x, axes)
    return np.flip(y, flip_axes) if flip_axes else y


def inverse_symmetry(index: int) -> int:
    """Index of the symmetry that undoes ``index`` (e.g. to map test-time-augmented predictions back)."""
    perm, flips = CUBE_SYMMETRIES[index]
    inv_perm = tuple(int(a) for a in np.argsort(perm))
    # Undo the flips first (output axis j = input axis perm[j]), then the permutation.
    inv_flips = tuple(flips[inv_perm[a]] for a in range(3))
    return CUBE_SYMMETRIES.index((inv_perm, inv_flips))
