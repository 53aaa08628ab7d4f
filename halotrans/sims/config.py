"""Settings of the particle-mesh simulation stage (``python -m halotrans simulate``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

#: colossus models of the linear power spectrum that need no Boltzmann code
PowerSpectrumModel = Literal["eisenstein98", "eisenstein98_zb", "sugiyama95", "bbks"]


@dataclass
class SimConfig:
    """One particle-mesh box: lengths in Mpc/h, masses in M☉/h.

    The Lagrangian grid has ``n_grid``³ particles on a ``box_size`` periodic cube; forces are
    computed on a ``mesh_factor * n_grid`` mesh with ``n_steps`` FastPM kick-drift-kick steps,
    uniform in scale factor, from ``z_init`` to z=0, after an ``lpt_order`` (1 or 2) LPT start.
    ``cosmology`` names a colossus parameter set (``sigma8`` overrides its σ8); halos are
    friends-of-friends groups (linking length ``fof_b`` × mean spacing, ≥ ``fof_min_members``
    particles). Boxes are written to ``out_dir``; ``device`` is a torch device (``cpu``, ``cuda``).
    """

    box_size: float = 64.0
    n_grid: int = 64
    mesh_factor: int = 2
    n_steps: int = 40
    z_init: float = 99.0
    lpt_order: int = 2
    cosmology: str = "planck18"
    sigma8: float | None = None
    power_spectrum: PowerSpectrumModel = "eisenstein98"
    fof_b: float = 0.2
    fof_min_members: int = 20
    out_dir: str = "data/boxes"
    device: str = "cpu"

    def __post_init__(self) -> None:
        if self.box_size <= 0:
            raise ValueError(f"box_size must be positive (Mpc/h), got {self.box_size}")
        if self.n_grid < 4:
            raise ValueError(f"n_grid must be at least 4, got {self.n_grid}")
        if self.mesh_factor < 1:
            raise ValueError(f"mesh_factor must be >= 1, got {self.mesh_factor}")
        if self.n_steps < 1:
            raise ValueError(f"n_steps must be >= 1, got {self.n_steps}")
        if self.lpt_order not in (1, 2):
            raise ValueError(f"lpt_order must be 1 or 2, got {self.lpt_order}")
        if not self.z_init > 0:
            raise ValueError(f"z_init must be > 0, got {self.z_init}")
        if self.sigma8 is not None and not self.sigma8 > 0:
            raise ValueError(f"sigma8 must be positive, got {self.sigma8}")
        if not self.fof_b > 0:
            raise ValueError(f"fof_b must be positive, got {self.fof_b}")
        if self.fof_min_members < 2:
            raise ValueError(f"fof_min_members must be >= 2, got {self.fof_min_members}")
