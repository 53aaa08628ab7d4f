"""Gadget binary "format 2" files: an index of named blocks, read lazily with memory maps.

A format-2 file is a sequence of blocks, each announced by a *block-name record* and followed by a
*data record*:

* block-name record: ``[marker=8]["NAME"][uint32 next][marker=8]`` with 4-byte markers, or, for
  blocks over 2³¹ bytes as PINOCCHIO writes them, ``[uint64 marker=12]["NAME"][uint64 next][uint64 12]``.
  ``next − 8`` is the payload size in bytes (PINOCCHIO sets ``next = payload + 8`` for every block,
  whatever the marker width of the data record that follows).
* data record: ``[marker][payload][marker]``. Gadget writes 4-byte markers; PINOCCHIO v5 writes
  HEAD and INFO with 4-byte markers but its particle blocks with 8-byte markers (``unsigned long``),
  whose value is 0 when the payload exceeds 2³¹ − 10 bytes.

The ``HEAD`` block is the 256-byte Gadget header; an ``INFO`` block (anywhere in the file, PINOCCHIO
writes it last) lists for each block its name, element type (``LONG``/``LLONG``/``FLOAT(N)``/
``DOUBLE(N)``), dimension and the particle types it covers, which gives each block's numpy dtype.
Only little-endian files are read. Every inconsistency raises :class:`halotrans.io.DataError`
naming the file, the block and the byte offset.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from halotrans.io import DataError

#: the 256-byte Gadget-2 snapshot header (little endian)
HEADER_DTYPE = np.dtype([
    ("npart", "<u4", 6), ("mass", "<f8", 6), ("time", "<f8"), ("redshift", "<f8"),
    ("flag_sfr", "<i4"), ("flag_feedback", "<i4"), ("npart_total", "<u4", 6), ("flag_cooling", "<i4"),
    ("num_files", "<i4"), ("box_size", "<f8"), ("omega0", "<f8"), ("omega_lambda", "<f8"),
    ("hubble_param", "<f8"), ("flag_stellarage", "<i4"), ("flag_metals", "<i4"),
    ("npart_total_high_word", "<u4", 6), ("flag_entropy_instead_u", "<i4"), ("flag_metalcooling", "<i4"),
    ("flag_stellarevolution", "<i4"), ("fill", "V52"),
])
assert HEADER_DTYPE.itemsize == 256

#: one 40-byte entry of the INFO block
INFO_DTYPE = np.dtype([("name", "S4"), ("type", "S8"), ("ndim", "<i4"), ("active", "<i4", 6)])

#: INFO element type -> numpy scalar type (PINOCCHIO's ``LONG`` is a 4-byte int, ``LLONG`` 8 bytes)
INFO_TYPES = {"LONG": "<i4", "LLONG": "<i8", "FLOAT": "<f4", "FLOATN": "<f4", "DOUBLE": "<f8", "DOUBLEN": "<f8"}

_BIG = 2**31 - 10


@dataclass(frozen=True)
class Block:
    """Where one block's payload lies in its file (byte offsets) and how its records were framed."""

    name: str
    offset: int
    nbytes: int
    name_marker: int
    data_marker: int


def _read(fh, nbytes: int, path: Path, what: str, at: int) -> bytes:
    data = fh.read(nbytes)
    if len(data) != nbytes:
        raise DataError(f"{path}: truncated at byte {at}: {what} needs {nbytes} bytes, the file ends after {len(data)}")
    return data


def _name_record(fh, path: Path, at: int) -> tuple[str, int, int]:
    """Parse a block-name record at ``at``; return (name, payload bytes, marker width)."""
    fh.seek(at)
    first = np.frombuffer(_read(fh, 4, path, "block-name record", at), "<u4")[0]
    if first == 8:
        rest = _read(fh, 12, path, "block-name record", at)
        name, nxt, tail = rest[:4], np.frombuffer(rest[4:8], "<u4")[0], np.frombuffer(rest[8:], "<u4")[0]
        width = 4
        if tail != 8:
            raise DataError(f"{path}: block-name record at byte {at} ends with marker {tail}, expected 8")
    elif first == 12:
        rest = _read(fh, 24, path, "8-byte block-name record", at)
        high, name = np.frombuffer(rest[:4], "<u4")[0], rest[4:8]
        nxt, tail = np.frombuffer(rest[8:16], "<u8")[0], np.frombuffer(rest[16:], "<u8")[0]
        width = 8
        if high != 0 or tail != 12:
            raise DataError(f"{path}: 8-byte block-name record at byte {at} is malformed (markers 12/{tail})")
    else:
        raise DataError(
            f"{path}: bad block-name record marker {first} at byte {at} (expected 8, or 12 for 8-byte "
            "markers); not a little-endian Gadget format-2 file?"
        )
    try:
        label = name.decode("ascii").strip(" \0")
    except UnicodeDecodeError:
        raise DataError(f"{path}: block name at byte {at + width} is not ASCII: {name!r}") from None
    if int(nxt) < 8:
        raise DataError(f"{path}: block {label!r} at byte {at} announces {nxt} bytes (< 8)")
    return label, int(nxt) - 8, width


def _record_follows(fh, at: int, size: int) -> bool:
    """True at the end of the file or where a block-name record (marker 8 or 12) starts."""
    if at == size:
        return True
    fh.seek(at)
    word = fh.read(4)
    return len(word) == 4 and int(np.frombuffer(word, "<u4")[0]) in (8, 12)


