"""Full-box inference on every rank of a job (the ``infer`` command, :mod:`halotrans.eval.cli`).

    torchrun --nproc_per_node 4 -m halotrans infer runs/vipr data/boxes/box_0018.h5 --out pred.h5
    torchrun --nproc_per_node 4 -m halotrans infer runs/vipr box.h5 --out pred.h5 --sp 2 --set eval.overlap=0.25

The periodic sliding windows of :func:`halotrans.eval.inference.predict_periodic` (window, overlap,
margin, blend, batch size and bf16 from the run's ``eval`` section, ``--set eval.*`` to override)
are dealt out to the ranks in contiguous runs of the C-ordered window grid. Each rank reads only
the rows (axis 0 = x) of the box its windows touch, and adds its weighted window probabilities
into a buffer over those rows. Rank ``r`` of ``R`` owns the output rows ``[r·N/R, (r+1)·N/R)``:
the rows of a buffer that belong to other ranks are sent to them point to point and added there
(the only communication), each rank divides its rows by the blend weights, and the ranks write
their rows in turn into one HDF5 file that rank 0 created under a temporary name and renames when
all are done (:func:`halotrans.io.atomic_path`). The result equals ``predict_periodic`` on one
process up to float round-off (the window sums are added in another order).

With ``--sp S`` every S ranks share each window as slabs (:mod:`halotrans.parallel.shard`: for a
window too large for one device); the slabs' logits are gathered in the group and its first rank
accumulates, exchanges and writes.

Inputs holding NaN/±Inf, or a network whose weights do, stop every rank with one clear error before
anything is written (checked on rank 0 once per file; the probabilities again before writing).

Output: ``/probs`` float32 (P, N, N, N) class probabilities and ``/classes`` int8 (N, N, N) the most
probable class, C order, axis 0 = x; attrs: run directory, checkpoint step, box file, inputs,
class edges (log10 M [M☉/h]) and the window settings.
"""

from __future__ import annotations

import itertools
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from tqdm import tqdm

from halotrans.config import ConfigError, load_config
from halotrans.io import DataError

# --- geometry ------------------------------------------------------------------------------------


def window_plan(shape: Sequence[int], window: int, overlap: float, margin: int, blend: str
                ) -> tuple[list[tuple[int, int, int]], list[np.ndarray], list[np.ndarray]]:
    """The windows of ``predict_periodic`` on a box of ``shape``: (grid of window starts in C order,
    per-axis blend weights (window,), per-axis sums of the weights over the box (n,))."""
    from halotrans.eval.inference import axis_layout

    layouts = [axis_layout(n, window, overlap, margin, blend) for n in shape]
    sums = []
    for (starts, wt), n in zip(layouts, shape):
        s = np.zeros(n)
        for st in starts:
            np.add.at(s, (st + np.arange(window)) % n, wt)
        sums.append(s)
    return list(itertools.product(*(starts for starts, _ in layouts))), [wt for _, wt in layouts], sums


