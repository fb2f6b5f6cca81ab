"""The lookup platform: a key → value table (vocabularies, embeddings, feature stores).

Files (one per version): `table.tsv` / `table.csv` (a header line, then the key in the first
column and the value in the others), `table.npz` (arrays `keys` and `values`), `table.parquet`
(first column the keys, the others the values; needs pyarrow: `pip install "pyserving[lookup]"`).
Keys are INT64 when every key is an integer, else BYTES (config `key_type: string` forces
BYTES). Several numeric value columns make FP32 vectors; one column makes scalars (FP32, or
BYTES when it is not numeric).

Signature "serving_default": `keys` [-1] → `values` [-1] or [-1, dim], and `found` BOOL [-1].
A missing key gets the config's `default` (a scalar or a list of `dim` numbers; zeros or b""
when unset) and `found` false.
"""

from __future__ import annotations

import csv
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


class LookupLoader(FileLoader):
    """Reads a table file into memory. Config keys: `default`, `key_type` (`int` | `string`).

    Thread-safety: as Loader.
    """

    resource_factor = 3.0  # parsed text tables take several times their size while loading

    def load_local(self, directory: str, override: Mapping[str, Signature] | None) -> Servable:
        candidates = (os.path.join(directory, name) for name in TABLE_FILES)
        file = next((path for path in candidates if os.path.isfile(path)), None)
        if file is None:
            raise FailedPrecondition(f"no {' / '.join(TABLE_FILES)} in {directory}")
        name = os.path.basename(file)
        if name == "table.npz":
            keys, values = _read_npz(file)
        elif name == "table.parquet":
            keys, values = _read_parquet(file)
        else:
            keys, values = _read_text(file, "\t" if name == "table.tsv" else ",")
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
        return np.array([str(v).encode() for v in columns[0]], dtype=object)
    return numeric[:, 0].copy() if numeric.shape[1] == 1 else np.ascontiguousarray(numeric)


def _read_text(file: str, delimiter: str) -> tuple[list[str], np.ndarray]:
    with open(file, encoding="utf-8", newline="") as stream:
        reader = csv.reader(stream, delimiter=delimiter)
        header = next(reader, None)
        if header is None or len(header) < 2:
            raise FailedPrecondition(
                f"{os.path.basename(file)}: the first line must be a header: key, value columns"
            )
        keys: list[str] = []
        columns: list[list[str]] = [[] for _ in header[1:]]
        for line_number, row in enumerate(reader, start=2):
            if not row:
                continue
            if len(row) != len(header):
                raise FailedPrecondition(
                    f"{os.path.basename(file)} line {line_number}: {len(row)} columns, the"
                    f" header has {len(header)}"
                )
            keys.append(row[0])
            for column, value in zip(columns, row[1:], strict=True):
                column.append(value)
    if not keys:
        return keys, np.zeros((0,) if len(columns) == 1 else (0, len(columns)), np.float32)
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
