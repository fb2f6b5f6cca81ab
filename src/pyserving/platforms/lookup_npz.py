"""Reading a lookup table's `table.npz` (np.savez / np.savez_compressed), optionally only the
rows of one shard: the key array first, then the value array mapped from the file (stored) or in
slices of rows (compressed), so a shard never holds the whole table.

The file is not trusted: every size a header or the zip directory declares is checked against
what the file holds before anything is allocated, and every failure is a FailedPrecondition
(a permanent load error) naming the array.
"""

from __future__ import annotations

import math
import os
import struct
import zipfile
from collections.abc import Callable
from typing import Any

import numpy as np

from pyserving.errors import FailedPrecondition
from pyserving.platforms.lookup_index import shard_of

__all__ = ["Shard", "map_stored_array", "read_npz"]

#: (index, count): this shard's index among `count` shards
Shard = tuple[int, int]
# bytes of an npz value array read at a time while keeping a shard's rows
_SLICE_BYTES = 64 << 20
# a zip local file header: signature ... file name length, extra field length
_LOCAL_HEADER = struct.Struct("<4s22xHH")
# the most a compressed byte can inflate to, per zip method numpy writes (deflate's limit is
# 1032:1); other methods (bzip2, lzma: no useful bound) are refused
_INFLATE_RATIO = {zipfile.ZIP_STORED: 1, zipfile.ZIP_DEFLATED: 1032}
# the dtype kinds an npz array may hold: keys integers or text (a float key is a mistake, not a
# BYTES key), values numbers or text
_ARRAY_KINDS = {"keys": "iuSU", "values": "biufcSU"}


def read_npz(
    file: str, shard: Shard | None, normalise_keys: Callable[[np.ndarray], np.ndarray]
) -> tuple[np.ndarray, np.ndarray]:
    """(keys, values) of the npz `file` (keys as `normalise_keys` makes them), only `shard`'s
    rows when given. Raises FailedPrecondition naming the array and the problem, checked before
    anything is allocated for what a header declares."""
    try:
        archive = zipfile.ZipFile(file)
    except (OSError, zipfile.BadZipFile) as exc:
        raise FailedPrecondition(f"table.npz: cannot read it: {exc}") from exc
    with archive:
        members = _array_members(archive)
        keys_member = members["keys"]
        with archive.open(keys_member) as stream:
            raw_keys = _read_rows(stream, _data_limit(file, keys_member), "keys", None, None)
        keys = normalise_keys(raw_keys)
        mine = None if shard is None else shard_of(keys, shard[1]) == shard[0]
        values_member = members["values"]
        mapped = map_stored_array(file, values_member, len(keys))
        if mapped is not None and mine is None:
            values = mapped
        elif mapped is not None and mine is not None and len(mine) == len(mapped):
            # a shard copies its rows in one pass over the mapping, which it then drops
            values = mapped[mine]
        else:
            with archive.open(values_member) as stream:
                limit = _data_limit(file, values_member)
                values = _read_rows(stream, limit, "values", mine, len(keys))
    if len(values) != (len(keys) if mine is None else int(mine.sum())):
        raise FailedPrecondition(f"table.npz: {len(keys)} keys but a different number of values")
    if values.dtype.kind in "SU":
        texts = [v.encode() if isinstance(v, str) else v for v in values.tolist()]
        values = np.array(texts, dtype=object)
    return (keys if mine is None else keys[mine]), values


def _array_members(archive: zipfile.ZipFile) -> dict[str, zipfile.ZipInfo]:
    """The "keys" and "values" members of an npz, each once, in a method numpy writes."""
    names = [name.removesuffix(".npy") for name in archive.namelist()]
    if "keys" not in names or "values" not in names:
        raise FailedPrecondition(
            f"table.npz must hold arrays 'keys' and 'values' (has {', '.join(sorted(names))})"
        )
    members = {}
    for array in ("keys", "values"):
        found = [info for info in archive.infolist() if info.filename.removesuffix(".npy") == array]
        if len(found) > 1:
            raise FailedPrecondition(f"table.npz holds the {array} array {len(found)} times")
        if found[0].compress_type not in _INFLATE_RATIO:
            raise FailedPrecondition(
                f"table.npz: the {array} array is compressed with zip method"
                f" {found[0].compress_type}; save it with np.savez or np.savez_compressed"
            )
        members[array] = found[0]
    return members


def map_stored_array(file: str, member: zipfile.ZipInfo, rows: int) -> np.ndarray | None:
    """The .npy `member` of the zip `file` (the values of `rows` keys) mapped read-only from the
    file, when it is stored uncompressed (`np.savez`) with a numeric dtype in C order; None
    otherwise (compressed, text or empty arrays are read instead). Raises FailedPrecondition
    for a header the file cannot hold.

    Mapped, its pages come from the page cache: processes serving the same version (`--workers`)
    share one copy, and only the rows requests touch are ever read from disk.
    """
    if member.compress_type != zipfile.ZIP_STORED:
        return None
    with open(file, "rb") as raw:
        raw.seek(member.header_offset)
        local = raw.read(_LOCAL_HEADER.size)
        if len(local) != _LOCAL_HEADER.size or local[:4] != b"PK\x03\x04":
            return None
        name_bytes, extra_bytes = _LOCAL_HEADER.unpack(local)[-2:]
        start = member.header_offset + _LOCAL_HEADER.size + name_bytes + extra_bytes
        raw.seek(start)
        try:
            shape, fortran_order, dtype = _read_npy_header(raw)
        except ValueError:
            return None  # not an .npy header: the reader says what is wrong
        offset = raw.tell()
    _check_header(shape, dtype, "values", rows)
    nbytes = math.prod(shape) * dtype.itemsize  # exact: a numpy product may wrap around
    if fortran_order or dtype.kind not in "biufc" or nbytes == 0:
        return None
    # the directory's size may lie: the bytes must be in the file itself
    if offset + nbytes > min(start + member.file_size, os.path.getsize(file)):
        raise FailedPrecondition(
            f"table.npz: the values array declares {list(shape)} {dtype} ({nbytes} bytes), more"
            " than its file holds: the file is corrupt or truncated"
        )
    mapped = np.memmap(file, dtype=dtype, mode="r", offset=offset, shape=shape)
    return mapped.view(np.ndarray)  # a plain array; it keeps the mapping open


