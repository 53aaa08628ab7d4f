"""Background cosmology, linear power spectrum and LPT growth factors for the particle-mesh runs.

The cosmology is a named colossus parameter set (``planck18``, ``WMAP9``, ...), optionally with
σ8 replaced. Units: k in h/Mpc, P(k) in (Mpc/h)³, masses in M☉/h, time in units of 1/H0.

The N-body background is matter + dark energy (+ curvature) *without radiation*, as in Gadget and
FastPM; colossus is set up the same way (``relspecies=False``), so its growth factor agrees with
ours. The growth factors come from integrating the first- and second-order growth equations in
ln a (Bouchet et al. 1995):

    D1'' + (2 + dlnE/dlna) D1' = 3/2 Ωm(a) D1
    D2'' + (2 + dlnE/dlna) D2' = 3/2 Ωm(a) (D2 − D1²)

starting deep in matter domination from D1 = a, D2 = −3/7 a². D1 is normalised to D1(a=1) = 1 and
D2 by D1(1)², so D2 ≈ −3/7 D1² (the sign convention of 2LPT: x = q + D1 Ψ1 + D2 Ψ2).

    cosmo = Cosmology("planck18")
    cosmo.linear_power(np.array([0.1]))          # P(k=0.1 h/Mpc, z=0) in (Mpc/h)^3
    cosmo.growth(0.01)                           # D1 at z = 99
"""

from __future__ import annotations

import math
from typing import Any, get_args

import numpy as np
from scipy.integrate import solve_ivp

from halotrans.sims.config import PowerSpectrumModel

#: critical density today in (M☉/h) / (Mpc/h)³ (= 2.775e11 h² M☉/Mpc³)
RHO_CRIT = 2.775e11
#: colossus power-spectrum models that need no external Boltzmann code
ANALYTIC_POWER_SPECTRA = get_args(PowerSpectrumModel)

_A_START = 1e-5  # growth equations start here (matter domination: D1 = a, D2 = -3/7 a²)


