"""The six SKATR parameters: names, units, priors, the draw per seed, and the WDM cutoff.

Parameter vectors are ordered as :data:`PARAM_NAMES` (m_WDM [keV], Ω_m, E0 [eV], log10 L_X
[erg/s per M☉/yr], log10 T_vir [K], ζ). A light cone's parameters are a pure function of its
seed, so a resumed or repeated job draws exactly the same ones.

Warm dark matter: 21cmFAST 4.x has no WDM option, so m_WDM enters through the matter transfer
function. The CLASS (CDM+baryon) transfer table is multiplied by the thermal-relic cutoff of
Bode, Ostriker & Turok (2001, eq. A9), the same form and constants 21cmFAST v1–v2 used:
T(k) → T(k) [1 + (ε k R_c)^(2ν)]^(−η/ν), ε = 0.361, η = 5, ν = 1.2,
R_c = 0.201 Mpc (Ω_wdm h²/0.15)^0.15 (g_X/1.5)^−0.29 (m_WDM/keV)^−1.15, g_X = 1.5, k in 1/Mpc.
It suppresses small-scale power, hence sigma(M) and the collapsed fraction of small haloes, and
delays reionisation. (The extra WDM "Jeans mass" floor on source haloes of 21cmFAST v1 has no
hook in 4.1.1 and is not modelled.)
"""

from __future__ import annotations

import numpy as np

from halotrans.skatr.config import LightConeConfig

PARAM_NAMES: tuple[str, ...] = ("m_wdm", "omega_m", "e0", "log10_lx", "log10_tvir", "zeta")
PARAM_UNITS: tuple[str, ...] = ("keV", "", "eV", "log10(erg/s per Msun/yr)", "log10(K)", "")

_BODE_EPS, _BODE_ETA, _BODE_NU, _G_X = 0.361, 5.0, 1.2, 1.5


def prior_bounds(cfg: LightConeConfig) -> np.ndarray:
    """(6, 2) float64 lower/upper prior bounds in the order of :data:`PARAM_NAMES`."""
    return np.array([getattr(cfg, f"prior_{name}") for name in PARAM_NAMES], dtype=np.float64)


def sampled_mask(cfg: LightConeConfig) -> np.ndarray:
    """(6,) bool: which parameters vary in this data set (m_WDM only when ``cfg.wdm``)."""
    return np.array([cfg.wdm or name != "m_wdm" for name in PARAM_NAMES])


def sample_params(cfg: LightConeConfig, seed: int) -> np.ndarray:
    """(6,) float64 parameters of light cone ``seed``, uniform in the priors; m_WDM NaN if unused."""
    lo, hi = prior_bounds(cfg).T
    theta = lo + (hi - lo) * np.random.default_rng(seed).random(len(PARAM_NAMES))
    return np.where(sampled_mask(cfg), theta, np.nan)


def wdm_cutoff_radius(m_wdm: float, omega_wdm_h2: float) -> float:
    """Bode et al. (2001) cutoff scale R_c [comoving Mpc] of a thermal relic of mass m_WDM [keV]."""
    return 0.201 * (omega_wdm_h2 / 0.15) ** 0.15 * (_G_X / 1.5) ** -0.29 * m_wdm**-1.15


def wdm_transfer_suppression(k: np.ndarray, m_wdm: float, omega_wdm_h2: float) -> np.ndarray:
    """T_WDM(k)/T_CDM(k) for wavenumbers ``k`` [1/Mpc]: 1 on large scales, → 0 below R_c."""
    x = _BODE_EPS * np.asarray(k, dtype=np.float64) * wdm_cutoff_radius(m_wdm, omega_wdm_h2)
    return (1.0 + x ** (2 * _BODE_NU)) ** (-_BODE_ETA / _BODE_NU)
