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
    ``feature_radii``: smoothing radii R in Mpc/h of the physics input channels (default none = off):
    for each R, δ smoothed on R (``/features/delta_R<r>``) and the ellipsoidal-collapse inverse time
    F = 1/D(z_c) of that smoothed field (``/features/collapse_R<r>``), plus their max over R
    (``/features/collapse_max``); see :mod:`halotrans.fields.features`. Serial torch (rank 0 under MPI).
    ``feature_window``: ``"gaussian"`` exp(−k²R²/2) (PINOCCHIO's) or ``"tophat"`` (real-space sphere).
    """

    definition: Literal["q", "q2"] = "q"
    smoothing: float = 0.0
    save_tensor: bool = False
    device: str = "cpu"
    feature_radii: tuple[float, ...] = ()
    feature_window: Literal["gaussian", "tophat"] = "gaussian"

    def __post_init__(self) -> None:
        if self.smoothing < 0:
            raise ValueError(f"smoothing must be >= 0 (Mpc/h), got {self.smoothing}")
        from halotrans.fields.channels import radius_tag

        tags = [radius_tag(r) for r in self.feature_radii]
        bad = [r for r, t in zip(self.feature_radii, tags) if not (r >= 0 and t.replace(".", "", 1).isdigit())]
        if bad or len(set(tags)) != len(tags):
            raise ValueError(f"feature_radii must be distinct radii >= 0 in Mpc/h, written without an exponent "
                             f"(e.g. [2, 4, 8]), got {list(self.feature_radii)}")
