"""SKATR reference at CPU scale, v2 (issue 16): can a frozen JEPA summary match a ViT trained from scratch?

    python -m halotrans.benchmark skatr_reference           # ~15 h on 2 cores from nothing (light cones ~7 h)
    python -m halotrans.benchmark skatr_reference --quick   # tiny light cones, seconds per stage: a smoke run

One command, resumable: every stage is skipped when its output is complete, so a killed run is
continued by running the same command again (a killed training resumes from its last checkpoint
with the wall-clock it has left, see ``harness.stage_train``). The light cones alone:
``python -m halotrans lightcones -c reference/skatr_pretrain.yaml`` (labelled) and
``-c reference/skatr_pool.yaml`` (unlabelled pool), resumable too, in as many pieces as wanted.

1. light cones (configs/skatr/lightcones_cpu.yaml: 14×14×537 cells, z 5-35, ZPRIME_STEP_FACTOR 1.05,
   six SKATR priors, τ and x_HI(z=5) rejections): 1000 labelled (600/100/300 train/val/test) in
   ``data/reference/lightcones_cpu.h5`` and an unlabelled pool of 1200 in ``lightcones_pool.h5``;
2. JEPA pretraining as SKATR does it (skatr_pretrain.yaml: 7×7×13 tokens, long and short tube
   targets each with its own context) on the labelled training split plus the pool, no parameter
   read; a probe of the real command (steps, one validation, one checkpoint) plans ``train.steps``
   so that the LR and EMA schedules end inside ``train.time_budget_s``;
3. summaries of all 8 transverse symmetries of every labelled light cone by the target and by the
   context encoder; an L1 regression head with best-validation checkpoint and patience on each
   (skatr_regress.yaml); the encoder with the lower validation loss is kept (A/B);
4. an ensemble of flows (skatr_npe.yaml) conditioned on the kept head's outputs, each with early
   stopping on validation; A/B on validation of the conditions the flows train on: the head's outputs
   on its own training light cones (in-sample: tighter than on new ones) or cross-fitted (each
   training light cone's output by the head of 5 that left its fold out); coverage on the test split
   in θ-space and logit space, per parameter, TARP, each against the band of a calibrated posterior
   at that number of test light cones;
5. the same ViT trained from scratch (skatr_scratch.yaml: symmetry augmentation, L1, best
   validation checkpoint, its own probe-planned budget), and the data-efficiency runs: frozen head
   and scratch ViT on 10/25/50 % of the training split; the scratch ViT frozen as the
   "regression-pretrained" summary (skatr_regpre.yaml);
6. the test-set report: paired bootstrap intervals of every frozen/scratch error ratio, the cost
   of each stage, the effective rank of the summaries and per-parameter linear-probe R² against a
   randomly initialised encoder of the same architecture, the goals of issue 16;
   ``reference_skatr.md``/``.json``; the full run copies them with the plots to
   ``benchmarks/reference_skatr/`` and rewrites the ``reference:skatr`` block of ``benchmarks/RESULTS.md``.

Goals, Markdown and benchmark rows: ``skatr_reference_report.py`` (which also renders the first
reference, issue 9, published 2026-12-04, from its JSON: a summary without ``version`` is that one).
"""

from __future__ import annotations

import csv
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from halotrans.benchmark import REPO
from halotrans.config import Config, ConfigError, config_to_dict, load_config, save_config
from halotrans.io import DataError

sys.path.insert(0, str(Path(__file__).resolve().parent))  # harness.py next to this file
import harness  # noqa: E402
from skatr_reference_report import (  # noqa: E402
    BOOT_LEVEL,
    GOAL_PARAMS,
    N_BOOT,
    goal_checks,
    pct,
    results_block,
    rows_of,
    summary_markdown,
)

CONFIG_DIR = REPO / "configs" / "reference"
#: stage -> config file stem in configs/reference
STAGES = {"pretrain": "skatr_pretrain", "pool": "skatr_pool", "regress": "skatr_regress", "npe": "skatr_npe",
          "scratch": "skatr_scratch", "regpre": "skatr_regpre"}
