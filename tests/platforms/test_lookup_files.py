"""Reading a lookup table's npz: an array's declared size is checked against what its member can
hold before anything is allocated, so a corrupt or hostile header cannot reserve gigabytes."""

from __future__ import annotations

import io
import struct
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import pytest

from pyserving.errors import FailedPrecondition
from pyserving.platforms.lookup_files import read_table

# numpy reports its array buffers to tracemalloc, so the peak includes any array allocated
_MOST_BYTES = 16 << 20


def npy(array: np.ndarray, shape: tuple[int, ...] | None = None) -> bytes:
    """`array` as .npy bytes, its header declaring `shape` when given (the data stays)."""
    out = io.BytesIO()
    if shape is None:
        np.save(out, array)
        return out.getvalue()
    header = {"descr": np.lib.format.dtype_to_descr(array.dtype), "fortran_order": False}
    np.lib.format.write_array_header_1_0(out, {**header, "shape": shape})
    return out.getvalue() + array.tobytes()


def write_npz(path: Path, keys: bytes, values: bytes, compression: int) -> None:
    with zipfile.ZipFile(path, "w", compression) as archive:
        archive.writestr("keys.npy", keys)
        archive.writestr("values.npy", values)


def read_failure(path: Path, shard: tuple[int, int] | None = None) -> str:
    tracemalloc.start()
    try:
        with pytest.raises(FailedPrecondition) as caught:
            read_table(str(path), None, None, shard)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < _MOST_BYTES
    return caught.value.message


KEYS = np.arange(4, dtype=np.int64)
VALUES = np.ones((4, 2), dtype=np.float32)


@pytest.mark.parametrize("shard", [None, (0, 2)])
def test_compressed_values_declaring_a_huge_shape_fail_before_allocating(
    tmp_path: Path, shard: tuple[int, int] | None
) -> None:
    path = tmp_path / "table.npz"
    write_npz(path, npy(KEYS), npy(VALUES, (4, 1 << 40)), zipfile.ZIP_DEFLATED)
    message = read_failure(path, shard)
    assert message.startswith("table.npz: the values array declares [4, 1099511627776] float32")
    assert "corrupt or truncated" in message


@pytest.mark.parametrize("compression", [zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED])
def test_keys_declaring_a_huge_shape_fail_before_allocating(
    tmp_path: Path, compression: int
) -> None:
    path = tmp_path / "table.npz"
    write_npz(path, npy(KEYS, (1 << 40,)), npy(VALUES), compression)
    assert "the keys array declares [1099511627776] int64" in read_failure(path)


def test_a_zip_directory_declaring_a_huge_member_is_bounded_by_what_it_stores(
    tmp_path: Path,
) -> None:
    # the header and the zip directory agree on 3 GiB, but 30 stored bytes cannot inflate to it
    path = tmp_path / "table.npz"
    values = npy(VALUES[:1, :1], (1, 3 << 28))
    write_npz(path, npy(KEYS[:1]), values, zipfile.ZIP_DEFLATED)
    data = bytearray(path.read_bytes())
    entry = data.rindex(b"values.npy") - 46  # its central directory entry: 46 bytes, its name
    assert data[entry : entry + 4] == b"PK\x01\x02"
    struct.pack_into("<I", data, entry + 24, (3 << 30) + len(values))
    path.write_bytes(bytes(data))
    message = read_failure(path)
    assert "the values array declares [1, 805306368] float32 (3221225472 bytes)" in message


def test_keys_must_be_one_dimensional(tmp_path: Path) -> None:
    path = tmp_path / "table.npz"
    write_npz(path, npy(KEYS.reshape(2, 2)), npy(VALUES), zipfile.ZIP_DEFLATED)
    assert "keys must have one row per key (its shape is [2, 2])" in read_failure(path)


def test_a_member_that_is_not_npy_says_so(tmp_path: Path) -> None:
    path = tmp_path / "table.npz"
    write_npz(path, b"not an array", npy(VALUES), zipfile.ZIP_DEFLATED)
    assert read_failure(path).startswith("table.npz: keys is not an .npy array")


@pytest.mark.parametrize("compression", [zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED])
@pytest.mark.parametrize("shard", [None, (1, 2)])
def test_well_formed_tables_read_as_before(
    tmp_path: Path, compression: int, shard: tuple[int, int] | None
) -> None:
    path = tmp_path / "table.npz"
    texts = np.array([b"a", b"bb", b"ccc", b"d"])
    write_npz(path, npy(KEYS), npy(texts), compression)
    keys, values = read_table(str(path), None, None, shard)
    mine = slice(None) if shard is None else KEYS % 2 == 1
    np.testing.assert_array_equal(keys, KEYS[mine])
    assert values.tolist() == texts[mine].tolist()


def test_rows_of_zero_width_read_without_reading_bytes(tmp_path: Path) -> None:
    path = tmp_path / "table.npz"
    write_npz(path, npy(KEYS), npy(np.zeros((4, 0), np.float32)), zipfile.ZIP_DEFLATED)
    _, values = read_table(str(path), None, None, None)
    assert values.shape == (4, 0)
