"""Periodic friends-of-friends halo finder.

Particles closer than the linking length b·L/N (N³ particles, b = 0.2 by convention) are friends;
halos are the connected groups with at least ``min_members`` particles. Pairs come from
``scipy.spatial.cKDTree(boxsize=L).query_pairs`` and groups from
``scipy.sparse.csgraph.connected_components``.
"""

from __future__ import annotations

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from scipy.spatial import cKDTree

from halotrans.io import DataError


def friends_of_friends(pos: np.ndarray, box_size: float, b: float = 0.2, min_members: int = 20) -> np.ndarray:
    """Group id per particle (n_p,) int64, −1 for particles in no halo.

    ``pos``: (n_p, 3) positions in Mpc/h on the periodic [0, box_size) cube (wrapped here);
    ``b``: linking length in units of the mean interparticle spacing box_size / n_p^(1/3).
    Halos are numbered 0, 1, ... by decreasing member count (ties: lowest particle index first), so
    the result does not depend on the order in which pairs are found.
    """
    pos = np.asarray(pos, dtype=np.float64)
    if pos.ndim != 2 or pos.shape[1] != 3:
        raise DataError(f"friends_of_friends: positions must have shape (n_particles, 3), got {pos.shape}")
    if not box_size > 0 or not b > 0 or min_members < 1:
        raise DataError(f"friends_of_friends: need box_size > 0, b > 0, min_members >= 1 "
                        f"(got {box_size}, {b}, {min_members})")
    n_p = len(pos)
    pos = np.mod(pos, box_size)
    pos[pos >= box_size] = 0.0  # np.mod can round up to box_size
    linking_length = b * box_size / np.cbrt(n_p)
    pairs = cKDTree(pos, boxsize=box_size).query_pairs(linking_length, output_type="ndarray")
    graph = coo_matrix((np.ones(len(pairs), dtype=np.int8), (pairs[:, 0], pairs[:, 1])), shape=(n_p, n_p))
    _, component = connected_components(graph, directed=False)
    size = np.bincount(component)
    first = np.full(len(size), n_p, dtype=np.int64)
    np.minimum.at(first, component, np.arange(n_p))
    halos = np.flatnonzero(size >= min_members)
    halos = halos[np.lexsort((first[halos], -size[halos]))]
    halo_of_component = np.full(len(size), -1, dtype=np.int64)
    halo_of_component[halos] = np.arange(len(halos))
    return halo_of_component[component]


def member_counts(group_id: np.ndarray) -> np.ndarray:
    """Number of particles in each halo (n_halos,) int64 from a :func:`friends_of_friends` result."""
    group_id = np.asarray(group_id)
    return np.bincount(group_id[group_id >= 0], minlength=int(group_id.max(initial=-1)) + 1)
