"""What the reference benchmarks share: budgets, subprocess stages, goals, Markdown, RESULTS.md.

The reference benchmarks (``bench_reference``, ``bench_features``, ``bench_skatr_reference``) are
resumable runs of ``python -m halotrans ...`` commands; ``bench_accuracy`` reads what the
segmentation reference published. Each script keeps what is its own (configs, goals, its report's
text) and takes the rest from here:

- numbers: :func:`to_float`, :func:`fmt`, :func:`fmt_pct`, :func:`clean` (JSON-able copies);
- the wall-clock budget of a training run across restarts, ``<run>/budget.json``:
  :func:`read_ledger`, :func:`write_ledger`, :func:`close_segments`, :func:`used_seconds`,
  :func:`planned_steps`;
- the measured fp32 peak: :func:`dense_peak` (:func:`best_gflops`); the PINOCCHIO binary: :func:`find_pinocchio`;
- subprocess stages: :func:`run_halotrans`, :func:`probe_step_seconds`, :func:`stage_train`
  (to a wall-clock budget), :func:`stage_fixed` (a fixed number of steps), :func:`write_configs`;
- the segmentation stages of the reference and the feature study (their boxes: ``reference_data.py``):
  :func:`stage_predict`, :func:`stage_calibrated`, :func:`training_summary`; the figures their
  goals and tables read (:func:`class_aucs`, :func:`mass_errors`) and the comparison of our
  networks with their peers (:data:`PEERS`, :func:`segmentation_rows`);
- goals in Markdown: :func:`goal_lines`, :func:`goals_sentence`;
- the summary and its publication: :func:`run_header`, :func:`read_notes`, :func:`write_summary`,
  :func:`update_results_block`;
- the command line of a reference run: :func:`reference_cli`.

A benchmark script imports it as a plain module from its own folder (``python
benchmarks/bench_<name>.py`` has that folder on ``sys.path`` already, ``halotrans.benchmark.load``
does not)::

    sys.path.insert(0, str(Path(__file__).resolve().parent))  # harness.py next to this file
    import harness

No benchmark script loads another: what two of them need lives here.
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
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from halotrans.benchmark import REPO, machine, row
from halotrans.config import Config, save_config
from halotrans.data.config import split_seeds
from halotrans.formatting import fixed, jsonable, percent
from halotrans.io import DataError, atomic_path
from halotrans.sims.boxio import box_path

RESULTS_MD = REPO / "benchmarks" / "RESULTS.md"
#: wall-clock seconds of a training process outside its steps (imports, data, DeepSpeed set-up)
SETUP_S = 30.0
#: the no-network segmentation baseline, as named in the reports
BASELINE = "logistic regression"
#: our segmentation network -> its MONAI peer
PEERS = {"vipr": "MONAI UNETR", "copra": "MONAI VNet"}
#: what :func:`halotrans.eval.report.write_report` writes: a segmentation run's published report
SEGMENTATION_REPORT_FILES = ("report.md", "report.json", "roc.png", "slices.png", "confusion.png", "halo_masses.png")


# --- numbers -------------------------------------------------------------------------------------

def to_float(x: float | None) -> float:
    """``x`` as a float; None (a figure that could not be computed) is NaN."""
    return math.nan if x is None else float(x)


def fmt(x: float | None, spec: str = ".4f") -> str:
    """``x`` formatted with ``spec``; "–" if it is missing or not finite (:func:`halotrans.formatting.fixed`)."""
    return fixed(x, spec)


def fmt_pct(x: float | None) -> str:
    """A signed fraction as a percentage with one decimal ("+4.0%"); "–" if missing or not finite."""
    return percent(x, 1)


#: JSON-able copy: numpy scalars to floats/ints, non-finite floats to None
clean = jsonable


def write_json(path: Path, obj: Any, **dumps: Any) -> None:
    """``json.dumps(obj, **dumps)`` to ``path``, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, **dumps), encoding="utf-8")


# --- the wall-clock budget of a training run, across restarts -------------------------------------

def ledger_path(run_dir: Path) -> Path:
    return run_dir / "budget.json"


