"""Networks: training speed at equal work, and peak memory, of vipr / copra against MONAI UNETR / VNet.

Configuration (the paper's): 2 input channels -> 7 classes; ViT hidden 512, 8 heads, MLP 2048,
12 blocks, patch 16; decoder / V-Net base filters 14 (MONAI VNet: its fixed 16); batch 1; zero
padding (MONAI's own form; ``model.padding: circular`` costs both sides the same pad copies); every
network built by ``halotrans.models.registry.build_model`` exactly as the trainer builds it.
One training step = forward, cross-entropy, backward, AdamW step (``fused=True`` for all).

Equal work. Every speed row gives the forward multiply-adds (MACs) per output voxel of both sides
(:mod:`halotrans.models.macs`, counted in the same run) next to voxels/s, and says "equal
configuration" only where the two counts agree (to 0.1 %):

- equal configuration: vipr ``decoder: paper`` against MONAI UNETR, at feature size 14 (the
  paper's) and 16 (a channel count oneDNN handles well; at 10-14 it is slow for MONAI); copra
  ``decoder: paper`` at feature size 16 (MONAI VNet's fixed width) against MONAI VNet;
- less work: the default ``light`` decoders (feature size 14) against the same peers; the MAC ratio
  is printed beside the speed-up, which is split into the part from doing less work (the MAC ratio)
  and the part per unit of work (the ratio of achieved GFLOP/s).

Achieved GFLOP/s = 3 × forward MACs × 2 FLOPs per voxel × voxels/s (a backward pass ≈ 2 forward
passes; norms, activations and the optimizer are not counted), and its fraction of the "measured
peak": timed in the same process, on the same threads and with the same clock as the steps (the
best of 3 runs before and 3 after them), not a datasheet figure: the faster of a 2048² fp32 matmul
and a 64-channel 5³ fp32 convolution on 32³ voxels (CUDA: an 8192² bf16 matmul). The matmul alone
is not a peak on an AMD CPU: PyTorch's matmul is MKL, which takes its AVX2 path there (96 GFLOP/s
on one thread of the 2-core EPYC), while oneDNN's convolutions use AVX-512 (up to ~125 GFLOP/s),
and the networks' own 5³ convolutions beat the matmul.
Time-to-accuracy (the recommended networks against their peer's final validation loss) is the
segmentation reference run's job (``python -m halotrans.benchmark reference``): a loss curve costs
minutes per network, not seconds.

CPU (fp32): speed: the networks of a group live in one subprocess and train in alternation, one
warm-up step each, then 5 steps each; voxels/s from the fastest step of each, the one least
disturbed by other jobs on a shared machine (medians in the note). 64³ crops. Measured twice: on one
thread by the process's CPU time, which other jobs on the machine hardly change (the figure to
quote), and on all cores by wall time (3 steps each), which on a shared machine also measures the
neighbours: two OpenMP threads wait at every barrier for whichever was descheduled. Peak memory:
every (network, crop) in a fresh subprocess on one thread, one warm-up step and one more step;
peak = the peak resident set (``VmHWM``) at the end minus the same after the imports (parameters,
gradients, AdamW state, activations, workspace). The peak-memory curve over cubic crops 32³, 64³, 96³ is fitted with
a + b·N³ and extrapolated to the largest crop side (a multiple of 16) whose training step fits in
80 GB (8e10 bytes). ``--quick`` (about a minute of CPU): speed on one thread only, at 32³ with 3
steps each, and no memory rows (``python -m halotrans.benchmark memory`` has them); at 32³ the
MACs per voxel are those of 64³ (attention aside), but more of MONAI's convolutions fall to PyTorch's
slow im2col kernel, which vipr and copra avoid (:mod:`halotrans.models.cpu_conv`): quote the 64³ rows.

CUDA (when present): bf16 autocast, 128³ × 2 and 256³ × 1, each run in its own subprocess,
``torch.cuda.max_memory_allocated``; vipr (light and paper) and MONAI UNETR eager (torch AdamW,
MONAI's own attention), and all at their best (``torch.compile``, fused AdamW, SDPA/flash attention
in every MONAI block).
"""

from __future__ import annotations

import json
import math
import os
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))  # harness.py next to this file
from harness import dense_peak  # noqa: E402

