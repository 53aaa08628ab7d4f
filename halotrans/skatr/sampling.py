"""Does a cheaper redshift sampling change the light cones? Matched-seed comparison of 21cmFAST settings.

21cmFAST's cost scales with the number of coeval redshift nodes, set by ``zprime_step_factor``
(nodes log-spaced in 1+z). This module runs the SAME seeds (same parameters, same initial
conditions) at several factors and measures what changes, against a reference factor:

* the acceptance: τ, x_HI(z_min), and how many verdicts (τ ≤ τ_max, x_HI ≤ x_HI,max) flip;
* the global signal: the slice-mean brightness temperature T̄(z) of the light cone, rms over z of
  its change [mK], against the spread of T̄(z) between light cones (what the parameters do);
* the field: rms of the change of the fluctuations (slice mean removed) over their rms, and their
  correlation coefficient;
* the statistic that carries the parameters: the spherically averaged power spectrum
  Δ²(k) = k³P(k)/2π² [mK²] of the light cone cut into ``n_chunks`` redshift chunks, in ``n_k``
  log-spaced k bins [1/Mpc]: the mean and rms over light cones of ln(Δ²_f / Δ²_ref) per chunk and
  bin, each also in units of the spread of ln Δ²_ref between light cones (an "effect size": the
  shift a setting causes next to what distinguishes parameters).

Every (seed, factor) light cone is written to ``<out>/seed_<seed>_zf<factor>.npz`` when it
finishes, so a killed comparison resumes; :func:`compare` reads whatever is there.

    python -m halotrans skatr compare-sampling -c skatr/lightcones_cpu.yaml --factors 1.02 1.05 1.10 \\
        --reference 1.05 --seeds 0-19 --out runs/sampling
"""

from __future__ import annotations

import json
import multiprocessing
import re
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from halotrans.io import atomic_path
from halotrans.skatr.config import LightConeConfig

_PART = re.compile(r"seed_(\d+)_zf([0-9.]+)\.npz")


def part_file(out: Path, seed: int, factor: float) -> Path:
    return Path(out) / f"seed_{seed:08d}_zf{factor:.4f}.npz"


def _run_one(cfg: LightConeConfig, seed: int, factor: float, out: str) -> tuple[int, float, float]:
    """Worker: light cone ``seed`` at ``zprime_step_factor = factor`` → its npz file."""
    from halotrans.skatr import simulate

    c = replace(cfg, zprime_step_factor=factor)
    r = simulate.simulate_light_cone(c, seed)
    z_los, _ = simulate.los_grid(c)
    with atomic_path(part_file(Path(out), seed, factor)) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, brightness_temp=r["brightness_temp"].astype(np.float32), params=r["params"], tau=r["tau"],
                 x_hi_zmin=r["x_hi_zmin"], accepted=not r["reason"], seconds=r["seconds"], redshifts=z_los,
                 n_nodes=len(simulate.node_redshifts(c)), cell_mpc=c.box_len / c.hii_dim * c.downsample)
    return seed, factor, r["seconds"]


def import_generated(cfg: LightConeConfig, generated: str | Path, out: str | Path, seeds: Sequence[int]) -> int:
    """Take the light cones a ``lightcones`` run already made at ``cfg``'s settings (its data set
    ``generated`` and its part files) as this comparison's parts at ``cfg.zprime_step_factor``, for
    ``seeds`` not yet in ``out``: the same seed at the same settings is the same light cone (bit for
    bit), so they need not be simulated again. The generator keeps no field of a rejected light cone:
    its part holds τ and x_HI(z_min) only (verdicts, not field statistics). Returns how many were taken."""
    from halotrans.skatr import simulate
    from halotrans.skatr.store import generated_records, generation_settings

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    factor = cfg.zprime_step_factor
    todo = [s for s in seeds if not part_file(out, s, factor).is_file()]
    z_los, _ = simulate.los_grid(cfg)
    n_nodes = len(simulate.node_redshifts(cfg))
    taken = 0
    for r in generated_records(generated, generation_settings(cfg), todo):
        if r["reason"].startswith("screened"):  # skipped by the τ screen: no verdict to take; simulated here
            continue
        field = {} if r["brightness_temp"] is None else {"brightness_temp": r["brightness_temp"].astype(np.float32)}
        with atomic_path(part_file(out, r["seed"], factor)) as tmp, open(tmp, "wb") as fh:
            np.savez(fh, **field, params=r["params"], tau=r["tau"], x_hi_zmin=r["x_hi_zmin"],
                     accepted=not r["reason"], seconds=r["seconds"], redshifts=z_los, n_nodes=n_nodes,
                     cell_mpc=cfg.box_len / cfg.hii_dim * cfg.downsample)
        taken += 1
    return taken


