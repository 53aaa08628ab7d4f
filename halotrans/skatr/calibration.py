"""Calibration of posterior samples: HPD coverage in θ and logit space, per-parameter rank coverage, TARP,
and the noise band of a calibrated posterior at a given number of test points.

Every test computes one "level" per test light cone that is Uniform(0, 1) when the posterior is
calibrated, and its coverage curve ``Pr(level < α)`` at the nominal credibilities α:

* HPD (:func:`hpd_levels`): the fraction of posterior samples denser than the truth. The density
  depends on the coordinates: in θ-space (prior-normalised u ∈ [0, 1]^P, a linear map of the
  physical θ) it is the flow's q(u); in logit space, where the flow works, it is
  q(u) Π u(1 − u) (:func:`logit_log_density`), which removes the edge effects at the prior bounds;
* per parameter (:func:`rank_levels`): the rank of the truth among the marginal samples; the
  truth lies in the central α interval iff |2·rank − 1| < α;
* TARP (Lemos et al. 2023, :func:`tarp_levels`): for a random reference point per test light cone
  (uniform in the prior box), the fraction of samples closer to it than the truth.

With n test light cones a calibrated posterior's curve still wanders from the diagonal:
:func:`calibrated_band` draws n uniform levels many times and gives the pointwise band and the
distribution of the largest |coverage − α| (e.g. median 0.067, 90th percentile 0.10 at n = 120).
"""

from __future__ import annotations

from typing import Any

import numpy as np

#: nominal credibility levels of the coverage curves
NOMINAL = np.linspace(0.0, 1.0, 21)


def hpd_levels(sample_log_prob: np.ndarray, true_log_prob: np.ndarray) -> np.ndarray:
    """HPD level of the truth per test point: fraction of samples denser than it, (N, S), (N,) → (N,)."""
    return (sample_log_prob > true_log_prob[:, None]).mean(1)


def coverage_curve(levels: np.ndarray, nominal: np.ndarray = NOMINAL) -> np.ndarray:
    """Empirical coverage Pr(level < α) at each nominal credibility α (α = 1 counts every point)."""
    levels = np.asarray(levels)
    return np.array([(levels < a).mean() if a < 1 else 1.0 for a in nominal])


def logit_log_density(log_prob_u: np.ndarray, u: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """log density in logit coordinates y = logit u from the density in u: log q(u) + Σ_p log u_p(1 − u_p).

    ``log_prob_u`` (...,), ``u`` (..., P) in (0, 1)."""
    u = np.clip(np.asarray(u, dtype=np.float64), eps, 1 - eps)
    return np.asarray(log_prob_u, dtype=np.float64) + np.log(u * (1 - u)).sum(-1)


def rank_levels(samples: np.ndarray, true: np.ndarray) -> np.ndarray:
    """Per parameter, |2·rank − 1| of the truth among the marginal samples, (N, S, P), (N, P) → (N, P).

    rank = fraction of samples below the truth (ties count half); the truth is inside the central
    α credible interval iff the level is below α."""
    below = (samples < true[:, None, :]).mean(1) + 0.5 * (samples == true[:, None, :]).mean(1)
    return np.abs(2.0 * below - 1.0)


def tarp_levels(samples: np.ndarray, true: np.ndarray, seed: int = 0) -> np.ndarray:
    """TARP (Lemos et al. 2023): per test point, the fraction of samples closer than the truth to a
    reference point drawn uniformly in [0, 1]^P, (N, S, P), (N, P) → (N,). Use prior-normalised
    units, where the prior is the unit box."""
    ref = np.random.default_rng(seed).random(true.shape)
    d_samples = np.linalg.norm(samples - ref[:, None, :], axis=-1)
    d_true = np.linalg.norm(true - ref, axis=-1)
    return (d_samples < d_true[:, None]).mean(1)


def max_gap(curve: np.ndarray, nominal: np.ndarray = NOMINAL) -> float:
    """Largest |coverage − nominal| of a coverage curve."""
    return float(np.abs(np.asarray(curve) - nominal).max())


def calibrated_band(n: int, nominal: np.ndarray = NOMINAL, draws: int = 4000,
                    quantiles: tuple[float, float] = (0.05, 0.95), seed: int = 0) -> dict[str, Any]:
    """What a calibrated posterior's coverage curve does with ``n`` test points (``draws`` simulations).

    Returns ``lower``/``upper`` (len(nominal),): the pointwise ``quantiles`` of its coverage, and
    ``max_gap_median``/``max_gap_q90``: the median and 90th percentile of its largest |coverage − α|.
    """
    levels = np.random.default_rng(seed).random((draws, n))
    curves = np.stack([(levels < a).mean(1) if a < 1 else np.ones(draws) for a in nominal], axis=1)
    gaps = np.abs(curves - nominal).max(1)
    return {"n": n, "lower": np.quantile(curves, quantiles[0], axis=0),
            "upper": np.quantile(curves, quantiles[1], axis=0),
            "quantiles": list(quantiles), "max_gap_median": float(np.median(gaps)),
            "max_gap_q90": float(np.quantile(gaps, 0.9))}


def calibration_metrics(samples_u: np.ndarray, true_u: np.ndarray, lp_samples: np.ndarray, lp_true: np.ndarray,
                        names: list[str], seed: int = 0) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Every calibration test of posterior samples in prior-normalised units.

    ``samples_u`` (N, S, P), ``true_u`` (N, P), ``lp_samples`` (N, S) and ``lp_true`` (N,): log q in
    u-space. Returns (metrics, arrays): gaps (largest |coverage − α|) in θ-space, logit space, per
    parameter and of TARP, with the calibrated band's 90th percentile at this N; the curves.
    """
    levels_theta = hpd_levels(lp_samples, lp_true)
    levels_logit = hpd_levels(logit_log_density(lp_samples, samples_u), logit_log_density(lp_true, true_u))
    ranks = rank_levels(samples_u, true_u)
    tarp = tarp_levels(samples_u, true_u, seed)
    band = calibrated_band(len(true_u), seed=seed)
    arrays = {"levels": levels_theta, "coverage": coverage_curve(levels_theta), "levels_logit": levels_logit,
              "coverage_logit": coverage_curve(levels_logit), "rank_levels": ranks,
              "coverage_rank": np.stack([coverage_curve(ranks[:, i]) for i in range(ranks.shape[1])]),
              "tarp_levels": tarp, "coverage_tarp": coverage_curve(tarp),
              "band_lower": band["lower"], "band_upper": band["upper"]}
    metrics = {"calibration_error": max_gap(arrays["coverage"]),
               "calibration_error_logit": max_gap(arrays["coverage_logit"]),
               "calibration_error_rank": {n: max_gap(c) for n, c in zip(names, arrays["coverage_rank"])},
               "tarp_error": max_gap(arrays["coverage_tarp"]),
               "calibrated_gap_median": band["max_gap_median"], "calibrated_gap_q90": band["max_gap_q90"],
               "coverage": {f"{a:.2f}": float(c) for a, c in zip(NOMINAL, arrays["coverage"])}}
    return metrics, arrays
