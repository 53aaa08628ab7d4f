"""Crash-safe file output and checked HDF5 input shared by every stage.

Nothing a job writes may look complete while it is half written: writers go through
:func:`atomic_path` (a temporary name in the same directory, ``os.replace`` on success, removed on
failure), so a killed job leaves either the old file, no file, or a ``*.tmp-*`` file that readers
never pick up.

Nothing non-finite is read or written either: :func:`require_finite` counts NaN and ±Inf values once
per file (readers call it on load, writers before the rename), and a write that fails because the
disk is full or read-only becomes a one-line :class:`WriteError` naming the file.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import socket
from pathlib import Path
from typing import Iterator, Sequence


class DataError(ValueError):
    """Input data that is missing, malformed or inconsistent (clear message, nothing written)."""


class WriteError(DataError):
    """An output that cannot be written: disk full, quota, read-only file system, no permission
    (clear message naming the file, exit status 2 like bad input; the old file, if any, is kept)."""


#: errno values of a write that fails because of where it goes, not because of what is written
_WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM}
#: below this many free bytes a failed write counts as "disk full" (torch.save reports ENOSPC as a
#: RuntimeError without an errno)
_FULL_BYTES = 1 << 20


def write_failure(error: BaseException, path: str | os.PathLike) -> WriteError | None:
    """The :class:`WriteError` for ``error`` raised while writing ``path`` if the disk is full or the
    place is not writable, else None (a bug or a bad value: re-raise it as it is)."""
    path = Path(path)
    code = getattr(error, "errno", None)
    if not isinstance(error, (OSError, RuntimeError)):
        return None
    if code not in _WRITE_ERRNOS:
        try:
            free = shutil.disk_usage(next(p for p in (path, *path.parents) if p.exists())).free
        except (OSError, StopIteration):
            return None
        if free >= _FULL_BYTES:
            return None
        code = errno.ENOSPC
    advice = "free some space" if code in (errno.ENOSPC, errno.EDQUOT) else "make it writable"
    return WriteError(f"cannot write {path}: {os.strerror(code)} ({advice} or use another output directory); "
                      "nothing was written under that name")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` when the block succeeds.

    ``with atomic_path("box_0001.h5") as tmp: write(tmp)``

    A full disk or a read-only place (while writing, or already at creating the directory) raises
    :class:`WriteError` naming ``path``; the temporary file is removed and ``path`` is untouched.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise (write_failure(e, path) or e) from None
    tmp = path.with_name(f"{path.name}.tmp-{socket.gethostname()}-{os.getpid()}")
    try:
        yield tmp
        if not tmp.exists():
            raise RuntimeError(f"atomic_path: nothing was written to {tmp}")
        os.replace(tmp, path)
    except BaseException as e:
        failure = None if isinstance(e, DataError) else write_failure(e, path)
        with contextlib.suppress(OSError):  # none there, or a read-only place: the original error matters
            tmp.unlink()
        if failure is not None:
            raise failure from e
        raise


def require_finite(data, where: str, hint: str = "", rows: Sequence[int] | None = None) -> None:
    """Raise :class:`DataError` if ``data`` (an array, or an h5py dataset read in blocks along axis 0)
    holds NaN or ±Inf: ``"<where>: 3 of 32768 values are not finite (2 NaN, 1 ±Inf)[; <hint>]"``.
    ``rows``: check only these indices along axis 0 (read one at a time).

    One pass over the data: call it once per file, when it is read or before it is written.
    Integer and boolean data are always finite.

    ``require_finite(f["delta"], f"{path}:/delta")``
    """
    import numpy as np

    dtype = np.dtype(data.dtype)
    if not np.issubdtype(dtype, np.inexact):
        return
    shape = tuple(data.shape)
    per_row = int(np.prod(shape[1:], dtype=np.int64)) if shape else 1
    total = per_row * (len(rows) if rows is not None else shape[0] if shape else 1)
    if rows is not None:
        blocks: Iterator = (data[int(r)] for r in rows)
    elif isinstance(data, np.ndarray) or not shape:
        blocks = iter([np.asarray(data)])
    else:  # an h5py dataset (or anything sliceable): about 32 M values per read
        step = max(1, (32 << 20) // max(1, per_row))
        blocks = (data[i:i + step] for i in range(0, shape[0], step))
    n_nan = n_inf = 0
    for block in blocks:
        bad = ~np.isfinite(block)
        if bad.any():
            n_nan += int(np.isnan(block).sum())
            n_inf += int(bad.sum()) - int(np.isnan(block).sum())
    if n_nan or n_inf:
        raise DataError(f"{where}: {n_nan + n_inf} of {total} values are not finite ({n_nan} NaN, {n_inf} ±Inf)"
                        + (f"; {hint}" if hint else ""))


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


def open_h5(path: str | os.PathLike, what: str = "HDF5 file", missing: str | None = None):
    """``h5py.File(path, "r")``, or :class:`DataError` naming the file: ``missing`` (if given) when there is
    no such file, else "not a readable <what>".

    ``with open_h5(path) as f: ...``
    """
    import h5py

    path = Path(path)
    if missing is not None and not path.is_file():
        raise DataError(missing)
    try:
        return h5py.File(path, "r")
    except OSError as e:
        raise DataError(f"{path}: not a readable {what} ({e})") from None


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
