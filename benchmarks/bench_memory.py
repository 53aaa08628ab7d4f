"""Memory levers and sharded inference: peak training memory of vipr per crop with and without
activation checkpointing and slab sharding over 2 ranks, against MONAI UNETR; full-box inference.

Network (the paper's, as ``benchmarks/bench_models.py``): 2 input channels -> 7 classes; ViT hidden
512, 8 heads, MLP 2048, 12 blocks, patch 16; decoder base filters 14. One training step = forward,
cross-entropy, backward, AdamW step (for 2 ranks without the gradient all-reduce: a fixed cost that
DeepSpeed's buckets bound, not activation memory).

CPU (fp32, what runs on the 2-core test machine): every (network, crop, levers) runs in a fresh
process of one thread (2 ranks: ``torchrun``, gloo, one thread each, i.e. both cores), one warm-up
step then one timed step; peak = the process's peak resident set (``VmHWM``) at the end minus the
same after the imports
(parameters, gradients, AdamW state, activations), the largest over the ranks. Each peak at the
largest crop is compared with the memory model of ``halotrans.parallel.memory`` (16 B/parameter
+ WORKSPACE × the activations counted on the meta device), which also predicts the largest crop
per lever set on an 80 GB GPU. The 2-rank runs count the bytes sent per step by the halo exchange
and the Ulysses all-to-all (``halotrans.parallel.traffic``) against ``benchmarks/scaling_model.py``,
and the process CPU time per step of vipr is compared with its FLOPs (``scaling_model``) at the
FLOP rate of the smallest crop.
Inference: a 128³ box (quick: 96³) through vipr with ``predict_periodic`` (64³ windows, overlap
0.5, Gaussian blend) against MONAI UNETR with MONAI's ``sliding_window_inference`` on the box padded
circularly by a quarter window (same windows, overlap, Gaussian blend); and vipr through
``sliding_window_inference`` alone, to separate the windowing from the network.

CUDA (when present, the code path for one H100): bf16 autocast; the largest cubic crop (multiple of
64) each lever set trains at (doubling, then bisection until out of memory), and the throughput of
vipr against MONAI UNETR (SDPA in every block) at the largest crop both fit; full-box inference of
a 512³ box with 128³ windows (batch 4), vipr + ``predict_periodic`` against MONAI UNETR +
``sliding_window_inference``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))  # scaling_model.py next to this file
CLASSES = 7
#: lever sets measured: name -> (network, activation checkpointing, slab ranks)
LEVERS = {"vipr": ("vipr", False, 1), "vipr + checkpointing": ("vipr", True, 1),
          "vipr sharded over 2 ranks": ("vipr", False, 2), "vipr + checkpointing, 2 ranks": ("vipr", True, 2),
          "MONAI UNETR": ("monai_unetr", False, 1)}


def build(name: str, crop: int, checkpointing: bool = False):
    from halotrans.models.config import ModelConfig
    from halotrans.models.registry import build_model

    cfg = ModelConfig(name=name, hidden_size=512, depth=12, num_heads=8, mlp_dim=2048, patch_size=16,
                      feature_size=14, activation_checkpointing=checkpointing)
    return build_model(cfg, 2, CLASSES, crop)


# --- one training step, in a fresh process (or one per rank) ---------------------------------------


def probe(spec: dict) -> dict:
    """Peak memory and time of one training step of ``spec`` (model, crop, checkpointing, ranks, device)."""
    import monai.networks.nets  # noqa: F401  (imported before the memory baseline)
    import torch
    import torch.nn.functional as F

    import halotrans.models.vipr  # noqa: F401

    cuda = spec["device"] == "cuda"
    ranks = spec["ranks"]
    sp = None
    if ranks > 1:
        import torch.distributed as dist

        from halotrans.parallel import traffic
        from halotrans.parallel.distributed import init_distributed
        from halotrans.parallel.groups import init_sequence_parallel
        from halotrans.parallel.shard import parallelize, slab_of

        init_distributed()
        sp = init_sequence_parallel(ranks)
    torch.set_num_threads(spec.get("threads") or torch.get_num_threads())
    from halotrans.benchmark import peak_rss

    base = peak_rss()
    device = torch.device(spec["device"])
    n = spec["crop"]
    torch.manual_seed(0)
    model = build(spec["model"], n, spec["checkpointing"]).to(device)
    if sp:
        parallelize(model, sp)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randn(1, 2, n, n, n, device=device)
    y = torch.randint(0, CLASSES, (1, n, n, n), device=device)
    if sp:
        x, y = slab_of(x, sp, 2), slab_of(y, sp, 1)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda):
            logits = model(x)
        loss = F.cross_entropy(logits.float(), y, reduction="sum") / n**3
        loss.backward()
        opt.step()

    step()
    if cuda:
        torch.cuda.synchronize()
    if sp:
        traffic.reset()
    t0, c0 = time.perf_counter(), time.process_time()
    step()
    if cuda:
        torch.cuda.synchronize()
    out = {"step_s": time.perf_counter() - t0, "cpu_s": time.process_time() - c0,
           "params": sum(p.numel() for p in model.parameters())}
    out["peak_bytes"] = (torch.cuda.max_memory_allocated() if cuda
                         else peak_rss() - base)
    if sp:
        sent = {k: float(v) for k, v in traffic.SENT.items()}
        gathered = [None] * ranks
        dist.all_gather_object(gathered, {"peak": out["peak_bytes"], "step_s": out["step_s"], "sent": sent})
        out["peak_bytes"] = max(g["peak"] for g in gathered)
        out["step_s"] = max(g["step_s"] for g in gathered)
        out["sent_bytes"] = gathered[0]["sent"]
        from halotrans.parallel.distributed import shutdown

        shutdown()
        if sp.rank + sp.dp_rank:
            return {}
    return out


def measure(spec: dict) -> dict | None:
    """:func:`probe` in a fresh process (``torchrun`` for several ranks); None if it ran out of memory."""
    env = dict(os.environ, PYTHONPATH=f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    env.setdefault("DS_ACCELERATOR", "cpu" if spec["device"] == "cpu" else "cuda")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "probe.json"
        launcher = ([sys.executable, "-m", "torch.distributed.run", "--standalone",
                     f"--nproc_per_node={spec['ranks']}"] if spec["ranks"] > 1 else [sys.executable])
        proc = subprocess.run([*launcher, __file__, "--probe", json.dumps(spec), str(out)], capture_output=True,
                              text=True, env=env, cwd=REPO, timeout=3600)
        if proc.returncode != 0:
            if "OutOfMemoryError" in proc.stderr or "out of memory" in proc.stderr:
                return None
            raise RuntimeError(f"memory probe {spec} failed:\n{proc.stderr[-3000:]}")
        result = json.loads(out.read_text())
    print(f"  {spec['model']} {spec['crop']}³ ckpt={spec['checkpointing']} ranks={spec['ranks']} {spec['device']}: "
          f"peak {result['peak_bytes'] / 2**20:.0f} MiB, step {result['step_s']:.2f} s", flush=True)
    return result


def fit(sizes: list[int], peaks: list[float]) -> tuple[float, float]:
    """Least squares peak = a + b·N³ → (a bytes, b bytes per voxel)."""
    import numpy as np

    a_mat = np.stack([np.ones(len(sizes)), np.asarray(sizes, dtype=float) ** 3], axis=1)
    a, b = np.linalg.lstsq(a_mat, np.asarray(peaks, dtype=float), rcond=None)[0]
    return float(a), float(b)


# --- CPU --------------------------------------------------------------------------------------------


def cpu_memory_rows(quick: bool) -> list[dict]:
    from scaling_model import VIPR, vipr_profile, vipr_traffic_per_step

    from halotrans.benchmark import row
    from halotrans.models.config import ModelConfig
    from halotrans.parallel.memory import WORKSPACE, Levers, activation_bytes_per_voxel, fixed_bytes
    from halotrans.parallel.memory import largest_crop as largest_crop_model

    crops = [32, 64] if quick else [32, 64, 96, 128]
    levers = {k: v for k, v in LEVERS.items() if not (quick and k == "vipr + checkpointing, 2 ranks")}
    got = {(lever, n): measure({"model": model, "crop": n, "checkpointing": ckpt, "ranks": ranks, "device": "cpu",
                                "threads": 1})
           for n in crops for lever, (model, ckpt, ranks) in levers.items()}
    rows = []
    peer = "MONAI UNETR"
    for n in crops:
        for lever in levers:
            if lever != peer:
                rows.append(row("memory", f"peak train-step memory, {lever}, {n}³ CPU fp32",
                                got[lever, n]["peak_bytes"] / 2**20, "MiB", peer, got[peer, n]["peak_bytes"] / 2**20,
                                higher_is_better=False,
                                note=f"step {got[lever, n]['step_s']:.1f} s vs {got[peer, n]['step_s']:.1f} s wall; "
                                     "per rank for 2 ranks; parameters + gradients + AdamW included"))
    # the memory model: activations counted on the meta device, checked against the measured peaks
    n = crops[-1]
    per_voxel = {}
    for lever, (model, ckpt, ranks) in levers.items():
        cfg = ModelConfig(name=model, **{**VIPR, "activation_checkpointing": ckpt})
        per_voxel[lever] = activation_bytes_per_voxel(cfg, 2, CLASSES, checkpointing=ckpt) / ranks
        res = got[lever, n]
        predicted = fixed_bytes(res["params"], False, 0, ranks) + WORKSPACE * per_voxel[lever] * n**3
        rows.append(row("memory", f"peak memory at {n}³ measured vs memory model, {lever}", res["peak_bytes"] / 2**20,
                        "MiB", "halotrans.parallel.memory (predicted)", predicted / 2**20, higher_is_better=False,
                        note=f"16 B/parameter + {WORKSPACE} x activations counted on the meta device; "
                             "ratio = model/measured"))
    for lever in levers:
        if lever != peer:
            rows.append(row("memory", f"activations stored per voxel (per rank), {lever}", per_voxel[lever], "B/voxel",
                            peer, per_voxel[peer], higher_is_better=False, note="fp32, exact count (meta device)"))
    # what the memory model predicts for one 80 GB GPU in bf16 (the CUDA branch measures it)
    peer_cfg = ModelConfig(name="monai_unetr", **VIPR)
    peer_side = largest_crop_model(peer_cfg, 2, CLASSES, Levers(True, False, 1, 1), 80e9, 1)
    for lever, levers_set in (("vipr", Levers(True, False, 1, 1)), ("vipr + checkpointing", Levers(True, True, 1, 1)),
                              ("vipr + checkpointing, 4 ranks", Levers(True, True, 4, 1))):
        cfg = ModelConfig(name="vipr", **VIPR)
        side = largest_crop_model(cfg, 2, CLASSES, levers_set, 80e9, levers_set.sp, step=32 * levers_set.sp)
        rows.append(row("memory", f"largest training crop predicted for 80 GB GPUs, bf16, {lever}", side, "voxels/side",
                        "MONAI UNETR (predicted, flash attention)", peer_side,
                        note="memory model (meta-device count); not a GPU measurement"))
    # the scaling model: bytes sent (counted) and compute time (FLOPs) against the measurements
    for lever in ("vipr sharded over 2 ranks", "vipr + checkpointing, 2 ranks"):
        if lever not in levers:
            continue
        sent = got[lever, n]["sent_bytes"]
        predicted = vipr_traffic_per_step(n, ranks=2, classes=CLASSES, checkpointing=levers[lever][1])
        for kind in ("halo", "all_to_all"):
            rows.append(row("memory", f"bytes sent per rank per step, {kind}, {lever}, {n}³",
                            sent.get(kind, 0.0) / 2**20, "MiB", "scaling model (SCALING.md)",
                            predicted[kind] / 2**20, higher_is_better=False,
                            note="counted from the tensors sent (forward + backward + recompute)"))
    rate = vipr_profile(crops[0], CLASSES).flops / got["vipr", crops[0]]["cpu_s"]
    for n in crops[1:]:
        rows.append(row("memory", f"CPU seconds per step, vipr {n}³ fp32", got["vipr", n]["cpu_s"], "s",
                        f"FLOPs / rate of {crops[0]}³ (scaling model)", vipr_profile(n, CLASSES).flops / rate,
                        higher_is_better=False,
                        note=f"{vipr_profile(n, CLASSES).flops / 1e9:.0f} GFLOP forward + backward; "
                             f"{rate / 1e9:.1f} GFLOP/s at {crops[0]}³ (process CPU time, 1 thread)"))
    return rows


def box_inference_rows(n: int, window: int, overlap: float, device: str, batch: int) -> list[dict]:
    """vipr + predict_periodic against MONAI UNETR + sliding_window_inference on an n³ box."""
    import torch
    import torch.nn.functional as F
    from monai.inferers import sliding_window_inference

    from halotrans.benchmark import row
    from halotrans.eval.inference import predict_periodic

    torch.manual_seed(0)
    x = torch.randn(2, n, n, n)
    ours = build("vipr", window).to(device).eval()
    peer = build("monai_unetr", window).to(device).eval()
    cuda = device == "cuda"

    def monai_periodic(model) -> torch.Tensor:
        pad = window // 4
        padded = F.pad(x[None].to(device), (pad,) * 6, mode="circular")
        with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda):
            logits = sliding_window_inference(padded, window, batch, model, overlap=overlap, mode="gaussian")
        return F.softmax(logits.float(), 1)[0, :, pad:-pad, pad:-pad, pad:-pad].cpu()

    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda):  # warm-up
        for model in (ours, peer):
            model(torch.zeros(batch, 2, window, window, window, device=device))

    def timed(fn):
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if cuda:
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    t_ours = timed(lambda: predict_periodic(ours, x, window, overlap, batch, bf16=cuda, progress=False))
    t_peer = timed(lambda: monai_periodic(peer))
    t_ours_monai = timed(lambda: monai_periodic(ours))
    where = "H100 bf16" if cuda else "CPU fp32"
    note = f"{window}³ windows, overlap {overlap}, Gaussian blend, batch {batch}"
    return [row("memory", f"full-box inference {n}³, vipr + predict_periodic, {where}", t_ours, "s",
                "MONAI UNETR + sliding_window_inference (circular pad)", t_peer, higher_is_better=False, note=note),
            row("memory", f"full-box inference {n}³, vipr: predict_periodic vs MONAI windows, {where}", t_ours, "s",
                "vipr + sliding_window_inference (circular pad)", t_ours_monai, higher_is_better=False, note=note)]


# --- CUDA -------------------------------------------------------------------------------------------


def largest_crop(model: str, checkpointing: bool, start: int = 128, step: int = 64,
                 limit: int = 1024) -> tuple[int, dict]:
    """Largest multiple of ``step`` whose bf16 training step fits on the GPU: doubling, then bisection."""
    spec = {"model": model, "checkpointing": checkpointing, "ranks": 1, "device": "cuda"}
    best, best_result, n = 0, {}, start
    while n <= limit:
        result = measure({**spec, "crop": n})
        if result is None:
            break
        best, best_result, n = n, result, n * 2
    lo, hi = best, min(n, limit + step)
    while hi - lo > step:
        mid = (lo + hi) // 2 // step * step
        result = measure({**spec, "crop": mid})
        if result is None:
            hi = mid
        else:
            lo, best, best_result = mid, mid, result
    return best, best_result


def cuda_rows(quick: bool) -> list[dict]:
    from halotrans.benchmark import row

    rows = []
    sizes = {}
    for lever, ckpt in (("vipr", False), ("vipr + checkpointing", True), ("MONAI UNETR", False)):
        model = "monai_unetr" if lever == "MONAI UNETR" else "vipr"
        sizes[lever] = largest_crop(model, ckpt, step=128 if quick else 64)
    for lever in ("vipr", "vipr + checkpointing"):
        n, res = sizes[lever]
        rows.append(row("memory", f"largest cubic training crop, {lever}, one GPU bf16", n, "voxels/side",
                        "MONAI UNETR (SDPA)", sizes["MONAI UNETR"][0],
                        note=f"peak {res.get('peak_bytes', 0) / 2**30:.1f} GiB, goal >= 512"))
    common = min(sizes["vipr + checkpointing"][0], sizes["MONAI UNETR"][0])
    if common == 0:
        return rows + box_inference_rows(512, 128, 0.5, "cuda", batch=4)
    ours = measure({"model": "vipr", "crop": common, "checkpointing": True, "ranks": 1, "device": "cuda"})
    peer = measure({"model": "monai_unetr", "crop": common, "checkpointing": False, "ranks": 1, "device": "cuda"})
    rows.append(row("memory", f"train step {common}³ bf16 (largest both fit), vipr + checkpointing",
                    common**3 / ours["step_s"] / 1e6, "Mvox/s", "MONAI UNETR (SDPA)", common**3 / peer["step_s"] / 1e6))
    rows += box_inference_rows(512, 128, 0.5, "cuda", batch=4)
    return rows


def run(quick: bool) -> list[dict]:
    import torch

    if torch.cuda.is_available():
        return cuda_rows(quick)
    return cpu_memory_rows(quick) + box_inference_rows(96 if quick else 128, 64, 0.5, "cpu", batch=1)


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--probe":
        result = probe(json.loads(sys.argv[2]))
        if result:
            Path(sys.argv[3]).write_text(json.dumps(result))
    else:
        from halotrans.benchmark import format_table

        print(format_table(run(quick="--quick" in sys.argv)))