def _read_npy_header(stream: Any) -> tuple[tuple[int, ...], bool, np.dtype[Any]]:
    """(shape, fortran_order, dtype) from the .npy header at `stream`'s position; ValueError
    when there is none."""
    version = np.lib.format.read_magic(stream)
    if version == (1, 0):
        return np.lib.format.read_array_header_1_0(stream)
    return np.lib.format.read_array_header_2_0(stream)


def _data_limit(file: str, member: zipfile.ZipInfo) -> int:
    """The most bytes reading `member` of the zip `file` can yield: its declared size, which the
    zip reader never reads past, capped by what its stored bytes can inflate to (a corrupt or
    hostile directory may declare any size)."""
    stored = min(member.compress_size, os.path.getsize(file))
    ratio = _INFLATE_RATIO.get(member.compress_type)
    return member.file_size if ratio is None else min(member.file_size, stored * ratio)


def _check_header(
    shape: tuple[int, ...], dtype: np.dtype[Any], array: str, rows: int | None
) -> None:
    """Raise FailedPrecondition naming `array` ("keys" or "values", of `rows` keys when known)
    when its .npy header cannot be a lookup table's, before anything is allocated for it."""
    if not shape or (array == "keys" and len(shape) != 1):
        raise FailedPrecondition(
            f"table.npz: {array} must have one row per key (its shape is {list(shape)})"
        )
    if any(size < 0 for size in shape):
        raise FailedPrecondition(f"table.npz: the {array} array's shape {list(shape)} is negative")
    if math.prod(size for size in shape if size) * dtype.itemsize >= 1 << 62:
        # an array of no bytes (a zero in its shape) numpy still refuses to make
        raise FailedPrecondition(f"table.npz: the {array} array's shape {list(shape)} is too big")
    if dtype.hasobject:
        raise FailedPrecondition(
            f"table.npz: object arrays are not allowed (save {array} as bytes)"
        )
    if dtype.kind not in _ARRAY_KINDS[array] or dtype.itemsize == 0:
        wanted = "integers or text" if array == "keys" else "numbers or text"
        raise FailedPrecondition(f"table.npz: {array} must be {wanted} (its dtype is {dtype})")
    if rows is not None and shape[0] != rows:
        raise FailedPrecondition(f"table.npz: {rows} keys but {shape[0]} values")


def _read_rows(
    stream: Any, limit: int, array: str, mine: np.ndarray | None, rows: int | None
) -> np.ndarray:
    """The .npy `array` ("keys" or "values", of `rows` keys when known) from `stream`, which
    yields at most `limit` bytes, only the rows where `mine` is true, read a slice of rows at a
    time so that the whole array is never in memory when only some rows are kept.

    The size its header declares is checked against `limit` before anything is allocated, so a
    header claiming a huge shape fails the load instead of reserving memory for it.
    """
    try:
        shape, fortran_order, dtype = _read_npy_header(stream)
    except ValueError as exc:
        raise FailedPrecondition(f"table.npz: {array} is not an .npy array: {exc}") from None
    _check_header(shape, dtype, array, rows)
    declared = math.prod(shape) * dtype.itemsize
    available = limit - stream.tell()
    if declared > available:
        raise FailedPrecondition(
            f"table.npz: the {array} array declares {list(shape)} {dtype} ({declared} bytes) but"
            f" its file holds at most {max(0, available)}: the file is corrupt or truncated"
        )
    if fortran_order:  # column-major: rows are not contiguous, read it whole
        count = math.prod(shape)
        data = stream.read(declared)
        if len(data) != declared:
            raise FailedPrecondition(f"table.npz: the {array} array is truncated")
        whole = np.frombuffer(data, dtype, count).reshape(shape, order="F")
        return np.ascontiguousarray(whole if mine is None else whole[mine[: len(whole)]])
    row_shape = shape[1:]
    row_bytes = math.prod(row_shape) * dtype.itemsize
    kept = shape[0] if mine is None else int(mine.sum())
    out = np.empty((kept, *row_shape), dtype)
    if row_bytes == 0:  # nothing stored: the rows are empty
        return out
    step = max(1, _SLICE_BYTES // row_bytes)
    filled = 0
    for first in range(0, shape[0], step):
        count = min(step, shape[0] - first)
        data = stream.read(count * row_bytes)
        if len(data) != count * row_bytes:
            raise FailedPrecondition(f"table.npz: the {array} array is truncated")
        chunk = np.frombuffer(data, dtype).reshape(count, *row_shape)
        if mine is not None:
            chunk = chunk[mine[first : first + count]]
        out[filled : filled + len(chunk)] = chunk
        filled += len(chunk)
    return out
