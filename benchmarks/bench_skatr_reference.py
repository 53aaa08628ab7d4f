"""SKATR reference at CPU scale: the frozen JEPA summary against the same ViT trained from scratch, and NPE.

    python -m halotrans.benchmark skatr_reference           # ~2.5 h on 2 cores from nothing (light cones ~110 min)
    python -m halotrans.benchmark skatr_reference --quick   # tiny light cones, seconds of training: a smoke run

One command, resumable: every stage is skipped when its output is complete, so a killed run is
continued by running the same command again (a killed training resumes from its last checkpoint
with the wall-clock it has left, see ``bench_reference.stage_train``).

1. light cones: ``lightcones -c reference/skatr_pretrain.yaml`` (configs/skatr/lightcones_cpu.yaml:
   14×14×537 cells over z 5-35, the six SKATR priors, τ and x_HI(z=5) rejections kept under
   ``/rejected``) into ``data/reference/lightcones_cpu.h5``, ``lightcone.n`` accepted;
2. JEPA pretraining (skatr_pretrain.yaml) within ``train.time_budget_s``: a timing probe of the real
   training command sets ``train.steps`` so that the LR and EMA schedules end at the budget;
3. the frozen target encoder's summaries of every light cone, computed once (timed);
4. an MLP regression head (skatr_regress.yaml) and a spline-flow NPE (skatr_npe.yaml) on them;
5. the same ViT trained from scratch on regression (skatr_scratch.yaml) for the wall-clock of the
   frozen route (pretraining + summaries + head): equal wall-clock; then that ViT frozen as the
   "regression-pretrained" summary under the same head (skatr_regpre.yaml);
6. ``skatr report`` of the four runs on the test split, the goal checks of issue 9,
   ``reference_skatr.md``/``.json``; the full run copies them with the plots to
   ``benchmarks/reference_skatr/`` and rewrites the ``reference:skatr`` block of
   ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from halotrans.benchmark import REPO, load, machine, row
from halotrans.config import Config, ConfigError, config_to_dict, load_config, save_config
from halotrans.io import DataError, atomic_path

CONFIG_DIR = REPO / "configs" / "reference"
#: stage -> config file stem in configs/reference
STAGES = {"pretrain": "skatr_pretrain", "regress": "skatr_regress", "npe": "skatr_npe", "scratch": "skatr_scratch",
          "regpre": "skatr_regpre"}
#: stages that train on cached frozen summaries for a fixed number of steps, and whose encoder they read
FROZEN = {"regress": "pretrain", "npe": "pretrain", "regpre": "scratch"}
#: a run of its own (hours): `python -m halotrans.benchmark [--quick]` skips it unless named
IN_DEFAULT = False
WORK = REPO / "runs" / "reference_skatr"
QUICK_WORK = REPO / "runs" / "reference_skatr_quick"
PUBLISH = REPO / "benchmarks" / "reference_skatr"
COMMAND = "python -m halotrans.benchmark skatr_reference"
#: the smoke run: 21cmFAST's tiny light cones (configs/skatr/lightcones_tiny.yaml, 8×8×40 after the
#: line-of-sight crop), a 2×2×4-token ViT, a few seconds of training per stage
QUICK_SET = ("lightcone.out=data/reference_quick/lightcones_tiny.h5", "lightcone.n=10", "lightcone.hii_dim=8",
             "lightcone.dim=16", "lightcone.box_len=40.0", "lightcone.r_bubble_max=10.0", "lightcone.n_los=45",
             "lightcone.zprime_step_factor=1.3", "lightcone.wdm=false", "model.patch_size=[4,4,10]",
             "train.time_budget_s=45", "train.warmup_steps=5", "skatr.posterior_samples=200")
QUICK_STEPS = {"regress": 60, "npe": 60, "regpre": 60}
#: parameters of the frozen-vs-scratch goal (issue 9) and its tolerance; the NPE coverage tolerance
GOAL_PARAMS = ("omega_m", "log10_lx", "log10_tvir", "zeta")
MAX_REL_EXCESS, MAX_COVERAGE_GAP = 0.15, 0.10
REPORT_FILES = ("recovery.png", "posteriors.png", "coverage.png")


# --- configs -------------------------------------------------------------------------------------

def stage_configs(overrides: Sequence[str] = (), work: Path = WORK, quick: bool = False) -> dict[str, Config]:
    """The four configs with ``overrides``, run directories under ``work`` and the frozen runs reading
    ``<work>/pretrain``. Raises :class:`ConfigError` unless all share the light cones and the
    pretraining and scratch runs share the ViT."""
    cfgs = {}
    for stage, stem in STAGES.items():
        extra = [f"train.out_dir={work / stage}"]
        if stage in FROZEN:  # fixed steps on the summaries of another run's encoder, not a budget
            extra += [f"skatr.encoder_run={work / FROZEN[stage]}", "train.time_budget_s=null"]
        if quick and stage in QUICK_STEPS:
            extra.append(f"train.steps={QUICK_STEPS[stage]}")
        cfgs[stage] = load_config(CONFIG_DIR / f"{stem}.yaml", [*overrides, *extra])
    dicts = {s: config_to_dict(c) for s, c in cfgs.items()}
    for stage in STAGES:
        if dicts[stage]["lightcone"] != dicts["pretrain"]["lightcone"]:
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


# --- stages --------------------------------------------------------------------------------------

def stage_lightcones(config_file: Path, n: int) -> dict:
    """Generate (or resume, or just consolidate) the light-cone set; returns its counts."""
    import h5py

    ref = load("reference")
    ref._halotrans(["lightcones", "--config", str(config_file), "--n", str(n)])
    cfg = load_config(config_file).lightcone
    with h5py.File(REPO / cfg.out, "r") as f:
        reasons = [r.decode() if isinstance(r, bytes) else str(r) for r in f["rejected/reason"][...]] \
            if "rejected" in f else []
        kinds: dict[str, int] = {}
        for r in reasons:
            key = "+".join(part.split(" ")[0] for part in r.split("; "))
            kinds[key] = kinds.get(key, 0) + 1
        return {"path": str(cfg.out), "accepted": int(f["brightness_temp"].shape[0]),
                "shape": list(f["brightness_temp"].shape[1:]), "rejected": len(reasons), "reasons": kinds,
                "seconds_per_light_cone": float(np.mean(f["seconds"][...])) if "seconds" in f else None,
                "version": str(f.attrs.get("version", f.attrs.get("py21cmfast_version", "")))}


def _wall_path(run_dir: Path) -> Path:
    return run_dir / "wall.json"


def stage_fixed(name: str, cfg: Config, config_file: Path) -> float:
    """Train a fixed-step run (head or flow) unless finished; returns its training wall-clock seconds
    (recorded in ``<run>/wall.json`` when it finishes; a killed run resumes and counts anew)."""
    from halotrans.train.checkpoint import MODEL_FILE

    run_dir = Path(cfg.train.out_dir)
    wall = _wall_path(run_dir)
    if (run_dir / MODEL_FILE).is_file() and wall.is_file():
        print(f"train {name}: {run_dir / MODEL_FILE} (finished)", flush=True)
        return float(json.loads(wall.read_text())["seconds"])
    t0 = time.time()
    load("reference")._halotrans(["train", "--config", str(config_file), "--resume"])
    seconds = time.time() - t0
    with atomic_path(wall) as tmp:
        tmp.write_text(json.dumps({"seconds": seconds}))
    return seconds


def stage_summaries(cfg: Config, record: Path) -> dict:
    """The frozen encoder's summaries (cached in its run directory); their computing time is kept in
    ``record`` so a resumed run still reports it."""
    from halotrans.train.summaries import ensure_summaries

    t0 = time.time()
    path, status = ensure_summaries(cfg, progress=True)
    seconds = time.time() - t0
    if status != "cached" or not record.is_file():
        with atomic_path(record) as tmp:
            tmp.write_text(json.dumps({"path": path, "seconds": seconds, "status": status}))
    info = json.loads(record.read_text())
    print(f"summaries: {path} ({status}; computed in {info['seconds']:.1f} s)", flush=True)
    return info


# --- goals and summary ---------------------------------------------------------------------------

def goal_checks(frozen: dict, scratch: dict, npe: dict) -> list[dict]:
    """Issue 9: frozen-summary relative error within 15% of the from-scratch ViT's on Ω_m, L_X, T_vir
    and ζ; the NPE coverage curve within 0.1 of the diagonal. Each with its margin."""
    goals = []
    for p in GOAL_PARAMS:
        a, b = frozen["relative_error"][p], scratch["relative_error"][p]
        ratio = a / b if b > 0 else float("inf")
        goals.append({"goal": f"frozen summary rel. error on {p} ≤ {1 + MAX_REL_EXCESS:.2f} × from scratch",
                      "met": bool(ratio <= 1 + MAX_REL_EXCESS),
                      "detail": f"{a:.4f} vs {b:.4f}: {ratio:.2f}×"})
    gap = npe["calibration_error"]
    goals.append({"goal": f"NPE coverage within {MAX_COVERAGE_GAP} of the diagonal", "met": bool(gap <= MAX_COVERAGE_GAP),
                  "detail": f"largest |coverage − nominal| = {gap:.3f}"})
    return goals


def _pretrain_summary(run_dir: Path, ledger: dict) -> dict:
    """Steps, wall-clock and the last logged JEPA loss and collapse monitor of the pretraining."""
    import csv

    with open(run_dir / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    last = rows[-1] if rows else {}
    keep = {k: float(v) for k, v in last.items() if v not in ("", None) and k not in ("step", "time_s")}
    return {"steps": int(last.get("step", 0) or 0), "planned_steps": ledger["steps"],
            "train_seconds": load("reference").used_seconds(ledger), "processes": len(ledger["segments"]),
            "last_logged": keep}


def summary_markdown(s: dict) -> str:
    """reference_skatr.md: data set, timings, the comparison table per parameter, goals."""
    names = s["param_names"]
    lc = s["lightcones"]
    t = s["timing"]
    lines = [f"# SKATR reference at CPU scale ({s['date']})", "",
             f"Machine: {s['machine']}. Command: `{s['command']}` ({s['seconds'] / 60:.0f} min this invocation).", "",
             f"Light cones: `{lc['path']}`, {lc['accepted']} accepted of shape {tuple(lc['shape'])} "
             f"(after the line-of-sight crop at load time), {lc['rejected']} rejected "
             f"({', '.join(f'{k}: {v}' for k, v in lc['reasons'].items()) or 'none'}); splits "
             f"{s['splits']} (train/val/test light cones).", "",
             f"Wall-clock: JEPA pretraining {t['pretrain_s'] / 60:.1f} min ({s['pretrain']['steps']} steps), "
             f"summaries {t['summaries_s']:.0f} s, regression head {t['head_s']:.0f} s, NPE flow {t['npe_s']:.0f} s; "
             f"the same ViT from scratch {t['scratch_s'] / 60:.1f} min (its budget: the frozen route's "
             f"{t['frozen_route_s'] / 60:.1f} min). Once the encoder is pretrained, a new regression costs "
             f"{t['summaries_s'] + t['head_s']:.0f} s against {t['scratch_s']:.0f} s from scratch: "
             f"{t['scratch_s'] / max(t['summaries_s'] + t['head_s'], 1e-9):.0f}× less.", "",
             "Relative error = mean |prediction − truth| / |truth| on the test light cones; the "
             "regression-pretrained summary is the scratch ViT frozen, with the same head as the JEPA summary.", "",
             "| parameter | JEPA summary (frozen) rel. error | from scratch rel. error | ratio | regression-pretrained "
             "summary rel. error | frozen R² | scratch R² | regr.-pretrained R² | NPE rel. error | NPE R² |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    fr, sc, ne, rp = (s["runs"][k]["metrics"] for k in ("regress", "scratch", "npe", "regpre"))
    for p in names:
        a, b = fr["relative_error"][p], sc["relative_error"][p]
        lines.append(f"| {p} | {a:.4f} | {b:.4f} | {a / b if b else float('nan'):.2f} | {rp['relative_error'][p]:.4f} | "
                     f"{fr['r2'][p]:.3f} | {sc['r2'][p]:.3f} | {rp['r2'][p]:.3f} | {ne['relative_error'][p]:.4f} | "
                     f"{ne['r2'][p]:.3f} |")
    lines += ["", f"NPE: test log posterior {ne['log_posterior']:.3f} (prior-normalised units), largest "
              f"|coverage − nominal| {ne['calibration_error']:.3f}.", "",
              f"Goals met: {sum(g['met'] for g in s['goals'])} of {len(s['goals'])}.", "",
              "| goal | met | detail |", "|---|---|---|"]
    lines += [f"| {g['goal']} | {'yes' if g['met'] else 'no'} | {g['detail']} |" for g in s["goals"]]
    lines += ["", "![recovery, frozen summary](regress_recovery.png) ![recovery, from scratch](scratch_recovery.png) "
              "![recovery, regression-pretrained summary](regpre_recovery.png)",
              "![NPE posteriors](npe_posteriors.png) ![NPE coverage](npe_coverage.png)"]
    for note in s.get("notes", []):
        lines += ["", note]
    return "\n".join(lines) + "\n"


def results_block(s: dict) -> str:
    """The short table for the ``reference:skatr`` block of ``benchmarks/RESULTS.md``."""
    fr, sc, ne, rp = (s["runs"][k]["metrics"] for k in ("regress", "scratch", "npe", "regpre"))
    t, lc = s["timing"], s["lightcones"]
    lines = [f"{s['date']}, {s['machine']}, `{s['command']}`: {lc['accepted']} light cones "
             f"{tuple(lc['shape'])} ({lc['rejected']} rejected), splits {s['splits']}; JEPA "
             f"{t['pretrain_s'] / 60:.0f} min, the scratch ViT the same wall-clock as the frozen route "
             f"({t['frozen_route_s'] / 60:.0f} min); report: `benchmarks/reference_skatr/`.", "",
             "| parameter | frozen JEPA rel. error | scratch rel. error | ratio (goal ≤ 1.15 on Ω_m, L_X, T_vir, ζ) "
             "| regression-pretrained summary rel. error | NPE rel. error |", "|---|---|---|---|---|---|"]
    for p in s["param_names"]:
        a, b = fr["relative_error"][p], sc["relative_error"][p]
        lines.append(f"| {p} | {a:.4f} | {b:.4f} | {a / b if b else float('nan'):.2f} | {rp['relative_error'][p]:.4f} "
                     f"| {ne['relative_error'][p]:.4f} |")
    met = sum(g["met"] for g in s["goals"])
    lines += ["", f"NPE largest |coverage − nominal| {ne['calibration_error']:.3f} (goal ≤ 0.1). Goals met: "
              f"{met} of {len(s['goals'])}"
              + ("" if met == len(s["goals"]) else ": missed " + "; ".join(f"{g['goal']} ({g['detail']})"
                                                                          for g in s["goals"] if not g["met"])) + "."]
    return "\n".join(lines)


# --- the run -------------------------------------------------------------------------------------

def reference(overrides: Sequence[str] = (), work: Path = WORK, publish: bool = True, quick: bool = False) -> dict:
    """Run (or resume) every stage; returns the summary dict (also written as ``reference_skatr.json``)."""
    from halotrans.train.skatr_eval import evaluate_run
    from halotrans.train.skatr_report import write_comparison, write_run_report

    ref = load("reference")
    t_start = time.time()
    cfgs = stage_configs(overrides, work, quick)
    files = {}
    for stage, cfg in cfgs.items():
        files[stage] = work / "configs" / f"{STAGES[stage]}.yaml"
        save_config(cfg, files[stage])

    lightcones = stage_lightcones(files["pretrain"], cfgs["pretrain"].lightcone.n)
    pre_ledger = ref.stage_train("JEPA pretraining", cfgs["pretrain"], files["pretrain"])
    summaries = stage_summaries(cfgs["regress"], work / "summaries.json")
    head_s = stage_fixed("regression head", cfgs["regress"], files["regress"])
    npe_s = stage_fixed("NPE flow", cfgs["npe"], files["npe"])

    # the scratch ViT gets the frozen route's wall-clock: pretraining + summaries + head
    pretrain_s = ref.used_seconds(pre_ledger)
    frozen_route = pretrain_s + summaries["seconds"] + head_s
    scratch_dir = Path(cfgs["scratch"].train.out_dir)
    planned = ref.read_ledger(scratch_dir)
    budget = float(planned["budget_s"]) if planned else round(frozen_route, 1)
    cfgs["scratch"] = load_config(files["scratch"], [f"train.time_budget_s={budget}"])
    save_config(cfgs["scratch"], files["scratch"])
    scratch_ledger = ref.stage_train("ViT from scratch", cfgs["scratch"], files["scratch"])
    # the regression-pretrained summary: the scratch ViT frozen, the same head on its summaries
    regpre_summaries = stage_summaries(cfgs["regpre"], work / "summaries_regpre.json")
    regpre_head_s = stage_fixed("regression head on the regression-pretrained summary", cfgs["regpre"], files["regpre"])

    out = work / "report"
    reports = {}
    for stage in ("regress", "npe", "scratch", "regpre"):
        run_dir = Path(cfgs[stage].train.out_dir)
        report = evaluate_run(run_dir, "test", None, progress=False)
        write_run_report(report, run_dir / "report")
        reports[stage] = report
        for fname in REPORT_FILES:
            if (run_dir / "report" / fname).is_file():
                out.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(run_dir / "report" / fname, out / f"{stage}_{fname}")
    write_comparison(list(reports.values()), out)
    names = list(reports["regress"]["info"]["param_names"])
    missing = [p for p in GOAL_PARAMS if p not in names]
    if missing:
        raise DataError(f"the runs report parameters {names}, not {missing}")

    summary = {
        "date": time.strftime("%Y-%m-%d %H:%M"), "machine": machine(), "quick": quick,
        "command": COMMAND + (" --quick" if quick else "") + "".join(f" --set {o}" for o in overrides if not quick),
        "seconds": time.time() - t_start, "lightcones": lightcones, "param_names": names,
        "splits": [reports["regress"]["info"]["n_train"], None, reports["regress"]["info"]["n_test"]],
        "pretrain": _pretrain_summary(Path(cfgs["pretrain"].train.out_dir), pre_ledger),
        "timing": {"pretrain_s": pretrain_s, "summaries_s": summaries["seconds"], "head_s": head_s, "npe_s": npe_s,
                   "frozen_route_s": frozen_route, "scratch_budget_s": budget,
                   "scratch_s": ref.used_seconds(scratch_ledger), "scratch_steps": scratch_ledger["steps"],
                   "regpre_summaries_s": regpre_summaries["seconds"], "regpre_head_s": regpre_head_s},
        "runs": {k: {"info": r["info"], "metrics": r["metrics"]} for k, r in reports.items()},
    }
    summary["splits"][1] = _val_count(cfgs["regress"])
    summary["goals"] = goal_checks(reports["regress"]["metrics"], reports["scratch"]["metrics"], reports["npe"]["metrics"])
    summary["notes"] = ref.read_notes(PUBLISH, publish)
    summary = ref._clean(summary)
    ref.write_summary(summary, summary_markdown(summary), out, "reference_skatr", publish=publish, publish_dir=PUBLISH,
                      files=sorted(f.name for f in out.iterdir() if f.suffix in (".md", ".json", ".png")),
                      block="skatr", block_text=results_block(summary))
    return summary


def _val_count(cfg: Config) -> int:
    from halotrans.train.skatr_data import open_split

    return len(open_split(cfg, "val", fixed_noise=True))


def rows_of(summary: dict) -> list[dict]:
    """Benchmark rows: frozen-summary relative error per parameter against the from-scratch ViT, and
    the time of a new regression on the frozen summary against training the ViT from scratch."""
    fr, sc = summary["runs"]["regress"]["metrics"], summary["runs"]["scratch"]["metrics"]
    out = [row("skatr_reference", f"rel. error {p}", fr["relative_error"][p], "", "same ViT from scratch, equal wall-clock",
               sc["relative_error"][p], higher_is_better=False,
               note="goal ratio ≥ 0.87" if p in GOAL_PARAMS else "") for p in summary["param_names"]]
    t = summary["timing"]
    out.append(row("skatr_reference", "a new regression (summaries + head)", t["summaries_s"] + t["head_s"], "s",
                   "ViT from scratch", t["scratch_s"], higher_is_better=False, note="pretraining amortised"))
    out.append(row("skatr_reference", "NPE max |coverage − nominal|", summary["runs"]["npe"]["metrics"]["calibration_error"],
                   "", None, None, higher_is_better=False, note="goal ≤ 0.1"))
    return out


def run(quick: bool) -> list[dict]:
    """``python -m halotrans.benchmark skatr_reference [--quick]``."""
    summary = reference(QUICK_SET, QUICK_WORK, publish=False, quick=True) if quick else reference()
    return rows_of(summary)


def main(argv: Sequence[str] | None = None) -> int:
    return load("reference").reference_cli(argv, reference, doc=__doc__, quick_set=QUICK_SET, work=WORK,
                                           quick_work=QUICK_WORK, publish_dir=PUBLISH,
                                           quick_help="tiny light cones, seconds per stage")


if __name__ == "__main__":
    sys.exit(main())
