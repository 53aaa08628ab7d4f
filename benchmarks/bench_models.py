"""Networks: training speed and peak memory of vipr / copra against MONAI UNETR / VNet at equal size.

Configuration (the paper's): 2 input channels -> 7 classes; ViT hidden 512, 8 heads, MLP 2048,
12 blocks, patch 16; decoder / V-Net base filters 14 (MONAI VNet: its fixed 16); batch 1; every
network built by ``halotrans.models.build.build_model`` exactly as the trainer builds it.
One training step = forward, cross-entropy, backward, AdamW step (``fused=True`` for all).

CPU (fp32, all cores): speed: ours and the peer live in one subprocess and train in alternation,
one warm-up step each, then 5 steps each (quick: 3); voxels/s from the fastest step of each, the
one least disturbed by other jobs on a shared machine (medians in the note). Measured twice: on
all cores by wall time, and on one thread by the process's CPU time, which other jobs on the
machine hardly change. Peak memory: every (network, crop) in a fresh subprocess, one
warm-up step and one more step; peak = the peak resident set (``VmHWM``) at the end minus the same after the
imports (parameters, gradients, AdamW state, activations, workspace). The peak-memory curve over
cubic crops 32³..128³ (quick: 32³, 64³) is fitted with a + b·N³ and extrapolated to the largest
crop side (a multiple of 16) whose training step fits in 80 GB (8e10 bytes).

CUDA (when present): bf16 autocast, 128³ × 2 and 256³ × 1, each run in its own subprocess,
``torch.cuda.max_memory_allocated``; vipr and MONAI UNETR eager (torch AdamW, MONAI's own
attention), and both at their best (``torch.compile``, fused AdamW, SDPA/flash attention in
every MONAI block).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
MEMORY_LIMIT = 8e10  # bytes: one 80 GB accelerator
PEERS = {"vipr": "monai_unetr", "copra": "monai_vnet"}


def build(name: str, n: int, flash: bool = True):
    """The network ``name`` at the benchmark configuration for a crop of n³ voxels."""
    from halotrans.models.build import build_model, monai_unetr
    from halotrans.models.config import ModelConfig

    if name == "monai_unetr" and not flash:
        return monai_unetr(2, 7, n, 14, 512, 8, 2048, flash=False)
    cfg = ModelConfig(name=name, hidden_size=512, depth=12, num_heads=8, mlp_dim=2048, patch_size=16,
                      feature_size=14)
    return build_model(cfg, 2, 7, n)


def train_step(model, opt, x, y, cuda: bool):
    """A closure running one training step (bf16 autocast on CUDA)."""
    import torch
    import torch.nn.functional as F

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda):
            loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()

    return step


def measure(names: list[str], n: int, batch: int, steps: int, device: str, best: bool,
            one_thread: bool = False) -> dict:
    """Build the networks ``names``, train them in alternation (``1 + steps`` steps each) in this
    process: median and fastest seconds per step of each, and peak bytes (meaningful for one
    network). ``one_thread``: one CPU thread, timed by this process's CPU time."""
    import time

    import monai.networks.nets  # noqa: F401  (imports before the memory baseline)
    import torch

    import halotrans.models.copra  # noqa: F401
    import halotrans.models.vipr  # noqa: F401
    from halotrans.benchmark import peak_rss

    cuda = device == "cuda"
    if one_thread:
        torch.set_num_threads(1)
    clock = time.process_time if one_thread else time.perf_counter
    base_rss = peak_rss()
    x = torch.randn(batch, 2, n, n, n, device=device)
    y = torch.randint(0, 7, (batch, n, n, n), device=device)
    steps_of = {}
    for name in names:
        torch.manual_seed(0)
        model = build(name, n, flash=best or not cuda).to(device)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=best or not cuda)
        steps_of[name] = train_step(torch.compile(model) if best and cuda else model, opt, x, y, cuda)
    for step in steps_of.values():
        for _ in range(3 if best and cuda else 1):  # warm-up (and compilation)
            step()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    times: dict[str, list[float]] = {name: [] for name in names}
    for _ in range(steps):
        for name, step in steps_of.items():
            t0 = clock()
            step()
            if cuda:
                torch.cuda.synchronize()
            times[name].append(clock() - t0)
    if cuda:
        peak = torch.cuda.max_memory_allocated()
    else:
        peak = peak_rss() - base_rss
    return {"seconds": {k: statistics.median(v) for k, v in times.items()},
            "fastest": {k: min(v) for k, v in times.items()}, "peak_bytes": peak, "voxels": batch * n**3}


