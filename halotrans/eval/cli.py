"""``python -m halotrans evaluate RUN_DIR [RUN_DIR ...] DATA [--out DIR] [--set eval.window=64]``

Full-box inference of one or more trained segmentation runs on the same test boxes, and the
comparison report (``report.md``, ``report.json``, PNG figures). DATA is a directory of box files
(read with the first run's ``data.<split>_seeds``, ``--split test`` by default) or box files.
Each run's inputs are prepared with its own normalisation; all runs must share ``class_edges``.
``--set`` overrides keys of every run's config (``eval.*``: window, overlap, margin, blend,
batch_size, bf16, boundary_tolerance, gradcam, out_dir; ``data.test_seeds`` ...).
Every input is checked before anything is written: bad input exits with status 2 (boxes or weights
holding NaN/±Inf included, naming the file, the dataset and the count).

``python -m halotrans infer RUN_DIR BOX.h5 --out PRED.h5``: the same periodic sliding-window
prediction of one box on every rank of a job, into one HDF5 file (:mod:`halotrans.eval.infer`).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from halotrans.cli import Command
from halotrans.config import Config, ConfigError, config_from_dict, config_to_dict, parse_override
from halotrans.io import DataError

if TYPE_CHECKING:  # torch is imported by the command itself, so --help stays fast
    import numpy as np
    import torch


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("paths", nargs="+", metavar="PATH",
                        help="training run directories (with config.yaml), then a box directory or box files")
    parser.add_argument("--out", default=None, help="report directory (default eval.out_dir, else <first run>/eval)")
    parser.add_argument("--split", choices=("train", "val", "test"), default=None,
                        help="seed range read from a DATA directory (default eval.split = test)")
    parser.add_argument("--name", action="append", default=[], metavar="NAME",
                        help="name of a run in the report, in the order of the runs (default: model name)")
    parser.add_argument("--tag", default=None, help="checkpoint tag instead of the final model.pt")
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a key of every run's config, e.g. --set eval.window=64 (repeatable)")


def _with_overrides(cfg: Config, overrides: list[str], source: str) -> Config:
    d = config_to_dict(cfg)
    for text in overrides:
        key, value = parse_override(text)
        node = d
        *parents, leaf = key.split(".")
        for p in parents:
            if not isinstance(node.get(p), dict):
                raise ConfigError(f"--set {key}: '{p}' is not a config section")
            node = node[p]
        node[leaf] = value
    return config_from_dict(d, f"{source} (with --set {' '.join(overrides)})")


def _split_paths(paths: list[str]) -> tuple[list[Path], list[Path]]:
    """Run directories (with config.yaml) first, then a data directory or box files."""
    runs, data = [], []
    for text in paths:
        p = Path(text)
        if not p.exists():
            raise DataError(f"{p}: no such file or directory")
        if p.is_dir() and (p / "config.yaml").is_file():
            if data:
                raise DataError(f"{p}: run directories must come before the data ({data[0]})")
            runs.append(p)
        else:
            data.append(p)
    if not runs:
        raise DataError(f"no training run directory (with config.yaml) among {paths}")
    if not data:
        raise DataError("no test data given: add a box directory or box files after the run directories")
    return runs, data


def _box_files(data: list[Path], cfg: Config, split: str) -> list[Path]:
    from halotrans.data.config import split_seeds
    from halotrans.sims.boxio import box_path

    if len(data) == 1 and data[0].is_dir():
        seeds = split_seeds(getattr(cfg.data, f"{split}_seeds"))
        if not seeds:
            raise DataError(f"the run's data.{split}_seeds is empty: give box files, or --set data.{split}_seeds=...")
        files = [box_path(data[0], s) for s in seeds]
        missing = [str(f) for f in files if not f.is_file()]
        if missing:
            raise DataError(f"{data[0]}: missing {split} box file(s) {missing} (data.{split}_seeds = "
                            f"{getattr(cfg.data, f'{split}_seeds')})")
        return files
    dirs = [p for p in data if p.is_dir()]
    if dirs:
        raise DataError(f"give either one box directory or box files, not {[str(p) for p in data]}")
    return data


def _names(runs: list[Path], models: list[str], given: list[str]) -> list[str]:
    if given:
        if len(given) != len(runs):
            raise ConfigError(f"--name given {len(given)} times for {len(runs)} runs")
        names = list(given)
    else:
        names = [m if models.count(m) == 1 else f"{m} ({r.name})" for m, r in zip(models, runs)]
    if len(set(names)) != len(names):
        raise ConfigError(f"report names must differ, got {names}")
    return names


def _gradcam(name: str, model: torch.nn.Module, box: Path, meta: dict, window: int, n_classes: int,
             layer: str) -> tuple[np.ndarray, np.ndarray, list[int]] | None:
    """Grad-CAM of every halo class on the window at the origin of ``box`` (wrapped if larger)."""
    from halotrans.data.boxes import load_inputs, periodic_crop
    from halotrans.eval.gradcam import grad_cam

    x = periodic_crop(load_inputs(box, meta["inputs"], meta["norm_stats"]), (0, 0, 0), window)
    classes = list(range(1, n_classes))
    try:
        maps = grad_cam(model, x, classes, layer)
    except ValueError as e:
        if layer:
            raise ConfigError(str(e)) from None
        print(f"{name}: Grad-CAM skipped ({e})", file=sys.stderr)
        return None
    return x[0], maps, classes


def run(args: argparse.Namespace) -> int:
    import torch

    from halotrans.data.boxes import check_box_files
    from halotrans.eval.inference import predict_files
    from halotrans.eval.report import write_report
    from halotrans.eval.truth import load_truth
    from halotrans.io import require_cubic, require_finite
    from halotrans.train.checkpoint import load_for_inference

    run_dirs, data = _split_paths(args.paths)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))

    loaded = []
    for rd in run_dirs:
        model, cfg, meta = load_for_inference(rd, args.tag)
        cfg = _with_overrides(cfg, args.overrides, str(rd / "config.yaml")) if args.overrides else cfg
        loaded.append((rd, model, cfg, meta))
    first_cfg = loaded[0][2]
    edges = [float(v) for v in loaded[0][3]["class_edges"]]
    for rd, _, _, meta in loaded:
        if [float(v) for v in meta["class_edges"]] != edges:
            raise ConfigError(f"{rd}: trained with class_edges {meta['class_edges']}, but {run_dirs[0]} with "
                              f"{edges}: one report needs the same classes")
        if int(meta["n_classes"]) != len(edges) + 2:
            raise DataError(f"{rd}: checkpoint has {meta['n_classes']} classes but its class_edges give {len(edges) + 2}")
    split = args.split or first_cfg.eval.split
    files = _box_files(data, first_cfg, split)
    for rd, _, _, meta in loaded:
        check_box_files(files, meta["inputs"])
    truths = [load_truth(f, edges) for f in files]
    n = require_cubic(truths[0].labels.shape, str(files[0]))
    names = _names(run_dirs, [cfg.model.name for _, _, cfg, _ in loaded], args.name)

    predictions: dict[str, list[np.ndarray]] = {}
    gradcams: dict[str, Any] = {}
    runs_meta: dict[str, Any] = {}
    for name, (rd, model, cfg, meta) in zip(names, loaded):
        ev = cfg.eval
        window = int(ev.window or meta.get("img_size") or cfg.data.crop)
        if window > n:
            print(f"{name}: window {window} > box {n}: each box is wrapped periodically to fill it", file=sys.stderr)
        model.to(device)
        t0 = time.perf_counter()
        predictions[name] = [p for _, p in predict_files(
            model, files, meta["inputs"], meta["norm_stats"], window, ev.overlap, ev.batch_size,
            margin=ev.margin, blend=ev.blend, bf16=ev.bf16)]
        for path, p in zip(files, predictions[name]):
            require_finite(p, f"{rd}: probabilities predicted for {path}", "nothing written")
        seconds = time.perf_counter() - t0
        runs_meta[name] = {
            "run_dir": str(rd), "model": cfg.model.name, "step": meta.get("step"), "tag": args.tag or "model.pt",
            "inputs": list(meta["inputs"]), "window": window, "overlap": ev.overlap, "margin": ev.margin,
            "blend": ev.blend, "inference_s": round(seconds, 3), "device": str(device),
        }
        if ev.gradcam:
            cam = _gradcam(name, model, files[0], meta, window, len(edges) + 2, ev.gradcam_layer)
            if cam is not None:
                gradcams[name] = cam
        model.cpu()
        print(f"{name}: {len(files)} box(es) of {n}³ in {seconds:.1f} s ({window}³ windows, overlap {ev.overlap})",
              file=sys.stderr)

    out = Path(args.out or first_cfg.eval.out_dir or run_dirs[0] / "eval")
    result = write_report(out, truths, predictions, edges, tolerance=first_cfg.eval.boundary_tolerance,
                          gradcams=gradcams, meta=runs_meta)
    for name, m in result["models"].items():
        auc = m["auc_mean_halo_classes"]
        print(f"{name}: accuracy {m['accuracy']:.4f}, mean AUC (halo classes) {'-' if auc is None else f'{auc:.4f}'}")
    print(f"report: {out / 'report.md'}")
    return 0


# --- infer ----------------------------------------------------------------------------------------


def add_infer_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", help="training run directory (config.yaml, model.pt or checkpoints/)")
    parser.add_argument("box", help="box file with the run's inputs (/delta, /tidal/T)")
    parser.add_argument("--out", required=True, help="output HDF5 file (written atomically)")
    parser.add_argument("--tag", default=None, help="checkpoint tag instead of the final model.pt")
    parser.add_argument("--sp", type=int, default=1, help="ranks sharing each window as slabs (default 1)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a key of the run's config, e.g. --set eval.overlap=0.25 (repeatable)")


def run_infer(args: argparse.Namespace) -> int:
    from halotrans.eval.infer import infer_box
    from halotrans.parallel.distributed import init_distributed, shutdown

    init_distributed()
    try:
        infer_box(args.run_dir, args.box, args.out, args.tag, args.sp, args.overrides)
    finally:
        shutdown()
    return 0


INFER_HELP = """Full-box inference on every rank of a job -> one HDF5 file (/probs, /classes).

    torchrun --nproc_per_node 4 -m halotrans infer runs/vipr data/boxes/box_0018.h5 --out pred.h5
    torchrun --nproc_per_node 4 -m halotrans infer runs/vipr box.h5 --out pred.h5 --sp 2 --set eval.overlap=0.25

Windows, overlap, margin, blend, batch size and bf16 come from the run's ``eval`` section (``--set eval.*``);
the windows are dealt out to the ranks, each reads only the rows it needs (halotrans/eval/infer.py).
"""
EVALUATE = Command(add_arguments, run)
INFER = Command(add_infer_arguments, run_infer, description=INFER_HELP)
