"""Settings of the tidal-shear stage."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass
class ShearConfig:
    """Tidal tensor T_ij = ∂_i∂_j φ with ∇²φ = δ, and its scalar shear T.

    ``definition``: ``"q"`` is q = √(½[(λ1−λ2)²+(λ2−λ3)²+(λ1−λ3)²]) of the eigenvalues λ of T_ij
    (= √(1.5·T̃_ij T̃_ij) of the traceless part); ``"q2"`` is its square.
    ``smoothing``: Gaussian smoothing radius of δ before the tensor, in Mpc/h (0 = none).
    ``save_tensor``: also store the six components as ``/tidal/Tij``.
    ``device``: torch device of the serial path (``cpu``, ``cuda``); MPI runs use FFTW on CPU slabs.
    """

    definition: Literal["q", "q2"] = "q"
    smoothing: float = 0.0
    save_tensor: bool = False
    device: str = "cpu"

    def __post_init__(self) -> None:
        if self.smoothing < 0:
            raise ValueError(f"smoothing must be >= 0 (Mpc/h), got {self.smoothing}")