#: stages that train on cached frozen summaries for a fixed number of steps, and whose encoder they read
FROZEN = {"regress": "pretrain", "npe": "pretrain", "regpre": "scratch"}
#: a run of its own (hours): `python -m halotrans.benchmark [--quick]` skips it unless named
IN_DEFAULT = False
WORK = REPO / "runs" / "reference_skatr"
QUICK_WORK = REPO / "runs" / "reference_skatr_quick"
PUBLISH = REPO / "benchmarks" / "reference_skatr"
COMMAND = "python -m halotrans.benchmark skatr_reference"
#: the version of the summary this script writes (the first reference's has none)
VERSION = 2
#: the smoke run: 21cmFAST's tiny light cones (configs/skatr/lightcones_tiny.yaml, 8×8×40 after the
#: line-of-sight crop), a 2×2×4-token ViT, a few seconds of training per stage
QUICK_SET = ("lightcone.out=data/reference_quick/lightcones_tiny.h5", "lightcone.n=10", "lightcone.hii_dim=8",
             "lightcone.dim=16", "lightcone.box_len=40.0", "lightcone.r_bubble_max=10.0", "lightcone.n_los=45",
             "lightcone.zprime_step_factor=1.3", "lightcone.wdm=false", "lightcone.los_multiple=10",
             "lightcone.split=[0.6,0.2,0.2]", "model.patch_size=[4,4,10]",
             "skatr.pretrain_data=data/reference_quick/pool_tiny.h5", "train.time_budget_s=45",
             "train.warmup_steps=5", "skatr.posterior_samples=200")
QUICK_STEPS = {"regress": 60, "npe": 60, "regpre": 60}
QUICK_POOL_N = 6
#: the A/B of the summary: which JEPA encoder summarises
WEIGHTS = ("target", "context")
#: data efficiency: fractions of the training split (frozen head and scratch ViT at each)
FRACTIONS = (0.1, 0.25, 0.5, 1.0)
QUICK_FRACTIONS = (0.5, 1.0)
#: a scratch ViT on a fraction f of the training split gets max(f, this) of the full budget
MIN_FRACTION_BUDGET = 0.25
#: flows in the NPE ensemble (train.seed 0, 1, ...)
NPE_MEMBERS = 5
QUICK_NPE_MEMBERS = 2
#: the A/B of the flow's training conditions: the kept head's outputs on its own training light cones
#: ("in-sample"), or each training light cone's output by the head of CV_FOLDS that left it out
NPE_VARIANTS = ("in-sample", "cross-fitted")
CV_FOLDS, QUICK_CV_FOLDS = 5, 2
#: validations over a budgeted run (JEPA, scratch ViT) and the slack of the step plan
JEPA_EVALS, SCRATCH_EVALS, PLAN_MARGIN = 5, 10, 1.05
REPORT_FILES = ("recovery.png", "posteriors.png", "coverage.png", "calibration.png")




# --- configs -------------------------------------------------------------------------------------

def stage_configs(overrides: Sequence[str] = (), work: Path = WORK, quick: bool = False) -> dict[str, Config]:
    """The stage configs with ``overrides``, run directories under ``work``, the frozen runs reading
    ``<work>/pretrain`` (``regpre``: ``<work>/scratch``) and the pool written to ``skatr.pretrain_data``.

    Raises :class:`ConfigError` unless every stage reads one labelled light-cone set, the pool has
    its generation settings but for ``out``, ``seed`` and ``n``, and the pretraining and scratch runs
    share the ViT."""
    cfgs = {}
    for stage, stem in STAGES.items():
        if stage == "pool":
            continue
        extra = [f"train.out_dir={work / stage}"]
        if stage in FROZEN:  # fixed steps on the summaries of another run's encoder, not a budget
            extra += [f"skatr.encoder_run={work / FROZEN[stage]}", "train.time_budget_s=null"]
        if quick and stage in QUICK_STEPS:
            extra.append(f"train.steps={QUICK_STEPS[stage]}")
        cfgs[stage] = load_config(CONFIG_DIR / f"{stem}.yaml", [*overrides, *extra])
    own = load_config(CONFIG_DIR / f"{STAGES['pool']}.yaml").lightcone  # the pool's own seed range and size
    cfgs["pool"] = load_config(CONFIG_DIR / f"{STAGES['pool']}.yaml", [
        *overrides, f"lightcone.out={cfgs['pretrain'].skatr.pretrain_data}", f"lightcone.seed={own.seed}",
        f"lightcone.n={QUICK_POOL_N if quick else own.n}", f"train.out_dir={work / 'pool'}"])
    dicts = {s: config_to_dict(c) for s, c in cfgs.items()}
    for stage in STAGES:
        if stage == "pool":
            a, b = dict(dicts["pool"]["lightcone"]), dict(dicts["pretrain"]["lightcone"])
            for k in ("out", "seed", "n"):
                a.pop(k), b.pop(k)
            if a != b or not cfgs["pretrain"].skatr.pretrain_data:
                raise ConfigError(f"{CONFIG_DIR / STAGES['pool']}.yaml: the pool must be made with the settings of "
                                  f"{STAGES['pretrain']}.yaml's light cones (only out, seed and n differ) and "
                                  "skatr.pretrain_data must name it")
            if cfgs["pool"].lightcone.seed < cfgs["pretrain"].lightcone.seed + 10 * cfgs["pretrain"].lightcone.n:
                raise ConfigError(f"{CONFIG_DIR / STAGES['pool']}.yaml: the pool's seeds (from "
                                  f"{cfgs['pool'].lightcone.seed}) may overlap the labelled set's")
        elif dicts[stage]["lightcone"] != dicts["pretrain"]["lightcone"]:
            raise ConfigError(f"{CONFIG_DIR / STAGES[stage]}.yaml: its `lightcone` section differs from "
                              f"{STAGES['pretrain']}.yaml (every stage reads one light-cone set)")
    if dicts["scratch"]["model"] != dicts["pretrain"]["model"]:
        raise ConfigError(f"{CONFIG_DIR / STAGES['scratch']}.yaml: its `model` differs from "
                          f"{STAGES['pretrain']}.yaml (the peer is the same ViT trained from scratch)")
    for stage in FROZEN:
        if cfgs[stage].skatr.summary != "frozen":
            raise ConfigError(f"{CONFIG_DIR / STAGES[stage]}.yaml: skatr.summary must be 'frozen'")
    if cfgs["scratch"].skatr.summary != "scratch":
        raise ConfigError(f"{CONFIG_DIR / STAGES['scratch']}.yaml: skatr.summary must be 'scratch'")
    return cfgs