class Cosmology:
    """A colossus cosmology (set as colossus' current one) with its N-body growth factors.

    ``name``: colossus parameter set; ``sigma8``: replaces the set's σ8 if given;
    ``power_spectrum``: colossus model of the linear matter power spectrum (one of
    :data:`ANALYTIC_POWER_SPECTRA`), normalised by colossus to σ8 at z=0.
    """

    def __init__(self, name: str = "planck18", sigma8: float | None = None,
                 power_spectrum: str = "eisenstein98") -> None:
        from colossus.cosmology import cosmology

        if name not in cosmology.cosmologies:
            raise ValueError(f"unknown cosmology '{name}'; colossus knows {', '.join(cosmology.cosmologies)}")
        if power_spectrum not in ANALYTIC_POWER_SPECTRA:
            raise ValueError(f"power_spectrum must be one of {ANALYTIC_POWER_SPECTRA}, got '{power_spectrum}'")
        extra = {"sigma8": float(sigma8)} if sigma8 is not None else {}
        self.colossus = cosmology.setCosmology(name, relspecies=False, persistence="", **extra)
        self.name = name
        self.power_spectrum = power_spectrum
        self.omega_m = float(self.colossus.Om0)
        self._solve_growth()

    # -- background --------------------------------------------------------------------------
    def efunc(self, a: float | np.ndarray) -> np.ndarray:
        """E(a) = H(a)/H0."""
        return np.asarray(self.colossus.Ez(1.0 / np.asarray(a, dtype=float) - 1.0))

    def _dlne_dlna(self, a: float) -> float:
        h = 1e-5
        lo, hi = self.efunc(a * math.exp(-h)), self.efunc(a * math.exp(h))
        return float((math.log(hi) - math.log(lo)) / (2 * h))

    # -- growth ------------------------------------------------------------------------------
    def _solve_growth(self) -> None:
        om = self.omega_m

        def rhs(lna: float, y: np.ndarray) -> list[float]:
            d1, f1, d2, f2 = y
            a = math.exp(lna)
            om_a = om / (a**3 * float(self.efunc(a)) ** 2)
            damp = 2.0 + self._dlne_dlna(a)
            return [f1, 1.5 * om_a * d1 - damp * f1, f2, 1.5 * om_a * (d2 - d1 * d1) - damp * f2]

        a0 = _A_START
        y0 = [a0, a0, -3.0 / 7.0 * a0**2, -6.0 / 7.0 * a0**2]
        sol = solve_ivp(rhs, (math.log(a0), 0.0), y0, method="DOP853", rtol=1e-10, atol=1e-16,
                        dense_output=True)
        if not sol.success:  # pragma: no cover - smooth ODE
            raise RuntimeError(f"growth equations failed: {sol.message}")
        self._growth = sol.sol
        d1_today = sol.y[0, -1]
        self._norm = np.array([d1_today, d1_today, d1_today**2, d1_today**2])

    def _growth_state(self, a: float) -> np.ndarray:
        """(D1, dD1/dlna, D2, dD2/dlna), normalised."""
        if not _A_START <= a <= 1.0 + 1e-12:
            raise ValueError(f"scale factor {a} outside [{_A_START}, 1]")
        return self._growth(math.log(min(a, 1.0))) / self._norm

    def growth(self, a: float) -> float:
        """Linear growth factor D1(a), D1(1) = 1."""
        return float(self._growth_state(a)[0])

    def growth_rate(self, a: float) -> float:
        """f1 = dlnD1/dlna."""
        d1, f1, _, _ = self._growth_state(a)
        return float(f1 / d1)

    def growth2(self, a: float) -> float:
        """Second-order growth factor D2(a) (≈ −3/7 D1²; normalised by D1(1)²)."""
        return float(self._growth_state(a)[2])

    def growth_rate2(self, a: float) -> float:
        """f2 = dlnD2/dlna (≈ 2 f1)."""
        _, _, d2, f2 = self._growth_state(a)
        return float(f2 / d2)

    def momentum_factor(self, a: float, order: int = 1) -> float:
        """g_p(a) = a³ E(a) dD/da (= a² E dD/dlna) for D1 (order 1) or D2 (order 2).

        An LPT particle displaced by D(a) Ψ has canonical momentum p = a³E dx/da = g_p(a) Ψ
        (Mpc/h in units of H0); FastPM's kick and drift factors are built from g_p and D1.
        """
        state = self._growth_state(a)
        deriv = state[1] if order == 1 else state[3]
        return float(a * a * self.efunc(a) * deriv)

    # -- linear power ------------------------------------------------------------------------
    def linear_power(self, k: np.ndarray) -> np.ndarray:
        """Linear matter P(k) at z=0 in (Mpc/h)³ for k in h/Mpc (k ≤ 0 gives 0)."""
        k = np.asarray(k, dtype=float)
        out = np.zeros_like(k)
        pos = k > 0
        out[pos] = self.colossus.matterPowerSpectrum(k[pos], 0.0, model=self.power_spectrum)
        return out

    def particle_mass(self, box_size: float, n_grid: int) -> float:
        """Mass of one of n_grid³ particles in a box_size Mpc/h cube: Ωm ρ_crit (L/N)³ in M☉/h."""
        return self.omega_m * RHO_CRIT * (box_size / n_grid) ** 3

    def parameters(self) -> dict[str, Any]:
        """Every parameter of the run's cosmology (for box attrs)."""
        c = self.colossus
        return {
            "name": self.name, "H0": c.H0, "Om0": c.Om0, "Ode0": c.Ode0, "Ob0": c.Ob0, "Ok0": c.Ok0,
            "sigma8": c.sigma8, "ns": c.ns, "Tcmb0": c.Tcmb0, "Neff": c.Neff, "flat": c.flat,
            "relspecies": c.relspecies, "de_model": c.de_model, "w0": c.w0, "wa": c.wa,
            "power_spectrum": self.power_spectrum, "rho_crit": RHO_CRIT,
        }
