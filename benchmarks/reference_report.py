"""Stages and report of the segmentation reference v2 (issue 18) that are not training: the
logistic baseline, the label table, paired orderings, Grad-CAM per proto-halo, the goal checks and
the Markdown of ``reference.md`` and of the ``reference:segmentation`` block of RESULTS.md.

Metrics are raw (argmax of the model's own probabilities) unless a column says "calibrated";
intervals are 68 % bootstrap intervals over the test boxes (:mod:`halotrans.eval.bootstrap`).
Masses in M☉/h; ΔM/M = (M_pred − M_true)/M_true of the total mass of a class.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import harness
import numpy as np

from halotrans.config import Config


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


# --- records -------------------------------------------------------------------------------------

RECORD_KEYS = ("accuracy", "auc_mean_halo_classes", "auc_halo_vs_none", "surface_dice_halo", "per_class")


def model_record(m: dict) -> dict:
    """The parts of an :func:`~halotrans.eval.report.evaluate_model` summary the reference keeps."""
    return harness.clean({k: m[k] for k in RECORD_KEYS})


def ci(s: dict, model: str, metric: str, c: int | None = None) -> dict | None:
    """The ``{"value", "lo", "hi"}`` interval of ``metric`` (class ``c``) of ``model``, if bootstrapped."""
    iv = s.get("intervals", {}).get(model)
    if not iv:
        return None
    return iv[metric] if c is None else iv["per_class"][c][metric]


def paired_orderings(stats: dict) -> dict:
    """Paired bootstrap (the same resampled test boxes for both) of vipr − copra, of each network minus
    its MONAI peer and of copra − PINOCCHIO: every metric of :func:`~halotrans.eval.bootstrap.combine`.
    ``stats``: model name -> its per-box :class:`~halotrans.eval.bootstrap.BoxStats` on the test boxes."""
    from halotrans.eval.bootstrap import paired_difference

    pairs = [("vipr", "copra"), ("vipr", "MONAI UNETR"), ("copra", "MONAI VNet"), ("copra", "PINOCCHIO")]
    return harness.clean({f"{a} − {b}": paired_difference(stats[a], stats[b])["metrics"]
                          for a, b in pairs if a in stats and b in stats})


# --- Grad-CAM per proto-halo ---------------------------------------------------------------------

def stage_halo_cams(cfg: Config, box_file: Path, out: Path, edges: Sequence[float], per_class: int = 3) -> list[dict]:
    """Grad-CAM per proto-halo (:mod:`halotrans.eval.halo_cam`) of the trained copra on one test box:
    ``per_class`` halos of every halo class, the figure ``halo_cams.png``; cached in ``halo_cams.json``."""
    import json

    import torch

    from halotrans.data.boxes import load_inputs
    from halotrans.eval.halo_cam import halo_cam_figure, run_halo_cams
    from halotrans.eval.report import class_names
    from halotrans.sims.boxio import load_box
    from halotrans.train.checkpoint import load_for_inference

    cache = out / "halo_cams.json"
    if cache.is_file() and (out / "halo_cams.png").is_file():
        return json.loads(cache.read_text())
    t0 = time.perf_counter()
    model, _, meta = load_for_inference(Path(cfg.train.out_dir))
    inputs = list(meta["inputs"])
    x = load_inputs(box_file, inputs, meta["norm_stats"])
    arrays, _ = load_box(box_file, ["delta", "halo_id", "halo_mass"])
    channels = {"delta": [i for i, c in enumerate(inputs) if c != "T"], "T": [i for i, c in enumerate(inputs) if c == "T"]}
    torch.set_grad_enabled(True)
    records, items = run_halo_cams(model, x, arrays["halo_id"], arrays["halo_mass"], edges, channels,
                                   per_class=per_class, seed=0)
    halo_cam_figure(out / "halo_cams.png", arrays["delta"], items, class_names(edges))
    records = harness.clean(records)
    harness.write_json(cache, records, indent=1)
    print(f"halo Grad-CAM: {len(records)} proto-halos of {box_file.name} in {time.perf_counter() - t0:.1f} s", flush=True)
    return records


# --- goals ---------------------------------------------------------------------------------------

MIN_AUC, MAX_MASS_ERROR, CHANCE_TOL, MIN_SPEEDUP, MAX_TIME_RATIO = 0.95, 0.10, 0.02, 1.5, 0.5


def _pc(s: dict, model: str, key: str) -> list[float]:
    return [harness.to_float(p[key]) for p in s["models"][model]["per_class"]]


def _abs_err(s: dict, model: str) -> list[float]:
    return [abs(e) for e in _pc(s, model, "mass_rel_error")[1:]]


def _check(goal: str, margins: Sequence[float], detail: str) -> dict:
    return {"goal": goal, "met": bool(margins) and all(np.isfinite(m) and m > 0 for m in margins), "detail": detail}


def _signed(values: Sequence[float], pp: bool = False) -> str:
    return ", ".join(f"{100 * v:+.2f} pp" if pp else f"{v:+.4f}" for v in values)


def ordering_checks(s: dict, a: str, b: str) -> list[dict]:
    """``a`` better than ``b`` on accuracy, every class's recall, surface Dice and every halo class's |ΔM/M|."""
    m = s["models"]
    acc = m[a]["accuracy"] - m[b]["accuracy"]
    rec = [x - y for x, y in zip(_pc(s, a, "accuracy"), _pc(s, b, "accuracy"))]
    dice = m[a]["surface_dice_halo"] - m[b]["surface_dice_halo"]
    err = [y - x for x, y in zip(_abs_err(s, a), _abs_err(s, b))]
    return [_check(f"{a} > {b}: accuracy", [acc], f"{acc:+.4f}"),
            _check(f"{a} > {b}: recall of every class", rec, "per class " + _signed(rec)),
            _check(f"{a} > {b}: surface Dice (halo)", [dice], f"{dice:+.4f}"),
            _check(f"{a} < {b}: raw abs(ΔM/M) of every halo class", err, f"{b} minus {a}: " + _signed(err, pp=True))]


def goal_checks(s: dict) -> list[dict]:
    """The goals of issue 18 on the raw test metrics: one dict per goal, with the margin."""
    m = s["models"]
    checks = []
    if "PINOCCHIO" in m:
        checks += ordering_checks(s, "vipr", "copra") + ordering_checks(s, "copra", "PINOCCHIO")
    else:
        checks += ordering_checks(s, "vipr", "copra")
        checks.append({"goal": "copra > PINOCCHIO", "met": False, "detail": "PINOCCHIO not run (no binary)"})
    for ours, peer in harness.PEERS.items():
        d_auc = [x - y for x, y in zip(_pc(s, ours, "auc"), _pc(s, peer, "auc"))]
        d_acc = m[ours]["accuracy"] - m[peer]["accuracy"]
        checks.append(_check(f"{ours} > {peer} at equal wall-clock: AUC of every class and accuracy", [*d_auc, d_acc],
                             f"ΔAUC per class {_signed(d_auc)}; Δaccuracy {d_acc:+.4f}"))
    a, e = _pc(s, "vipr", "auc"), _abs_err(s, "vipr")
    ceiling = _pc(s, "label-noise ceiling", "auc") if "label-noise ceiling" in m else [1.0] * len(a)
    need = [min(MIN_AUC, c - 0.01) for c in ceiling]
    checks.append(_check(f"vipr AUC >= {MIN_AUC} (or within 0.01 of the ceiling), every class",
                         [x - t + 1e-12 for x, t in zip(a, need)],
                         "AUC " + ", ".join(f"{x:.3f}" for x in a) + "; bar min(0.95, ceiling − 0.01) "
                         + ", ".join(f"{t:.3f}" for t in need) + f"; classes >= {MIN_AUC}: {sum(x >= MIN_AUC for x in a)} of {len(a)}"))
    checks.append(_check(f"vipr raw abs(ΔM/M) <= {MAX_MASS_ERROR:.0%}, every halo class",
                         [MAX_MASS_ERROR - x for x in e], "per halo class " + ", ".join(f"{100 * x:.1f}%" for x in e)))
    ctrl = _pc(s, "control (shuffled inputs)", "auc")
    checks.append(_check(f"control at chance: AUC 0.5 ± {CHANCE_TOL}, every class", [CHANCE_TOL - abs(x - 0.5) for x in ctrl],
                         "AUC per class " + ", ".join(f"{x:.3f}" for x in ctrl)))
    for r in s["speed"]:
        if abs(r["work_ratio"] - 1.0) < 0.02:
            checks.append(_check(f"{r['ours']} training throughput >= {MIN_SPEEDUP}× {r['peer']} at equal MACs/voxel",
                                 [r["throughput_ratio"] - MIN_SPEEDUP],
                                 f"{r['throughput_ratio']:.2f}× ({r['macs'][0] / 1e3:.1f}k vs {r['macs'][1] / 1e3:.1f}k MACs/voxel)"))
    for r in s["speed"]:
        if r["ours"] in (s["choices"]["vipr"], s["choices"]["copra"]):
            t = r["time_ratio"]
            checks.append({"goal": f"{r['ours']} reaches {r['peer']}'s final validation loss in <= {MAX_TIME_RATIO:g}× "
                                   "its wall-clock", "met": t is not None and t <= MAX_TIME_RATIO,
                           "detail": (f"{t:.2f}× ({r['ours_reach_s']:.0f} s vs {r['peer_train_s']:.0f} s)" if t is not None
                                      else f"never reached {r['peer_final_val_loss']:.4f} (own final {r['ours_final_val_loss']:.4f})")})
    return checks


# --- Markdown ------------------------------------------------------------------------------------

fmt, fmt_pct = harness.fmt, harness.fmt_pct


def _iv(s: dict, model: str, metric: str, c: int | None = None, pct: bool = False) -> str:
    """``value [lo, hi]`` of a bootstrapped metric (``–`` if absent)."""
    v = ci(s, model, metric, c)
    if v is None:
        return "–"
    if pct:
        return f"{fmt_pct(v['value'])} [{fmt_pct(v['lo'])}, {fmt_pct(v['hi'])}]"
    return f"{fmt(v['value'], '.3f')} [{fmt(v['lo'], '.3f')}, {fmt(v['hi'], '.3f')}]"


def _test_rows(s: dict, models: Sequence[str]) -> list[str]:
    names = s["class_names"]
    k = len(names)
    lines = ["| model | accuracy | " + " | ".join(f"AUC {n}" for n in names) + " | "
             + " | ".join(f"recall {n}" for n in names) + " | surface Dice halo | "
             + " | ".join(f"raw ΔM/M {n}" for n in names[1:]) + " |", "|---|" + "---|" * (3 * k + 1)]
    for name in models:
        if name not in s["models"]:
            lines.append(f"| {name} | not run |" + " |" * (3 * k))
            continue
        pc = s["models"][name]["per_class"]
        lines.append(f"| {name} | {_iv(s, name, 'accuracy')} | " + " | ".join(_iv(s, name, "auc", c) for c in range(k)) + " | "
                     + " | ".join(fmt(pc[c]["accuracy"], ".3f") for c in range(k)) + " | "
                     + f"{fmt(s['models'][name]['surface_dice_halo'], '.3f')} | "
                     + " | ".join(_iv(s, name, "mass_rel_error", c, pct=True) for c in range(1, k)) + " |")
    return lines


def _training_rows(s: dict) -> list[str]:
    lines = ["| run | overrides of the network config | parameters | MACs/voxel | steps (planned) | s/step | Mvox/s | "
             "training s | val loss | val mean AUC | val accuracy |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, t in s["training"].items():
        v = s["validation"].get(name, {})
        over = ", ".join(f"`{o}`" for o in s["arms"].get(name, []) if not o.startswith("data.root=")) or "–"
        if any(o.startswith("data.root=") for o in s["arms"].get(name, [])):
            over += ", shuffled boxes"
        vox = s["batch_size"] * s["crop"] ** 3 / t["s_per_step"] / 1e6 if t["s_per_step"] else None
        lines.append(f"| {name} | {over} | {t['parameters'] / 1e6:.2f} M | {t['macs_per_voxel'] / 1e3:.1f}k | "
                     f"{t['steps']} ({t['planned_steps']}) | {fmt(t['s_per_step'], '.2f')} | {fmt(vox, '.3f')} | "
                     f"{fmt(t['train_seconds'], '.0f')} | {fmt(t['val_loss'])} | "
                     f"{fmt(v.get('mean_auc'))} | {fmt(v.get('accuracy'))} |")
    return lines


def _ab_rows(s: dict) -> list[str]:
    ch, v = s["choices"], s["validation"]
    p = ch["patch"]
    rows = [("vipr patch", "vipr p16 paper", "vipr p8 paper"), ("vipr decoder", f"vipr p{p} paper", f"vipr p{p} light"),
            ("copra decoder", "copra paper", "copra light")]
    lines = ["| A/B (validation, equal wall-clock) | A | B | mean AUC A / B | accuracy A / B | "
             "max raw abs(ΔM/M) A / B | chosen |", "|---|---|---|---|---|---|---|"]
    for what, a, b in rows:
        if a not in v or b not in v:
            continue
        ea, eb = (max(abs(harness.to_float(x)) for x in v[n]["mass_rel_error"]) for n in (a, b))
        chosen = a if (ch["vipr"] == a or ch["copra"] == a or (what == "vipr patch" and p == 16)) else b
        lines.append(f"| {what} | {a} | {b} | {fmt(v[a]['mean_auc'])} / {fmt(v[b]['mean_auc'])} | "
                     f"{fmt(v[a]['accuracy'])} / {fmt(v[b]['accuracy'])} | {fmt_pct(ea)} / {fmt_pct(eb)} | {chosen} |")
    return lines


def _speed_rows(s: dict) -> list[str]:
    lines = ["| ours | peer | MACs/voxel ours / peer | work | training Mvox/s ours / peer | ratio | GFLOP/s ours / peer "
             "(fraction of peak) | peer's final val loss | ours reaches it at | peer's final validation at | time ratio |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in s["speed"]:
        work = "equal" if abs(r["work_ratio"] - 1) < 0.02 else f"less: {r['work_ratio']:.2f}×"
        reach = f"{r['ours_reach_s']:.0f} s" if r["ours_reach_s"] is not None else "never"
        lines.append(f"| {r['ours']} | {r['peer']} | {r['macs'][0] / 1e3:.1f}k / {r['macs'][1] / 1e3:.1f}k | {work} | "
                     f"{r['voxels_per_s'][0] / 1e6:.3f} / {r['voxels_per_s'][1] / 1e6:.3f} | {r['throughput_ratio']:.2f}× | "
                     f"{r['gflops'][0]:.1f} / {r['gflops'][1]:.1f} ({100 * r['peak_fraction'][0]:.0f}% / "
                     f"{100 * r['peak_fraction'][1]:.0f}%) | {fmt(r['peer_final_val_loss'])} | {reach} | "
                     f"{r['peer_train_s']:.0f} s | {fmt(r['time_ratio'], '.2f')} |")
    return lines


def _paired_rows(s: dict) -> list[str]:
    names = s["class_names"]
    k = len(names)
    lines = ["| difference A − B (paired over test boxes) | accuracy | " + " | ".join(f"AUC {n}" for n in names) + " | "
             + " | ".join(f"recall {n}" for n in names) + " |", "|---|---|" + "---|" * (2 * k)]

    def cell(v: dict) -> str:
        return f"{fmt(v['value'], '+.3f')} [{fmt(v['lo'], '+.3f')}, {fmt(v['hi'], '+.3f')}]"

    for pair, d in s["paired"].items():
        pc = d["per_class"]
        lines.append(f"| {pair} | {cell(d['accuracy'])} | " + " | ".join(cell(pc[c]["auc"]) for c in range(k)) + " | "
                     + " | ".join(cell(pc[c]["recall"]) for c in range(k)) + " |")
    return lines


def _cam_rows(s: dict) -> list[str]:
    lines = ["| class | halo | log10 M [M☉/h] | voxels | layer | δ share | T share | CAM in / out of the halo |",
             "|---|---|---|---|---|---|---|---|"]
    names = s["class_names"]
    for r in s["halo_cams"]:
        lines.append(f"| {names[r['class']]} | {r['halo_id']} | {r['log10_mass']:.2f} | {r['n_voxels']} | `{r['layer']}` | "
                     f"{fmt(r['share'].get('delta'), '.2f')} | {fmt(r['share'].get('T'), '.2f')} | "
                     f"{fmt(r['cam_in_halo'], '.2f')} |")
    return lines


def summary_markdown(s: dict) -> str:
    """``reference.md`` of the v2 reference."""
    names = s["class_names"]
    k = len(names)
    main = s["main"]
    rows = [*main, "logistic regression", "PINOCCHIO", "control (shuffled inputs)", "label-noise ceiling"]
    lines = [
        "# Segmentation reference v2 at CPU scale (issue 18)", "",
        f"{s['date']}. {harness.run_line(s)}" + (" Quick: a smoke run." if s["quick"] else ""), "",
        "What changed from the first reference (issue 9): 128 training boxes instead of 16; whole periodic 64³ boxes "
        "instead of 32³ crops, with circular padding in every network (vipr's ViT sees 64 tokens at patch 16, 512 at "
        "patch 8); the paper's full-resolution decoders (`decoder: paper`) against the light ones, chosen on "
        "validation; 8 PINOCCHIO-IC test boxes instead of 2, scored on identical voxels for every row; raw (argmax) "
        "metrics first with 68 % bootstrap intervals over the test boxes, the calibrated mass error as a second "
        "column; a shuffled-input control, a label-noise ceiling, PINOCCHIO's own labels, Grad-CAM per proto-halo.", "",
        f"Boxes: {s['boxes']}. Test boxes: "
        + ("PINOCCHIO-IC (PINOCCHIO's linear δ, labels from our PM + FoF on it)" if s["test_source"] == "pinocchio"
           else "our own ICs (no PINOCCHIO binary: its row is not run)")
        + f"; ceiling: the same δ re-simulated with {', '.join(f'`{x}`' for x in s['ceiling_setting'])}. "
        f"Classes {', '.join(names)} (log10 M [M☉/h]). Every run: whole 64³ boxes (random periodic shift and one of the "
        f"48 cube symmetries), batch {s['batch_size']}, {s['class_weights']} class weights, cross-entropy, AdamW lr "
        f"{s['lr']:g} (warmup {s['warmup_steps']}, cosine to {s['min_lr']:g} over its budget), fp32, {s['budget_s']:g} s "
        "wall-clock each (set-up and validation included); prediction with one periodic 64³ window. MONAI has no "
        "periodic padding option: the peers get it through our adaptation (after construction every stride-1 'same' "
        "convolution of MONAI UNETR and VNet pads circularly, `halotrans/models/monai_peers.py`; their strided and "
        "transposed convolutions have no padding), so all networks see the same periodic samples.", "",
        "## Label distribution (fraction of voxels; halos)", "",
        "| split | boxes | " + " | ".join(names) + " |", "|---|---|" + "---|" * k,
    ]
    for r in s["class_table"]:
        lines.append(f"| {r['split']} | {r['boxes']} | " + " | ".join(
            f"{100 * v:.1f}%" + (f" ({h})" if c else "") for c, (v, h) in enumerate(zip(r["voxel_fraction"], r["halos"])))
            + " |")
    lines += ["", "## Training (same wall-clock budget per run)", "", *_training_rows(s),
              "", "## A/B on the validation boxes", "", *_ab_rows(s), "",
              f"Recommended: **{s['choices']['vipr']}** (reported as vipr) and **{s['choices']['copra']}** (copra).",
              "", "## Test boxes, raw (argmax), 68 % bootstrap intervals over the test boxes", "",
              *_test_rows(s, rows), "",
              "PINOCCHIO has one operating point (labels, no scores): its AUC is that of its 0/1 decision. The ceiling "
              "scores the default labels against the converged re-simulation (the best any network can do against our "
              "labels); its AUC is also that of a 0/1 decision, so it bounds accuracy, recall, Dice and ΔM/M, while a "
              "network's AUC, computed from probabilities, can exceed it.", "",
              "## Mass error calibrated on the validation boxes (second column)", "",
              "| model | accuracy calibrated | " + " | ".join(f"calibrated ΔM/M {n}" for n in names[1:]) + " |",
              "|---|---|" + "---|" * (k - 1)]
    for name, m in s["calibrated"].items():
        lines.append(f"| {name} | {fmt(m['accuracy'])} | " + " | ".join(fmt_pct(m["per_class"][c]["mass_rel_error"])
                                                                        for c in range(1, k)) + " |")
    lines += ["", "## Inputs and options on the recommended vipr recipe (test boxes, raw)", "",
              *_test_rows(s, ["vipr", *[o for o in s["options"] if o != "control (shuffled inputs)"]]), "",
              "## Paired differences (68 % intervals, the same resampled test boxes for both)", "", *_paired_rows(s), "",
              "## Speed at equal wall-clock (from the training runs)", "", *_speed_rows(s), "",
              f"Peak measured in this run: {', '.join(f'{k2} {v:.0f}' for k2, v in s['peak_gflops'].items())} GFLOP/s "
              "(all cores, fp32: a 2048² matmul and a 64-channel 5³ convolution). GFLOP/s = 3 × 2 × MACs/voxel × "
              "voxels/s (forward + backward). Voxels/s from the median logged step (validation excluded). "
              "Time-to-accuracy: training-loop seconds (set-up excluded on both sides) at which ours first validates "
              "at or below the peer's final validation loss (class-weighted cross-entropy on 4 validation boxes), "
              "over the peer's seconds at that final validation. \"Equal\" work: MACs/voxel within 2 %; copra "
              "at its own feature size (2 × classes) does less work than MONAI VNet's fixed 16 base filters even "
              "with `decoder: paper` (the equal-work copra figure is `python -m halotrans.benchmark models`).", "",
              "## Grad-CAM per proto-halo (recommended copra, first test box)", "", *_cam_rows(s), "",
              "Score: the target class's logit summed over the proto-halo's voxels; map at a decoder stage of "
              "resolution N or N/2; δ/T shares: gradient × input of that score summed per input channel group. "
              "Figure: `halo_cams.png`.", "",
              "## Goals (issue 18)", "", *harness.goal_lines(s["goals"])]
    if s.get("notes"):
        lines += ["", "## Notes", "", *s["notes"]]
    lines += ["", "Full report: [report.md](report.md) (per class AUC, accuracy, precision, masses, surface Dice, "
              "confusion matrices, halo-by-halo masses of the networks, the baseline and PINOCCHIO) with `roc.png`, "
              "`slices.png`, `confusion.png`, `halo_masses.png`, `halo_cams.png`."]
    return "\n".join(lines) + "\n"


def results_block(s: dict) -> str:
    """The short table for ``benchmarks/RESULTS.md``."""
    names = s["class_names"]
    train_min = sum(t["train_seconds"] for t in s["training"].values()) / 60
    lines = [f"{s['date']}, {s['machine']}, `{s['command']}` (v2: {s['boxes']}; whole periodic 64³ boxes, "
             f"{s['budget_s']:g} s per run, {len(s['training'])} runs, training {train_min:.0f} min in all; test boxes "
             + ("PINOCCHIO-IC" if s["test_source"] == "pinocchio" else "from our ICs")
             + "; raw metrics, accuracy with its 68 % bootstrap interval; report: `benchmarks/reference/`).", "",
             "| model | accuracy | min AUC | AUC per class (" + ", ".join(names) + ") | max raw abs(ΔM/M) halo classes |",
             "|---|---|---|---|---|"]
    for name in [*s["main"], "logistic regression", "PINOCCHIO", "control (shuffled inputs)", "label-noise ceiling"]:
        if name not in s["models"]:
            continue
        a = [harness.to_float(p["auc"]) for p in s["models"][name]["per_class"]]
        e = [abs(harness.to_float(p["mass_rel_error"])) for p in s["models"][name]["per_class"][1:]]
        lines.append(f"| {name} | {_iv(s, name, 'accuracy')} | {min(a):.4f} | " + ", ".join(f"{v:.3f}" for v in a)
                     + f" | {100 * max(e):.1f}% |")
    met = sum(g["met"] for g in s["goals"])
    lines += ["", f"Goals met: {met} of {len(s['goals'])}: " + harness.goals_sentence(s["goals"]) + "."]
    return "\n".join(lines)
