"""A lookup table's npz values stored uncompressed are mapped from the file, not copied, so the
processes of `--workers` share one copy in the page cache (issue 17)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pyserving.platforms.lookup_files import read_table


def write(path: Path, compressed: bool) -> tuple[np.ndarray, np.ndarray]:
    keys = np.arange(1000, dtype=np.int64) * 7
    values = np.random.default_rng(0).random((1000, 16), dtype=np.float32)
    save = np.savez_compressed if compressed else np.savez
    save(path, keys=keys, values=values)
    return keys, values


def is_mapped(array: np.ndarray) -> bool:
    base = array
    while base is not None and not isinstance(base, np.memmap):
        base = base.base
    return isinstance(base, np.memmap)


def test_stored_values_are_mapped_read_only_issue_17(tmp_path: Path) -> None:
    keys, values = write(tmp_path / "table.npz", compressed=False)
    read_keys, read_values = read_table(str(tmp_path / "table.npz"), None, None, None)
    assert is_mapped(read_values) and not read_values.flags.writeable
    assert type(read_values) is np.ndarray
    np.testing.assert_array_equal(read_keys, keys)
    np.testing.assert_array_equal(read_values, values)


def test_compressed_values_are_read_into_memory_issue_17(tmp_path: Path) -> None:
    _, values = write(tmp_path / "table.npz", compressed=True)
    _, read_values = read_table(str(tmp_path / "table.npz"), None, None, None)
    assert not is_mapped(read_values)
    np.testing.assert_array_equal(read_values, values)


def test_a_shard_reads_only_its_rows_issue_17(tmp_path: Path) -> None:
    keys, values = write(tmp_path / "table.npz", compressed=False)
    read_keys, read_values = read_table(str(tmp_path / "table.npz"), None, None, (1, 2))
    assert not is_mapped(read_values)
    np.testing.assert_array_equal(read_values, values[np.isin(keys, read_keys)])
