"""Skip seeds whose Thomson optical depth is sure to exceed ``tau_max``, before simulating them.

τ is almost a function of the parameters alone: at the CPU reference setting (100 Mpc, 14³ cells)
the initial conditions add a scatter of ~3 % in τ. About 40 % of the light cones a generator computes
end rejected by τ, most of them far above the cut. :class:`TauScreen` fits log τ in the sampled
parameters (a quadratic polynomial plus cubes, in standardised coordinates: log m_WDM, Ω_m, E0,
log10 L_X, log10 T_vir, log ζ) to the light cones this data set has already computed, measures the
scatter σ of its K-fold cross-validated residuals, and skips a seed only when its predicted log τ
lies ``sigmas`` σ above log ``tau_max``. A skipped seed is recorded as a rejection (reason
``screened ...``); as long as no skipped seed would have been accepted, the data set holds exactly
the light cones of an unscreened run. :meth:`TauScreen.fit` counts, in cross-validation, how many
computed light cones the screen would have skipped and how many of those were accepted.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: cross-validation folds of the fit (fixed permutation: the same records give the same screen)
FOLDS = 5


def _coordinates(params: np.ndarray) -> np.ndarray:
    """(n, 6) parameters → (n, 6) coordinates in which log τ is smooth (NaN columns stay NaN)."""
    p = np.asarray(params, dtype=np.float64)
    return np.column_stack([np.log(p[:, 0]), p[:, 1], p[:, 2] / 1000.0, p[:, 3], p[:, 4], np.log(p[:, 5])])


def _design(x: np.ndarray) -> np.ndarray:
    """(n, d) standardised coordinates → (n, 1 + 2d + d(d+1)/2): 1, x_i, x_i x_j (i ≤ j), x_i³."""
    d = x.shape[1]
    cols = [np.ones(len(x))] + [x[:, i] for i in range(d)]
    cols += [x[:, i] * x[:, j] for i in range(d) for j in range(i, d)]
    cols += [x[:, i] ** 3 for i in range(d)]
    return np.column_stack(cols)


def _solve(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.linalg.lstsq(a, b, rcond=None)[0]


@dataclass(frozen=True)
class TauScreen:
    """A fitted τ screen: skip a seed when log τ̂(θ) > log ``tau_max`` + ``sigmas``·``sigma``.

    ``cv_screened`` of the ``n_fit`` light cones it was fitted on would have been skipped by the
    cross-validated fit (each predicted by the fit without its fold), ``cv_false_skips`` of those
    were accepted: the measured cost of the screen.
    """

    used: np.ndarray  # (6,) bool: the sampled parameter columns
    mean: np.ndarray
    scale: np.ndarray
    coef: np.ndarray
    sigma: float  # σ of the cross-validated residuals of log τ
    tau_max: float
    sigmas: float
    n_fit: int
    cv_screened: int
    cv_false_skips: int

    @classmethod
    def fit(cls, params: np.ndarray, tau: np.ndarray, accepted: np.ndarray, tau_max: float,
            sigmas: float) -> TauScreen:
        """Fit on computed light cones: ``params`` (n, 6) as drawn, measured ``tau`` (n,) > 0,
        ``accepted`` (n,) bool. Raises ValueError on non-finite τ or too few light cones."""
        params, tau = np.asarray(params, dtype=np.float64), np.asarray(tau, dtype=np.float64)
        accepted = np.asarray(accepted, dtype=bool)
        if not (np.all(np.isfinite(tau)) and np.all(tau > 0)):
            raise ValueError("the τ screen is fitted on computed light cones only (finite τ > 0)")
        used = np.all(np.isfinite(params), axis=0)
        x = _coordinates(params)[:, used]
        n_coef = _design(x[:1]).shape[1]
        if len(tau) < 3 * n_coef:
            raise ValueError(f"the τ screen needs >= {3 * n_coef} computed light cones, got {len(tau)}")
        mean, scale = x.mean(0), x.std(0)
        scale = np.where(scale > 0, scale, 1.0)
        design = _design((x - mean) / scale)
        y = np.log(tau)
        pred = np.empty_like(y)
        order = np.random.default_rng(0).permutation(len(y))
        for k in range(FOLDS):
            test = order[k::FOLDS]
            train = np.setdiff1d(order, test)
            pred[test] = design[test] @ _solve(design[train], y[train])
        sigma = float(np.std(y - pred))
        cut = np.log(tau_max) + sigmas * sigma
        skip = pred > cut
        return cls(used=used, mean=mean, scale=scale, coef=_solve(design, y), sigma=sigma, tau_max=tau_max,
                   sigmas=sigmas, n_fit=len(y), cv_screened=int(skip.sum()), cv_false_skips=int((skip & accepted).sum()))

    @property
    def tau_cut(self) -> float:
        """The predicted τ above which a seed is skipped."""
        return float(self.tau_max * np.exp(self.sigmas * self.sigma))

    def predict_tau(self, params: np.ndarray) -> np.ndarray:
        """(n, 6) parameters → (n,) predicted τ."""
        x = _coordinates(np.atleast_2d(params))[:, self.used]
        return np.exp(_design((x - self.mean) / self.scale) @ self.coef)

    def reason(self, params: np.ndarray) -> str:
        """'' if the seed with these (6,) parameters must be simulated, else its rejection reason."""
        tau = float(self.predict_tau(params)[0])
        if tau <= self.tau_cut:
            return ""
        return (f"screened: predicted tau {tau:.4f} > {self.tau_cut:.4f} (tau_max {self.tau_max:g}, "
                f"{self.sigmas:g} sigma of {self.sigma:.4f} in log tau, fit on {self.n_fit})")

    def describe(self) -> str:
        return (f"τ screen fitted on {self.n_fit} computed light cones: cross-validated σ(log τ) = {self.sigma:.4f}; "
                f"skips seeds with predicted τ > {self.tau_cut:.4f} ({self.sigmas:g} σ above {self.tau_max:g}); "
                f"in cross-validation it would have skipped {self.cv_screened} of them, "
                f"{self.cv_false_skips} of which were accepted")