def derive(files: dict[str, Path], stage: str, name: str, work: Path,
           overrides: Sequence[str] = ()) -> tuple[Config, Path]:
    """Run ``name`` (``<work>/<name>``): ``stage``'s config with ``overrides``, saved as
    ``<work>/configs/<name>.yaml``."""
    cfg = load_config(files[stage], [*overrides, f"train.out_dir={work / name}"])
    path = work / "configs" / f"{name}.yaml"
    save_config(cfg, path)
    return cfg, path


# --- stages --------------------------------------------------------------------------------------

def stage_lightcones(config_file: Path, n: int) -> dict:
    """Generate (or resume, or just consolidate) a light-cone set; returns its counts (``screen``: the
    τ screen refitted on every light cone the set computed, with its cross-validated false skips)."""
    import h5py

    from halotrans.skatr.generate import fit_screen
    from halotrans.skatr.store import generation_settings

    harness.run_halotrans(["lightcones", "--config", str(config_file), "--n", str(n)])
    cfg = load_config(config_file).lightcone
    screen = fit_screen(cfg, generation_settings(cfg))
    with h5py.File(REPO / cfg.out, "r") as f:
        reasons = [r.decode() if isinstance(r, bytes) else str(r) for r in f["rejected/reason"][...]] \
            if "rejected" in f else []
        kinds: dict[str, int] = {}
        for r in reasons:
            key = "+".join(part.split(" ")[0].rstrip(":") for part in r.split("; "))
            kinds[key] = kinds.get(key, 0) + 1
        return {"path": str(cfg.out), "accepted": int(f["brightness_temp"].shape[0]),
                "shape": list(f["brightness_temp"].shape[1:]), "rejected": len(reasons), "reasons": kinds,
                "seconds_per_light_cone": float(np.mean(f["seconds"][...]))
                if "seconds" in f and len(f["seconds"]) else None,
                "version": str(f.attrs.get("version", f.attrs.get("py21cmfast_version", ""))),
                "screen": screen.describe() if screen is not None else None}


def stage_summaries(cfg: Config, record: Path) -> dict:
    """The frozen encoder's summaries (cached in its run directory); their computing time is kept in
    ``record`` so a resumed run still reports it."""
    from halotrans.skatr.summaries import ensure_summaries

    t0 = time.time()
    path, status = ensure_summaries(cfg, progress=False)
    seconds = time.time() - t0
    if status != "cached" or not record.is_file():
        harness.write_json(record, {"path": path, "seconds": seconds, "status": status})
    info = json.loads(record.read_text())
    print(f"summaries: {path} ({status}; computed in {info['seconds']:.1f} s)", flush=True)
    return info


