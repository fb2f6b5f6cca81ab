"""Reading a lookup table's file (`table.tsv` / `.csv` / `.npz` / `.parquet`), optionally only
the rows of one shard (an npz: lookup_npz.py).

A shard's rows are picked while the file is read, so a shard never holds the whole table: an npz
is read key array first, then its value array in slices of rows; a parquet file key column first,
then its value columns one row group at a time. Text tables are small and parsed whole.
"""

from __future__ import annotations

import csv
import logging
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from pyserving.errors import FailedPrecondition
from pyserving.platforms.lookup_index import as_bytes_list, shard_of
from pyserving.platforms.lookup_npz import Shard, read_npz

__all__ = ["Shard", "read_keys", "read_table"]

_log = logging.getLogger(__name__)


def read_table(
    file: str, header: bool | None, key_type: str | None, shard: Shard | None
) -> tuple[np.ndarray, np.ndarray]:
    """(keys, values) of `file` (keys INT64 or object arrays of bytes), only `shard`'s rows when
    given. Raises FailedPrecondition naming the problem."""
    name = os.path.basename(file)
    if name == "table.npz":
        return read_npz(file, shard, lambda raw: _normalise_keys(raw, key_type))
    if name == "table.parquet":
        return _read_parquet(file, key_type, shard)
    raw_keys, values = _read_text(file, "\t" if name == "table.tsv" else ",", header)
    keys = _normalise_keys(raw_keys, key_type)
    if shard is None:
        return keys, values
    mine = shard_of(keys, shard[1]) == shard[0]
    return keys[mine], values[mine]


def read_keys(file: str, string_keys: bool) -> np.ndarray:
    """The keys of a text file with one key per line (a delta's `deleted.txt`), as the table's
    key type; blank lines are skipped."""
    with open(file, encoding="utf-8") as stream:
        lines = [line.rstrip("\r\n") for line in stream]
    texts = [line for line in lines if line.strip()]
    if string_keys:
        return np.array(as_bytes_list(texts), dtype=object)
    try:
        return np.array([int(t) for t in texts], dtype=np.int64)
    except ValueError as exc:
        raise FailedPrecondition(
            f"{os.path.basename(file)}: the table's keys are integers: {exc}"
        ) from None


def _normalise_keys(keys: Sequence[Any] | np.ndarray, key_type: str | None) -> np.ndarray:
    array = np.asarray(keys)
    if key_type != "string" and array.dtype.kind in "iu":
        return array.astype(np.int64)
    texts = [k if isinstance(k, bytes) else str(k) for k in array.tolist()]
    if key_type != "string":
        try:
            return np.array([int(t) for t in texts], dtype=np.int64)
        except ValueError:
            if key_type == "int":
                raise FailedPrecondition("key_type is int but some keys are not integers") from None
    return np.array([t if isinstance(t, bytes) else t.encode() for t in texts], dtype=object)


def _values_array(columns: list[list[Any]]) -> np.ndarray:
    try:
        numeric = np.array(columns, dtype=np.float32).T
    except ValueError:
        if len(columns) != 1:
            raise FailedPrecondition(
                "value columns must be numeric (several columns make a vector)"
            ) from None
        vectors = _vector_column(columns[0])
        if vectors is not None:
            return vectors
        return np.array([str(v).encode() for v in columns[0]], dtype=object)
    if numeric.ndim == 3:  # one column of equal-length lists (parquet list<float>)
        return np.ascontiguousarray(numeric[:, :, 0].T)
    return numeric[:, 0].copy() if numeric.shape[1] == 1 else np.ascontiguousarray(numeric)


def _numbers(value: Any) -> list[float] | None:
    """`value` as a list of numbers (one number, a list, or text such as `0.1,0.2` / `0.1 0.2` /
    `[0.1, 0.2]`), or None when it is not one."""
    if isinstance(value, list | tuple | np.ndarray):
        items: Sequence[Any] = list(value)
    else:
        text = value.decode() if isinstance(value, bytes) else str(value)
        text = text.strip()
        if text.startswith("[") and text.endswith("]"):
            text = text[1:-1]
        items = text.split(",") if "," in text else text.split()
    try:
        return [float(item) for item in items] if items else None
    except (TypeError, ValueError):
        return None


def _vector_column(column: list[Any]) -> np.ndarray | None:
    """One value column whose every value is a list of numbers → FP32 [rows, dim]; None when
    some value is not numbers (the column is then text). Lists of different lengths fail."""
    rows: list[list[float]] = []
    for value in column:
        numbers = _numbers(value)
        if numbers is None:
            return None
        if rows and len(numbers) != len(rows[0]):
            raise FailedPrecondition(
                f"row {len(rows) + 1} holds {len(numbers)} numbers, the first {len(rows[0])}:"
                " a vector column needs the same length in every row"
            )
        rows.append(numbers)
    return np.array(rows, dtype=np.float32)