def run_comparison(cfg: LightConeConfig, factors: Sequence[float], seeds: Sequence[int], out: str | Path,
                   workers: int = 2, deadline_s: float | None = None, progress: bool = True) -> dict[str, Any]:
    """Simulate every (seed, factor) not yet in ``out`` with ``workers`` processes, seed by seed.

    ``deadline_s``: submit no new light cone after that many seconds (those running finish).
    Returns ``{"computed": n, "wall_s": s}``.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    todo = [(s, f) for s in seeds for f in factors if not part_file(out, s, f).is_file()]
    t0 = time.perf_counter()
    done = 0
    if not todo:
        return {"computed": 0, "wall_s": 0.0}
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        running: set = set()
        while todo or running:
            while todo and len(running) < workers and (deadline_s is None or time.perf_counter() - t0 < deadline_s):
                s, f = todo.pop(0)
                running.add(pool.submit(_run_one, cfg, s, f, str(out)))
            if not running:
                break
            finished, running = wait(running, return_when=FIRST_COMPLETED)
            for fut in finished:
                seed, factor, secs = fut.result()
                done += 1
                if progress:
                    print(f"seed {seed} zprime_step_factor {factor:g}: {secs:.1f} s "
                          f"({time.perf_counter() - t0:.0f} s elapsed)", flush=True)
    return {"computed": done, "wall_s": time.perf_counter() - t0}


def load_parts(out: str | Path) -> dict[float, dict[int, dict[str, Any]]]:
    """factor → seed → the arrays of one light cone."""
    res: dict[float, dict[int, dict[str, Any]]] = {}
    for p in sorted(Path(out).glob("seed_*_zf*.npz")):
        m = _PART.fullmatch(p.name)
        if m is None:
            continue
        with np.load(p) as z:
            res.setdefault(float(m.group(2)), {})[int(m.group(1))] = {k: z[k] for k in z.files}
    return res


def chunk_power(tb: np.ndarray, cell_mpc: float, n_chunks: int, n_k: int) -> tuple[np.ndarray, np.ndarray]:
    """Δ²(k) [mK²] of ``n_chunks`` line-of-sight chunks of a light cone (X, Y, Z), (n_chunks, n_k), and the
    bin centres k [1/Mpc] (n_k,). Each chunk's mean is removed; bins are log-spaced between the
    fundamental mode of the transverse box and the Nyquist frequency."""
    x, y, z = tb.shape
    length = z // n_chunks
    kx = 2 * np.pi * np.fft.fftfreq(x, d=cell_mpc)
    kz = 2 * np.pi * np.fft.fftfreq(length, d=cell_mpc)
    kk = np.sqrt(kx[:, None, None] ** 2 + kx[None, :, None] ** 2 + kz[None, None, :] ** 2)
    edges = np.geomspace(2 * np.pi / (x * cell_mpc), np.pi / cell_mpc, n_k + 1)
    which = np.digitize(kk.ravel(), edges) - 1
    volume = x * y * length * cell_mpc**3
    out = np.full((n_chunks, n_k), np.nan)
    for c in range(n_chunks):
        chunk = tb[:, :, c * length:(c + 1) * length].astype(np.float64)
        power = np.abs(np.fft.fftn(chunk - chunk.mean())) ** 2 * cell_mpc**6 / volume
        for b in range(n_k):
            sel = which == b
            if sel.any():
                k = kk.ravel()[sel]
                out[c, b] = np.mean(k**3 * power.ravel()[sel]) / (2 * np.pi**2)
    return out, np.sqrt(edges[1:] * edges[:-1])


def compare(out: str | Path, reference: float, tau_max: float = 0.089, x_hi_max: float = 0.1, n_chunks: int = 5,
            n_k: int = 4) -> dict[str, Any]:
    """Statistics of every factor against ``reference`` over the seeds both have (see the module doc)."""
    parts = load_parts(out)
    if reference not in parts:
        raise ValueError(f"{out}: no light cone at the reference factor {reference:g} (found {sorted(parts)})")
    ref = parts[reference]

    def fielded(r: dict) -> bool:
        return "brightness_temp" in r and bool(np.isfinite(r["brightness_temp"]).all())

    result: dict[str, Any] = {"reference": reference, "n_chunks": n_chunks, "n_k": n_k, "factors": {}}
    ps_ref_all = {s: chunk_power(r["brightness_temp"], float(r["cell_mpc"]), n_chunks, n_k) for s, r in ref.items()
                  if fielded(r)}
    if not ps_ref_all:
        raise ValueError(f"{out}: no light cone with a finite field at the reference factor {reference:g}")
    for factor, runs in sorted(parts.items()):
        both = sorted(set(runs) & set(ref))
        # verdicts: every matched seed with a finite τ; fields: those with a finite field in both settings
        matched = [s for s in both if np.isfinite(runs[s]["tau"]) and np.isfinite(ref[s]["tau"])]
        seeds = [s for s in both if fielded(runs[s]) and fielded(ref[s])]
        no_field = [s for s in both if "brightness_temp" not in runs[s] or "brightness_temp" not in ref[s]]
        entry: dict[str, Any] = {"n_nodes": int(next(iter(runs.values()))["n_nodes"]),
                                 "seconds_mean": float(np.nanmean([float(r["seconds"]) for r in runs.values()])),
                                 "n_light_cones": len(runs), "n_matched": len(matched),
                                 "n_matched_fields": len(seeds), "no_field": len(no_field),
                                 "non_finite": len(both) - len(seeds) - len(no_field)}
        result["factors"][f"{factor:g}"] = entry
        if factor == reference or not seeds:
            continue
        secs = np.array([[float(runs[s]["seconds"]), float(ref[s]["seconds"])] for s in matched])
        secs = secs[np.isfinite(secs).all(axis=1)]
        entry["seconds_ratio_matched"] = float(secs[:, 0].mean() / secs[:, 1].mean()) if len(secs) else float("nan")
        entry["n_timed"] = int(len(secs))
        tau_a = np.array([float(runs[s]["tau"]) for s in matched])
        tau_b = np.array([float(ref[s]["tau"]) for s in matched])
        xh_a = np.array([float(runs[s]["x_hi_zmin"]) for s in matched])
        xh_b = np.array([float(ref[s]["x_hi_zmin"]) for s in matched])
        acc_a = (tau_a <= tau_max) & (xh_a <= x_hi_max)
        acc_b = (tau_b <= tau_max) & (xh_b <= x_hi_max)
        a = [runs[s] for s in seeds]
        b = [ref[s] for s in seeds]
        gm_a = np.array([r["brightness_temp"].mean(axis=(0, 1)) for r in a])
        gm_b = np.array([r["brightness_temp"].mean(axis=(0, 1)) for r in b])
        fl_a = [r["brightness_temp"] - r["brightness_temp"].mean(axis=(0, 1)) for r in a]
        fl_b = [r["brightness_temp"] - r["brightness_temp"].mean(axis=(0, 1)) for r in b]
        rel_rms = np.array([np.sqrt(np.mean((x - y) ** 2) / max(np.mean(y**2), 1e-12)) for x, y in zip(fl_a, fl_b)])
        corr = np.array([np.corrcoef(x.ravel(), y.ravel())[0, 1] for x, y in zip(fl_a, fl_b)])
        ps_a = np.array([chunk_power(r["brightness_temp"], float(r["cell_mpc"]), n_chunks, n_k)[0] for r in a])
        ps_b = np.array([ps_ref_all[s][0] for s in seeds])
        with np.errstate(divide="ignore", invalid="ignore"):
            # a chunk with no fluctuations (fully ionised) in both settings is no change; in one only: undefined
            lr = np.where((ps_a <= 0) & (ps_b <= 0), 0.0, np.log(ps_a / ps_b))
            lr[~np.isfinite(lr)] = np.nan
            ln_ref = np.log(np.array([v[0] for v in ps_ref_all.values()]))
            ln_ref[~np.isfinite(ln_ref)] = np.nan
            spread = np.nanstd(ln_ref, axis=0)
        shift = np.nanmean(lr, axis=0)
        scatter = np.nanstd(lr, axis=0) if len(seeds) > 1 else np.zeros_like(shift)
        entry.update({
            "tau_abs_diff_mean": float(np.mean(np.abs(tau_a - tau_b))), "tau_abs_diff_max": float(np.max(np.abs(tau_a - tau_b))),
            "tau_spread": float(np.std(tau_b)),
            "x_hi_zmin_abs_diff_max": float(np.max(np.abs(xh_a - xh_b))),
            "verdict_flips": int(np.sum(acc_a != acc_b)), "accepted_ref": int(acc_b.sum()),
            "flips_to_rejected": int(np.sum(acc_b & ~acc_a)), "flips_to_accepted": int(np.sum(acc_a & ~acc_b)),
            "global_rms_diff_mk": float(np.median(np.sqrt(np.mean((gm_a - gm_b) ** 2, axis=1)))),
            "global_max_diff_mk": float(np.max(np.abs(gm_a - gm_b))),
            "global_spread_mk": float(np.sqrt(np.mean(np.var(gm_b, axis=0)))) if len(seeds) > 1 else float("nan"),
            "field_rel_rms_diff_median": float(np.median(rel_rms)), "field_rel_rms_diff_max": float(np.max(rel_rms)),
            "field_corr_median": float(np.median(corr)), "field_corr_min": float(np.min(corr)),
            "ps_log_ratio_mean": shift.tolist(), "ps_log_ratio_std": scatter.tolist(),
            "ps_log_ratio_sem": (scatter / np.sqrt(np.maximum(np.sum(np.isfinite(lr), axis=0), 1))).tolist(),
            "ps_log_spread_ref": spread.tolist(),
            "ps_max_abs_shift": float(np.nanmax(np.abs(shift))),
            "ps_max_effect_size": float(np.nanmax(np.abs(shift) / spread)),
            "ps_max_rms_over_spread": float(np.nanmax(np.sqrt(shift**2 + scatter**2) / spread)),
        })
    z = ref[next(iter(ps_ref_all))]["redshifts"]
    length = len(z) // n_chunks
    result["chunk_redshifts"] = [[float(z[c * length]), float(z[(c + 1) * length - 1])] for c in range(n_chunks)]
    result["k_bins"] = next(iter(ps_ref_all.values()))[1].tolist()
    return result


def markdown(result: dict[str, Any]) -> str:
    """The comparison as Markdown: one row per factor against the reference, then per factor the mean
    shift of ln Δ² per redshift chunk and k bin with its standard error."""
    ref = result["reference"]
    lines = [f"# Redshift sampling against zprime_step_factor {ref:g} (matched seeds)", "",
             "| factor | nodes | s per light cone (matched / reference) | matched seeds (with fields) | "
             "|Δτ| mean / max (spread) | verdict flips (to rejected / to accepted) | T̄(z) rms Δ [mK] (spread) | "
             "field rel. rms Δ median / max | field r median / min | max |Δ ln Δ²| | max effect size | "
             "max rms/spread |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for f, e in result["factors"].items():
        if "tau_abs_diff_mean" not in e:
            what = "reference" if float(f) == ref else f"no matched seed, {e.get('non_finite', 0)} with NaN/Inf"
            lines.append(f"| {f} ({what}) | {e['n_nodes']} | {e['seconds_mean']:.1f} | {e['n_light_cones']} |"
                         " – | – | – | – | – | – | – | – |")
            continue
        lines.append(
            f"| {f} | {e['n_nodes']} | {e['seconds_mean']:.1f} "
            f"({e.get('seconds_ratio_matched', float('nan')):.2f}×) | "
            f"{e['n_matched']} ({e.get('n_matched_fields', e['n_matched'])}) | {e['tau_abs_diff_mean']:.4f} / "
            f"{e['tau_abs_diff_max']:.4f} ({e['tau_spread']:.4f}) | {e['verdict_flips']} of {e['n_matched']} "
            f"({e.get('flips_to_rejected', '–')} / {e.get('flips_to_accepted', '–')}) | "
            f"{e['global_rms_diff_mk']:.2f} ({e['global_spread_mk']:.2f}) | {e['field_rel_rms_diff_median']:.3f} / "
            f"{e['field_rel_rms_diff_max']:.3f} | {e['field_corr_median']:.3f} / {e['field_corr_min']:.3f} | "
            f"{e['ps_max_abs_shift']:.3f} | {e['ps_max_effect_size']:.2f} | {e['ps_max_rms_over_spread']:.2f} |"
            + (f" ({e['non_finite']} left out: NaN/Inf brightness temperature)" if e.get("non_finite") else ""))
    lines += ["", f"Power spectra in {result['n_chunks']} redshift chunks "
              f"({', '.join(f'{a:.1f}-{b:.1f}' for a, b in result['chunk_redshifts'])}) and {result['n_k']} k bins "
              f"({', '.join(f'{k:.3f}' for k in result['k_bins'])} 1/Mpc). Effect size: |mean Δ ln Δ²| over the "
              "spread of ln Δ² between light cones of the reference setting (what the parameters change). "
              "Matched seeds: both settings have τ and x_HI(z_min) (verdicts); with fields: both kept the light "
              "cone (field and power statistics; the generator keeps no field of a rejected light cone). "
              "Seconds: mean over each setting's light cones, and the ratio over the matched seeds timed in both."]
    for f, e in result["factors"].items():
        if "ps_log_ratio_mean" not in e:
            continue
        sem = e.get("ps_log_ratio_sem", [[float("nan")] * result["n_k"]] * result["n_chunks"])
        lines += ["", f"Mean Δ ln Δ² ± standard error, factor {f} against {ref:g} "
                      f"({e.get('n_matched_fields', e['n_matched'])} light cones; rows: redshift chunks, "
                      "columns: k [1/Mpc]; in brackets the effect size):", "",
                  "| z | " + " | ".join(f"{k:.3f}" for k in result["k_bins"]) + " |",
                  "|---|" + "---|" * result["n_k"]]
        for c, (za, zb) in enumerate(result["chunk_redshifts"]):
            cells = []
            for b in range(result["n_k"]):
                m, err, sp = e["ps_log_ratio_mean"][c][b], sem[c][b], e["ps_log_spread_ref"][c][b]
                cells.append(f"{m:+.3f} ± {err:.3f} ({abs(m) / sp:.2f})" if np.isfinite(m) and sp > 0 else "–")
            lines.append(f"| {za:.1f}-{zb:.1f} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_report(result: dict[str, Any], out: str | Path) -> Path:
    out = Path(out)
    with atomic_path(out / "sampling.json") as tmp:
        tmp.write_text(json.dumps(result, indent=1))
    with atomic_path(out / "sampling.md") as tmp:
        tmp.write_text(markdown(result))
    return out / "sampling.md"