def _data_markers(fh, path: Path, name: str, at: int, nbytes: int, size: int, huge: bool) -> int:
    """Marker width (4 or 8) of the data record at ``at`` holding ``nbytes``.

    ``huge``: the block had an 8-byte name record, so PINOCCHIO wrote 0 in its 8-byte data markers.
    """
    for width, dtype in ((4, "<u4"), (8, "<u8")):
        if width == 4 and (huge or nbytes > _BIG):
            continue
        end = at + width + nbytes
        if end + width > size:
            continue
        fh.seek(at)
        head = int(np.frombuffer(fh.read(width), dtype)[0])
        fh.seek(end)
        tail = int(np.frombuffer(fh.read(width), dtype)[0])
        allowed = (0, nbytes) if width == 8 and (huge or nbytes > _BIG) else (nbytes,)
        if head == tail and head in allowed and _record_follows(fh, end + width, size):
            return width
    if at + 2 * 4 + nbytes > size:
        raise DataError(f"{path}: truncated block {name!r}: its {nbytes} bytes of data starting near byte {at} "
                        f"run past the end of the file ({size} bytes)")
    raise DataError(f"{path}: block {name!r} at byte {at}: the record markers around its {nbytes} bytes are neither "
                    "matching 4-byte nor matching 8-byte markers (wrong marker sizes or a corrupt file)")


class Format2File:
    """Block index of one format-2 file; ``header``, ``info`` and :meth:`array` (memory-mapped)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        if not self.path.is_file():
            raise DataError(f"file not found: {self.path}")
        size = self.path.stat().st_size
        self.blocks: dict[str, Block] = {}
        with open(self.path, "rb") as fh:
            at = 0
            while at < size:
                name, nbytes, name_width = _name_record(fh, self.path, at)
                data_at = at + (16 if name_width == 4 else 28)
                width = _data_markers(fh, self.path, name, data_at, nbytes, size, name_width == 8)
                if name in self.blocks:
                    raise DataError(f"{self.path}: block {name!r} appears twice (second at byte {at})")
                self.blocks[name] = Block(name, data_at + width, nbytes, name_width, width)
                at = data_at + 2 * width + nbytes
        if "HEAD" not in self.blocks:
            raise DataError(f"{self.path}: no HEAD block (found {sorted(self.blocks)})")
        head = self.blocks["HEAD"]
        if head.nbytes != HEADER_DTYPE.itemsize:
            raise DataError(f"{self.path}: HEAD block has {head.nbytes} bytes, expected 256")
        self.header = np.fromfile(self.path, HEADER_DTYPE, count=1, offset=head.offset)[0]
        self.info = self._read_info()

    def _read_info(self) -> dict[str, tuple[np.dtype, int, np.ndarray]]:
        """INFO entries as name -> (element dtype, ndim, active particle types); {} without INFO."""
        blk = self.blocks.get("INFO")
        if blk is None:
            return {}
        if blk.nbytes % INFO_DTYPE.itemsize:
            raise DataError(f"{self.path}: INFO block has {blk.nbytes} bytes, not a multiple of 40")
        out = {}
        for entry in np.fromfile(self.path, INFO_DTYPE, count=blk.nbytes // 40, offset=blk.offset):
            name = entry["name"].decode("ascii", "replace").strip(" \0")
            kind = entry["type"].decode("ascii", "replace").strip(" \0")
            if kind not in INFO_TYPES:
                raise DataError(f"{self.path}: INFO gives block {name!r} the unknown type {kind!r}")
            out[name] = (np.dtype(INFO_TYPES[kind]), int(entry["ndim"]), entry["active"].astype(bool))
        return out

    @property
    def npart(self) -> np.ndarray:
        """Particles of each type in this file, (6,) int64."""
        return self.header["npart"].astype(np.int64)

    def array(self, name: str) -> np.ndarray:
        """Memory-mapped (n,) or (n, ndim) array of block ``name``; its size is checked against INFO."""
        if name not in self.blocks:
            raise DataError(f"{self.path}: no {name!r} block (found {sorted(self.blocks)})")
        if name not in self.info:
            raise DataError(f"{self.path}: block {name!r} is not described in the INFO block")
        blk = self.blocks[name]
        dtype, ndim, active = self.info[name]
        n = int(self.npart[active].sum())
        if blk.nbytes != n * ndim * dtype.itemsize:
            raise DataError(
                f"{self.path}: block {name!r} holds {blk.nbytes} bytes but INFO says {n} particles × {ndim} × "
                f"{dtype.itemsize} bytes = {n * ndim * dtype.itemsize}"
            )
        shape = (n,) if ndim == 1 else (n, ndim)
        if n == 0:
            return np.zeros(shape, dtype)
        return np.memmap(self.path, dtype=dtype, mode="r", offset=blk.offset, shape=shape)


def snapshot_parts(path: str | os.PathLike) -> list[Format2File]:
    """Open a (possibly multi-file) snapshot: ``path`` itself or ``path.0``, ``path.1``, …

    The number of files must equal the header's ``num_files``.
    """
    path = Path(path)
    if path.is_file():
        first = Format2File(path)
        if first.header["num_files"] > 1:
            raise DataError(f"{path}: header says the snapshot spans {first.header['num_files']} files; "
                            f"pass the name without the .N suffix")
        return [first]
    parts = []
    while (part := Path(f"{path}.{len(parts)}")).is_file():
        parts.append(Format2File(part))
    if not parts:
        raise DataError(f"snapshot not found: {path} (nor {path}.0)")
    want = int(parts[0].header["num_files"])
    if len(parts) != want:
        raise DataError(f"{path}: found {len(parts)} files {path}.0..{len(parts) - 1}, the header says {want}")
    return parts
