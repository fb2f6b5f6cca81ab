"""The lookup platform: a key → value table (vocabularies, embeddings, feature stores).

Files (one per version): `table.tsv` / `table.csv` (the key in the first column, the value in the
others, an optional header line), `table.npz` (arrays `keys` and `values`), `table.parquet`
(first column the keys, the others the values; needs pyarrow: `pip install "pyserving[lookup]"`).
Keys are INT64 when every key is an integer, else BYTES (config `key_type: string` forces
BYTES). Several numeric value columns make FP32 vectors; so does one column whose every value is
a list of numbers (`0.1,0.2,0.3`, `0.1 0.2 0.3` or `[0.1, 0.2, 0.3]` in a text table, a list
column in parquet). One numeric column makes FP32 scalars; anything else makes BYTES scalars.

A text table's first line is a header when the config says `header: true`; with `header: false`
it is data. Unset, it is a header only when it cannot be data of the same table: its key is not
an integer while every other key is, or one of its values is not a number (or list of numbers)
while every other row's value in that column is. So a table without a header never loses its
first row; a table of strings only has its first line read as data unless `header: true`.

Signature "serving_default": `keys` [-1] → `values` [-1] or [-1, dim], and `found` BOOL [-1].
A missing key gets the config's `default` (a scalar or a list of `dim` numbers; zeros or b""
when unset) and `found` false.
"""

from __future__ import annotations

import csv
import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from pyserving.errors import FailedPrecondition
from pyserving.platforms.common import FileLoader
from pyserving.platforms.servable import Servable
from pyserving.platforms.signature import DEFAULT_SIGNATURE, Signature, TensorSpec, v2_datatype

__all__ = ["TABLE_FILES", "LookupLoader", "LookupServable"]

TABLE_FILES = ("table.tsv", "table.csv", "table.npz", "table.parquet")
# Python's per-entry cost of the dict index of a string-keyed table, beyond the key bytes
_DICT_ENTRY_BYTES = 120

_log = logging.getLogger(__name__)


class LookupLoader(FileLoader):
    """Reads a table file into memory. Config keys: `default`, `key_type` (`int` | `string`),
    `header` (true | false; unset = detected, text tables only).

    Thread-safety: as Loader.
    """

    resource_factor = 3.0  # parsed text tables take several times their size while loading

    def load_local(self, directory: str, override: Mapping[str, Signature] | None) -> Servable:
        candidates = (os.path.join(directory, name) for name in TABLE_FILES)
        file = next((path for path in candidates if os.path.isfile(path)), None)
        if file is None:
            raise FailedPrecondition(f"no {' / '.join(TABLE_FILES)} in {directory}")
        name = os.path.basename(file)
        keys: Sequence[Any] | np.ndarray
        if name == "table.npz":
            keys, values = _read_npz(file)
        elif name == "table.parquet":
            keys, values = _read_parquet(file)
        else:
            header = self.config.get("header")
            if header not in (None, True, False):
                raise FailedPrecondition(f"header must be true or false, not {header!r}")
            keys, values = _read_text(file, "\t" if name == "table.tsv" else ",", header)
        key_type = self.config.get("key_type")
        if key_type not in (None, "int", "string"):
            raise FailedPrecondition(f"key_type must be int or string, not {key_type!r}")
        return LookupServable(_normalise_keys(keys, key_type), values, self.config.get("default"))


