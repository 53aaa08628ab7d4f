"""Crash-safe file output and checked HDF5 input shared by every stage.

Nothing a job writes may look complete while it is half written: writers go through
:func:`atomic_path` (a temporary name in the same directory, ``os.replace`` on success, removed on
failure), so a killed job leaves either the old file, no file, or a ``*.tmp-*`` file that readers
never pick up.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
from pathlib import Path
from typing import Iterator, Sequence


class DataError(ValueError):
    """Input data that is missing, malformed or inconsistent (clear message, nothing written)."""


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` when the block succeeds.

    ``with atomic_path("box_0001.h5") as tmp: write(tmp)``
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp-{socket.gethostname()}-{os.getpid()}")
    try:
        yield tmp
        if not tmp.exists():
            raise RuntimeError(f"atomic_path: nothing was written to {tmp}")
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def parse_seeds(text: str | int | Sequence[int]) -> list[int]:
    """Parse ``"0-15"``, ``"0,3,7-9"`` or a list into a sorted list of unique seeds."""
    if isinstance(text, int):
        return [text]
    if not isinstance(text, str):
        return sorted({int(s) for s in text})
    seeds: set[int] = set()
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        m = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
        if not m:
            raise ValueError(f"bad seed range '{part}' in '{text}' (use e.g. 0-15 or 0,3,7-9)")
        lo = int(m.group(1))
        hi = int(m.group(2)) if m.group(2) is not None else lo
        if hi < lo:
            raise ValueError(f"bad seed range '{part}': end before start")
        seeds.update(range(lo, hi + 1))
    if not seeds:
        raise ValueError(f"no seeds in '{text}'")
    return sorted(seeds)


def require_datasets(h5file, names: Sequence[str], path: str | os.PathLike = "") -> None:
    """Raise :class:`DataError` naming the file and every missing dataset among ``names``."""
    missing = [n for n in names if n not in h5file]
    if missing:
        have = []
        h5file.visit(lambda n: have.append(n))
        raise DataError(
            f"{path or h5file.filename}: missing dataset(s) {missing}; the file has {sorted(have)}"
        )


def require_cubic(shape: Sequence[int], name: str = "array") -> int:
    """Return N for an (N,N,N) shape, else raise :class:`DataError`."""
    shape = tuple(int(s) for s in shape)
    if len(shape) != 3 or len(set(shape)) != 1:
        raise DataError(f"{name} must be a cubic (N,N,N) grid of a periodic box, got shape {shape}")
    return shape[0]