def measure_in_subprocess(names: list[str], n: int, batch: int = 1, steps: int = 1, device: str = "cpu",
                          best: bool = True, one_thread: bool = False) -> dict:
    """:func:`measure` in a fresh Python process (clean peak-memory counters)."""
    spec = json.dumps({"names": names, "n": n, "batch": batch, "steps": steps, "device": device, "best": best,
                       "one_thread": one_thread})
    env = dict(os.environ, PYTHONPATH=f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    proc = subprocess.run([sys.executable, __file__, "--worker", spec], capture_output=True, text=True, env=env,
                          cwd=REPO, timeout=3600)
    if proc.returncode != 0:
        raise RuntimeError(f"benchmark worker {spec} failed:\n{proc.stderr[-3000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    times = ", ".join(f"{k} {v:.3f} s/step" for k, v in result["seconds"].items())
    print(f"  {n:4d}³ x{batch} {device}{' best' if best and device == 'cuda' else ''}"
          f"{' 1 thread, CPU time' if one_thread else ''}: {times}; "
          f"peak {result['peak_bytes'] / 2**30:.2f} GiB", flush=True)
    return result


def largest_crop(sizes: list[int], peaks: list[float], limit: float = MEMORY_LIMIT) -> int:
    """Least-squares fit peak = a + b·N³; the largest N (multiple of 16) with a + b·N³ <= limit."""
    import numpy as np

    a_mat = np.stack([np.ones(len(sizes)), np.asarray(sizes, dtype=float) ** 3], axis=1)
    a, b = np.linalg.lstsq(a_mat, np.asarray(peaks, dtype=float), rcond=None)[0]
    side = ((limit - a) / b) ** (1 / 3)
    return int(side // 16 * 16)


def cpu_rows(quick: bool) -> list[dict]:
    from halotrans.benchmark import row

    speed_sizes = [64] if quick else [64, 96]
    curve = [32, 64] if quick else [32, 64, 96, 128]
    rows = []
    for ours, peer in PEERS.items():
        for n in speed_sizes:
            for one_thread in (False, True):
                got = measure_in_subprocess([ours, peer], n, steps=3 if quick else 5, one_thread=one_thread)
                sec, med = got["fastest"], got["seconds"]
                how = "1 thread, CPU time" if one_thread else "all cores, wall"
                rows.append(row("models", f"{ours} train step {n}³ CPU fp32 ({how})", n**3 / sec[ours] / 1e6,
                                "Mvox/s", peer, n**3 / sec[peer] / 1e6,
                                note=f"fastest step {sec[ours]:.2f} vs {sec[peer]:.2f} s "
                                     f"(median {med[ours]:.2f} vs {med[peer]:.2f} s)"))
        peaks = {(name, n): measure_in_subprocess([name], n)["peak_bytes"] for n in curve for name in (ours, peer)}
        for n in curve:
            rows.append(row("models", f"{ours} peak memory {n}³ CPU fp32", peaks[ours, n] / 2**30, "GiB", peer,
                            peaks[peer, n] / 2**30, higher_is_better=False, note="peak resident set (VmHWM) over the import baseline"))
        fits = [largest_crop(curve, [peaks[name, n] for n in curve]) for name in (ours, peer)]
        rows.append(row("models", f"{ours} largest cubic crop in 80 GB (fit)", fits[0], "voxels/side", peer, fits[1],
                        note=f"a + b·N³ fitted to {', '.join(f'{n}³' for n in curve)}; ratio of sides"))
    return rows


def cuda_rows(quick: bool) -> list[dict]:
    from halotrans.benchmark import row

    rows = []
    for n, batch in ([(128, 2)] if quick else [(128, 2), (256, 1)]):
        got = {(name, best): measure_in_subprocess([name], n, batch, steps=5 if quick else 10, device="cuda",
                                                   best=best)
               for name in ("vipr", "monai_unetr") for best in (False, True)}
        speed = {k: v["voxels"] / v["seconds"][k[0]] / 1e6 for k, v in got.items()}
        for best, label in ((False, "eager"), (True, "best")):
            note = "torch.compile + fused AdamW + SDPA in every MONAI block" if best else "torch AdamW, no compile"
            rows.append(row("models", f"vipr train step {n}³x{batch} bf16 {label}", speed["vipr", best], "Mvox/s",
                            f"monai_unetr {label}", speed["monai_unetr", best], note=note))
            rows.append(row("models", f"vipr peak memory {n}³x{batch} bf16 {label}",
                            got["vipr", best]["peak_bytes"] / 2**30, "GiB", f"monai_unetr {label}",
                            got["monai_unetr", best]["peak_bytes"] / 2**30, higher_is_better=False,
                            note="torch.cuda.max_memory_allocated"))
    return rows


def run(quick: bool) -> list[dict]:
    import torch

    rows = cpu_rows(quick)
    if torch.cuda.is_available():
        rows += cuda_rows(quick)
    return rows


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--worker":
        print(json.dumps(measure(**json.loads(sys.argv[2]))))
    else:
        from halotrans.benchmark import format_table

        print(format_table(run(quick="--quick" in sys.argv)))