def _is_int(text: str) -> bool:
    try:
        int(text)
    except ValueError:
        return False
    return True


def _is_header(first: list[str], rest: list[list[str]]) -> bool:
    """Whether `first` cannot be a data row of the table whose other rows are `rest`."""
    if not rest:
        return False
    if not _is_int(first[0]) and all(_is_int(row[0]) for row in rest):
        return True
    return any(
        _numbers(first[column]) is None and all(_numbers(row[column]) is not None for row in rest)
        for column in range(1, len(first))
    )


def _read_text(
    file: str, delimiter: str, header: bool | None = None
) -> tuple[list[str], np.ndarray]:
    name = os.path.basename(file)
    with open(file, encoding="utf-8", newline="") as stream:
        rows = [
            (number, row)
            for number, row in enumerate(csv.reader(stream, delimiter=delimiter), 1)
            if row
        ]
    if not rows:
        raise FailedPrecondition(f"{name} is empty: it needs a key column and a value column")
    width = len(rows[0][1])
    if width < 2:
        raise FailedPrecondition(
            f"{name} line {rows[0][0]}: {width} column; a table needs a key column and at least"
            " one value column"
        )
    for line_number, row in rows:
        if len(row) != width:
            raise FailedPrecondition(
                f"{name} line {line_number}: {len(row)} columns, line {rows[0][0]} has {width}"
            )
    if header is None:
        header = _is_header(rows[0][1], [row for _, row in rows[1:]])
        if not header and all(_numbers(field) is None for field in rows[0][1]):
            _log.info(
                "%s: the first line %r is read as data (set header: true if it is a header)",
                file,
                rows[0][1],
            )
    data = [row for _, row in rows[1:]] if header else [row for _, row in rows]
    keys = [row[0] for row in data]
    columns = [[row[column] for row in data] for column in range(1, width)]
    if not keys:
        return keys, np.zeros((0,) if width == 2 else (0, width - 1), np.float32)
    return keys, _values_array(columns)


def _read_parquet(
    file: str, key_type: str | None, shard: Shard | None
) -> tuple[np.ndarray, np.ndarray]:
    try:
        import pyarrow.parquet as pq
    except ImportError as exc:
        raise FailedPrecondition(
            'table.parquet needs pyarrow: pip install "pyserving[lookup]"'
        ) from exc
    parquet = pq.ParquetFile(file)
    names = parquet.schema_arrow.names
    if len(names) < 2:
        raise FailedPrecondition("table.parquet needs a key column and at least one value column")
    keys = _normalise_keys(_column_values(parquet.read(columns=[names[0]]).column(0)), key_type)
    if not len(keys):
        width = len(names) - 1
        return keys, np.zeros((0,) if width == 1 else (0, width), np.float32)
    mine = None if shard is None else shard_of(keys, shard[1]) == shard[0]
    parts = []
    first = 0
    for group in range(parquet.num_row_groups):  # one row group in memory at a time
        table = parquet.read_row_group(group, columns=names[1:])
        rows = table.num_rows
        values = _values_of([_column_values(table.column(i)) for i in range(table.num_columns)])
        parts.append(values if mine is None else values[mine[first : first + rows]])
        first += rows
    values = np.concatenate(parts) if len(parts) > 1 else parts[0]
    return (keys if mine is None else keys[mine]), values


def _column_values(column: Any) -> Any:
    """A parquet column as numpy when it is numbers (or equal-length lists of numbers), else as
    a Python list (text, mixed lists: the text-table rules decide)."""
    import pyarrow as pa

    kind = column.type
    if pa.types.is_integer(kind) or pa.types.is_floating(kind):
        if column.null_count == 0:
            return column.to_numpy()
    elif (
        pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind)
    ):
        inner = kind.value_type
        if (pa.types.is_integer(inner) or pa.types.is_floating(inner)) and column.null_count == 0:
            combined = column.combine_chunks()
            flat = combined.flatten().to_numpy(zero_copy_only=False)
            rows = len(combined)
            if rows and len(flat) % rows == 0:
                lengths = (
                    np.diff(np.asarray(combined.offsets)) if hasattr(combined, "offsets") else None
                )
                if lengths is None or (lengths == len(flat) // rows).all():
                    return flat.astype(np.float32).reshape(rows, len(flat) // rows)
    return column.to_pylist()


def _values_of(columns: list[Any]) -> np.ndarray:
    if all(isinstance(c, np.ndarray) and c.ndim == 1 for c in columns):
        stacked = np.column_stack(columns).astype(np.float32)
        return stacked[:, 0].copy() if stacked.shape[1] == 1 else stacked
    if len(columns) == 1 and isinstance(columns[0], np.ndarray):
        return columns[0]
    return _values_array([c.tolist() if isinstance(c, np.ndarray) else c for c in columns])
