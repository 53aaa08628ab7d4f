"""Bytes this process sent through the sharding collectives, by kind, counted from the tensors sent.

Kinds: ``halo`` (point-to-point halo rows, forward and backward), ``all_to_all`` (Ulysses q, k, v
and output, forward and backward: the (sp−1)/sp of each tensor that leaves the rank), ``gather``
(differentiable all-gathers of tokens or slabs), ``norm`` (synchronised norm statistics).
``benchmarks/bench_memory.py`` reads them to check the scaling model of ``benchmarks/SCALING.md``.

    traffic.reset(); run_step(); print(traffic.SENT["halo"])
"""

from __future__ import annotations

from collections import Counter

import torch

#: bytes sent by this process since the last :func:`reset`, by kind
SENT: Counter[str] = Counter()


def count(kind: str, *tensors: torch.Tensor, fraction: float = 1.0) -> None:
    """Add ``fraction`` of the bytes of ``tensors`` to ``SENT[kind]``."""
    SENT[kind] += int(fraction * sum(t.numel() * t.element_size() for t in tensors))


def reset() -> None:
    SENT.clear()
