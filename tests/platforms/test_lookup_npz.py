"""Hostile table.npz files (red team 4 F5): every header or zip directory a table cannot have is
a permanent load error naming the array, raised before anything is allocated for it."""

from __future__ import annotations

import io
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest

from pyserving.core.harness import is_permanent
from pyserving.errors import FailedPrecondition
from pyserving.platforms.lookup_files import read_table
from tests.platforms.test_lookup_files import KEYS, npy, read_failure, write_npz


def npy_header(
    descr: str, shape: tuple[int, ...], fortran: bool = False, body: bytes = b""
) -> bytes:
    """An .npy whose header says anything, numpy's checks not applied."""
    out = io.BytesIO()
    header = {"descr": descr, "fortran_order": fortran, "shape": shape}
    np.lib.format.write_array_header_1_0(out, header)
    return out.getvalue() + body


ONES = npy(np.ones(4, np.float32))

CASES = {
    "negative keys": (npy_header("<i8", (-1,)), ONES, "the keys array's shape [-1] is negative"),
    "negative values": (
        npy(KEYS),
        npy_header("<f4", (-2, -2), body=bytes(16)),
        "the values array's shape [-2, -2] is negative",
    ),
    "negative column-major values": (
        npy(KEYS),
        npy_header("<f4", (-2, -2), fortran=True, body=bytes(16)),
        "the values array's shape [-2, -2] is negative",
    ),
    "rows of nothing numpy refuses": (
        npy(KEYS),
        npy_header("<f4", (4, 1 << 62, 0)),
        "the values array's shape [4, 4611686018427387904, 0] is too big",
    ),
    "more values than keys, of nothing": (
        npy(KEYS),
        npy_header("<f4", (1 << 40, 0)),
        "4 keys but 1099511627776 values",
    ),
    "float keys": (npy(KEYS.astype(np.float64)), ONES, "keys must be integers or text"),
    "void values": (npy(KEYS), npy_header("|V0", (4,)), "values must be numbers or text"),
    "structured values": (
        npy(KEYS),
        npy(np.zeros(4, dtype=[("a", "<f4"), ("b", "<i8")])),
        "values must be numbers or text",
    ),
    "datetime values": (npy(KEYS), npy(np.arange(4).astype("M8[s]")), "values must be numbers"),
}


@pytest.mark.parametrize("shard", [None, (0, 2)])
@pytest.mark.parametrize("case", CASES)
def test_a_header_no_table_can_have_is_a_permanent_error_naming_the_array(
    tmp_path: Path, case: str, shard: tuple[int, int] | None
) -> None:
    keys, values, expected = CASES[case]
    path = tmp_path / "table.npz"
    write_npz(path, keys, values, zipfile.ZIP_STORED)
    message = read_failure(path, shard)
    assert message.startswith("table.npz: ") and expected in message
    with pytest.raises(FailedPrecondition) as caught:
        read_table(str(path), None, None, shard)
    assert is_permanent(caught.value)  # not retried: the same files fail the same way


@pytest.mark.parametrize("method", [zipfile.ZIP_LZMA, zipfile.ZIP_BZIP2])
def test_members_compressed_with_a_method_numpy_does_not_write_are_refused(
    tmp_path: Path, method: int
) -> None:
    # bzip2 and lzma bound nothing: a directory claiming 4 GiB let 2 GiB be reserved
    path = tmp_path / "table.npz"
    write_npz(path, npy(KEYS), npy_header("<f4", (1 << 30,), body=bytes(64)), method)
    message = read_failure(path)
    assert f"the keys array is compressed with zip method {method}" in message


def test_an_array_held_twice_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "table.npz"
    write_npz(path, npy(KEYS), ONES, zipfile.ZIP_STORED)
    with zipfile.ZipFile(path, "a") as archive:
        archive.writestr("keys", npy(KEYS[::-1].copy()))  # which one would win?
    assert read_failure(path) == "table.npz holds the keys array 2 times"


@pytest.mark.parametrize("shard", [None, (0, 2)])
def test_stored_values_whose_directory_claims_more_than_the_file_are_not_mapped(
    tmp_path: Path, shard: tuple[int, int] | None
) -> None:
    path = tmp_path / "table.npz"
    values = npy_header("<f4", (4, 1 << 24), body=bytes(16))
    write_npz(path, npy(KEYS), values, zipfile.ZIP_STORED)
    data = bytearray(path.read_bytes())
    entry = data.rindex(b"values.npy") - 46  # its central directory entry: 46 bytes, its name
    assert data[entry : entry + 4] == b"PK\x01\x02"
    for offset in (20, 24):  # stored: compressed and uncompressed sizes alike
        struct.pack_into("<I", data, entry + offset, (1 << 28) + len(values))
    path.write_bytes(bytes(data))
    message = read_failure(path, shard)  # before: numpy's "mmap length is greater than file size"
    assert "the values array declares [4, 16777216] float32" in message
    assert "corrupt or truncated" in message
