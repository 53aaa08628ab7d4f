"""Lagrangian halo labels: each particle's z=0 halo, painted back onto its initial grid voxel.

Particle p sits at Lagrangian voxel (i,j,k) with p = (i·n + j)·n + k (C order). For large external
simulations (1024³) the labels can be filled chunk by chunk, in any particle order, with
:func:`scatter_labels` into flat (n³,) outputs (numpy arrays or memory maps):

    log_mass = np.zeros(n**3, np.float32); halo_id = np.full(n**3, -1, np.int32)
    for ids, groups in chunks:               # particle indices and their group ids (−1 none)
        scatter_labels(ids, groups, halo_mass, log_mass, halo_id)
"""

from __future__ import annotations

import numpy as np

from halotrans.io import DataError


def _check_groups(group_id: np.ndarray, halo_mass: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    group_id = np.asarray(group_id)
    halo_mass = np.asarray(halo_mass, dtype=np.float64)
    if group_id.ndim != 1 or not np.issubdtype(group_id.dtype, np.integer):
        raise DataError(f"group_id must be a 1-D integer array, got {group_id.dtype} {group_id.shape}")
    if halo_mass.ndim != 1:
        raise DataError(f"halo_mass must be a 1-D array (n_halos,), got shape {halo_mass.shape}")
    if group_id.size and (group_id.min() < -1 or group_id.max() >= len(halo_mass)):
        raise DataError(f"group_id must lie in [-1, {len(halo_mass) - 1}] (n_halos = {len(halo_mass)}), "
                        f"got range [{group_id.min()}, {group_id.max()}]")
    if np.any(~(halo_mass > 0)):
        raise DataError("halo_mass must be positive (M☉/h)")
    return group_id, halo_mass


def label_values(group_id: np.ndarray, halo_mass: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-particle labels of any chunk: log10 M (float32, 0 = no halo) and halo id (int32, −1 = none).

    ``group_id`` (m,) int: −1 or an index into ``halo_mass`` (n_halos,) in M☉/h.
    """
    group_id, halo_mass = _check_groups(group_id, halo_mass)
    log_mass_table = np.append(np.log10(halo_mass), 0.0).astype(np.float32)  # index −1 -> 0
    return log_mass_table[group_id], group_id.astype(np.int32)


def scatter_labels(particle_index: np.ndarray, group_id: np.ndarray, halo_mass: np.ndarray,
                   log_mass_out: np.ndarray, halo_id_out: np.ndarray | None = None) -> None:
    """Write the labels of a chunk of particles (any order) into flat (n³,) outputs at ``particle_index``."""
    particle_index = np.asarray(particle_index)
    if particle_index.shape != np.shape(group_id):
        raise DataError(f"particle_index {particle_index.shape} and group_id {np.shape(group_id)} differ in shape")
    if particle_index.size and (particle_index.min() < 0 or particle_index.max() >= len(log_mass_out)):
        raise DataError(f"particle indices must lie in [0, {len(log_mass_out) - 1}]")
    log_mass, ids = label_values(group_id, halo_mass)
    log_mass_out[particle_index] = log_mass
    if halo_id_out is not None:
        halo_id_out[particle_index] = ids


def lagrangian_halo_mass(group_id: np.ndarray, halo_mass: np.ndarray, n: int) -> np.ndarray:
    """log10 M [M☉/h] of the halo of each Lagrangian voxel, float32 (n,n,n), 0 where none.

    ``group_id``: (n³,) int per particle in Lagrangian C order, −1 = not in a halo, else an index
    into ``halo_mass`` (n_halos,) in M☉/h.
    """
    _check_length(group_id, n)
    return label_values(group_id, halo_mass)[0].reshape(n, n, n)


def lagrangian_halo_id(group_id: np.ndarray, n: int) -> np.ndarray:
    """Halo index of each Lagrangian voxel, int32 (n,n,n), −1 where none."""
    _check_length(group_id, n)
    group_id = np.asarray(group_id)
    if group_id.size and group_id.min() < -1:
        raise DataError(f"group_id must be >= -1, got {group_id.min()}")
    return group_id.astype(np.int32).reshape(n, n, n)


def _check_length(group_id: np.ndarray, n: int) -> None:
    if np.shape(group_id) != (n**3,):
        raise DataError(f"group_id must have shape ({n}³,) = ({n**3},) for an n={n} grid, got {np.shape(group_id)}")