def probe_timing(config_file: Path, steps: int = 20, skip: int = 6) -> dict[str, float]:
    """Seconds per optimiser step, per validation and per checkpoint of the real training command: a
    ``steps``-step run in a scratch directory that validates once and checkpoints once after step
    ``skip``, timed step by step from its metrics.csv (the loop logs ``time_s`` before it validates or
    checkpoints, so those costs show in the next step's interval); ``setup_s``: the rest of the
    process's wall-clock (start-up, data, DeepSpeed, the final checkpoint), at least ``harness.SETUP_S``."""
    at_eval = skip + (steps - skip) // 2
    at_ckpt = at_eval + 2
    (REPO / "runs").mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="probe_", dir=REPO / "runs") as tmp:
        t0 = time.time()
        harness.run_halotrans(["train", "--config", str(config_file), "--set", f"train.out_dir={tmp}",
                               "--set", f"train.steps={steps}", "--set", f"train.eval_every={at_eval}",
                               "--set", "train.log_every=1", "--set", f"train.checkpoint_every={at_ckpt}",
                               "--set", "train.time_budget_s=null", "--set", "train.keep_best=false",
                               "--set", "train.patience=0"])
        wall = time.time() - t0
        with open(Path(tmp) / "metrics.csv", newline="") as f:
            times = {int(r["step"]): float(r["time_s"]) for r in csv.DictReader(f) if r.get("time_s")}
    gaps = {s: times[s] - times[s - 1] for s in range(skip + 1, steps + 1) if s in times and s - 1 in times}
    plain = [g for s, g in gaps.items() if s not in (at_eval + 1, at_ckpt + 1)]
    if len(plain) < 3 or at_eval + 1 not in gaps or at_ckpt + 1 not in gaps:
        raise SystemExit(f"reference: the timing probe logged steps {sorted(times)}")
    step_s = statistics.median(plain)
    return {"step_s": step_s, "eval_s": max(0.0, gaps[at_eval + 1] - step_s),
            "checkpoint_s": max(0.0, gaps[at_ckpt + 1] - step_s),
            "setup_s": max(harness.SETUP_S, wall - times.get(steps, 0.0))}


def plan_probe(n_evals: int, record: Path, reuse: bool = False) -> Callable[[Config, Path], float]:
    """A probe for :func:`harness.stage_train`: the seconds per step that make ``train.steps`` fit the
    budget after the set-up, ``n_evals`` validations, 8 + ``n_evals`` checkpoints (best ones included)
    and :data:`PLAN_MARGIN` of slack. The measured timing is kept in ``record`` (``reuse``: a second
    run of the same network reads it instead of probing again)."""

    def probe(cfg: Config, config_file: Path) -> float:
        if reuse and record.is_file():
            t = json.loads(record.read_text())
        else:
            t = probe_timing(config_file)
            harness.write_json(record, t, indent=1)
        budget = float(cfg.train.time_budget_s)
        setup = max(harness.SETUP_S, t.get("setup_s", 0.0))
        usable = budget - setup - n_evals * t["eval_s"] - (8 + n_evals) * t["checkpoint_s"]
        steps = max(cfg.train.warmup_steps + 1, int(usable / (t["step_s"] * PLAN_MARGIN)))
        print(f"probe: {t['step_s']:.3f} s/step, {t['eval_s']:.1f} s per validation, {t['checkpoint_s']:.1f} s per "
              f"checkpoint, {setup:.0f} s set-up -> {steps} steps in {budget:g} s", flush=True)
        return max(budget - harness.SETUP_S, 1e-3) / (steps + 0.5)  # harness.planned_steps rounds down to `steps`

    return probe


def best_record(run_dir: Path) -> dict:
    """The best validation of a ``train.keep_best`` run (``best.json``)."""
    from halotrans.train.checkpoint import read_best

    best = read_best(run_dir)
    if best is None:
        raise SystemExit(f"reference: {run_dir} has no best.json (train.keep_best); run the benchmark again")
    return best