MEMORY_LIMIT = 8e10  # bytes: one 80 GB accelerator
#: network label -> (model.name, overrides of the paper configuration in :func:`build`)
NETWORKS = {
    "vipr": ("vipr", {}),
    "vipr paper": ("vipr", {"decoder": "paper"}),
    "monai_unetr": ("monai_unetr", {}),
    "vipr paper w16": ("vipr", {"decoder": "paper", "feature_size": 16}),
    "monai_unetr w16": ("monai_unetr", {"feature_size": 16}),
    "copra": ("copra", {}),
    "copra paper w16": ("copra", {"decoder": "paper", "feature_size": 16}),
    "monai_vnet": ("monai_vnet", {}),
}
#: (ours, peer) speed comparisons; each pair is timed in one process (its group)
COMPARISONS = [("vipr paper", "monai_unetr"), ("vipr", "monai_unetr"), ("vipr paper w16", "monai_unetr w16"),
               ("copra paper w16", "monai_vnet"), ("copra", "monai_vnet")]
#: networks timed together in one process, in alternation
GROUPS = [["vipr paper", "vipr", "monai_unetr"], ["vipr paper w16", "monai_unetr w16"],
          ["copra paper w16", "copra", "monai_vnet"]]
#: (ours, peer) peak-memory comparisons
MEMORY_PAIRS = [("vipr", "monai_unetr"), ("vipr paper", "monai_unetr"), ("copra", "monai_vnet"),
                ("copra paper w16", "monai_vnet")]
EQUAL = 1e-3  # relative MAC difference below which two networks do the same work


def build(label: str, n: int, flash: bool = True):
    """The network ``label`` of :data:`NETWORKS` at the benchmark configuration for a crop of n³ voxels."""
    from halotrans.models.config import ModelConfig
    from halotrans.models.monai_peers import monai_unetr
    from halotrans.models.registry import build_model

    name, overrides = NETWORKS[label]
    cfg = ModelConfig(name=name, hidden_size=512, depth=12, num_heads=8, mlp_dim=2048, patch_size=16,
                      **({"feature_size": 14} | overrides))
    if name == "monai_unetr" and not flash:
        return monai_unetr(2, 7, n, cfg.feature_size, 512, 8, 2048, flash=False)
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
            one_thread: bool = False, count: bool = True) -> dict:
    """Build the networks ``names`` (labels of :data:`NETWORKS`), count their forward MACs per voxel,
    train them in alternation (``1 + steps`` steps each) in this process: median and fastest seconds
    per step of each, peak bytes (meaningful for one network) and the measured peak GFLOP/s
    (:func:`dense_peak`, the best before and after the steps). ``one_thread``: one CPU thread, timed by this process's CPU time.
    ``count=False`` skips the MAC count and the peak (peak-memory runs)."""
    import time

    import monai.networks.nets  # noqa: F401  (imports before the memory baseline)
    import torch

    import halotrans.models.copra  # noqa: F401
    import halotrans.models.vipr  # noqa: F401
    from halotrans.benchmark import peak_rss
    from halotrans.models.macs import forward_macs_per_voxel

    cuda = device == "cuda"
    if one_thread:
        torch.set_num_threads(1)
    clock = time.process_time if one_thread else time.perf_counter
    base_rss = peak_rss()
    x = torch.randn(batch, 2, n, n, n, device=device)
    y = torch.randint(0, 7, (batch, n, n, n), device=device)
    steps_of, macs = {}, {}
    for name in names:
        torch.manual_seed(0)
        model = build(name, n, flash=best or not cuda).to(device)
        macs[name] = forward_macs_per_voxel(model, 2, n) if count else math.nan
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=best or not cuda)
        steps_of[name] = train_step(torch.compile(model) if best and cuda else model, opt, x, y, cuda)
    peaks = [dense_peak(clock, device) if count else {}]
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
    peaks.append(dense_peak(clock, device) if count else {})
    return {"seconds": {k: statistics.median(v) for k, v in times.items()},
            "fastest": {k: min(v) for k, v in times.items()}, "peak_bytes": peak, "voxels": batch * n**3,
            "macs": macs, "peak_gflops": max((v for p in peaks for v in p.values()), default=math.nan),
            "peaks": {k: max(p[k] for p in peaks) for k in peaks[0]}}


