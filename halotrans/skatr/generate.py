"""21cmFAST light cones for SKATR → one HDF5 data set (the ``lightcones`` command, :mod:`halotrans.skatr.cli`).

Draws the six SKATR parameters per seed, runs 21cmFAST 4.1.1 in ``workers`` processes, rejects
(and records) light cones with τ > ``tau_max`` or x_HI(z_min) > ``x_hi_max``, and writes
``out`` (layout in :mod:`halotrans.skatr.store`). With ``screen_sigmas`` set, seeds whose τ is
sure to exceed ``tau_max`` (:mod:`halotrans.skatr.screen`) are recorded as rejected unsimulated.
Killed jobs resume where they stopped: run the same command again; a larger ``--n`` extends an
existing data set.

    python -m halotrans lightcones --config configs/skatr/lightcones_lowres.yaml --n 600
    python -m halotrans lightcones -c skatr/lightcones_cpu.yaml --set lightcone.workers=2
"""

from __future__ import annotations

import multiprocessing
import sys
import time
import traceback
from collections import Counter
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from pathlib import Path

import numpy as np
from tqdm import tqdm

from halotrans.io import require_finite
from halotrans.skatr.config import LightConeConfig
from halotrans.skatr.priors import sample_params
from halotrans.skatr.screen import TauScreen
from halotrans.skatr.store import (
    check_finite_output,
    consolidate,
    done_seeds,
    generated_records,
    generation_settings,
    remove_stale_temporaries,
    write_part,
)

#: the τ screen is fitted again after this many newly computed light cones
REFIT_EVERY = 100


def _simulate_and_store(cfg: LightConeConfig, seed: int, settings: str) -> tuple[str, float]:
    """Worker: one light cone → its part file. Returns (reason, seconds); reason '' = accepted.

    A 21cmFAST failure, or a light cone holding NaN/±Inf, is recorded as a rejection whose reason
    starts with ``error:``.
    """
    from halotrans.skatr import simulate as lightcone_run  # 21cmFAST, imported in the worker

    t0 = time.perf_counter()
    try:
        result = lightcone_run.simulate_light_cone(cfg, seed)
        if not result["reason"]:
            require_finite(result["brightness_temp"], f"seed {seed}: 21cmFAST brightness_temp")
    except Exception as e:  # noqa: BLE001 - recorded with the seed, not dropped
        n_nodes = len(lightcone_run.node_redshifts(cfg))
        result = {
            "seed": seed, "params": sample_params(cfg, seed), "tau": np.nan, "x_hi_zmin": np.nan,
            "x_hi": np.full(n_nodes, np.nan), "mean_brightness_temp": np.full(n_nodes, np.nan),
            "reason": " ".join(f"error: {type(e).__name__}: {e}".split())[:300], "inputs": "",
            "seconds": time.perf_counter() - t0,
        }
        traceback.print_exc()
    write_part(cfg.out, settings, result)
    return result["reason"], result["seconds"]


def fit_screen(cfg: LightConeConfig, settings: str) -> TauScreen | None:
    """The τ screen fitted on the light cones of ``cfg.out`` computed so far (finite τ; not
    screened, not failed), or None while there are fewer than ``cfg.screen_min_fit``."""
    if cfg.screen_sigmas is None:
        return None
    rows = [(r["params"], r["tau"], not r["reason"]) for r in generated_records(cfg.out, settings, with_cube=False)
            if np.isfinite(r["tau"]) and not r["reason"].startswith(("screened", "error"))]
    if len(rows) < cfg.screen_min_fit:
        return None
    params, tau, accepted = (np.array(c) for c in zip(*rows))
    return TauScreen.fit(params, tau, accepted, cfg.tau_max, cfg.screen_sigmas)


def _screened(cfg: LightConeConfig, seed: int, reason: str, n_nodes: int) -> dict:
    """The record of a seed the τ screen skips: its parameters and reason, nothing simulated."""
    return {"seed": seed, "params": sample_params(cfg, seed), "tau": np.nan, "x_hi_zmin": np.nan,
            "x_hi": np.full(n_nodes, np.nan), "mean_brightness_temp": np.full(n_nodes, np.nan),
            "reason": reason, "inputs": "", "seconds": 0.0}