def deal(n_items: int, parts: int, part: int) -> range:
    """Contiguous share ``part`` of ``n_items`` split into ``parts`` nearly equal runs."""
    return range(n_items * part // parts, n_items * (part + 1) // parts)


def owned_rows(n: int, parts: int, part: int) -> range:
    """Output rows (axis 0) owned by ``part`` of ``parts``: [part·n/parts, (part+1)·n/parts)."""
    return deal(n, parts, part)


def buffer_rows(grid: list[tuple[int, int, int]], mine: range, window: int) -> tuple[int, int]:
    """(first row, number of rows) — unwrapped — covered by the windows ``mine`` of ``grid``."""
    if not len(mine):
        return 0, 0
    first = min(grid[i][0] for i in mine)
    last = max(grid[i][0] for i in mine) + window
    return first, last - first


# --- reading --------------------------------------------------------------------------------------


def read_rows(path: str | Path, inputs: Sequence[str], norm_stats: dict, rows: np.ndarray) -> np.ndarray:
    """Normalised inputs (C, len(rows), H, W) float32 at box rows ``rows`` (axis 0), as training prepared them
    (:func:`halotrans.data.boxes.load_inputs`)."""
    import h5py

    from halotrans.data.stats import INPUT_DATASETS

    unique, back = np.unique(rows, return_inverse=True)
    with h5py.File(path, "r") as f:
        channels = []
        for name in inputs:
            s = norm_stats[name]
            a = f[INPUT_DATASETS[name]][unique.tolist()]
            channels.append(((a - s["mean"]) / s["std"]).astype(np.float32)[back])
    return np.stack(channels)


# --- the per-rank window loop and the exchange ---------------------------------------------------


@torch.no_grad()
def accumulate_windows(forward: Callable[[torch.Tensor], torch.Tensor], x_rows: torch.Tensor, first_row: int,
                       grid: list[tuple[int, int, int]], mine: range, weights: list[np.ndarray], window: int,
                       batch_size: int, shape: Sequence[int], progress: bool) -> torch.Tensor | None:
    """Σ over the windows ``mine`` of softmax(logits) × blend weights, into a buffer (P, rows, H, W) whose
    row j is box row ``first_row + j`` (mod N); ``x_rows`` holds the inputs at the same rows."""
    device = x_rows.device
    _, n1, n2 = shape
    w = [torch.as_tensor(wt, dtype=torch.float32, device=device) for wt in weights]
    weight3 = w[0][:, None, None] * w[1][None, :, None] * w[2][None, None, :]
    acc = None
    idx = list(mine)
    for b0 in tqdm(range(0, len(idx), batch_size), desc="windows", disable=not progress, leave=False):
        starts = [grid[i] for i in idx[b0:b0 + batch_size]]
        crops = []
        for s0, s1, s2 in starts:
            r = s0 - first_row
            c = x_rows[:, r:r + window]
            c = c.index_select(2, torch.remainder(torch.arange(s1, s1 + window, device=device), n1))
            crops.append(c.index_select(3, torch.remainder(torch.arange(s2, s2 + window, device=device), n2)))
        probs = F.softmax(forward(torch.stack(crops)).float(), dim=1) * weight3
        if acc is None:
            acc = torch.zeros((probs.shape[1], x_rows.shape[1], n1, n2), device=device)
        flat = acc.view(acc.shape[0], acc.shape[1], n1 * n2)
        for p, (s0, s1, s2) in zip(probs, starts):
            cols = (torch.remainder(torch.arange(s1, s1 + window, device=device), n1)[:, None] * n2
                    + torch.remainder(torch.arange(s2, s2 + window, device=device), n2)[None, :]).flatten()
            r = s0 - first_row
            flat[:, r:r + window].index_add_(2, cols, p.reshape(p.shape[0], window, -1))
    return acc


def exchange_to_owners(acc: torch.Tensor, spans: list[tuple[int, int]], n: int, me: int, ranks: list[int],
                       n_classes: int) -> torch.Tensor:
    """Sum every participant's buffer rows into the rows' owners → this participant's owned rows (P, m, H, W).

    ``spans[q]`` = (first unwrapped row, rows) of participant q's buffer (``acc`` is ours), ``ranks``
    their global ranks; participant q owns :func:`owned_rows` (n, len(ranks), q). Point-to-point, one
    message per (source, destination) pair that overlaps, posted in rank order on every side.
    """
    parts = len(ranks)
    mine = owned_rows(n, parts, me)
    starts = [owned_rows(n, parts, q).start for q in range(parts)]

    def rows_for(src: int, dst: int) -> tuple[torch.Tensor, torch.Tensor]:
        first, count = spans[src]
        box_rows = (first + np.arange(count)) % n
        sel = np.nonzero(np.searchsorted(starts, box_rows, side="right") - 1 == dst)[0]
        return torch.as_tensor(sel), torch.as_tensor(box_rows[sel] - starts[dst])

    h, w = acc.shape[2:] if acc is not None else (0, 0)
    out = torch.zeros((n_classes, len(mine), h, w), device=acc.device)
    ops, incoming = [], []
    for dst in range(parts):
        sel, at = rows_for(me, dst)
        if len(sel) == 0:
            continue
        piece = acc.index_select(1, sel.to(acc.device))
        if dst == me:
            out.index_add_(1, at.to(acc.device), piece)
        else:
            ops.append(dist.P2POp(dist.isend, piece.contiguous(), ranks[dst]))
    for src in range(parts):
        sel, at = rows_for(src, me)
        if src != me and len(sel):
            buf = torch.empty((n_classes, len(sel), h, w), device=acc.device)
            ops.append(dist.P2POp(dist.irecv, buf, ranks[src]))
            incoming.append((buf, at))
    if ops:
        for req in dist.batch_isend_irecv(ops):
            req.wait()
    for buf, at in incoming:
        out.index_add_(1, at.to(acc.device), buf)
    return out


def write_in_turn(out_path: Path, rows: range, probs: np.ndarray, shape: Sequence[int], attrs: dict,
                  group, first: int) -> None:
    """The ranks of ``group`` write their rows of ``/probs`` and ``/classes`` one after the other into a
    file that the group's first rank (global rank ``first``) creates under a temporary name and
    renames when every rank has written."""
    import h5py

    from halotrans.io import atomic_path

    me, size = dist.get_rank(group), dist.get_world_size(group)
    name: list[str | None] = [None]

    def write_mine(tmp: str | Path) -> None:
        with h5py.File(tmp, "r+") as f:
            f["probs"][:, rows.start:rows.stop] = probs
            f["classes"][rows.start:rows.stop] = probs.argmax(0).astype(np.int8)

    def turns(tmp: str | Path) -> None:
        for turn in range(size):
            if turn == me:
                write_mine(tmp)
            dist.barrier(group=group)

    if me == 0:
        with atomic_path(out_path) as tmp:
            with h5py.File(tmp, "w") as f:
                f.create_dataset("probs", shape=(probs.shape[0], *shape), dtype=np.float32)
                f.create_dataset("classes", shape=tuple(shape), dtype=np.int8)
                f.attrs.update(attrs)
            name[0] = str(tmp)
            dist.broadcast_object_list(name, src=first, group=group)
            turns(tmp)
    else:
        dist.broadcast_object_list(name, src=first, group=group)
        turns(name[0])


# --- the job ------------------------------------------------------------------------------------


def infer_box(run_dir: str | Path, box: str | Path, out: str | Path, tag: str | None = None, sp_size: int = 1,
              overrides: Sequence[str] = ()) -> float:
    """Every rank of the joined process group: predict ``box`` with the run's network into ``out``
    (see the module docstring) → seconds taken. ``overrides`` are ``key=value`` settings of the run's
    config (``eval.*``); ``sp_size`` ranks share each window as slabs."""
    import h5py

    from halotrans.data.boxes import check_box_files
    from halotrans.parallel.distributed import device, on_rank0
    from halotrans.parallel.groups import init_sequence_parallel
    from halotrans.parallel.sequence import all_gather
    from halotrans.parallel.shard import check_slab_config, parallelize, slab_of
    from halotrans.train.checkpoint import load_for_inference

    rank, world = dist.get_rank(), dist.get_world_size()
    run_dir, box, out = Path(run_dir), Path(box), Path(out)

    def check() -> tuple[int, int, int]:
        model, _, meta = load_for_inference(run_dir, tag)
        check_box_files([box], meta["inputs"])
        with h5py.File(box, "r") as f:
            from halotrans.data.stats import INPUT_DATASETS

            shape = f[INPUT_DATASETS[meta["inputs"][0]]].shape
        if len(shape) != 3:
            raise DataError(f"{box}: inputs must be (N, N, N) volumes, got shape {shape}")
        return tuple(int(s) for s in shape)

    shape = on_rank0(check)  # bad input: the same clear error on every rank, nothing written
    if sp_size < 1 or world % sp_size:
        raise ConfigError(f"--sp {sp_size} must divide the {world} ranks of this job")
    sp = init_sequence_parallel(sp_size) if sp_size > 1 else None
    dp_rank, dp_size = (sp.dp_rank, sp.dp_size) if sp else (rank, world)
    cfg = load_config(run_dir / "config.yaml", overrides)
    ev = cfg.eval
    model, _, meta = load_for_inference(run_dir, tag)
    window = int(ev.window or meta.get("img_size") or cfg.data.crop)
    if sp:
        check_slab_config(cfg.model, window, sp.size)
        parallelize(model, sp)
    dev = device()
    model.to(dev).eval()
    autocast = torch.autocast(device_type=dev.type, dtype=torch.bfloat16, enabled=ev.bf16 and dev.type == "cuda")

    def forward(x: torch.Tensor) -> torch.Tensor:
        with autocast:
            if sp is None:
                return model(x)
            return all_gather(model(slab_of(x, sp, dim=2)), 2, sp.group)

    t0 = time.perf_counter()
    grid, weights, wsums = window_plan(shape, window, ev.overlap, ev.margin, ev.blend)
    spans = [buffer_rows(grid, deal(len(grid), dp_size, q), window) for q in range(dp_size)]
    first, count = spans[dp_rank]
    mine = deal(len(grid), dp_size, dp_rank)
    x_rows = torch.from_numpy(read_rows(box, meta["inputs"], meta["norm_stats"],
                                        (first + np.arange(count)) % shape[0])).to(dev)
    acc = accumulate_windows(forward, x_rows, first, grid, mine, weights, window, ev.batch_size, shape,
                             progress=rank == 0)
    n_classes = int(meta["n_classes"])
    if acc is None:  # more ranks than windows
        acc = torch.zeros((n_classes, 0, *shape[1:]), device=dev)
    leaders = [q * sp_size for q in range(dp_size)]
    group = dist.new_group(leaders) if sp else None  # every rank takes part in making it
    if sp is None or sp.rank == 0:  # the first rank of each SP group exchanges and writes
        owned = owned_rows(shape[0], dp_size, dp_rank)
        summed = exchange_to_owners(acc, spans, shape[0], dp_rank, leaders, n_classes)
        norm = (torch.as_tensor(wsums[0][owned.start:owned.stop], dtype=torch.float32)[:, None, None]
                * torch.as_tensor(wsums[1], dtype=torch.float32)[None, :, None]
                * torch.as_tensor(wsums[2], dtype=torch.float32)[None, None, :])
        probs = (summed.cpu() / norm).numpy()
        bad = torch.tensor([0.0 if np.isfinite(probs).all() else 1.0], device=dev)
        dist.all_reduce(bad, op=dist.ReduceOp.MAX, group=group)  # the writers decide together
        if bad.item():
            raise DataError(f"{out}: the predicted probabilities are not finite; nothing written")
        attrs = {"run_dir": str(run_dir.resolve()), "step": int(meta.get("step", -1)), "box": str(box.resolve()),
                 "inputs": list(meta["inputs"]), "class_edges": [float(e) for e in meta["class_edges"]],
                 "window": window, "overlap": ev.overlap, "margin": ev.margin, "blend": ev.blend,
                 "ranks": world, "sp": sp_size}
        write_in_turn(out, owned, probs, shape, attrs, group, leaders[0])
    dist.barrier()
    seconds = time.perf_counter() - t0
    if rank == 0:
        print(f"infer: {box.name} ({'x'.join(map(str, shape))}) on {world} rank(s), {len(grid)} windows of "
              f"{window}³ in {seconds:.2f} s -> {out}")
    return seconds
