"""Segmentation reference v2 at CPU scale (issue 18): vipr and copra against MONAI UNETR / VNet, a
logistic regression, PINOCCHIO, a no-skill control and a label-noise ceiling, on the same test voxels.

    python -m halotrans.benchmark reference            # the reference run (~100 min on 2 cores once its data exist)
    python benchmarks/bench_reference.py --set train.time_budget_s=120 --work runs/reference_2min
    python -m halotrans.benchmark reference --quick    # 2+1+1 boxes, 20 s per run: a smoke run

One command, resumable: every stage is skipped when its output is complete, so a killed run is
continued by running the same command again. Nothing is chosen on the test boxes.

1. data (:mod:`reference_data`): 128 training and 8 validation boxes (``configs/reference/base.yaml``:
   ``sims/box64``), 8 PINOCCHIO-IC test boxes (``import pinocchio --nbody``), their converged
   re-simulation (3× mesh, 80 steps: the label-noise ceiling), tidal shear and the physics channels
   of every box, and shuffled-input copies (the control);
2. the logistic-regression baseline fitted on the training boxes;
3. training, every run for the same wall-clock budget (``train.time_budget_s``, set-up included; a
   short timing probe plans ``train.steps`` so that the schedule ends at the budget), on whole
   periodic 64³ boxes with circular padding, in phases:
   a. vipr patch 16 and patch 8 (``decoder: paper``), copra ``paper`` and ``light``, MONAI UNETR,
      MONAI VNet; the patch winner on validation, then vipr ``light`` at that patch; the decoder
      winners on validation are the recommended vipr and copra;
   b. on the recommended vipr recipe: the shuffled-input control, δ only and T only (the feature
      study), the physics channels, an unweighted loss and twice the budget (issue 18, item 9);
4. predictions of the validation and test boxes (one periodic 64³ window), cached per box;
5. metrics on the test boxes: raw (argmax) first, with 68 % bootstrap intervals over the test boxes
   (:mod:`halotrans.eval.bootstrap`), then mass-calibrated on the validation boxes as a second,
   labelled column; PINOCCHIO's own labels; the default labels against the converged ones (ceiling);
6. Grad-CAM per proto-halo on the recommended copra (:mod:`halotrans.eval.halo_cam`);
7. the report (``reference.md``/``reference.json``, ``report.md`` and figures), copied to
   ``benchmarks/reference/`` with the ``reference:segmentation`` block of ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import csv
import functools
import re
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from halotrans.benchmark import REPO
from halotrans.config import Config, ConfigError, config_to_dict, load_config

sys.path.insert(0, str(Path(__file__).resolve().parent))  # harness.py next to this file
import harness  # noqa: E402
import reference_data  # noqa: E402
import reference_report  # noqa: E402
from harness import BASELINE  # noqa: E402

CONFIG_DIR = REPO / "configs" / "reference"
#: config file stem (= model.name) of each network; one recipe (base.yaml) for all of them
STEMS = ("vipr", "copra", "monai_unetr", "monai_vnet")
#: a run of its own (~100 min): `python -m halotrans.benchmark [--quick]` skips it unless named
IN_DEFAULT = False
WORK = REPO / "runs" / "reference"
QUICK_WORK = REPO / "runs" / "reference_quick"
PUBLISH = REPO / "benchmarks" / "reference"
COMMAND = "python -m halotrans.benchmark reference"
QUICK_SET = ("data.train_seeds=0-1", "data.val_seeds=128", "data.test_seeds=1000", "train.time_budget_s=20",
             "train.warmup_steps=2")
PINOCCHIO, CONTROL, CEILING = "PINOCCHIO", "control (shuffled inputs)", "label-noise ceiling"
#: the physics input channels of the item-9 option (smoothed δ on 4 scales, the collapse-time maximum)
PHYSICS = ("delta", "T", "delta_R1", "delta_R2", "delta_R4", "delta_R8", "collapse_max")
#: the timing probe: 12 real training steps, timed from step 4 (a 64³ step takes 0.5-3 s here); --quick: 4 from 2
PROBE = functools.partial(harness.probe_step_seconds, steps=12, skip=4)
QUICK_PROBE = functools.partial(harness.probe_step_seconds, steps=4, skip=2)
N_EVALS = 6


@dataclass(frozen=True)
class Arm:
    """One training run: a report name, its network config (``configs/reference/<stem>.yaml``) and
    the overrides that make it what it is."""

    name: str
    stem: str
    overrides: tuple[str, ...] = ()

    @property
    def slug(self) -> str:
        name = self.name.lower().replace("δ", "delta").replace("×", "x")
        return re.sub(r"[^a-z0-9]+", "_", name).strip("_")

    def plus(self, name: str, *extra: str) -> Arm:
        return replace(self, name=name, overrides=(*self.overrides, *extra))


#: vipr's decoder stages, one ViT block each: log2(patch) stages (UNETR: blocks 3, 6, 9, 12 at patch 16)
SKIP_LAYERS = {16: "[3, 6, 9, 12]", 8: "[4, 8, 12]"}


def vipr_arm(patch: int, decoder: str) -> Arm:
    return Arm(f"vipr p{patch} {decoder}", "vipr", (f"model.patch_size=[{patch}]", f"model.skip_layers={SKIP_LAYERS[patch]}",
                                                    f"model.decoder={decoder}"))


def copra_arm(decoder: str) -> Arm:
    return Arm(f"copra {decoder}", "copra", (f"model.decoder={decoder}",))


PEER_ARMS = (Arm("MONAI UNETR", "monai_unetr"), Arm("MONAI VNet", "monai_vnet"))


# --- configs -------------------------------------------------------------------------------------

def check_one_recipe(overrides: Sequence[str]) -> None:
    """Raise :class:`ConfigError` if the four network configs differ in anything but ``model``."""
    def recipe(stem: str) -> dict:
        d = config_to_dict(load_config(CONFIG_DIR / f"{stem}.yaml", list(overrides)))
        d.pop("model")
        d["train"].pop("out_dir")
        return d

    first = recipe(STEMS[0])
    for stem in STEMS[1:]:
        other = recipe(stem)
        diff = sorted(f"{s}.{k}" for s in first for k in first[s] if first[s][k] != other[s].get(k))
        if diff:
            raise ConfigError(f"{CONFIG_DIR / stem}.yaml differs from {STEMS[0]}.yaml outside `model`: "
                              f"{', '.join(diff)} (the reference trains every network alike)")


class Runs:
    """The arms of one reference run: configs (saved under ``<work>/configs``), training, predictions."""

    def __init__(self, overrides: Sequence[str], work: Path, probe=PROBE):
        self.overrides, self.work, self.probe = tuple(overrides), work, probe
        self.cfgs: dict[str, Config] = {}
        self.files: dict[str, Path] = {}
        self.arms: dict[str, Arm] = {}
        self.ledgers: dict[str, dict] = {}

    def config(self, arm: Arm) -> Config:
        if arm.name not in self.cfgs:
            cfg = load_config(CONFIG_DIR / f"{arm.stem}.yaml",
                              [*self.overrides, *arm.overrides, f"train.out_dir={self.work / arm.slug}"])
            self.cfgs[arm.name], self.arms[arm.name] = cfg, arm
            self.files.update(harness.write_configs({arm.name: cfg}, {arm.name: arm.slug}, self.work))
        return self.cfgs[arm.name]

    def train(self, arm: Arm) -> Path:
        cfg = self.config(arm)
        self.ledgers[arm.name] = harness.stage_train(arm.name, cfg, self.files[arm.name], probe=self.probe, n_evals=N_EVALS)
        return Path(cfg.train.out_dir)

    def files_of(self, name: str, split: str) -> list[Path]:
        return harness.files_of(self.cfgs[name], split)

    def predict(self, name: str, split: str) -> list[np.ndarray]:
        run_dir = Path(self.cfgs[name].train.out_dir)
        preds, _ = harness.stage_predict(name, run_dir, self.files_of(name, split), run_dir / "predictions")
        return preds


# --- scoring -------------------------------------------------------------------------------------

def val_score(runs: Runs, name: str, truths, n_classes: int) -> dict:
    """Validation metrics of one arm (raw argmax): the A/B decisions use ``mean_auc`` (over all classes)."""
    from halotrans.eval.bootstrap import combine, model_stats

    m = combine(model_stats(truths, runs.predict(name, "val"), n_classes))
    aucs = [p["auc"] for p in m["per_class"]]
    return {"mean_auc": float(np.nanmean(aucs)), "auc": aucs, "accuracy": m["accuracy"],
            "mass_rel_error": [p["mass_rel_error"] for p in m["per_class"][1:]]}


def pick(scores: dict, a: str, b: str) -> str:
    """The arm with the higher validation mean AUC (the first on a tie)."""
    return a if scores[a]["mean_auc"] >= scores[b]["mean_auc"] else b


def pinocchio_labels(files: Sequence[Path], edges: Sequence[float]) -> list[np.ndarray] | None:
    """PINOCCHIO's own classes (N,N,N) of each PINOCCHIO-IC box, or None if the boxes have none."""
    import h5py

    from halotrans.data.boxes import mass_to_class

    out = []
    for f in files:
        with h5py.File(f, "r") as h:
            if "pinocchio/halo_mass" not in h:
                return None
            out.append(mass_to_class(h["pinocchio/halo_mass"][...], edges).astype(np.int64))
    return out