def generate_lightcones(cfg: LightConeConfig, progress: bool = True) -> dict:
    """Make (or resume, or extend) the data set ``cfg.out``; returns the data set's ``accepted`` and
    ``rejected`` counts, and this run's ``computed`` light cones, timings and rejection ``reasons``
    (``screened``: seeds the τ screen skipped; ``screen``: its last fit, described, or None).

    Seeds ``cfg.seed, cfg.seed+1, ...`` are tried in order until ``cfg.n`` are accepted or
    ``max_attempts`` (default 10·n) seeds are used up; seeds already finished (in ``out`` or in
    its ``.parts`` directory) are not run again.
    """
    from halotrans.skatr import simulate as lightcone_run  # 21cmFAST, imported in the worker

    settings = generation_settings(cfg)
    remove_stale_temporaries(cfg.out)
    done = done_seeds(cfg.out, settings)
    check_finite_output(cfg.out)  # before hours of new light cones, not at the end
    stop = cfg.seed + (cfg.max_attempts or 10 * cfg.n)
    next_seed, accepted, rejected = cfg.seed, 0, 0
    n_nodes = len(lightcone_run.node_redshifts(cfg))
    screen = fit_screen(cfg, settings)
    reasons: Counter[str] = Counter()
    seconds: list[float] = []
    in_flight: dict[Future, int] = {}
    pool: ProcessPoolExecutor | None = None
    # the bar starts at the light cones already accepted, so its rate and ETA are this run's
    resumed = sum(bool(ok) for s, ok in done.items() if cfg.seed <= s < stop)
    bar = tqdm(total=cfg.n, initial=min(cfg.n, resumed), desc=Path(cfg.out).name, unit="lc",
               disable=not progress, file=sys.stderr)
    if screen is not None:
        bar.write(screen.describe(), file=sys.stderr)
    t_start = time.perf_counter()
    try:
        while True:
            while next_seed < stop and accepted + len(in_flight) < cfg.n and len(in_flight) < cfg.workers:
                if next_seed in done:
                    accepted += done[next_seed]
                    rejected += not done[next_seed]
                elif screen is not None and (why := screen.reason(sample_params(cfg, next_seed))):
                    write_part(cfg.out, settings, _screened(cfg, next_seed, why, n_nodes))
                    rejected += 1
                    reasons["screened"] += 1
                else:
                    if pool is None:
                        pool = ProcessPoolExecutor(cfg.workers, mp_context=multiprocessing.get_context("spawn"))
                    in_flight[pool.submit(_simulate_and_store, cfg, next_seed, settings)] = next_seed
                next_seed += 1
            if not in_flight:
                break
            finished, _ = wait(in_flight, return_when=FIRST_COMPLETED)
            for fut in finished:
                seed = in_flight.pop(fut)
                reason, secs = fut.result()
                seconds.append(secs)
                if reason:
                    rejected += 1
                    if reason.startswith("error"):
                        reasons["error"] += 1
                        bar.write(f"seed {seed}: {reason}")
                    else:
                        reasons["+".join(part.split(" ")[0] for part in reason.split("; "))] += 1
                else:
                    accepted += 1
                    bar.update(1)
                bar.set_postfix(rejected=rejected, screened=reasons["screened"], s_per_lc=f"{np.mean(seconds):.1f}")
                if cfg.screen_sigmas is not None and len(seconds) % REFIT_EVERY == 0:
                    screen = fit_screen(cfg, settings) or screen
                    if screen is not None:
                        bar.write(screen.describe(), file=sys.stderr)
    finally:
        bar.close()
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
    wall = time.perf_counter() - t_start
    z, d = lightcone_run.los_grid(cfg)
    f = cfg.downsample
    grid = {"redshifts": z.reshape(-1, f).mean(1), "comoving_distance": d.reshape(-1, f).mean(1),
            "node_redshifts": lightcone_run.node_redshifts(cfg)[::-1].copy()}
    counts = consolidate(cfg, settings, grid, lightcone_run.p21c.__version__)
    return {**counts, "computed": len(seconds), "wall_s": wall,
            "mean_lc_s": float(np.mean(seconds)) if seconds else float("nan"), "reasons": dict(reasons),
            "screened": reasons["screened"], "screen": screen.describe() if screen is not None else None}
