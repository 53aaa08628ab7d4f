"""The scaling model of ``benchmarks/SCALING.md``: compute and communication of one vipr training step
sharded over R ranks (slabs + Ulysses attention), from the network itself.

The network is built on PyTorch's ``meta`` device (shapes only, no memory) at the crop asked for:
``torch.utils.flop_counter`` counts the FLOPs of a forward + backward pass, and forward hooks list
every stride-1 convolution that exchanges halos (its input channels, the plane size H·W at its
level and its halo width). From these, per rank and step:

* compute: FLOPs / R (convolutions, MLPs and attention all split evenly over the slabs / heads);
* halo exchange: each conv sends ``width`` rows of its input, C·H·W values per row, to each of its
  (one or two) neighbours, forward and (unless its input is the data, the stem) backward:
  independent of R;
* Ulysses all-to-all: q, k, v and the output, B·(L/R)·K values each, of which (R−1)/R leave the
  rank, forward and backward (and again in the recompute with activation checkpointing), per block;
* gradient all-reduce (ring, over all dp·sp ranks: DeepSpeed sums the SP ranks' partial gradients
  and averages over the DP groups): 2·(R−1)/R × parameters × bytes, not overlapped with the
  backward pass (DeepSpeed overlaps it in buckets: an upper bound).

    python benchmarks/scaling_model.py            # the tables of SCALING.md
"""

from __future__ import annotations

import functools
import sys
from dataclasses import dataclass

#: the paper's vipr, as in bench_models / bench_memory
VIPR = dict(hidden_size=512, depth=12, num_heads=8, mlp_dim=2048, patch_size=16, feature_size=14)
CLASSES = 7


@dataclass(frozen=True)
class Profile:
    """One training step of vipr at ``crop``³ (batch 1), unsharded."""

    crop: int
    flops: float  # forward + backward
    attention_flops: float  # the part in q·kᵀ and softmax·v
    vit_flops: float  # the ViT blocks' part (attention and linear layers), recomputed under checkpointing
    halo_values: float  # Σ over halo convs of width · C_in · H · W (values one neighbour gets, forward)
    halo_grad_values: float  # the same for the convs whose input needs a gradient (all but the stem's)
    tokens: int
    hidden: int
    depth: int
    params: int