def run_record(run_dir: Path, ledger: dict | None = None, wall_s: float | None = None) -> dict:
    """Cost and schedule of a finished run: wall-clock, steps done and planned, the best step, why it stopped."""
    with open(run_dir / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    last = int(rows[-1]["step"]) if rows else 0
    cfg = load_config(run_dir / "config.yaml").train
    planned = ledger["steps"] if ledger else cfg.steps
    best = best_record(run_dir) if cfg.keep_best else None
    stopped = "schedule" if last >= planned else "patience" if best and cfg.patience and \
        best["evals_since"] >= cfg.patience else "budget"
    return {"seconds": harness.used_seconds(ledger) if ledger else wall_s, "steps": last, "planned_steps": planned,
            "best_step": best["step"] if best else None, "best_val_loss": best["val_loss"] if best else None,
            "stopped": stopped, "budget_s": ledger["budget_s"] if ledger else None,
            "probe": ledger.get("probe_step_s") if ledger else None}


# --- evaluation, cached per model ----------------------------------------------------------------

def evaluated(name: str, run_dirs: Sequence[Path], out: Path) -> dict:
    """The test-set evaluation of a run (or an npe ensemble), its report in ``<run>/report`` and its
    plots copied to ``out/<name>_*.png``; cached in ``<run>/report/eval.npz`` until a model changes."""
    from halotrans.skatr.eval import evaluate_ensemble, evaluate_run
    from halotrans.skatr.report import write_run_report

    first = Path(run_dirs[0])
    cache = first / "report" / "eval.npz"
    stamp = max((Path(r) / "model.pt").stat().st_mtime for r in run_dirs)
    report = None
    if cache.is_file() and cache.stat().st_mtime > stamp:
        with np.load(cache, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            if meta["info"].get("members", [str(first)]) == [str(Path(r)) for r in run_dirs] or len(run_dirs) == 1:
                report = {**meta, "arrays": {k: z[k] for k in z.files if k != "meta"}}
    if report is None:
        report = evaluate_run(first, "test", None, progress=False) if len(run_dirs) == 1 else \
            evaluate_ensemble(list(run_dirs), "test", None, progress=False)
        write_run_report(report, first / "report")
        meta = harness.clean({"info": report["info"], "metrics": report["metrics"]})
        from halotrans.io import atomic_path

        with atomic_path(cache) as tmp, open(tmp, "wb") as fh:
            np.savez(fh, meta=json.dumps(meta), **report["arrays"])
    out.mkdir(parents=True, exist_ok=True)
    for fname in REPORT_FILES:
        if (first / "report" / fname).is_file():
            shutil.copyfile(first / "report" / fname, out / f"{name}_{fname}")
    return report


# --- diagnostics -------------------------------------------------------------------------------------

def bootstrap_ratios(frozen: dict, scratch: dict, names: Sequence[str], seed: int = 0) -> dict[str, dict]:
    """Per parameter: mean relative error of ``frozen`` over ``scratch`` on the same test light cones,
    with its paired bootstrap interval."""
    from halotrans.skatr.diagnostics import paired_bootstrap_ratio
    from halotrans.skatr.eval import per_item_relative_errors

    a, b = frozen["arrays"], scratch["arrays"]
    if a["true"].shape != b["true"].shape or not np.allclose(a["true"], b["true"]):
        raise DataError("the frozen and scratch runs were evaluated on different test light cones")
    ea, eb = per_item_relative_errors(a["pred"], a["true"]), per_item_relative_errors(b["pred"], b["true"])
    out = {}
    for i, p in enumerate(names):
        r, lo, hi = paired_bootstrap_ratio(ea[:, i], eb[:, i], N_BOOT, BOOT_LEVEL, seed)
        out[p] = {"frozen": float(ea[:, i].mean()), "scratch": float(eb[:, i].mean()), "ratio": r, "lower": lo, "upper": hi}
    goal = [i for i, p in enumerate(names) if p in GOAL_PARAMS]
    r, lo, hi = paired_bootstrap_ratio(ea[:, goal].mean(1), eb[:, goal].mean(1), N_BOOT, BOOT_LEVEL, seed)
    out["goal_mean"] = {"frozen": float(ea[:, goal].mean()), "scratch": float(eb[:, goal].mean()), "ratio": r,
                        "lower": lo, "upper": hi}
    return out


def probe_summaries(encoders: dict[str, Config]) -> dict[str, dict]:
    """Effective rank of each encoder's summaries (identity symmetry, every labelled light cone) and
    the ridge linear-probe R² per parameter (train → penalty on val → test)."""
    from halotrans.skatr.diagnostics import effective_rank, linear_probe_r2
    from halotrans.skatr.summaries import cache_path, read_summaries

    out = {}
    for name, cfg in encoders.items():
        s = read_summaries(cache_path(cfg), cfg)
        x = s.values[:, 0]
        splits = {k: (x[idx], s.theta[idx]) for k, idx in s.splits.items()}
        probe = linear_probe_r2(splits)
        out[name] = {"effective_rank": effective_rank(x), "features": int(x.shape[1]),
                     "r2": dict(zip(s.param_names, map(float, probe["r2"]))),
                     "penalty": dict(zip(s.param_names, map(float, probe["penalty"])))}
    return out


def no_skill(cfg: Config, true: np.ndarray, names: Sequence[str]) -> dict[str, float]:
    """The no-skill control: mean relative error per parameter when every light cone of ``true`` (N, P)
    (physical units, columns ``names``) is predicted at the training split's mean parameters."""
    from halotrans.skatr.dataset import denormalize_params
    from halotrans.skatr.eval import relative_errors
    from halotrans.skatr.summaries import cache_path, read_summaries

    s = read_summaries(cache_path(cfg), cfg)
    train = denormalize_params(s.theta[s.splits["train"]].astype(np.float64), np.asarray(s.priors, dtype=np.float64))
    mean = train[:, [list(s.param_names).index(p) for p in names]].mean(0)
    return dict(zip(names, map(float, relative_errors(np.broadcast_to(mean, true.shape), true))))


def _pretrain_summary(run_dir: Path, ledger: dict) -> dict:
    """Steps, wall-clock and the last logged JEPA loss and collapse monitor of the pretraining."""
    import csv

    with open(run_dir / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    last = rows[-1] if rows else {}
    keep = {k: float(v) for k, v in last.items() if v not in ("", None) and k not in ("step", "time_s")}
    return {"steps": int(last.get("step", 0) or 0), "planned_steps": ledger["steps"],
            "train_seconds": harness.used_seconds(ledger), "processes": len(ledger["segments"]),
            "last_logged": keep}


# --- the run -------------------------------------------------------------------------------------

def reference(overrides: Sequence[str] = (), work: Path = WORK, publish: bool = True, quick: bool = False) -> dict:
    """Run (or resume) every stage; returns the summary dict (also written as ``reference_skatr.json``)."""
    from halotrans.skatr.report import write_comparison
    from halotrans.skatr.tasks import write_untrained_encoder

    t_start = time.time()
    fractions = QUICK_FRACTIONS if quick else FRACTIONS
    members = QUICK_NPE_MEMBERS if quick else NPE_MEMBERS
    cfgs = stage_configs(overrides, work, quick)
    files = harness.write_configs(cfgs, STAGES, work)
    out = work / "report"
    accounting: list[dict] = []

    # 1. light cones: the labelled set and the unlabelled pool
    lightcones = stage_lightcones(files["pretrain"], cfgs["pretrain"].lightcone.n)
    pool = stage_lightcones(files["pool"], cfgs["pool"].lightcone.n)
    for key, name, lcs in (("pretrain", "labelled light cones", lightcones), ("pool", "unlabelled pool", pool)):
        if lcs["seconds_per_light_cone"]:
            workers = cfgs[key].lightcone.workers
            screened = lcs["reasons"].get("screened", 0)
            accounting.append({"stage": f"{name} (21cmFAST, worker-seconds)", "seconds": lcs["seconds_per_light_cone"]
                               * (lcs["accepted"] + lcs["rejected"] - screened), "note": f"{lcs['accepted']} accepted, "
                               f"{lcs['rejected']} rejected, of which {screened} skipped unsimulated by the τ screen; "
                               f"{lcs['seconds_per_light_cone']:.1f} s per accepted light cone in one of {workers} "
                               f"worker processes (simulated rejected ones taken as long), so the wall-clock is about "
                               f"1/{workers} of this; partly on a machine shared with other jobs"})

    # 2. JEPA on the labelled training split + the pool
    pre_dir = Path(cfgs["pretrain"].train.out_dir)
    pre_ledger = harness.stage_train("JEPA pretraining", cfgs["pretrain"], files["pretrain"],
                                     plan_probe(JEPA_EVALS, work / "probe_pretrain.json"), n_evals=JEPA_EVALS)
    pretrain = {**_pretrain_summary(pre_dir, pre_ledger), "budget_s": pre_ledger["budget_s"],
                "probe": json.loads((work / "probe_pretrain.json").read_text()),
                "light_cones": _meta(pre_dir).get("pretrain_light_cones")}
    accounting.append({"stage": "JEPA pretraining", "seconds": pretrain["train_seconds"],
                       "note": f"{pretrain['steps']} of {pretrain['planned_steps']} steps"})

    # 3. summaries of both JEPA encoders, a head on each, the better on validation kept
    ab_runs = {}
    for w in WEIGHTS:
        cfg, file = derive(files, "regress", f"regress_{w}", work, [f"skatr.encoder_weights={w}"])
        summ = stage_summaries(cfg, work / f"summaries_{w}.json")
        head_s = harness.stage_fixed(f"regression head on the {w} encoder's summary", cfg, file)
        ab_runs[w] = {**run_record(Path(cfg.train.out_dir), wall_s=head_s), "summaries_s": summ["seconds"],
                      "cfg": cfg}
        accounting += [{"stage": f"summaries, {w} encoder (8 symmetries)", "seconds": summ["seconds"]},
                       {"stage": f"regression head, {w} encoder", "seconds": head_s,
                        "note": f"best step {ab_runs[w]['best_step']} of {ab_runs[w]['steps']}"}]
    winner = min(WEIGHTS, key=lambda w: ab_runs[w]["best_val_loss"])
    win_dir = work / f"regress_{winner}"
    # the head's input on the kept encoder: the configured one against the other (whitened / standardised)
    configured = cfgs["regress"].skatr.head_input
    alt = "standardize" if configured == "whiten" else "whiten"
    alt_cfg, alt_file = derive(files, "regress", f"regress_{winner}_{alt}", work,
                               [f"skatr.encoder_weights={winner}", f"skatr.head_input={alt}"])
    alt_s = harness.stage_fixed(f"regression head on the {winner} encoder's summary, {alt} input", alt_cfg, alt_file)
    input_ab = {"configured": configured, "alternative": alt, "run": run_record(Path(alt_cfg.train.out_dir), wall_s=alt_s)}
    accounting.append({"stage": f"regression head, {winner} encoder, {alt} input (A/B)", "seconds": alt_s})

    # 4. NPE ensembles on the kept head's outputs, trained on in-sample or cross-fitted conditions (A/B)
    folds = QUICK_CV_FOLDS if quick else CV_FOLDS
    fold_dirs = []
    for k in range(folds):
        cfg, file = derive(files, "regress", f"regress_{winner}_cv{k}", work, [
            f"skatr.encoder_weights={winner}", f"skatr.cv_folds={folds}", f"skatr.cv_fold={k}"])
        h_s = harness.stage_fixed(f"regression head without fold {k} of {folds}", cfg, file)
        fold_dirs.append(Path(cfg.train.out_dir))
        accounting.append({"stage": f"regression head, {winner} encoder, without fold {k} of {folds}", "seconds": h_s})
    variant_sets = {"in-sample": [], "cross-fitted": [f"skatr.compress_fold_runs=[{','.join(map(str, fold_dirs))}]"]}
    npe_ab: dict[str, dict] = {}
    for variant in NPE_VARIANTS:
        dirs, records = [], []
        for m in range(members):
            name = f"npe_{m}" if variant == "in-sample" else f"npe_cv_{m}"
            cfg, file = derive(files, "npe", name, work, [f"skatr.encoder_weights={winner}",
                                                          f"skatr.compress_run={win_dir}", f"train.seed={m}",
                                                          *variant_sets[variant]])
            npe_s = harness.stage_fixed(f"NPE flow {m} ({variant})", cfg, file)
            dirs.append(Path(cfg.train.out_dir))
            records.append(run_record(dirs[-1], wall_s=npe_s))
            accounting.append({"stage": f"NPE flow {m} ({variant})", "seconds": npe_s,
                               "note": f"best step {records[-1]['best_step']}"})
        npe_ab[variant] = {"dirs": dirs, "best_val_loss": [r["best_val_loss"] for r in records],
                           "val_loss": float(np.mean([r["best_val_loss"] for r in records]))}
    npe_winner = min(NPE_VARIANTS, key=lambda v: npe_ab[v]["val_loss"])

    # 5. the scratch ViT and the data-efficiency runs (frozen head and scratch ViT per fraction)
    budget = float(cfgs["scratch"].train.time_budget_s)
    scratch_probe = plan_probe(SCRATCH_EVALS, work / "probe_scratch.json", reuse=True)
    runs: dict[float, dict[str, Path]] = {}
    scratch_records: dict[float, dict] = {}
    for f in sorted(fractions, reverse=True):
        if f == 1.0:
            s_cfg, s_file, f_dir = cfgs["scratch"], files["scratch"], win_dir
        else:
            s_cfg, s_file = derive(files, "scratch", f"scratch_f{pct(f)}", work, [
                f"skatr.train_fraction={f}", f"train.time_budget_s={round(max(f, MIN_FRACTION_BUDGET) * budget, 1)}"])
            h_cfg, h_file = derive(files, "regress", f"regress_{winner}_f{pct(f)}", work, [
                f"skatr.encoder_weights={winner}", f"skatr.train_fraction={f}"])
            h_s = harness.stage_fixed(f"regression head on {pct(f)} %", h_cfg, h_file)
            f_dir = Path(h_cfg.train.out_dir)
            accounting.append({"stage": f"regression head, {pct(f)} %", "seconds": h_s})
        ledger = harness.stage_train(f"ViT from scratch, {pct(f)} %", s_cfg, s_file, scratch_probe,
                                     n_evals=SCRATCH_EVALS)
        scratch_records[f] = run_record(Path(s_cfg.train.out_dir), ledger)
        runs[f] = {"frozen": f_dir, "scratch": Path(s_cfg.train.out_dir)}
        accounting.append({"stage": f"ViT from scratch, {pct(f)} %", "seconds": scratch_records[f]["seconds"],
                           "note": f"best step {scratch_records[f]['best_step']}, {scratch_records[f]['steps']} of "
                                   f"{scratch_records[f]['planned_steps']} steps, stopped by "
                                   f"{scratch_records[f]['stopped']}"})

    # the regression-pretrained summary: the scratch ViT (100 %) frozen, the same head on its summaries
    regpre_summ = stage_summaries(cfgs["regpre"], work / "summaries_regpre.json")
    regpre_s = harness.stage_fixed("regression head on the regression-pretrained summary", cfgs["regpre"],
                                   files["regpre"])
    accounting += [{"stage": "summaries, regression-pretrained ViT (8 symmetries)", "seconds": regpre_summ["seconds"]},
                   {"stage": "regression head, regression-pretrained summary", "seconds": regpre_s}]

    # 6. a randomly initialised encoder of the same architecture: the baseline of the probes
    untrained = write_untrained_encoder(cfgs["pretrain"], work / "untrained")
    u_cfg = load_config(files["regress"], [f"skatr.encoder_run={untrained}", "skatr.symmetries=1"])
    u_summ = stage_summaries(u_cfg, work / "summaries_untrained.json")
    accounting.append({"stage": "summaries, untrained encoder (identity symmetry)", "seconds": u_summ["seconds"]})

    # --- test-set evaluation, diagnostics, goals ------------------------------------------------
    reports = {w: evaluated(f"regress_{w}", [work / f"regress_{w}"], out) for w in WEIGHTS}
    input_ab["metrics"] = evaluated(f"regress_{alt}", [Path(alt_cfg.train.out_dir)], out)["metrics"]
    npe_reports = {v: evaluated("npe" if v == npe_winner else f"npe_{v.replace('-', '_')}", npe_ab[v]["dirs"], out)
                   for v in NPE_VARIANTS}
    npe = npe_reports[npe_winner]
    regpre = evaluated("regpre", [Path(cfgs["regpre"].train.out_dir)], out)
    names = list(reports[winner]["info"]["param_names"])
    missing = [p for p in GOAL_PARAMS if p not in names]
    if missing:
        raise DataError(f"the runs report parameters {names}, not {missing}")
    efficiency, comparison = {}, [npe]
    for f in sorted(runs):
        fro = reports[winner] if f == 1.0 else evaluated(f"regress_f{pct(f)}", [runs[f]["frozen"]], out)
        scr = evaluated("scratch" if f == 1.0 else f"scratch_f{pct(f)}", [runs[f]["scratch"]], out)
        comparison += [fro, scr]
        efficiency[f"{pct(f)}"] = {"fraction": f, "n_train": fro["info"]["n_train"],
                                   "ratios": bootstrap_ratios(fro, scr, names), "scratch_run": scratch_records[f],
                                   "frozen_metrics": fro["metrics"], "scratch_metrics": scr["metrics"]}
    write_comparison(comparison, out)
    encoders = {w: ab_runs[w]["cfg"] for w in WEIGHTS}
    encoders["untrained"] = u_cfg
    encoders["regression-pretrained"] = cfgs["regpre"]
    summary = {
        **harness.run_header(COMMAND, overrides, quick, t_start), "version": VERSION, "lightcones": lightcones,
        "pool": pool, "param_names": names,
        "splits": [reports[winner]["info"]["n_train"], _val_count(cfgs["regress"]), reports[winner]["info"]["n_test"]],
        "pretrain": pretrain,
        "ab": {"winner": winner, "runs": {w: {**{k: v for k, v in ab_runs[w].items() if k != "cfg"},
                                              "metrics": reports[w]["metrics"]} for w in WEIGHTS}},
        "head_input_ab": input_ab,
        "npe": {"info": npe["info"], "metrics": npe["metrics"], "condition": npe_winner},
        "npe_ab": {"winner": npe_winner, "folds": folds,
                   "runs": {v: {"val_loss": npe_ab[v]["val_loss"], "best_val_loss": npe_ab[v]["best_val_loss"],
                                "metrics": npe_reports[v]["metrics"]} for v in NPE_VARIANTS}},
        "regpre": {"info": regpre["info"], "metrics": regpre["metrics"]},
        "efficiency": efficiency, "probes": probe_summaries(encoders), "accounting": accounting,
        "no_skill": no_skill(ab_runs[winner]["cfg"], reports[winner]["arrays"]["true"], names),
    }
    summary["goals"] = goal_checks(summary)
    summary["notes"] = _notes(publish)
    summary = harness.clean(summary)
    report_files = sorted(f.name for f in out.iterdir() if f.suffix in (".md", ".json", ".png"))
    harness.write_summary(summary, summary_markdown(summary), out, "reference_skatr", publish=publish,
                          publish_dir=PUBLISH, files=report_files, block="skatr", block_text=results_block(summary))
    return summary


def _notes(publish: bool) -> list[str]:
    """The published NOTES.md, unless it reads the first reference (a v1 report is published there)."""
    published = PUBLISH / "reference_skatr.json"
    if published.is_file() and json.loads(published.read_text(encoding="utf-8")).get("version", 1) < VERSION:
        return []
    return harness.read_notes(PUBLISH, publish)


def _meta(run_dir: Path) -> dict:
    import torch

    return torch.load(run_dir / "model.pt", map_location="cpu", weights_only=False)["meta"]


def _val_count(cfg: Config) -> int:
    from halotrans.skatr.data import open_split

    return len(open_split(cfg, "val", fixed_noise=True))




def run(quick: bool) -> list[dict]:
    """``python -m halotrans.benchmark skatr_reference [--quick]``."""
    summary = reference(QUICK_SET, QUICK_WORK, publish=False, quick=True) if quick else reference()
    return rows_of(summary)


def main(argv: Sequence[str] | None = None) -> int:
    return harness.reference_cli(argv, reference, doc=__doc__, quick_set=QUICK_SET, work=WORK, quick_work=QUICK_WORK,
                                 publish_dir=PUBLISH, quick_help="tiny light cones, seconds per stage")


if __name__ == "__main__":
    sys.exit(main())