def read_ledger(run_dir: Path) -> dict | None:
    p = ledger_path(run_dir)
    return json.loads(p.read_text()) if p.is_file() else None


def write_ledger(run_dir: Path, ledger: dict) -> None:
    write_json(ledger_path(run_dir), ledger, indent=1)


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


# --- measured peak ---------------------------------------------------------------------------------

def best_gflops(clock, device: str, fn, flops: float, repeats: int) -> float:
    """GFLOP/s of the fastest of ``repeats`` calls of ``fn`` (after one warm-up), timed by ``clock``."""
    import torch

    best = math.inf
    for _ in range(1 + repeats):
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = clock()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        best = min(best, clock() - t0)
    return flops / best / 1e9


def dense_peak(clock, device: str, repeats: int = 3) -> dict[str, float]:
    """Measured peak GFLOP/s of this process's threads, timed by ``clock``: ``matmul``, a 2048² fp32
    matmul (CUDA: 8192² bf16, the dtype the steps compute in); on the CPU also ``conv``, a 64 -> 64
    channel 5³ fp32 convolution on 32³ voxels. The conv matters on AMD CPUs: PyTorch's matmul is MKL,
    which runs its AVX2 path there, while oneDNN's convolutions use AVX-512 and run faster than it."""
    import torch
    import torch.nn.functional as F

    if device == "cuda":
        a, b = (torch.randn(8192, 8192, device=device, dtype=torch.bfloat16) for _ in range(2))
        return {"matmul": best_gflops(clock, device, lambda: a @ b, 2 * 8192**3, repeats)}
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    x, w = torch.randn(1, 64, 32, 32, 32), torch.randn(64, 64, 5, 5, 5)
    return {"matmul": best_gflops(clock, device, lambda: a @ b, 2 * 2048**3, repeats),
            "conv": best_gflops(clock, device, lambda: F.conv3d(x, w, padding=2), 2 * 64 * 64 * 125 * 32**3, repeats)}


# --- external codes ------------------------------------------------------------------------------

PINOCCHIO_BUILD = "scripts/build_pinocchio.sh PINOCCHIO_SRC PFFT_SRC"


def find_pinocchio() -> str | None:
    """``$PINOCCHIO``, else the binary ``scripts/build_pinocchio.sh`` makes, else ``pinocchio.x`` on PATH."""
    for exe in (os.environ.get("PINOCCHIO"), str(REPO / "build" / "pinocchio" / "bin" / "pinocchio.x"),
                shutil.which("pinocchio.x")):
        if exe and shutil.which(exe):
            return exe
    return None


# --- subprocess stages ---------------------------------------------------------------------------

def run_halotrans(argv: list[str]) -> None:
    """Run ``python -m halotrans <argv>`` (printed first); a failure stops the benchmark."""
    print(f"\n=== python -m halotrans {shlex.join(argv)}", flush=True)
    env = {**os.environ, "DS_ACCELERATOR": os.environ.get("DS_ACCELERATOR", "cpu")}
    rc = subprocess.call([sys.executable, "-m", "halotrans", *argv], cwd=REPO, env=env)
    if rc != 0:
        raise SystemExit(f"reference: `python -m halotrans {shlex.join(argv)}` failed with exit status {rc}; "
                         "fix the cause and run the benchmark again (it resumes)")


def write_configs(cfgs: Mapping[str, Config], stems: Mapping[str, str], work: Path) -> dict[str, Path]:
    """Save each run's config as ``<work>/configs/<stem>.yaml`` (what its commands read); name -> file."""
    files = {}
    for name, cfg in cfgs.items():
        files[name] = work / "configs" / f"{stems[name]}.yaml"
        save_config(cfg, files[name])
    return files


