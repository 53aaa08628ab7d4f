"""Process-group setup and the few collectives the training loop needs.

Under ``torchrun`` (or ``srun torchrun``) the environment names rank and world; under ``mpiexec``
DeepSpeed discovers them from MPI; a plain ``python -m halotrans train`` starts a world of one
itself. The backend is NCCL on GPUs and gloo on CPUs (``DS_ACCELERATOR=cpu``).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import sys
from pathlib import Path
from typing import Any, Callable

import torch
import torch.distributed as dist

from halotrans.io import DataError
from halotrans.yaml_config import ConfigError


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _private_extensions_dir() -> None:
    """One JIT-op cache per Python environment and ninja (``TORCH_EXTENSIONS_DIR``, unless set).

    DeepSpeed JIT-builds its CPU shared-memory comm op at start-up into a cache shared by all
    environments of the user. Two environments (include paths differ), or two ninja versions
    (the venv's pip ninja 1.13 and a system ninja 1.11 hash build commands differently), make
    each start rebuild it (~1-2 min). A cache per (environment, ninja) builds once.
    """
    key = hashlib.sha1(f"{sys.prefix}|{shutil.which('ninja')}".encode()).hexdigest()[:10]
    os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(Path.home() / ".cache" / "torch_extensions" / f"halotrans-{key}"))


def init_distributed() -> tuple[int, int, int]:
    """Join (or start) the default process group → (rank, world_size, local_rank)."""
    _private_extensions_dir()
    import deepspeed
    from deepspeed.accelerator import get_accelerator

    if "RANK" not in os.environ and "OMPI_COMM_WORLD_SIZE" not in os.environ:
        os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1",
                          MASTER_PORT=os.environ.get("MASTER_PORT", str(_free_port())))
    accel = get_accelerator()
    backend = "nccl" if accel.device_name() == "cuda" else "gloo"
    if not dist.is_initialized():
        deepspeed.init_distributed(dist_backend=backend, verbose=False)
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if accel.device_name() == "cuda":
        accel.set_device(local_rank)
    return dist.get_rank(), dist.get_world_size(), local_rank


def shutdown() -> None:
    """Leave the process group (every exit path of a run calls this); through DeepSpeed, which
    then also forgets the groups it holds (sequence-parallel groups of ``train.sp``)."""
    import deepspeed.comm

    if deepspeed.comm.is_initialized():
        deepspeed.comm.destroy_process_group()
    elif dist.is_initialized():
        dist.destroy_process_group()


def device() -> torch.device:
    """The device of this rank (``cuda:<local_rank>`` or ``cpu``)."""
    from deepspeed.accelerator import get_accelerator

    return torch.device(get_accelerator().current_device_name())


def on_rank0(fn: Callable[[], Any]) -> Any:
    """Run ``fn`` on rank 0 only and give its result to every rank.

    A :class:`DataError`/:class:`ConfigError` raised on rank 0 is raised on every rank, so a bad
    input stops the whole job with the same clear message instead of leaving ranks waiting.
    """
    box: list[Any] = [None]
    if dist.get_rank() == 0:
        try:
            box[0] = ("ok", fn())
        except (DataError, ConfigError) as e:  # subclasses (WriteError) travel as their base
            box[0] = ("DataError" if isinstance(e, DataError) else "ConfigError", str(e))
    dist.broadcast_object_list(box, src=0)
    kind, value = box[0]
    if kind == "DataError":
        raise DataError(value)
    if kind == "ConfigError":
        raise ConfigError(value)
    return value


def all_reduce_sums(values: dict[str, float]) -> dict[str, float]:
    """Sum each value over ranks (float64; every rank must pass the same keys)."""
    keys = sorted(values)
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=device())
    dist.all_reduce(t)
    return dict(zip(keys, t.tolist()))


def any_rank(*flags: bool) -> list[bool]:
    """Each flag, true on every rank if it is true on any rank (one all-reduce)."""
    t = torch.tensor([1.0 if f else 0.0 for f in flags], device=device())
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return [bool(v > 0) for v in t.tolist()]
