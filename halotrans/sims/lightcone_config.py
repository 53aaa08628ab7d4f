"""Settings of the 21cmFAST light-cone generator and of the light-cone data set (SKATR)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass
class LightConeConfig:
    """21cmFAST light cones for SKATR: brightness temperature in mK, lengths in comoving Mpc.

    Generation (``python -m halotrans lightcones``): ``n`` accepted light cones are written to
    ``out``, drawn from seeds ``seed, seed+1, ...`` (the seed fixes both the parameter draw and
    the initial conditions); at most ``max_attempts`` seeds are tried (None: 10·n). A light cone
    is rejected (and recorded) when its Thomson optical depth exceeds ``tau_max`` or its neutral
    fraction at ``z_min`` exceeds ``x_hi_max``. Priors are uniform in the listed coordinates:
    m_WDM [keV], Ω_m, E0 [eV] (X-ray threshold energy), log10 L_X [erg/s per M☉/yr],
    log10 T_vir [K], ζ (ionising efficiency). ``wdm`` true applies the m_WDM transfer-function
    cutoff to CLASS tables (CLASS computed up to ``k_max_class`` [1/Mpc]); false is the
    five-parameter mode (EH transfer function, m_WDM neither sampled nor used).

    Grid: boxes of ``box_len`` Mpc with ``hii_dim``³ cells (ICs on ``dim``³), redshift nodes
    log-spaced in (1+z) by ``zprime_step_factor`` from ``z_min`` up to max(``z_max``, 35); the
    light cone has ``n_los`` slices from ``z_min`` to ``z_max`` equally spaced in comoving
    distance of the fiducial (Planck18) cosmology, so every light cone covers the same redshifts
    (the same observed frequencies) whatever its Ω_m. ``spin_temperature`` switches on
    spin-temperature fluctuations (USE_TS_FLUCT); ``r_bubble_max`` [Mpc] is the largest ionised
    bubble (at most box_len/3). ``downsample`` block-averages the light cone by that factor on
    every axis before it is stored (high-res mode: 140³ cells, 2350 slices, factor 5 → 28×28×470).
    ``workers`` processes run one light cone each (one thread each).

    Loading (:class:`halotrans.data.lightcones.LightConeDataset`): ``split`` fractions
    (train, val, test) of the accepted light cones, shuffled with ``split_seed``; the line of
    sight is cropped (``los_fit: crop``, drops the highest-redshift slices) or zero-padded
    (``pad``) to a multiple of ``los_multiple`` slices; thermal noise of rms ``noise_mk`` [mK] at
    ``noise_z_ref``, scaled with the system temperature T_rcv + T_sky(ν) (``noise_receiver_k``
    [K]) and drawn in uv on the baselines up to ``noise_max_baseline_m`` [m] (None: all but the
    unmeasurable k⊥ = 0 mode); 0 = clean.
    """

    out: str = "data/lightcones.h5"
    n: int = 16
    seed: int = 0
    max_attempts: int | None = None
    workers: int = 2
    # grid and 21cmFAST settings
    hii_dim: int = 28
    dim: int = 84
    box_len: float = 200.0
    z_min: float = 5.0
    z_max: float = 35.0
    n_los: int = 470
    zprime_step_factor: float = 1.02
    spin_temperature: bool = True
    r_bubble_max: float = 15.0
    downsample: int = 1
    wdm: bool = True
    k_max_class: float = 10.0
    # priors of the six SKATR parameters (uniform in these coordinates)
    prior_m_wdm: tuple[float, float] = (0.3, 10.0)
    prior_omega_m: tuple[float, float] = (0.2, 0.4)
    prior_e0: tuple[float, float] = (100.0, 1500.0)
    prior_log10_lx: tuple[float, float] = (38.0, 42.0)
    prior_log10_tvir: tuple[float, float] = (4.0, 5.3)
    prior_zeta: tuple[float, float] = (10.0, 250.0)
    # acceptance
    tau_max: float = 0.089
    x_hi_max: float = 0.1
    # loading
    split: tuple[float, float, float] = (0.8, 0.1, 0.1)
    split_seed: int = 0
    los_multiple: int = 10
    los_fit: Literal["crop", "pad"] = "crop"
    noise_mk: float = 0.0
    noise_z_ref: float = 8.0
    noise_receiver_k: float = 100.0
    noise_max_baseline_m: float | None = None

    def __post_init__(self) -> None:
        if self.n < 1 or self.workers < 1 or self.downsample < 1:
            raise ValueError("n, workers and downsample must be >= 1")
        if self.max_attempts is not None and self.max_attempts < self.n:
            raise ValueError(f"max_attempts ({self.max_attempts}) must be >= n ({self.n})")
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")
        if self.hii_dim < 2 or self.dim < self.hii_dim:
            raise ValueError(f"need 2 <= hii_dim <= dim, got hii_dim={self.hii_dim}, dim={self.dim}")
        if self.hii_dim % self.downsample or self.n_los % self.downsample:
            raise ValueError(
                f"downsample={self.downsample} must divide hii_dim={self.hii_dim} and n_los={self.n_los}"
            )
        if not 0 < self.z_min < self.z_max:
            raise ValueError(f"need 0 < z_min < z_max, got {self.z_min}, {self.z_max}")
        if self.n_los < 2 or self.zprime_step_factor <= 1.0 or self.k_max_class <= 0:
            raise ValueError("n_los must be >= 2, zprime_step_factor > 1 and k_max_class > 0 (1/Mpc)")
        if not 0 < self.r_bubble_max <= self.box_len / 3:
            raise ValueError(
                f"r_bubble_max must be in (0, box_len/3 = {self.box_len / 3:g}] Mpc "
                f"(21cmFAST 4.1.1 refuses larger), got {self.r_bubble_max}"
            )
        for name in ("m_wdm", "omega_m", "e0", "log10_lx", "log10_tvir", "zeta"):
            lo, hi = getattr(self, f"prior_{name}")
            if lo > hi:
                raise ValueError(f"prior_{name}: lower bound {lo} above upper bound {hi}")
        if self.prior_m_wdm[0] <= 0 or self.prior_omega_m[0] <= 0.05 or self.prior_e0[0] < 100:
            raise ValueError("priors need m_wdm > 0 keV, omega_m > Omega_b and e0 >= 100 eV")
        if len(self.split) != 3 or min(self.split) < 0 or sum(self.split) > 1 + 1e-9:
            raise ValueError(f"split must be three fractions >= 0 summing to <= 1, got {list(self.split)}")
        if self.los_multiple < 1:
            raise ValueError(f"los_multiple must be >= 1, got {self.los_multiple}")
        if self.noise_mk < 0 or self.noise_receiver_k < 0:
            raise ValueError("noise_mk and noise_receiver_k must be >= 0")
        if self.noise_max_baseline_m is not None and self.noise_max_baseline_m <= 0:
            raise ValueError(f"noise_max_baseline_m must be positive (m), got {self.noise_max_baseline_m}")
