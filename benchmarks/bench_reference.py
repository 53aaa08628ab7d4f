"""Segmentation reference at CPU scale: vipr and copra against MONAI UNETR / VNet and a logistic regression.

    python -m halotrans.benchmark reference            # the reference run (~75 min on 2 cores)
    python benchmarks/bench_reference.py --set train.time_budget_s=300 --work runs/reference_5min
    python -m halotrans.benchmark reference --quick    # 6 boxes, 25 s per network: a smoke run

One command, resumable: every stage is skipped when its output is complete, so a killed run is
continued by running the same command again.

1. boxes: ``simulate`` + ``shear`` (configs/reference/base.yaml: configs/sims/box64.yaml, seeds
   0-19: 0-15 train, 16-17 validation, 18-19 test) into ``data/reference/boxes``;
2. the no-network baseline (:mod:`halotrans.eval.baseline`) fitted on the training boxes;
3. ``train`` of vipr, copra, MONAI UNETR and MONAI VNet (configs/reference/<network>.yaml: one
   base config, only ``model`` differs), each for the same wall-clock budget
   (``train.time_budget_s``, set-up included). A short timing probe of each network sets
   ``train.steps`` so that its warmup + cosine schedule ends at the budget; the plan and the
   wall-clock of every training process are kept in ``<run>/budget.json``. A killed training run
   resumes (``--resume``) with the budget it has left: a process's time counts up to its last
   complete checkpoint (work after it is lost and redone);
4. predictions on the validation and test boxes (periodic sliding windows, ``eval`` section),
   cached per box;
5. mass calibration (:mod:`halotrans.eval.calibration`): per model, one log-probability offset
   per class fitted on the VALIDATION boxes so that the argmax labels reproduce their class masses,
   applied to the test boxes, identically for every network and the baseline;
6. one report (:func:`halotrans.eval.report.write_report`) of the five models on the test boxes,
   the goal checks of issue 9, ``reference.md``/``reference.json``; the full run copies them to
   ``benchmarks/reference/`` and rewrites the ``reference:segmentation`` block of
   ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from halotrans.benchmark import REPO, machine, row
from halotrans.config import Config, ConfigError, config_to_dict, load_config, save_config
from halotrans.data.config import split_seeds
from halotrans.io import DataError, atomic_path
from halotrans.sims.boxio import box_path

CONFIG_DIR = REPO / "configs" / "reference"
#: report name -> config file stem (= model.name)
NETWORKS = {"vipr": "vipr", "copra": "copra", "MONAI UNETR": "monai_unetr", "MONAI VNet": "monai_vnet"}
BASELINE = "logistic regression"
#: our network -> its MONAI peer
PEERS = {"vipr": "MONAI UNETR", "copra": "MONAI VNet"}
#: a run of its own (~75 min): `python -m halotrans.benchmark [--quick]` skips it unless named
IN_DEFAULT = False
WORK = REPO / "runs" / "reference"
QUICK_WORK = REPO / "runs" / "reference_quick"
PUBLISH = REPO / "benchmarks" / "reference"
RESULTS_MD = REPO / "benchmarks" / "RESULTS.md"
COMMAND = "python -m halotrans.benchmark reference"
QUICK_SET = ("data.train_seeds=0-3", "data.val_seeds=4", "data.test_seeds=5", "train.time_budget_s=25",
             "train.warmup_steps=5")
#: wall-clock seconds of a training process outside its steps (imports, data, DeepSpeed set-up)
SETUP_S = 30.0
#: goals of issue 9 for vipr on the test boxes
MIN_AUC, MAX_MASS_ERROR = 0.95, 0.10
REPORT_FILES = ("report.md", "report.json", "roc.png", "slices.png", "confusion.png", "halo_masses.png")


# --- configs -------------------------------------------------------------------------------------

def recipe(cfg: Config) -> dict:
    """Everything of a config but the network and where it trains: what the four runs must share."""
    d = config_to_dict(cfg)
    d.pop("model")
    d["train"].pop("out_dir")
    return d


def network_configs(overrides: Sequence[str] = (), work: Path = WORK) -> dict[str, Config]:
    """The four reference configs with ``overrides`` and ``train.out_dir = <work>/<network>``.

    Raises :class:`ConfigError` if they differ in anything but ``model`` (one recipe for all).
    """
    cfgs = {name: load_config(CONFIG_DIR / f"{stem}.yaml", [*overrides, f"train.out_dir={work / stem}"])
            for name, stem in NETWORKS.items()}
    first_name, first = next(iter(cfgs.items()))
    for name, cfg in cfgs.items():
        if cfg.model.name != NETWORKS[name]:
            raise ConfigError(f"{CONFIG_DIR / NETWORKS[name]}.yaml: model.name is {cfg.model.name}, "
                              f"expected {NETWORKS[name]}")
        a, b = recipe(first), recipe(cfg)
        diff = sorted(f"{s}.{k}" for s in a for k in a[s] if a[s][k] != b[s].get(k))
        if diff:
            raise ConfigError(f"{CONFIG_DIR / NETWORKS[name]}.yaml differs from {NETWORKS[first_name]}.yaml "
                              f"outside `model`: {', '.join(diff)} (the reference trains every network alike)")
    return cfgs


def all_seeds(cfg: Config) -> list[int]:
    d = cfg.data
    return sorted(set(split_seeds(d.train_seeds)) | set(split_seeds(d.val_seeds)) | set(split_seeds(d.test_seeds)))


def files_of(cfg: Config, split: str) -> list[Path]:
    return [box_path(cfg.data.root, s) for s in split_seeds(getattr(cfg.data, f"{split}_seeds"))]


# --- the wall-clock budget of a training run, across restarts -------------------------------------

def ledger_path(run_dir: Path) -> Path:
    return run_dir / "budget.json"


def read_ledger(run_dir: Path) -> dict | None:
    p = ledger_path(run_dir)
    return json.loads(p.read_text()) if p.is_file() else None


def write_ledger(run_dir: Path, ledger: dict) -> None:
    with atomic_path(ledger_path(run_dir)) as tmp:
        tmp.write_text(json.dumps(ledger, indent=1))


def checkpoint_time(run_dir: Path) -> float | None:
    """When the newest complete checkpoint was made (mtime of ``checkpoints/latest``), or None."""
    p = run_dir / "checkpoints" / "latest"
    return p.stat().st_mtime if p.is_file() else None


def close_segments(ledger: dict, last_checkpoint: float | None) -> dict:
    """End every open segment (a training process that was started) at the last checkpoint it made.

    A segment's time counts up to the newest checkpoint written after it started (the work after
    it is lost with the process and is redone by the next one); no checkpoint: it counts 0 s.
    """
    for seg in ledger["segments"]:
        if seg.get("end") is None:
            made = last_checkpoint is not None and last_checkpoint >= seg["start"]
            seg["end"] = last_checkpoint if made else seg["start"]
    return ledger


def used_seconds(ledger: dict) -> float:
    """Wall-clock seconds of the closed segments."""
    return float(sum(s["end"] - s["start"] for s in ledger["segments"] if s.get("end") is not None))


def planned_steps(budget_s: float, step_s: float, warmup: int) -> int:
    """Optimizer steps that fill ``budget_s`` at ``step_s`` per step after :data:`SETUP_S` of set-up."""
    return max(warmup + 1, int((budget_s - SETUP_S) / step_s))


def probe_step_seconds(cfg: Config, config_file: Path, steps: int = 30, skip: int = 10) -> float:
    """Wall-clock seconds per optimiser step of the real training command (DeepSpeed engine, crops read
    and augmented from the boxes, logging): ``steps`` steps in a scratch run directory, timed from
    step ``skip`` on from its metrics.csv. A bare forward/backward/AdamW loop on random tensors
    underestimates the step by ~30-45% on 2 cores, which would end every run before its schedule."""
    import csv
    import tempfile

    (REPO / "runs").mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="probe_", dir=REPO / "runs") as tmp:
        _halotrans(["train", "--config", str(config_file), "--set", f"train.out_dir={tmp}",
                    "--set", f"train.steps={steps}", "--set", "train.eval_every=0", "--set", f"train.log_every={skip}",
                    "--set", f"train.checkpoint_every={10 * steps}", "--set", "train.time_budget_s=null"])
        with open(Path(tmp) / "metrics.csv", newline="") as f:
            times = {int(r["step"]): float(r["time_s"]) for r in csv.DictReader(f) if r.get("time_s")}
    if skip not in times or steps not in times:
        raise SystemExit(f"reference: the timing probe logged steps {sorted(times)}, not {skip} and {steps}")
    return (times[steps] - times[skip]) / (steps - skip)


# --- stages --------------------------------------------------------------------------------------

def _halotrans(argv: list[str]) -> None:
    """Run ``python -m halotrans <argv>`` (printed first); a failure stops the benchmark."""
    print(f"\n=== python -m halotrans {shlex.join(argv)}", flush=True)
    env = {**os.environ, "DS_ACCELERATOR": os.environ.get("DS_ACCELERATOR", "cpu")}
    rc = subprocess.call([sys.executable, "-m", "halotrans", *argv], cwd=REPO, env=env)
    if rc != 0:
        raise SystemExit(f"reference: `python -m halotrans {shlex.join(argv)}` failed with exit status {rc}; "
                         "fix the cause and run the benchmark again (it resumes)")


def stage_boxes(cfg: Config, config_file: Path) -> None:
    """Simulate the missing boxes, then add the tidal shear where it is missing (both skip done work)."""
    seeds = all_seeds(cfg)
    _halotrans(["simulate", "--config", str(config_file), "--seeds", ",".join(map(str, seeds))])
    _halotrans(["shear", "--config", str(config_file), *[str(box_path(cfg.data.root, s)) for s in seeds]])


def stage_baseline(cfg: Config, work: Path) -> Path:
    """Fit the logistic-regression baseline on the training boxes (skipped if fitted on the same boxes)."""
    from halotrans.eval.baseline import fit_baseline, load_baseline, save_baseline

    path = work / "baseline" / "model.json"
    train = [str(p) for p in files_of(cfg, "train")]
    edges = [float(e) for e in cfg.data.class_edges]
    if path.is_file():
        old = load_baseline(path)
        if old.train_files == train and old.class_edges == edges:
            print(f"baseline: {path} (fitted)", flush=True)
            return path
    t0 = time.perf_counter()
    model = fit_baseline(train, edges)
    save_baseline(model, path)
    print(f"baseline: fitted on {len(train)} boxes ({model.n_voxels} voxels) in {time.perf_counter() - t0:.1f} s "
          f"-> {path}", flush=True)
    return path


def stage_train(name: str, cfg: Config, config_file: Path,
                probe: Callable[[Config, Path], float] | None = None) -> dict:
    """Train one run within ``train.time_budget_s`` (resuming a killed run); returns its ledger.

    ``probe(cfg, config_file)`` gives the seconds per step that plan ``train.steps`` (default
    :func:`probe_step_seconds`: a short run of the real training command).
    """
    from halotrans.train.checkpoint import MODEL_FILE, latest_tag, write_model

    run_dir = Path(cfg.train.out_dir)
    budget = float(cfg.train.time_budget_s)
    ledger = read_ledger(run_dir)
    if (run_dir / MODEL_FILE).is_file() and ledger is not None:
        print(f"train {name}: {run_dir / MODEL_FILE} (finished)", flush=True)
        return ledger
    if ledger is None or ledger.get("budget_s") != budget:
        if latest_tag(run_dir) is not None:
            raise DataError(f"{run_dir}: checkpoints without a budget plan for {budget:g} s; "
                            "delete the run directory to retrain it")
        step_s = (probe or probe_step_seconds)(cfg, config_file)
        steps = planned_steps(budget, step_s, cfg.train.warmup_steps)
        ledger = {"budget_s": budget, "probe_step_s": step_s, "steps": steps,
                  "checkpoint_every": max(1, steps // 8), "eval_every": max(1, steps // 5), "segments": []}
        print(f"train {name}: probe {step_s:.3f} s/step -> {steps} steps in {budget:g} s", flush=True)
    ledger = close_segments(ledger, checkpoint_time(run_dir))
    left = budget - used_seconds(ledger)
    tag = latest_tag(run_dir)
    if left < 1.0 and tag is not None:  # the budget ran out after the last checkpoint: that is the model
        write_model(run_dir, tag)
    else:
        ledger["segments"].append({"start": time.time(), "end": None})
        write_ledger(run_dir, ledger)
        _halotrans(["train", "--config", str(config_file), "--resume",
                    "--set", f"train.steps={ledger['steps']}", "--set", f"train.time_budget_s={max(left, 1.0):.1f}",
                    "--set", f"train.checkpoint_every={ledger['checkpoint_every']}",
                    "--set", f"train.eval_every={ledger['eval_every']}"])
        ledger = close_segments(ledger, checkpoint_time(run_dir))
    write_ledger(run_dir, ledger)
    if not (run_dir / MODEL_FILE).is_file():
        raise SystemExit(f"reference: {name} stopped without {run_dir / MODEL_FILE}; run the benchmark again")
    return ledger


def _predictions_path(cache: Path, seed_file: Path) -> Path:
    return cache / f"{Path(seed_file).stem}.npy"


def stage_predict(name: str, source: Path, files: Sequence[Path], cache: Path, eval_cfg: Any = None) -> tuple[list, float]:
    """Class probabilities (P,N,N,N) of each box, cached in ``cache``; ``source`` is a run directory
    (a network) or a baseline file. Returns (probabilities per box, seconds spent now)."""
    todo = [f for f in files if not _predictions_path(cache, f).is_file()]
    t0 = time.perf_counter()
    if todo:
        if source.is_dir():
            from halotrans.eval.inference import predict_files
            from halotrans.train.checkpoint import load_for_inference

            model, cfg, meta = load_for_inference(source)
            ev = cfg.eval
            window = int(ev.window or cfg.data.crop)
            pairs = predict_files(model, todo, meta["inputs"], meta["norm_stats"], window, ev.overlap, ev.batch_size,
                                  margin=ev.margin, blend=ev.blend, progress=False)
        else:
            from halotrans.eval.baseline import load_baseline

            base = load_baseline(source)
            pairs = ((f, base.predict_box(f)) for f in todo)
        for f, probs in pairs:
            with atomic_path(_predictions_path(cache, Path(f))) as tmp, open(tmp, "wb") as fh:
                np.save(fh, probs.astype(np.float32))
        print(f"predict {name}: {len(todo)} box(es) in {time.perf_counter() - t0:.1f} s", flush=True)
    return [np.load(_predictions_path(cache, f)) for f in files], time.perf_counter() - t0


def stage_calibrated(sources: dict[str, Path], val_files: Sequence[Path], test_files: Sequence[Path],
                     val_truths: Sequence[Any]) -> tuple[dict, dict, dict, dict]:
    """Predict the validation and test boxes with every source (cached), fit each model's class
    offsets on the validation boxes and apply them to its test predictions.

    Returns (calibrated test probabilities, raw test probabilities, offsets, inference seconds), each
    keyed by model name.
    """
    from halotrans.eval.calibration import apply_class_bias, fit_class_bias

    calibrated, raw, offsets, seconds = {}, {}, {}, {}
    for name, src in sources.items():
        cache = (src if src.is_dir() else src.parent) / "predictions"
        val, t_val = stage_predict(name, src, val_files, cache)
        test, t_test = stage_predict(name, src, test_files, cache)
        seconds[name] = t_val + t_test
        bias = fit_class_bias(val, [t.labels for t in val_truths])
        offsets[name] = bias.tolist()
        raw[name] = test
        calibrated[name] = [apply_class_bias(p, bias) for p in test]
    return calibrated, raw, offsets, seconds


def class_table(cfg: Config) -> list[dict]:
    """Per split: voxel fraction and number of halos of every class (the label distribution)."""
    import h5py

    from halotrans.data.boxes import mass_to_class

    n_classes = cfg.data.n_classes
    rows = []
    for split in ("train", "val", "test"):
        vox, halos = np.zeros(n_classes, dtype=np.int64), np.zeros(n_classes, dtype=np.int64)
        for path in files_of(cfg, split):
            with h5py.File(path, "r") as f:
                m, hid = f["halo_mass"][...], f["halo_id"][...]
            vox += np.bincount(mass_to_class(m, cfg.data.class_edges).ravel(), minlength=n_classes)
            inside = hid >= 0
            _, first = np.unique(hid[inside], return_index=True)
            halos += np.bincount(mass_to_class(m[inside][first], cfg.data.class_edges), minlength=n_classes)
        rows.append({"split": split, "boxes": getattr(cfg.data, f"{split}_seeds"),
                     "voxel_fraction": (vox / max(vox.sum(), 1)).tolist(), "halos": halos.tolist()})
    return rows


# --- goals and summary ---------------------------------------------------------------------------

def goal_checks(models: dict, n_classes: int) -> list[dict]:
    """The goals of issue 9 on the calibrated test metrics: one dict per goal, with the margin."""

    def aucs(m: str) -> list[float]:
        return [_num(models[m]["per_class"][c]["auc"]) for c in range(n_classes)]

    def errs(m: str) -> list[float]:
        return [abs(_num(models[m]["per_class"][c]["mass_rel_error"])) for c in range(1, n_classes)]

    checks = []
    for ours, peer in PEERS.items():
        if ours not in models or peer not in models:
            continue
        d_auc = [a - b for a, b in zip(aucs(ours), aucs(peer))]
        checks.append({"goal": f"{ours} AUC > {peer} AUC, every class", "met": min(d_auc) > 0,
                       "detail": "ΔAUC per class " + ", ".join(f"{v:+.4f}" for v in d_auc)})
        d_err = [b - a for a, b in zip(errs(ours), errs(peer))]
        checks.append({"goal": f"{ours} |ΔM/M| < {peer} |ΔM/M|, every halo class", "met": min(d_err) > 0,
                       "detail": "peer minus ours, per halo class " + ", ".join(f"{100 * v:+.2f} pp" for v in d_err)})
        if BASELINE in models:
            d_base = [a - b for a, b in zip(aucs(ours), aucs(BASELINE))]
            checks.append({"goal": f"{ours} AUC > {BASELINE} AUC, every class", "met": min(d_base) > 0,
                           "detail": "ΔAUC per class " + ", ".join(f"{v:+.4f}" for v in d_base)})
    if "vipr" in models:
        a, e = aucs("vipr"), errs("vipr")
        checks.append({"goal": f"vipr AUC >= {MIN_AUC} every class", "met": min(a) >= MIN_AUC,
                       "detail": f"lowest {min(a):.4f} (class {int(np.argmin(a))})"
                                 + ("" if min(a) >= MIN_AUC else f": {MIN_AUC - min(a):.4f} short")})
        checks.append({"goal": f"vipr |ΔM/M| <= {MAX_MASS_ERROR:.0%} every halo class", "met": max(e) <= MAX_MASS_ERROR,
                       "detail": f"largest {100 * max(e):.2f}% (class {1 + int(np.argmax(e))})"
                                 + ("" if max(e) <= MAX_MASS_ERROR else f": {100 * (max(e) - MAX_MASS_ERROR):.2f} pp over")})
    return checks


def _num(x: float | None) -> float:
    return math.nan if x is None else float(x)


def _clean(x: Any) -> Any:
    """JSON-able copy: numpy scalars to floats/ints, non-finite floats to None."""
    if isinstance(x, dict):
        return {str(k): _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple, np.ndarray)):
        return [_clean(v) for v in x]
    if isinstance(x, (float, np.floating)):
        return float(x) if math.isfinite(x) else None
    if isinstance(x, np.integer):
        return int(x)
    return x


def _pct(x: float | None) -> str:
    return "–" if x is None or not math.isfinite(x) else f"{100 * x:+.1f}%"


def _f(x: float | None, fmt: str = ".4f") -> str:
    return "–" if x is None or not math.isfinite(x) else format(x, fmt)


def summary_markdown(s: dict) -> str:
    """``reference.md``: set-up, label distribution, training, the per-class table and the goals."""
    names, models = s["class_names"], s["models"]
    k = len(names)
    lines = [
        "# Segmentation reference at CPU scale", "",
        f"{s['date']}, {s['machine']}; command `{s['command']}`" + (" (quick: a smoke run)" if s["quick"] else "")
        + f"; this invocation {s['seconds'] / 60:.1f} min (a rerun skips finished stages); training "
        f"{_train_minutes(s):.0f} min in all (4 networks, every process).", "",
        f"Boxes: {s['boxes']}. Inputs {', '.join(s['inputs'])}; classes {', '.join(names)} (log10 M [M☉/h]). "
        f"Every network: crops {s['crop']}³, batch {s['batch_size']}, 48 cube symmetries, {s['class_weights']} class "
        f"weights, cross-entropy, AdamW lr {s['lr']:g} (warmup {s['warmup_steps']}, cosine to {s['min_lr']:g} over "
        f"its budget), fp32, {s['budget_s']:g} s wall-clock each; evaluation with periodic {s['window']}³ windows, "
        f"overlap {s['overlap']}. Masses are calibrated on the validation boxes (one log-probability offset per "
        "class, the same procedure for every model); uncalibrated numbers below.", "",
        "## Label distribution (fraction of voxels; halos)", "",
        "| split | boxes | " + " | ".join(names) + " |", "|---|---|" + "---|" * k,
    ]
    for r in s["class_table"]:
        lines.append(f"| {r['split']} | {r['boxes']} | " + " | ".join(
            f"{100 * v:.1f}%" + (f" ({h})" if c else "") for c, (v, h) in enumerate(zip(r["voxel_fraction"], r["halos"])))
            + " |")
    lines += ["", "## Training (same wall-clock budget)", "",
              "| model | parameters | steps | s/step | training s (all processes) | val loss | val acc |",
              "|---|---|---|---|---|---|---|"]
    for name, t in s["training"].items():
        lines.append(f"| {name} | {t['parameters'] / 1e6:.2f} M | {t['steps']} | {_f(t['s_per_step'], '.3f')} | "
                     f"{_f(t['train_seconds'], '.0f')} | {_f(t['val_loss'])} | {_f(t['val_acc'])} |")
    lines += ["", "## Test boxes (calibrated)", "",
              "| model | accuracy | " + " | ".join(f"AUC {n}" for n in names) + " | "
              + " | ".join(f"ΔM/M {n}" for n in names[1:]) + " | surface Dice halo |",
              "|---|---|" + "---|" * (2 * k)]
    for name, m in models.items():
        pc = m["per_class"]
        lines.append(f"| {name} | {_f(m['accuracy'])} | " + " | ".join(_f(pc[c]["auc"]) for c in range(k)) + " | "
                     + " | ".join(_pct(pc[c]["mass_rel_error"]) for c in range(1, k))
                     + f" | {_f(m['surface_dice_halo'], '.3f')} |")
    lines += ["", "Uncalibrated (argmax of the network's own probabilities):", "",
              "| model | accuracy | " + " | ".join(f"AUC {n}" for n in names) + " | "
              + " | ".join(f"ΔM/M {n}" for n in names[1:]) + " | offsets b_k |", "|---|---|" + "---|" * (2 * k)]
    for name, m in s["uncalibrated"].items():
        pc = m["per_class"]
        lines.append(f"| {name} | {_f(m['accuracy'])} | " + " | ".join(_f(pc[c]["auc"]) for c in range(k)) + " | "
                     + " | ".join(_pct(pc[c]["mass_rel_error"]) for c in range(1, k))
                     + " | " + ", ".join(f"{b:+.2f}" for b in s["calibration"][name]) + " |")
    lines += ["", "## Goals (issue 9)", "", "| goal | met | detail |", "|---|---|---|"]
    lines += [f"| {g['goal']} | {'yes' if g['met'] else '**no**'} | {g['detail']} |" for g in s["goals"]]
    if s.get("notes"):
        lines += ["", "## Notes", "", *s["notes"]]
    lines += ["", "Full report: [report.md](report.md) (per class AUC, accuracy, precision, masses, surface Dice, "
              "confusion matrices, halo-by-halo masses) with `roc.png`, `slices.png`, `confusion.png`, "
              "`halo_masses.png`."]
    return "\n".join(lines) + "\n"


def _train_minutes(s: dict) -> float:
    """Wall-clock minutes of training, summed over the networks and their processes (budget ledgers)."""
    return sum(t["train_seconds"] for t in s["training"].values()) / 60


def results_block(s: dict) -> str:
    """The short table for ``benchmarks/RESULTS.md``."""
    names, k = s["class_names"], len(s["class_names"])
    lines = [f"{s['date']}, {s['machine']}, `{s['command']}` (training {_train_minutes(s):.0f} min in all, "
             f"{s['budget_s']:g} s of training per network; report: `benchmarks/reference/`).", "",
             "| model | steps | min AUC | AUC per class (" + ", ".join(names) + ") | max abs(ΔM/M) halo classes | accuracy |",
             "|---|---|---|---|---|---|"]
    for name, m in s["models"].items():
        a = [_num(m["per_class"][c]["auc"]) for c in range(k)]
        e = [abs(_num(m["per_class"][c]["mass_rel_error"])) for c in range(1, k)]
        steps = s["training"].get(name, {}).get("steps", "–")
        lines.append(f"| {name} | {steps} | {min(a):.4f} | " + ", ".join(f"{v:.3f}" for v in a)
                     + f" | {100 * max(e):.1f}% | {m['accuracy']:.4f} |")
    met = sum(g["met"] for g in s["goals"])
    lines += ["", f"Goals met: {met} of {len(s['goals'])}: "
              + "; ".join(f"{g['goal']}: {'yes' if g['met'] else 'no (' + g['detail'] + ')'}" for g in s["goals"]) + "."]
    return "\n".join(lines)


def update_results_block(path: Path, block: str, text: str) -> None:
    """Replace what lies between ``<!-- reference:<block>:begin -->`` and ``...:end -->`` in ``path`` (atomically)."""
    begin, end = f"<!-- reference:{block}:begin -->", f"<!-- reference:{block}:end -->"
    old = path.read_text(encoding="utf-8")
    i, j = old.find(begin), old.find(end)
    if i < 0 or j < i:
        raise DataError(f"{path}: no '{begin}' ... '{end}' block to rewrite")
    new = old[:i + len(begin)] + "\n" + text.strip() + "\n" + old[j:]
    with atomic_path(path) as tmp:
        tmp.write_text(new, encoding="utf-8")


def read_notes(publish_dir: Path, publish: bool) -> list[str]:
    """The reading a person wrote for a published run (``<publish_dir>/NOTES.md``), if any."""
    notes_file = publish_dir / "NOTES.md"
    return [notes_file.read_text(encoding="utf-8").strip()] if publish and notes_file.is_file() else []


def write_summary(summary: dict, markdown: str, out: Path, stem: str, *, publish: bool, publish_dir: Path,
                  files: Sequence[str], block: str, block_text: str) -> None:
    """Write ``<out>/<stem>.json`` and ``.md`` (atomically); when ``publish``, copy them and ``files``
    (names in ``out``, those present) to ``publish_dir`` and rewrite the ``block`` of RESULTS.md."""
    with atomic_path(out / f"{stem}.json") as tmp:
        tmp.write_text(json.dumps(summary, indent=1, ensure_ascii=False))
    with atomic_path(out / f"{stem}.md") as tmp:
        tmp.write_text(markdown, encoding="utf-8")
    if publish:
        publish_dir.mkdir(parents=True, exist_ok=True)
        for fname in (*files, f"{stem}.md", f"{stem}.json"):
            if (out / fname).is_file():
                shutil.copyfile(out / fname, publish_dir / fname)
        update_results_block(RESULTS_MD, block, block_text)
        print(f"published {publish_dir} and the {block} block of {RESULTS_MD}", flush=True)
    print(f"{stem}: {out / (stem + '.md')}", flush=True)


def _training_summary(run_dir: Path, ledger: dict) -> dict:
    import csv

    import torch

    blob = torch.load(run_dir / "model.pt", map_location="cpu", weights_only=False)
    with open(run_dir / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    last_val = next((r for r in reversed(rows) if r.get("val_loss")), {})
    times = [(int(r["step"]), float(r["time_s"])) for r in rows if r.get("time_s")]
    # s/step from consecutive logged rows of one process (time_s restarts with each process)
    rates = [(t1 - t0) / (s1 - s0) for (s0, t0), (s1, t1) in zip(times, times[1:]) if t1 > t0 and s1 > s0]
    return {"parameters": sum(v.numel() for v in blob["state_dict"].values()), "steps": int(blob["meta"]["step"]),
            "planned_steps": ledger["steps"], "s_per_step": float(np.median(rates)) if rates else None,
            "train_seconds": used_seconds(ledger), "processes": len(ledger["segments"]),
            "val_loss": float(last_val["val_loss"]) if last_val else None,
            "val_acc": float(last_val["val_acc"]) if last_val else None}


# --- the run -------------------------------------------------------------------------------------

def reference(overrides: Sequence[str] = (), work: Path = WORK, publish: bool = True, quick: bool = False) -> dict:
    """Run (or resume) every stage; returns the summary dict (also written as ``reference.json``)."""
    from halotrans.eval.report import class_names, evaluate_model, write_report
    from halotrans.eval.truth import load_truth

    t_start = time.time()
    cfgs = network_configs(overrides, work)
    first = next(iter(cfgs.values()))
    config_files = {}
    for name, cfg in cfgs.items():
        config_files[name] = work / "configs" / f"{NETWORKS[name]}.yaml"
        save_config(cfg, config_files[name])

    stage_boxes(first, config_files["vipr"])
    baseline = stage_baseline(first, work)
    ledgers = {name: stage_train(name, cfg, config_files[name]) for name, cfg in cfgs.items()}

    edges = list(first.data.class_edges)
    n_classes = first.data.n_classes
    val_files, test_files = files_of(first, "val"), files_of(first, "test")
    val_truths = [load_truth(f, edges) for f in val_files]
    test_truths = [load_truth(f, edges) for f in test_files]
    sources = {name: Path(cfg.train.out_dir) for name, cfg in cfgs.items()}
    sources[BASELINE] = baseline
    calibrated, raw, offsets, seconds = stage_calibrated(sources, val_files, test_files, val_truths)

    out = work / "report"
    run_meta = {name: {"source": str(src), "calibration_offsets": offsets[name]} for name, src in sources.items()}
    report = write_report(out, test_truths, calibrated, edges, tolerance=first.eval.boundary_tolerance, meta=run_meta)
    uncal = {}
    for name, preds in raw.items():
        m, _ = evaluate_model(test_truths, preds, n_classes, first.eval.boundary_tolerance, name)
        uncal[name] = {"accuracy": m["accuracy"], "per_class": m["per_class"]}
    uncal = _clean(uncal)

    d, tc = first.data, first.train
    summary = {
        "date": time.strftime("%Y-%m-%d %H:%M"), "machine": machine(), "quick": quick,
        "command": COMMAND + (" --quick" if quick else "") + "".join(f" --set {o}" for o in overrides if not quick),
        "seconds": time.time() - t_start,
        "boxes": f"{len(all_seeds(first))} × {first.sim.n_grid}³ particles, L = {first.sim.box_size:g} Mpc/h, "
                 f"{first.sim.mesh_factor * first.sim.n_grid}³ mesh, {first.sim.n_steps} PM steps; train "
                 f"{d.train_seeds}, validation {d.val_seeds}, test {d.test_seeds}",
        "inputs": list(d.inputs), "class_edges": edges, "class_names": class_names(edges),
        "crop": d.crop, "batch_size": d.batch_size, "class_weights": d.class_weights, "lr": tc.lr,
        "min_lr": tc.min_lr, "warmup_steps": tc.warmup_steps, "budget_s": float(tc.time_budget_s),
        "window": first.eval.window or d.crop, "overlap": first.eval.overlap,
        "class_table": class_table(first),
        "training": {name: _training_summary(Path(cfgs[name].train.out_dir), ledgers[name]) for name in cfgs},
        "inference_seconds": seconds, "calibration": offsets,
        "models": {name: {k: m[k] for k in ("accuracy", "auc_mean_halo_classes", "auc_halo_vs_none",
                                            "surface_dice_halo", "per_class")}
                   for name, m in report["models"].items()},
        "uncalibrated": uncal,
    }
    summary["goals"] = goal_checks(summary["models"], n_classes)
    summary["notes"] = read_notes(PUBLISH, publish)
    write_summary(summary, summary_markdown(summary), out, "reference", publish=publish, publish_dir=PUBLISH,
                  files=REPORT_FILES, block="segmentation", block_text=results_block(summary))
    return summary


def rows_of(summary: dict) -> list[dict]:
    """Benchmark rows: per class AUC and |ΔM/M| of vipr and copra against their MONAI peer and the baseline."""
    models, names = summary["models"], summary["class_names"]
    out = []
    for ours, peer in PEERS.items():
        for c, cname in enumerate(names):
            a = models[ours]["per_class"][c]["auc"]
            out.append(row("reference", f"{ours} AUC {cname}", a, "", peer, models[peer]["per_class"][c]["auc"],
                           note=f"{BASELINE}: {models[BASELINE]['per_class'][c]['auc']:.4f}"))
        for c, cname in enumerate(names[1:], start=1):
            e = abs(_num(models[ours]["per_class"][c]["mass_rel_error"]))
            pe = abs(_num(models[peer]["per_class"][c]["mass_rel_error"]))
            out.append(row("reference", f"{ours} |ΔM/M| {cname}", e, "", peer, pe, higher_is_better=False,
                           note="calibrated on the validation boxes"))
    return out


def run(quick: bool) -> list[dict]:
    """``python -m halotrans.benchmark reference [--quick]``."""
    if quick:
        summary = reference(QUICK_SET, QUICK_WORK, publish=False, quick=True)
    else:
        summary = reference()
    return rows_of(summary)


def reference_cli(argv: Sequence[str] | None, fn: Callable[..., dict], *, doc: str | None, quick_set: Sequence[str],
                  work: Path, quick_work: Path, publish_dir: Path, quick_help: str) -> int:
    """The command line of a reference run (``python benchmarks/bench_<name>.py``): ``--quick``,
    ``--set``, ``--work``, ``--no-publish``; calls ``fn(overrides, work, publish=, quick=)``. Only a
    full run with the defaults publishes (copies its report and rewrites its RESULTS.md block)."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help=f"smoke run: {quick_help}, not published")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a key of every config of the run (e.g. train.time_budget_s=300)")
    parser.add_argument("--work", type=Path, default=None, help=f"run directory (default {work.relative_to(REPO)})")
    parser.add_argument("--no-publish", action="store_true",
                        help=f"do not copy the report to {publish_dir.relative_to(REPO)}/ nor touch RESULTS.md")
    args = parser.parse_args(argv)
    overrides = [*quick_set, *args.overrides] if args.quick else args.overrides
    publish = not (args.quick or args.no_publish or args.overrides or args.work)
    fn(overrides, args.work or (quick_work if args.quick else work), publish=publish, quick=args.quick)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return reference_cli(argv, reference, doc=__doc__, quick_set=QUICK_SET, work=WORK, quick_work=QUICK_WORK,
                         publish_dir=PUBLISH, quick_help="6 boxes, 25 s per network")


if __name__ == "__main__":
    sys.exit(main())