@functools.lru_cache(maxsize=None)
def vipr_profile(crop: int, classes: int = CLASSES) -> Profile:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from halotrans.models.config import ModelConfig
    from halotrans.models.registry import build_model

    convs = []
    with torch.device("meta"):
        model = build_model(ModelConfig(name="vipr", **VIPR), 2, classes, crop)
        x = torch.randn(1, 2, crop, crop, crop)

    def record(module, args, _out):
        k = module.kernel_size[0]
        if module.stride[0] == 1 and k > 1:
            _, c, _, h, w = args[0].shape
            convs.append((k // 2 * c * h * w, args[0].requires_grad))

    for m in model.modules():
        if isinstance(m, torch.nn.Conv3d):
            m.register_forward_hook(record)
    with FlopCounterMode(display=False) as counter:
        model(x).float().sum().backward()
    counts = counter.get_flop_counts()["Global"]
    attention = sum(v for op, v in counts.items() if "bmm" in str(op))
    vit_flops = sum(v for op, v in counts.items() if "mm" in str(op))
    vit = model.vit
    return Profile(crop, float(counter.get_total_flops()), float(attention), float(vit_flops),
                   float(sum(v for v, _ in convs)), float(sum(v for v, grad in convs if grad)), vit.num_patches,
                   vit.hidden_size, vit.depth, sum(p.numel() for p in model.parameters()))


def vipr_traffic_per_step(crop: int, ranks: int, classes: int = CLASSES, checkpointing: bool = False,
                          itemsize: int = 4) -> dict[str, float]:
    """Bytes the busiest rank sends per training step: ``halo`` and ``all_to_all`` (slabs of a crop)."""
    p = vipr_profile(crop, classes)
    if ranks == 1:
        return {"halo": 0.0, "all_to_all": 0.0}
    neighbours = min(2, ranks - 1)  # a crop is not periodic: the end slabs have one neighbour
    halo = neighbours * (p.halo_values + p.halo_grad_values) * itemsize  # forward + backward
    passes = 4 + 4 + (4 if checkpointing else 0)  # q, k, v, out: forward, backward, recompute
    a2a = passes * p.depth * (p.tokens // ranks) * p.hidden * (ranks - 1) / ranks * itemsize
    return {"halo": halo, "all_to_all": a2a}


@dataclass(frozen=True)
class Machine:
    """Per-GPU rates: dense bf16 FLOP/s reached, link bandwidths per direction (bytes/s)."""

    flops: float = 400e12  # H100 SXM: ~40 % of the 989 TFLOP/s bf16 peak for convs + attention
    nvlink: float = 450e9  # inside a node (NVLink 4, 900 GB/s both directions)
    network: float = 25e9  # between nodes: one 200 Gb/s InfiniBand NDR port per GPU
    gpus_per_node: int = 4


def step_time(crop: int, sp: int, nodes: int, machine: Machine = Machine(), checkpointing: bool = True,
              itemsize: int = 2) -> dict[str, float]:
    """Seconds per step of each part (not overlapped) with one crop per SP group of ``sp`` consecutive
    ranks and data parallelism over the groups; ``throughput`` in voxels/s over the whole job."""
    p = vipr_profile(crop)
    world = nodes * machine.gpus_per_node
    if world % sp or sp > world:
        raise ValueError(f"sp={sp} does not divide {world} GPUs")
    dp = world // sp
    gpn = machine.gpus_per_node
    traffic = vipr_traffic_per_step(crop, sp, checkpointing=checkpointing, itemsize=itemsize)
    # slabs of consecutive ranks: a group wider than a node has a slab boundary on the network
    halo = traffic["halo"] / (machine.nvlink if sp <= gpn else machine.network)
    remote = max(0, sp - gpn) / max(1, sp - 1)  # share of the all-to-all that leaves the node
    a2a = traffic["all_to_all"] * ((1 - remote) / machine.nvlink + remote / machine.network)
    compute = (p.flops + (p.vit_flops / 3 if checkpointing else 0.0)) / sp / machine.flops
    # DeepSpeed reduces gradients over all ranks (the SP ranks' partial gradients are summed too)
    grad_link = machine.network if world > gpn else machine.nvlink
    allreduce = 2 * (world - 1) / world * p.params * itemsize / grad_link
    total = compute + halo + a2a + allreduce
    return {"compute": compute, "halo": halo, "all_to_all": a2a, "allreduce": allreduce, "total": total,
            "throughput": dp * crop**3 / total}


def main() -> int:
    m = Machine()
    print(f"machine: {m}\n")
    print("| crop | FLOPs/step | attention share | halo values to one neighbour | tokens | parameters |")
    print("|---|---|---|---|---|---|")
    for crop in (128, 256, 512, 1024):
        p = vipr_profile(crop)
        print(f"| {crop}³ | {p.flops / 1e12:.1f} T | {p.attention_flops / p.flops:.0%} | "
              f"{p.halo_values / 1e6:.1f} M | {p.tokens} | {p.params / 1e6:.1f} M |")
    print("\none crop per SP group, data parallel over the groups (bf16, checkpointing; seconds per step)\n")
    print("| crop | sp | nodes | GPUs | compute | halo | all-to-all | grad all-reduce | Mvox/s | efficiency |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for crop, sp in ((256, 1), (512, 4), (1024, 8)):
        base = None
        for nodes in (1, 2, 4, 8, 16, 32, 64):
            if nodes * m.gpus_per_node < sp:
                continue
            t = step_time(crop, sp, nodes, m)
            per_node = t["throughput"] / nodes
            base = base or per_node
            print(f"| {crop}³ | {sp} | {nodes} | {nodes * m.gpus_per_node} | {t['compute']:.3g} | {t['halo']:.2g} | "
                  f"{t['all_to_all']:.2g} | {t['allreduce']:.2g} | {t['throughput'] / 1e6:.0f} | "
                  f"{per_node / base:.0%} |")
    print("\nstrong scaling of one 512³ crop over sp ranks (Ulysses: sp <= 8 heads)\n")
    print("| sp | nodes | compute | halo | all-to-all | step | speed-up |")
    print("|---|---|---|---|---|---|---|")
    first = None
    for sp in (1, 2, 4, 8):
        nodes = max(1, sp // m.gpus_per_node)
        t = step_time(512, sp, nodes, m)
        step = t["compute"] + t["halo"] + t["all_to_all"]
        first = first or step
        print(f"| {sp} | {nodes} | {t['compute']:.3g} | {t['halo']:.2g} | {t['all_to_all']:.2g} | {step:.3g} | "
              f"{first / step:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