def measure_in_subprocess(names: list[str], n: int, batch: int = 1, steps: int = 1, device: str = "cpu",
                          best: bool = True, one_thread: bool = False, count: bool = True) -> dict:
    """:func:`measure` in a fresh Python process (clean peak-memory counters)."""
    spec = json.dumps({"names": names, "n": n, "batch": batch, "steps": steps, "device": device, "best": best,
                       "one_thread": one_thread, "count": count})
    env = dict(os.environ, PYTHONPATH=f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    proc = subprocess.run([sys.executable, __file__, "--worker", spec], capture_output=True, text=True, env=env,
                          cwd=REPO, timeout=3600)
    if proc.returncode != 0:
        raise RuntimeError(f"benchmark worker {spec} failed:\n{proc.stderr[-3000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    times = ", ".join(f"{k} {v:.3f} s/step" + (f" ({result['macs'][k] / 1e3:.1f}k MACs/voxel)" if count else "")
                      for k, v in result["seconds"].items())
    print(f"  {n:4d}³ x{batch} {device}{' best' if best and device == 'cuda' else ''}"
          f"{' 1 thread, CPU time' if one_thread else ''}: {times}; "
          + ("measured peak " + ", ".join(f"{k} {v:.1f}" for k, v in result["peaks"].items()) + " GFLOP/s; "
             if count else "")
          + f"peak {result['peak_bytes'] / 2**30:.2f} GiB", flush=True)
    return result


def gflops(macs_per_voxel: float, voxels_per_second: float) -> float:
    """Achieved GFLOP/s of training: forward + backward ≈ 3 forward passes, 2 FLOPs per multiply-add."""
    return 3 * 2 * macs_per_voxel * voxels_per_second / 1e9


def work_label(ours_macs: float, peer_macs: float) -> str:
    """``equal configuration`` where the forward MACs per voxel agree to :data:`EQUAL`, else ``less work`` /
    ``more work`` with the ratio."""
    ratio = ours_macs / peer_macs
    if abs(ratio - 1) < EQUAL:
        return "equal configuration"
    return f"{'less' if ratio < 1 else 'more'} work ({ratio:.2f}× the MACs)"


def speed_row(ours: str, peer: str, got: dict, where: str, peak_name: str) -> dict:
    """The speed row of ``ours`` against ``peer`` from one :func:`measure` result ``got`` holding both:
    Mvox/s of the fastest step; MACs per voxel, achieved GFLOP/s, fraction of the measured peak
    and (where the work differs) the split of the speed-up in the note and as extra keys."""
    from halotrans.benchmark import row

    sec, med, macs, peak = got["fastest"], got["seconds"], got["macs"], got["peak_gflops"]
    vox = {k: got["voxels"] / sec[k] for k in (ours, peer)}
    flops = {k: gflops(macs[k], vox[k]) for k in (ours, peer)}
    label = work_label(macs[ours], macs[peer])
    speedup = vox[ours] / vox[peer]
    note = (f"forward MACs/voxel {macs[ours] / 1e3:.1f}k vs {macs[peer] / 1e3:.1f}k; "
            f"{flops[ours]:.1f} vs {flops[peer]:.1f} GFLOP/s = {flops[ours] / peak:.0%} vs {flops[peer] / peak:.0%} "
            f"of the {peak_name} {peak:.0f} GFLOP/s")
    if label != "equal configuration":
        note = (f"{label.split(' (')[0]}: speed-up {speedup:.2f}× = {macs[peer] / macs[ours]:.2f}× from the MAC "
                f"ratio × {flops[ours] / flops[peer]:.2f}× per unit of work; " + note)
    note += f"; fastest step {sec[ours]:.2f} vs {sec[peer]:.2f} s (median {med[ours]:.2f} vs {med[peer]:.2f} s)"
    r = row("models", f"{ours} train step, {label}, {where}", vox[ours] / 1e6, "Mvox/s", peer, vox[peer] / 1e6,
            note=note)
    r.update(macs_per_voxel=macs[ours], peer_macs_per_voxel=macs[peer], gflops=flops[ours], peer_gflops=flops[peer],
             peak_fraction=flops[ours] / peak, peer_peak_fraction=flops[peer] / peak, measured_peak_gflops=peak,
             work=label, per_work_ratio=flops[ours] / flops[peer])
    return r


def largest_crop(sizes: list[int], peaks: list[float], limit: float = MEMORY_LIMIT) -> int:
    """Least-squares fit peak = a + b·N³; the largest N (multiple of 16) with a + b·N³ <= limit."""
    import numpy as np

    a_mat = np.stack([np.ones(len(sizes)), np.asarray(sizes, dtype=float) ** 3], axis=1)
    a, b = np.linalg.lstsq(a_mat, np.asarray(peaks, dtype=float), rcond=None)[0]
    side = ((limit - a) / b) ** (1 / 3)
    return int(side // 16 * 16)


def cpu_rows(quick: bool) -> list[dict]:
    from halotrans.benchmark import row

    n = 32 if quick else 64
    load = os.getloadavg()
    rows = []
    for one_thread in (True,) if quick else (True, False):
        how = "1 thread, CPU time" if one_thread else "all cores, wall"
        got = {}
        for group in GROUPS:
            steps = 3 if quick or not one_thread else 5
            result = measure_in_subprocess(group, n, steps=steps, one_thread=one_thread)
            got |= {name: result for name in group}
        results = [got[group[0]] for group in GROUPS]
        kernels = {k: max(r["peaks"][k] for r in results) for k in results[0]["peaks"]}
        each = ", ".join(f"{r['peak_gflops']:.1f}" for r in results)
        rows.append(row("models", f"measured peak, CPU fp32 ({how})", max(kernels.values()), "GFLOP/s",
                        note=f"the faster of a 2048² matmul ({kernels['matmul']:.1f}) and a 64-channel 5³ conv "
                             f"on 32³ ({kernels['conv']:.1f}), best before and after the steps in each of the "
                             f"{len(GROUPS)} timing processes ({each}); each row's fraction uses its own process's figure; load average {load[0]:.1f} at "
                             f"the start (shared machine)"))
        for ours, peer in COMPARISONS:
            rows.append(speed_row(ours, peer, got[ours], f"{n}³ CPU fp32 ({how})", "measured peak"))
    if quick:
        return rows
    curve = [32, 64, 96]
    peaks = {(name, m): measure_in_subprocess([name], m, count=False, one_thread=True)["peak_bytes"]
             for m in curve for name in dict.fromkeys(x for pair in MEMORY_PAIRS for x in pair)}
    for ours, peer in MEMORY_PAIRS:
        for m in curve:
            rows.append(row("models", f"{ours} peak memory {m}³ CPU fp32", peaks[ours, m] / 2**30, "GiB", peer,
                            peaks[peer, m] / 2**30, higher_is_better=False,
                            note="peak resident set (VmHWM) over the import baseline"))
        fits = [largest_crop(curve, [peaks[name, m] for m in curve]) for name in (ours, peer)]
        rows.append(row("models", f"{ours} largest cubic crop in 80 GB (fit)", fits[0], "voxels/side", peer, fits[1],
                        note=f"a + b·N³ fitted to {', '.join(f'{m}³' for m in curve)}; ratio of sides"))
    return rows


def cuda_rows(quick: bool) -> list[dict]:
    from halotrans.benchmark import row

    rows = []
    for n, batch in ([(128, 2)] if quick else [(128, 2), (256, 1)]):
        got = {(name, best): measure_in_subprocess([name], n, batch, steps=5 if quick else 10, device="cuda",
                                                   best=best)
               for name in ("vipr", "vipr paper", "monai_unetr") for best in (False, True)}
        for best, label in ((False, "eager"), (True, "best")):
            note = "torch.compile + fused AdamW + SDPA in every MONAI block" if best else "torch AdamW, no compile"
            for ours in ("vipr paper", "vipr"):
                # one process per network: both fractions use the larger of the two processes' peaks
                pair = {"voxels": got[ours, best]["voxels"], "peak_gflops": max(
                    got[ours, best]["peak_gflops"], got["monai_unetr", best]["peak_gflops"])} | {
                    key: {ours: got[ours, best][key][ours], "monai_unetr": got["monai_unetr", best][key]["monai_unetr"]}
                    for key in ("fastest", "seconds", "macs")}
                r = speed_row(ours, "monai_unetr", pair, f"{n}³x{batch} bf16 {label}", "measured peak (bf16 matmul)")
                r["peer"], r["note"] = f"monai_unetr {label}", f"{note}; {r['note']}"
                rows.append(r)
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