def val_times(run_dir: Path) -> list[tuple[float, float]]:
    """(training-loop seconds, validation loss) of every validation in metrics.csv (set-up excluded):
    a validation's time is interpolated between the logged steps around it (0 s at step 0)."""
    with open(run_dir / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    logged = sorted({int(r["step"]): float(r["time_s"]) for r in rows if r.get("time_s")}.items())
    steps, seconds = [0, *(s for s, _ in logged)], [0.0, *(x for _, x in logged)]
    return [(float(np.interp(int(r["step"]), steps, seconds)), float(r["val_loss"])) for r in rows if r.get("val_loss")]


def time_to_loss(run_dir: Path, target: float) -> float | None:
    """Training-loop wall-clock (s) at the first validation with loss <= ``target``, or None."""
    return next((t for t, loss in val_times(run_dir) if loss <= target), None)


def macs_per_voxel(runs: Runs, n: int) -> dict[str, float]:
    """Forward multiply-adds per output voxel of every arm's network at n³ (:mod:`halotrans.models.macs`)."""
    import torch

    from halotrans.models.macs import forward_macs_per_voxel
    from halotrans.models.registry import build_model

    out = {}
    for name, cfg in runs.cfgs.items():
        with torch.no_grad():
            model = build_model(cfg.model, len(cfg.data.inputs), cfg.data.n_classes, cfg.data.crop)
            out[name] = forward_macs_per_voxel(model, len(cfg.data.inputs), n)
    return out


def speed_rows(runs: Runs, pairs: dict[str, str], training: dict, n: int, peak: dict, macs: dict) -> list[dict]:
    """Training throughput of each (ours, peer) pair: voxels/s, MACs/voxel, GFLOP/s, fraction of peak,
    and time-to-accuracy (ours reaching the peer's final validation loss)."""
    peak_gflops = max(peak.values())

    def step_s(name: str) -> float:  # median logged s/step; the probe's when too few steps were logged
        return training[name]["s_per_step"] or runs.ledgers[name]["probe_step_s"]

    rows = []
    for ours, peer in pairs.items():
        vox = {k: runs.cfgs[k].data.batch_size * n ** 3 / step_s(k) for k in (ours, peer)}
        gf = {k: 6 * macs[k] * vox[k] / 1e9 for k in (ours, peer)}
        peer_runs = val_times(Path(runs.cfgs[peer].train.out_dir))
        peer_loss, peer_s = peer_runs[-1][1], peer_runs[-1][0]  # its final validation, at the end of its loop
        reach = time_to_loss(Path(runs.cfgs[ours].train.out_dir), peer_loss)
        rows.append({"ours": ours, "peer": peer, "macs": [macs[ours], macs[peer]], "voxels_per_s": [vox[ours], vox[peer]],
                     "throughput_ratio": vox[ours] / vox[peer], "work_ratio": macs[ours] / macs[peer],
                     "gflops": [gf[ours], gf[peer]], "peak_fraction": [gf[ours] / peak_gflops, gf[peer] / peak_gflops],
                     "peer_final_val_loss": peer_loss, "ours_reach_s": reach, "peer_train_s": peer_s,
                     "time_ratio": reach / peer_s if reach is not None else None,
                     "ours_final_val_loss": training[ours]["val_loss"]})
    return rows


# --- the run -------------------------------------------------------------------------------------

def reference(overrides: Sequence[str] = (), work: Path = WORK, publish: bool = True, quick: bool = False) -> dict:
    """Run (or resume) every stage; returns the summary dict (also written as ``reference.json``)."""
    from halotrans.eval.bootstrap import bootstrap, model_stats
    from halotrans.eval.calibration import apply_class_bias, fit_class_bias
    from halotrans.eval.report import class_names, evaluate_model, write_report
    from halotrans.eval.truth import load_truth

    t_start = time.time()
    check_one_recipe(overrides)
    runs = Runs(overrides, work, QUICK_PROBE if quick else PROBE)
    first = runs.config(vipr_arm(16, "paper"))
    first_file = runs.files[vipr_arm(16, "paper").name]
    edges, n_classes = list(first.data.class_edges), first.data.n_classes
    n = first.sim.n_grid

    # 1. data
    test_source = reference_data.stage_boxes(first, first_file)
    ceiling_files = reference_data.stage_ceiling(first, first_file, test_source)
    shuffled_root = reference_data.stage_shuffled(first, harness.all_seeds(first))
    val_truths = [load_truth(f, edges) for f in harness.files_of(first, "val")]
    test_files = harness.files_of(first, "test")
    test_truths = [load_truth(f, edges) for f in test_files]

    # 2. baseline
    baseline = reference_report.stage_baseline(first, work)

    # 3a. the A/B phase and the peers
    v16, v8, cp, cl = vipr_arm(16, "paper"), vipr_arm(8, "paper"), copra_arm("paper"), copra_arm("light")
    for arm in (v16, cp, *PEER_ARMS, v8, cl):
        runs.train(arm)
    val = {a.name: val_score(runs, a.name, val_truths, n_classes) for a in (v16, v8, cp, cl)}
    patch = 16 if pick(val, v16.name, v8.name) == v16.name else 8
    vpl = vipr_arm(patch, "light")
    runs.train(vpl)
    val[vpl.name] = val_score(runs, vpl.name, val_truths, n_classes)
    vpp = vipr_arm(patch, "paper")
    vipr = runs.arms[pick(val, vpp.name, vpl.name)]
    copra = runs.arms[pick(val, cp.name, cl.name)]
    for arm in PEER_ARMS:
        val[arm.name] = val_score(runs, arm.name, val_truths, n_classes)

    # 3b. options on the recommended vipr recipe
    options = {
        CONTROL: vipr.plus(CONTROL, f"data.root={shuffled_root}"),
        "vipr δ only": vipr.plus("vipr δ only", "data.inputs=[delta]"),
        "vipr T only": vipr.plus("vipr T only", "data.inputs=[T]"),
        "vipr + physics channels": vipr.plus("vipr + physics channels", f"data.inputs=[{', '.join(PHYSICS)}]"),
        "vipr unweighted loss": vipr.plus("vipr unweighted loss", "data.class_weights=none"),
        "vipr 2× budget": vipr.plus("vipr 2× budget", f"train.time_budget_s={2 * float(first.train.time_budget_s):g}"),
    }
    for arm in options.values():
        runs.train(arm)
    for name in options:
        if name != CONTROL:
            val[name] = val_score(runs, name, val_truths, n_classes)

    # 4-5. predictions and metrics on the test boxes
    main = {"vipr": vipr.name, "copra": copra.name, "MONAI UNETR": "MONAI UNETR", "MONAI VNet": "MONAI VNet"}
    raw, calibrated, offsets = {}, {}, {}

    def add(label: str, val_preds: list, test_preds: list) -> None:  # raw, and calibrated on the validation boxes
        bias = fit_class_bias(val_preds, [t.labels for t in val_truths])
        raw[label], offsets[label] = test_preds, bias.tolist()
        calibrated[label] = [apply_class_bias(p, bias) for p in test_preds]

    for label, name in [*main.items(), *((k, k) for k in options)]:
        add(label, runs.predict(name, "val"), runs.predict(name, "test"))
    cache = baseline.parent / "predictions"
    add(BASELINE, harness.stage_predict(BASELINE, baseline, harness.files_of(first, "val"), cache)[0],
        harness.stage_predict(BASELINE, baseline, test_files, cache)[0])
    pino = pinocchio_labels(test_files, edges)
    if pino is not None:
        raw[PINOCCHIO] = pino

    tol = first.eval.boundary_tolerance
    metrics, intervals, stats = {}, {}, {}
    for label, preds in raw.items():
        metrics[label], _ = evaluate_model(test_truths, preds, n_classes, tol, label)
        stats[label] = model_stats(test_truths, preds, n_classes)
        intervals[label] = bootstrap(stats[label])["metrics"]
    cal_metrics = {label: evaluate_model(test_truths, preds, n_classes, tol, label)[0]
                   for label, preds in calibrated.items()}
    conv_truths = [load_truth(f, edges) for f in ceiling_files]
    ceiling_preds = [t.labels.astype(np.int64) for t in test_truths]
    metrics[CEILING], _ = evaluate_model(conv_truths, ceiling_preds, n_classes, tol, CEILING)
    intervals[CEILING] = bootstrap(model_stats(conv_truths, ceiling_preds, n_classes))["metrics"]
    paired = reference_report.paired_orderings(stats)

    figure_models = {k: raw[k] for k in ("vipr", "copra", "MONAI UNETR", "MONAI VNet", BASELINE, PINOCCHIO) if k in raw}
    out = work / "report"
    meta = {label: {"calibration_offsets": offsets.get(label)} for label in figure_models}
    write_report(out, test_truths, figure_models, edges, tolerance=tol, meta=meta)

    # 6. Grad-CAM per proto-halo on the recommended copra
    cams = reference_report.stage_halo_cams(runs.cfgs[copra.name], test_files[0], out, edges)

    # 7. summary
    training = {name: harness.training_summary(Path(runs.cfgs[name].train.out_dir), runs.ledgers[name])
                for name in runs.cfgs}
    peak = harness.dense_peak(time.perf_counter, "cpu")
    macs = macs_per_voxel(runs, n)
    for name, record in training.items():
        record["macs_per_voxel"] = macs[name]
    speed = speed_rows(runs, {vipr.name: "MONAI UNETR", copra.name: "MONAI VNet",
                              **({vpl.name: "MONAI UNETR"} if vipr.name != vpl.name else {vpp.name: "MONAI UNETR"}),
                              **({cl.name: "MONAI VNet"} if copra.name != cl.name else {cp.name: "MONAI VNet"})},
                       training, n, peak, macs)
    d, tc = first.data, first.train
    summary = {
        **harness.run_header(COMMAND, overrides, quick, t_start),
        "version": 2,
        "boxes": f"{n}³ particles, L = {first.sim.box_size:g} Mpc/h, {first.sim.mesh_factor * n}³ mesh, "
                 f"{first.sim.n_steps} PM steps; train {d.train_seeds}, validation {d.val_seeds}, test {d.test_seeds}",
        "test_source": test_source,
        "ceiling_setting": list(reference_data.CEILING_SET),
        "inputs": list(d.inputs), "class_edges": edges, "class_names": class_names(edges),
        "crop": d.crop, "batch_size": d.batch_size, "class_weights": d.class_weights, "lr": tc.lr,
        "min_lr": tc.min_lr, "warmup_steps": tc.warmup_steps, "budget_s": float(tc.time_budget_s),
        "class_table": reference_report.class_table(first),
        "arms": {name: list(arm.overrides) for name, arm in runs.arms.items()},
        "training": training, "validation": val,
        "choices": {"patch": patch, "vipr": vipr.name, "copra": copra.name},
        "models": {k: reference_report.model_record(m) for k, m in metrics.items()},
        "calibrated": {k: reference_report.model_record(m) for k, m in cal_metrics.items()},
        "intervals": intervals, "calibration": offsets, "paired": paired,
        "speed": speed, "peak_gflops": peak, "halo_cams": cams,
        "main": main, "options": list(options),
    }
    summary = harness.clean(summary)  # what reference.json holds: the Markdown is rendered from it alone
    summary["goals"] = reference_report.goal_checks(summary)
    summary["notes"] = harness.read_notes(PUBLISH, publish)
    harness.write_summary(summary, reference_report.summary_markdown(summary), out, "reference", publish=publish,
                          publish_dir=PUBLISH, files=(*harness.SEGMENTATION_REPORT_FILES, "halo_cams.png"),
                          block="segmentation", block_text=reference_report.results_block(summary))
    return summary


#: the Markdown of reference.md and of the RESULTS.md block, rendered from reference.json alone
summary_markdown, results_block = reference_report.summary_markdown, reference_report.results_block


def rows_of(summary: dict) -> list[dict]:
    """Benchmark rows: per class AUC and |ΔM/M| of vipr and copra against their MONAI peer and the baseline."""
    return harness.segmentation_rows(summary, "reference")


def run(quick: bool) -> list[dict]:
    """``python -m halotrans.benchmark reference [--quick]``."""
    summary = reference(QUICK_SET, QUICK_WORK, publish=False, quick=True) if quick else reference()
    return rows_of(summary)


def main(argv: Sequence[str] | None = None) -> int:
    return harness.reference_cli(argv, reference, doc=__doc__, quick_set=QUICK_SET, work=WORK, quick_work=QUICK_WORK,
                                 publish_dir=PUBLISH, quick_help="2+1+1 boxes, 20 s per run")


if __name__ == "__main__":
    sys.exit(main())