class LookupServable(Servable):
    """An immutable in-memory table; lookups are vectorised for INT64 keys.

    Thread-safety: `run` may be called from many threads (the table is never modified).
    """

    platform = "lookup"

    def __init__(self, keys: np.ndarray, values: np.ndarray, default: Any = None) -> None:
        if len(keys) != len(values):
            raise FailedPrecondition(f"{len(keys)} keys but {len(values)} values")
        self.string_keys = keys.dtype == object
        if self.string_keys:
            self._index = {key: i for i, key in enumerate(keys.tolist())}
            if len(self._index) != len(keys):
                raise FailedPrecondition("the table has duplicate keys")
            self._sorted_keys = keys
            self._order = np.arange(len(keys))
        else:
            self._order = np.argsort(keys, kind="stable")
            self._sorted_keys = keys[self._order]
            if len(keys) > 1 and np.any(self._sorted_keys[1:] == self._sorted_keys[:-1]):
                raise FailedPrecondition("the table has duplicate keys")
        self._values = values
        self._default = _default_row(values, default)
        key_spec = TensorSpec("keys", "BYTES" if self.string_keys else "INT64", (-1,))
        value_spec = TensorSpec("values", v2_datatype(values.dtype), (-1, *values.shape[1:]))
        self._signatures = {
            DEFAULT_SIGNATURE: Signature(
                DEFAULT_SIGNATURE, (key_spec,), (value_spec, TensorSpec("found", "BOOL", (-1,)))
            )
        }

    @property
    def signatures(self) -> dict[str, Signature]:
        return self._signatures

    def __len__(self) -> int:
        return len(self._values)

    def run(self, signature: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        keys = inputs["keys"]
        rows = self._rows(keys)
        found = rows >= 0
        values = self._values[np.where(found, rows, 0)] if len(self._values) else None
        if values is None:
            values = np.repeat(self._default[np.newaxis], len(keys), axis=0)
        elif not found.all():
            values[~found] = self._default
        return {"values": values, "found": found}

    def _rows(self, keys: np.ndarray) -> np.ndarray:
        if self.string_keys:
            index = self._index
            return np.fromiter(
                (index.get(k.encode() if isinstance(k, str) else k, -1) for k in keys.tolist()),
                dtype=np.int64,
                count=len(keys),
            )
        if not len(self._sorted_keys):
            return np.full(len(keys), -1, dtype=np.int64)
        positions = np.searchsorted(self._sorted_keys, keys)
        clipped = np.minimum(positions, len(self._sorted_keys) - 1)
        hit = self._sorted_keys[clipped] == keys
        return np.where(hit, self._order[clipped], -1)

    def memory_bytes(self) -> int | None:
        size = self._values.nbytes + self._sorted_keys.nbytes + self._order.nbytes
        if self.string_keys:
            size += sum(len(k) + _DICT_ENTRY_BYTES for k in self._index)
        return int(size)


def _default_row(values: np.ndarray, default: Any) -> np.ndarray:
    row_shape = values.shape[1:]
    if default is None:
        fill: Any = b"" if values.dtype == object else 0
        return np.full(row_shape, fill, dtype=values.dtype)
    if values.dtype == object:
        if not isinstance(default, str | bytes):
            raise FailedPrecondition(f"default must be a string for a string table: {default!r}")
        text = default.encode() if isinstance(default, str) else default
        return np.full(row_shape, text, dtype=object)
    try:
        row = np.asarray(default, dtype=values.dtype)
        return np.broadcast_to(row, row_shape).copy()
    except (TypeError, ValueError) as exc:
        raise FailedPrecondition(
            f"default {default!r} does not fit the table's values {list(row_shape)}: {exc}"
        ) from exc


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


def _read_npz(file: str) -> tuple[np.ndarray, np.ndarray]:
    with np.load(file, allow_pickle=False) as archive:
        if "keys" not in archive or "values" not in archive:
            raise FailedPrecondition(
                f"table.npz must hold arrays 'keys' and 'values' (has {', '.join(archive.files)})"
            )
        keys, values = archive["keys"], archive["values"]
    if values.dtype.kind in "SU":
        texts = [v.encode() if isinstance(v, str) else v for v in values.tolist()]
        values = np.array(texts, dtype=object)
    return keys, values


def _read_parquet(file: str) -> tuple[list[Any], np.ndarray]:
    try:
        import pyarrow.parquet as pq
    except ImportError as exc:
        raise FailedPrecondition(
            'table.parquet needs pyarrow: pip install "pyserving[lookup]"'
        ) from exc
    table = pq.read_table(file)
    if table.num_columns < 2:
        raise FailedPrecondition("table.parquet needs a key column and at least one value column")
    keys = table.column(0).to_pylist()
    columns = [table.column(i).to_pylist() for i in range(1, table.num_columns)]
    if not keys:
        return keys, np.zeros((0,) if len(columns) == 1 else (0, len(columns)), np.float32)
    return keys, _values_array(columns)