def probe_step_seconds(cfg: Config, config_file: Path, steps: int = 30, skip: int = 10) -> float:
    """Wall-clock seconds per optimiser step of the real training command (DeepSpeed engine, crops read
    and augmented from the boxes, logging): ``steps`` steps in a scratch run directory, timed from
    step ``skip`` on from its metrics.csv. A bare forward/backward/AdamW loop on random tensors
    underestimates the step by ~30-45% on 2 cores, which would end every run before its schedule."""
    import csv
    import tempfile

    (REPO / "runs").mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="probe_", dir=REPO / "runs") as tmp:
        run_halotrans(["train", "--config", str(config_file), "--set", f"train.out_dir={tmp}",
                       "--set", f"train.steps={steps}", "--set", "train.eval_every=0", "--set", f"train.log_every={skip}",
                       "--set", f"train.checkpoint_every={10 * steps}", "--set", "train.time_budget_s=null"])
        with open(Path(tmp) / "metrics.csv", newline="") as f:
            times = {int(r["step"]): float(r["time_s"]) for r in csv.DictReader(f) if r.get("time_s")}
    if skip not in times or steps not in times:
        raise SystemExit(f"reference: the timing probe logged steps {sorted(times)}, not {skip} and {steps}")
    return (times[steps] - times[skip]) / (steps - skip)


