"""Memory model of a training step, and the choice of memory levers for a crop size.

Per rank, a training step holds:

* fixed: weights, gradients and AdamW state, bytes per parameter: fp32 4 + 4 + 8; bf16 (DeepSpeed)
  2 (weights) + 4 (fp32 gradient accumulation) + 4 (fp32 master) + 8 (Adam); ZeRO-1 splits the
  master weights and Adam state over all ranks, ZeRO-2 also the gradients, ZeRO-3 also the weights;
* activations: the tensors autograd stores for the backward pass, counted exactly by running the
  network once on PyTorch's ``meta`` device (no memory, no compute) under
  ``saved_tensors_hooks`` at a reference crop of 4³ patches (bytes per voxel; with flash / memory-
  efficient attention everything scales with the voxels), divided by ``sp`` for slab sharding,
  times :data:`WORKSPACE` for the transient tensors of the backward pass (measured on CPU:
  ``benchmarks/bench_memory.py``).

Levers, cheapest first: bf16 (on GPUs it is also faster), activation checkpointing of the ViT
blocks (recomputes the ViT forward: +~1/3 of the ViT's FLOPs), slab sharding over ``sp`` ranks of a
node (``train.sp``; halo and all-to-all traffic ≪ compute within a node, ``benchmarks/SCALING.md``),
then over nodes; ZeRO-3 only when the fixed part would take more than a quarter of the device.

    python -m halotrans.parallel.memory --crop 512 --device-gib 80 --gpus 4     # table and choice
    plan = plan_levers(ModelConfig(name="vipr"), 2, 7, crop=512, device_bytes=80 * 2**30, world=4)
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass

import torch

from halotrans.models.registry import MODELS, build_model

#: peak activation memory / stored activations (transient tensors of the backward pass), measured
#: on CPU for vipr at 96³-128³ (1.54-1.56, benchmarks/bench_memory.py)
WORKSPACE = 1.5
#: device memory not available to tensors (CUDA context, cuDNN / cuBLAS workspaces), bytes
RESERVED = 2 * 2**30


@dataclass(frozen=True)
class Levers:
    bf16: bool
    checkpointing: bool
    sp: int
    zero_stage: int

    def settings(self) -> str:
        """The config overrides that apply these levers."""
        return (f"--set train.bf16={str(self.bf16).lower()} --set model.activation_checkpointing="
                f"{str(self.checkpointing).lower()} --set train.sp={self.sp} --set train.zero_stage={self.zero_stage}")


@dataclass(frozen=True)
class Plan:
    levers: Levers
    fixed_bytes: float
    activation_bytes: float
    fits: bool

    @property
    def bytes_per_rank(self) -> float:
        return self.fixed_bytes + self.activation_bytes


def _config(model_cfg, **changes):
    from dataclasses import replace

    return replace(model_cfg, **changes)


_CACHE: dict[tuple, float] = {}


def _saved_bytes_per_voxel(model_cfg, in_channels: int, n_classes: int, bf16: bool) -> float:
    key = ("saved", repr(model_cfg), in_channels, n_classes, bf16)
    if key not in _CACHE:
        _CACHE[key] = _count_saved_bytes(model_cfg, in_channels, n_classes, bf16)
    return _CACHE[key]


def saved_bytes(model: torch.nn.Module, x: torch.Tensor) -> int:
    """Bytes of the distinct storages (parameters excluded) autograd keeps for the backward pass of
    ``model(x)`` in training mode; works on the ``meta`` device."""
    params = {p.untyped_storage()._cdata for p in model.parameters()}
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage._cdata not in params:
            saved[storage._cdata] = storage.nbytes()
        return t

    model.train()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(x)
    return sum(saved.values())


def _count_saved_bytes(model_cfg, in_channels: int, n_classes: int, bf16: bool) -> float:

    patch = MODELS.get(model_cfg.name).token_patch(model_cfg)
    crop = 4 * patch[0] if patch else 64  # 4³ tokens, or 4 halvings' worth of a CNN
    dtype = torch.bfloat16 if bf16 else torch.float32
    with torch.device("meta"):
        model = build_model(model_cfg, in_channels, n_classes, crop).to(dtype)
        x = torch.empty(1, in_channels, crop, crop, crop, dtype=dtype)
    return saved_bytes(model, x) / crop**3


def activation_bytes_per_voxel(model_cfg, in_channels: int, n_classes: int, bf16: bool = False,
                               checkpointing: bool = False) -> float:
    """Bytes autograd stores for the backward pass per voxel of the crop (one sample, one rank)."""
    cfg = _config(model_cfg, activation_checkpointing=checkpointing) if hasattr(model_cfg, "activation_checkpointing") \
        else model_cfg
    return _saved_bytes_per_voxel(cfg, in_channels, n_classes, bf16)


def parameter_count(model_cfg, in_channels: int, n_classes: int, crop: int) -> int:
    """Parameters of the network at ``crop`` (vipr's learnable position embedding grows with it)."""

    key = ("params", repr(model_cfg), in_channels, n_classes, crop)
    if key not in _CACHE:
        with torch.device("meta"):
            _CACHE[key] = sum(p.numel() for p in build_model(model_cfg, in_channels, n_classes, crop).parameters())
    return int(_CACHE[key])


def fixed_bytes(params: int, bf16: bool, zero_stage: int, world: int) -> float:
    """Bytes per rank for weights, gradients and optimizer state (see the module docstring)."""
    weights, grads, master_adam = (2, 4, 12) if bf16 else (4, 4, 8)
    split = {0: (1, 1, 1), 1: (1, 1, world), 2: (1, world, world), 3: (world, world, world)}[zero_stage]
    return params * (weights / split[0] + grads / split[1] + master_adam / split[2])


def training_bytes(model_cfg, in_channels: int, n_classes: int, crop: int, levers: Levers, world: int,
                   batch: int = 1) -> tuple[float, float]:
    """(fixed, activation) bytes per rank of one training step of ``batch`` crops of ``crop``³."""
    per_voxel = activation_bytes_per_voxel(model_cfg, in_channels, n_classes, levers.bf16, levers.checkpointing)
    fixed = fixed_bytes(parameter_count(model_cfg, in_channels, n_classes, crop), levers.bf16, levers.zero_stage, world)
    return fixed, WORKSPACE * per_voxel * batch * crop**3 / levers.sp


def candidate_levers(model_cfg, crop: int, world: int, bf16: bool) -> list[Levers]:
    """Lever sets in the order they are tried: checkpointing (networks that declare it) before sharding,
    sharding by powers of two up to the ranks while the network's slabs split (``slab_split_error``:
    heads and patch rows for vipr, halvings and halos for copra)."""
    network = MODELS.get(model_cfg.name)
    out = []
    sp = 1
    while sp <= world and world % sp == 0 and (sp == 1 or network.slab_split_error(model_cfg, crop, sp) is None):
        for ckpt in ((False, True) if network.checkpointable else (False,)):
            out.append(Levers(bf16, ckpt, sp, 1))
        sp *= 2
    return out


def plan_levers(model_cfg, in_channels: int, n_classes: int, crop: int, device_bytes: float, world: int,
                bf16: bool = True) -> Plan:
    """The first lever set of :func:`candidate_levers` whose step fits ``device_bytes`` per rank
    (ZeRO-3 instead of ZeRO-1 when the fixed part would exceed a quarter of it); if none fits,
    the one that needs the least memory, with ``fits=False``."""
    usable = device_bytes - RESERVED
    best = None
    for levers in candidate_levers(model_cfg, crop, world, bf16):
        fixed, act = training_bytes(model_cfg, in_channels, n_classes, crop, levers, world)
        if fixed > usable / 4:
            levers = Levers(levers.bf16, levers.checkpointing, levers.sp, 3)
            fixed, act = training_bytes(model_cfg, in_channels, n_classes, crop, levers, world)
        plan = Plan(levers, fixed, act, fixed + act <= usable)
        if plan.fits:
            return plan
        if best is None or plan.bytes_per_rank < best.bytes_per_rank:
            best = plan
    assert best is not None
    return best


def largest_crop(model_cfg, in_channels: int, n_classes: int, levers: Levers, device_bytes: float,
                 world: int, step: int = 16) -> int:
    """Largest crop side (a multiple of ``step``) whose training step fits with ``levers``."""
    per_voxel = WORKSPACE * activation_bytes_per_voxel(model_cfg, in_channels, n_classes, levers.bf16,
                                                       levers.checkpointing) / levers.sp
    n = int(((device_bytes - RESERVED) / per_voxel) ** (1 / 3)) // step * step
    while n > step and sum(training_bytes(model_cfg, in_channels, n_classes, n, levers, world)) > \
            device_bytes - RESERVED:
        n -= step
    return n


def main(argv: list[str] | None = None) -> int:
    from halotrans.models.config import ModelConfig

    parser = argparse.ArgumentParser(prog="python -m halotrans.parallel.memory", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--crop", type=int, required=True, help="crop side in voxels")
    parser.add_argument("--device-gib", type=float, default=80.0, help="memory per GPU in GiB (default 80)")
    parser.add_argument("--gpus", type=int, default=4, help="ranks available (default 4, one node)")
    parser.add_argument("--model", default="vipr", choices=("vipr", "copra"))
    parser.add_argument("--classes", type=int, default=7)
    parser.add_argument("--channels", type=int, default=2)
    parser.add_argument("--fp32", action="store_true", help="no bf16 (CPUs)")
    args = parser.parse_args(argv)
    cfg = ModelConfig(name=args.model, feature_size=2 * args.classes)
    device = args.device_gib * 2**30
    print(f"{args.model}, {args.channels} -> {args.classes} classes, crop {args.crop}³, "
          f"{args.device_gib:g} GiB per rank, {args.gpus} rank(s)\n")
    print("| bf16 | checkpointing | sp | fixed GiB | activations GiB | per rank GiB | fits |")
    print("|---|---|---|---|---|---|---|")
    for levers in candidate_levers(cfg, args.crop, args.gpus, not args.fp32):
        fixed, act = training_bytes(cfg, args.channels, args.classes, args.crop, levers, args.gpus)
        print(f"| {levers.bf16} | {levers.checkpointing} | {levers.sp} | {fixed / 2**30:.2f} | {act / 2**30:.2f} | "
              f"{(fixed + act) / 2**30:.2f} | {fixed + act <= device - RESERVED} |")
    plan = plan_levers(cfg, args.channels, args.classes, args.crop, device, args.gpus, not args.fp32)
    verdict = "fits" if plan.fits else "does NOT fit (needs more ranks or a smaller crop)"
    print(f"\nchoice: {plan.levers.settings()}  ({plan.bytes_per_rank / 2**30:.1f} GiB per rank: {verdict})")
    return 0 if plan.fits else 1


if __name__ == "__main__":
    sys.exit(main())

