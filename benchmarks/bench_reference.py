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

import sys
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from halotrans.benchmark import REPO
from halotrans.config import Config, ConfigError, config_to_dict, load_config

sys.path.insert(0, str(Path(__file__).resolve().parent))  # harness.py next to this file
import harness  # noqa: E402
from harness import BASELINE, PEERS, fmt, fmt_pct  # noqa: E402

CONFIG_DIR = REPO / "configs" / "reference"
#: report name -> config file stem (= model.name)
NETWORKS = {"vipr": "vipr", "copra": "copra", "MONAI UNETR": "monai_unetr", "MONAI VNet": "monai_vnet"}
#: a run of its own (~75 min): `python -m halotrans.benchmark [--quick]` skips it unless named
IN_DEFAULT = False
WORK = REPO / "runs" / "reference"
QUICK_WORK = REPO / "runs" / "reference_quick"
PUBLISH = REPO / "benchmarks" / "reference"
COMMAND = "python -m halotrans.benchmark reference"
QUICK_SET = ("data.train_seeds=0-3", "data.val_seeds=4", "data.test_seeds=5", "train.time_budget_s=25",
             "train.warmup_steps=5")
#: goals of issue 9 for vipr on the test boxes
MIN_AUC, MAX_MASS_ERROR = 0.95, 0.10


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


# --- stages of its own (the shared ones are in harness.py) ----------------------------------------

def stage_baseline(cfg: Config, work: Path) -> Path:
    """Fit the logistic-regression baseline on the training boxes (skipped if fitted on the same boxes)."""
    from halotrans.eval.baseline import fit_baseline, load_baseline, save_baseline

    path = work / "baseline" / "model.json"
    train = [str(p) for p in harness.files_of(cfg, "train")]
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


def class_table(cfg: Config) -> list[dict]:
    """Per split: voxel fraction and number of halos of every class (the label distribution)."""
    import h5py

    from halotrans.data.boxes import mass_to_class

    n_classes = cfg.data.n_classes
    rows = []
    for split in ("train", "val", "test"):
        vox, halos = np.zeros(n_classes, dtype=np.int64), np.zeros(n_classes, dtype=np.int64)
        for path in harness.files_of(cfg, split):
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
        return harness.class_aucs(models[m], n_classes)

    def errs(m: str) -> list[float]:
        return [abs(e) for e in harness.mass_errors(models[m], n_classes)]

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


def _model_table(models: dict, names: Sequence[str], last: str, cell: Callable[[str, dict], str]) -> list[str]:
    """Accuracy, AUC per class and ΔM/M per halo class of every model, and a ``last`` column."""
    k = len(names)
    lines = ["| model | accuracy | " + " | ".join(f"AUC {n}" for n in names) + " | "
             + " | ".join(f"ΔM/M {n}" for n in names[1:]) + f" | {last} |", "|---|---|" + "---|" * (2 * k)]
    for name, m in models.items():
        pc = m["per_class"]
        lines.append(f"| {name} | {fmt(m['accuracy'])} | " + " | ".join(fmt(pc[c]["auc"]) for c in range(k)) + " | "
                     + " | ".join(fmt_pct(pc[c]["mass_rel_error"]) for c in range(1, k)) + f" | {cell(name, m)} |")
    return lines


def summary_markdown(s: dict) -> str:
    """``reference.md``: set-up, label distribution, training, the per-class table and the goals."""
    names = s["class_names"]
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
        lines.append(f"| {name} | {t['parameters'] / 1e6:.2f} M | {t['steps']} | {fmt(t['s_per_step'], '.3f')} | "
                     f"{fmt(t['train_seconds'], '.0f')} | {fmt(t['val_loss'])} | {fmt(t['val_acc'])} |")
    lines += ["", "## Test boxes (calibrated)", "",
              *_model_table(s["models"], names, "surface Dice halo", lambda _, m: fmt(m["surface_dice_halo"], ".3f")),
              "", "Uncalibrated (argmax of the network's own probabilities):", "",
              *_model_table(s["uncalibrated"], names, "offsets b_k",
                            lambda name, _: ", ".join(f"{b:+.2f}" for b in s["calibration"][name]))]
    lines += ["", "## Goals (issue 9)", "", *harness.goal_lines(s["goals"])]
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
        a = harness.class_aucs(m, k)
        e = [abs(x) for x in harness.mass_errors(m, k)]
        steps = s["training"].get(name, {}).get("steps", "–")
        lines.append(f"| {name} | {steps} | {min(a):.4f} | " + ", ".join(f"{v:.3f}" for v in a)
                     + f" | {100 * max(e):.1f}% | {m['accuracy']:.4f} |")
    met = sum(g["met"] for g in s["goals"])
    lines += ["", f"Goals met: {met} of {len(s['goals'])}: " + harness.goals_sentence(s["goals"]) + "."]
    return "\n".join(lines)