def stage_train(name: str, cfg: Config, config_file: Path,
                probe: Callable[[Config, Path], float] | None = None, n_evals: int = 5) -> dict:
    """Train one run within ``train.time_budget_s`` (resuming a killed run); returns its ledger.

    ``probe(cfg, config_file)`` gives the seconds per step that plan ``train.steps`` (default
    :func:`probe_step_seconds`: a short run of the real training command); the run validates
    ``n_evals`` times and checkpoints 8 times over its planned steps.
    """
    from halotrans.train.checkpoint import MODEL_FILE, final_tag, latest_tag, write_model

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
                  "checkpoint_every": max(1, steps // 8), "eval_every": max(1, steps // n_evals), "segments": []}
        print(f"train {name}: probe {step_s:.3f} s/step -> {steps} steps in {budget:g} s", flush=True)
    ledger = close_segments(ledger, checkpoint_time(run_dir))
    left = budget - used_seconds(ledger)
    tag = latest_tag(run_dir)
    if left < 1.0 and tag is not None:  # the budget ran out after the last checkpoint: that is the model
        write_model(run_dir, final_tag(run_dir, tag, cfg.train.keep_best))
    else:
        ledger["segments"].append({"start": time.time(), "end": None})
        write_ledger(run_dir, ledger)
        run_halotrans(["train", "--config", str(config_file), "--resume",
                       "--set", f"train.steps={ledger['steps']}", "--set", f"train.time_budget_s={max(left, 1.0):.1f}",
                       "--set", f"train.checkpoint_every={ledger['checkpoint_every']}",
                       "--set", f"train.eval_every={ledger['eval_every']}"])
        ledger = close_segments(ledger, checkpoint_time(run_dir))
    write_ledger(run_dir, ledger)
    if not (run_dir / MODEL_FILE).is_file():
        raise SystemExit(f"reference: {name} stopped without {run_dir / MODEL_FILE}; run the benchmark again")
    return ledger


def stage_fixed(name: str, cfg: Config, config_file: Path) -> float:
    """Train a fixed-step run unless finished; returns its training wall-clock seconds (recorded in
    ``<run>/wall.json`` when it finishes; a killed run resumes and counts anew)."""
    from halotrans.train.checkpoint import MODEL_FILE

    run_dir = Path(cfg.train.out_dir)
    wall = run_dir / "wall.json"
    if (run_dir / MODEL_FILE).is_file() and wall.is_file():
        print(f"train {name}: {run_dir / MODEL_FILE} (finished)", flush=True)
        return float(json.loads(wall.read_text())["seconds"])
    t0 = time.time()
    run_halotrans(["train", "--config", str(config_file), "--resume"])
    seconds = time.time() - t0
    write_json(wall, {"seconds": seconds})
    return seconds


# --- segmentation: boxes, predictions, calibration, training records ------------------------------

def all_seeds(cfg: Config) -> list[int]:
    d = cfg.data
    return sorted(set(split_seeds(d.train_seeds)) | set(split_seeds(d.val_seeds)) | set(split_seeds(d.test_seeds)))


def files_of(cfg: Config, split: str) -> list[Path]:
    return [box_path(cfg.data.root, s) for s in split_seeds(getattr(cfg.data, f"{split}_seeds"))]


def _predictions_path(cache: Path, seed_file: Path) -> Path:
    return cache / f"{Path(seed_file).stem}.npy"


def stage_predict(name: str, source: Path, files: Sequence[Path], cache: Path) -> tuple[list, float]:
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


def training_summary(run_dir: Path, ledger: dict) -> dict:
    """Parameters, steps (done and planned), median s/step, budget seconds used, processes and the last
    validation loss and accuracy of a finished segmentation run."""
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


def class_aucs(model: dict, n_classes: int) -> list[float]:
    """AUC of every class (one-vs-rest) of a model's metrics; NaN where none could be computed."""
    return [to_float(model["per_class"][c]["auc"]) for c in range(n_classes)]


def mass_errors(model: dict, n_classes: int) -> list[float]:
    """Signed relative error of the total mass of every halo class (class 0, "no halo", left out)."""
    return [to_float(model["per_class"][c]["mass_rel_error"]) for c in range(1, n_classes)]


def segmentation_rows(summary: dict, benchmark: str = "reference") -> list[dict]:
    """Benchmark rows of a segmentation reference summary: per class AUC and |ΔM/M| of vipr and copra
    against their MONAI peer (:data:`PEERS`), with the baseline's AUC in the note."""
    models, names = summary["models"], summary["class_names"]
    k = len(names)
    # v2 (issue 18) reports the raw argmax masses first; the first reference reported calibrated ones
    mass_note = "raw argmax" if summary.get("version", 1) >= 2 else "calibrated on the validation boxes"
    out = []
    for ours, peer in PEERS.items():
        for c, cname in enumerate(names):
            a = models[ours]["per_class"][c]["auc"]
            out.append(row(benchmark, f"{ours} AUC {cname}", a, "", peer, models[peer]["per_class"][c]["auc"],
                           note=f"{BASELINE}: {models[BASELINE]['per_class'][c]['auc']:.4f}"))
        errs, peer_errs = mass_errors(models[ours], k), mass_errors(models[peer], k)
        for cname, e, pe in zip(names[1:], errs, peer_errs):
            out.append(row(benchmark, f"{ours} |ΔM/M| {cname}", abs(e), "", peer, abs(pe), higher_is_better=False,
                           note=mass_note))
    return out


# --- goals and Markdown --------------------------------------------------------------------------

def goal_lines(goals: Sequence[dict], no: str = "**no**") -> list[str]:
    """The goal checks (dicts with ``goal``, ``met``, ``detail``) as a Markdown table; a missed goal
    reads ``no``."""
    return ["| goal | met | detail |", "|---|---|---|",
            *(f"| {g['goal']} | {'yes' if g['met'] else no} | {g['detail']} |" for g in goals)]


def goals_sentence(goals: Sequence[dict]) -> str:
    """The goal checks in one line: "goal: yes; goal: no (detail)"."""
    return "; ".join(f"{g['goal']}: {'yes' if g['met'] else 'no (' + g['detail'] + ')'}" for g in goals)


# --- the summary of a run, and its publication ----------------------------------------------------

def run_header(command: str, overrides: Sequence[str], quick: bool, t_start: float) -> dict:
    """The first keys of a summary: date, machine, quick, the command that reruns it (a quick run's
    overrides are implied by ``--quick``) and the seconds of this invocation."""
    return {"date": time.strftime("%Y-%m-%d %H:%M"), "machine": machine(), "quick": quick,
            "command": command + (" --quick" if quick else "") + "".join(f" --set {o}" for o in overrides if not quick),
            "seconds": time.time() - t_start}


def run_line(summary: dict) -> str:
    """The Markdown line of a summary's :func:`run_header`: machine, command, minutes of this invocation."""
    return (f"Machine: {summary['machine']}. Command: `{summary['command']}` "
            f"({summary['seconds'] / 60:.0f} min this invocation).")


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
    write_json(out / f"{stem}.json", summary, indent=1, ensure_ascii=False)
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


# --- the command line of a reference run ---------------------------------------------------------

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
