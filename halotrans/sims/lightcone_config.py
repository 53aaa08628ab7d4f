"""Settings of the 21cmFAST light-cone generator (SKATR)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class LightConeConfig:
    """21cmFAST light cones for SKATR (brightness temperature in mK, lengths in comoving Mpc)."""

    out: str = "data/lightcones.h5"
    n: int = 16
    seed: int = 0
    hii_dim: int = 28
    dim: int = 84
    box_len: float = 200.0
    z_min: float = 5.0
    z_max: float = 35.0
    zprime_step_factor: float = 1.02
    workers: int = 2