# --- the run -------------------------------------------------------------------------------------

def reference(overrides: Sequence[str] = (), work: Path = WORK, publish: bool = True, quick: bool = False) -> dict:
    """Run (or resume) every stage; returns the summary dict (also written as ``reference.json``)."""
    from halotrans.eval.report import class_names, evaluate_model, write_report
    from halotrans.eval.truth import load_truth

    t_start = time.time()
    cfgs = network_configs(overrides, work)
    first = next(iter(cfgs.values()))
    config_files = harness.write_configs(cfgs, NETWORKS, work)

    harness.stage_boxes(first, config_files["vipr"])
    baseline = stage_baseline(first, work)
    ledgers = {name: harness.stage_train(name, cfg, config_files[name]) for name, cfg in cfgs.items()}

    edges = list(first.data.class_edges)
    n_classes = first.data.n_classes
    val_files, test_files = harness.files_of(first, "val"), harness.files_of(first, "test")
    val_truths = [load_truth(f, edges) for f in val_files]
    test_truths = [load_truth(f, edges) for f in test_files]
    sources = {name: Path(cfg.train.out_dir) for name, cfg in cfgs.items()}
    sources[BASELINE] = baseline
    calibrated, raw, offsets, seconds = harness.stage_calibrated(sources, val_files, test_files, val_truths)

    out = work / "report"
    run_meta = {name: {"source": str(src), "calibration_offsets": offsets[name]} for name, src in sources.items()}
    report = write_report(out, test_truths, calibrated, edges, tolerance=first.eval.boundary_tolerance, meta=run_meta)
    uncal = {}
    for name, preds in raw.items():
        m, _ = evaluate_model(test_truths, preds, n_classes, first.eval.boundary_tolerance, name)
        uncal[name] = {"accuracy": m["accuracy"], "per_class": m["per_class"]}
    uncal = harness.clean(uncal)

    d, tc = first.data, first.train
    summary = {
        **harness.run_header(COMMAND, overrides, quick, t_start),
        "boxes": f"{len(harness.all_seeds(first))} × {first.sim.n_grid}³ particles, L = {first.sim.box_size:g} Mpc/h, "
                 f"{first.sim.mesh_factor * first.sim.n_grid}³ mesh, {first.sim.n_steps} PM steps; train "
                 f"{d.train_seeds}, validation {d.val_seeds}, test {d.test_seeds}",
        "inputs": list(d.inputs), "class_edges": edges, "class_names": class_names(edges),
        "crop": d.crop, "batch_size": d.batch_size, "class_weights": d.class_weights, "lr": tc.lr,
        "min_lr": tc.min_lr, "warmup_steps": tc.warmup_steps, "budget_s": float(tc.time_budget_s),
        "window": first.eval.window or d.crop, "overlap": first.eval.overlap,
        "class_table": class_table(first),
        "training": {name: harness.training_summary(Path(cfgs[name].train.out_dir), ledgers[name]) for name in cfgs},
        "inference_seconds": seconds, "calibration": offsets,
        "models": {name: {k: m[k] for k in ("accuracy", "auc_mean_halo_classes", "auc_halo_vs_none",
                                            "surface_dice_halo", "per_class")}
                   for name, m in report["models"].items()},
        "uncalibrated": uncal,
    }
    summary["goals"] = goal_checks(summary["models"], n_classes)
    summary["notes"] = harness.read_notes(PUBLISH, publish)
    harness.write_summary(summary, summary_markdown(summary), out, "reference", publish=publish, publish_dir=PUBLISH,
                          files=harness.SEGMENTATION_REPORT_FILES, block="segmentation", block_text=results_block(summary))
    return summary


def rows_of(summary: dict) -> list[dict]:
    """Benchmark rows: per class AUC and |ΔM/M| of vipr and copra against their MONAI peer and the baseline."""
    return harness.segmentation_rows(summary, "reference")


def run(quick: bool) -> list[dict]:
    """``python -m halotrans.benchmark reference [--quick]``."""
    summary = reference(QUICK_SET, QUICK_WORK, publish=False, quick=True) if quick else reference()
    return rows_of(summary)


def main(argv: Sequence[str] | None = None) -> int:
    return harness.reference_cli(argv, reference, doc=__doc__, quick_set=QUICK_SET, work=WORK, quick_work=QUICK_WORK,
                                 publish_dir=PUBLISH, quick_help="6 boxes, 25 s per network")


if __name__ == "__main__":
    sys.exit(main())
