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

Big tables (docs/big-tables.md): `shard: {index: i, count: n}` loads only shard i's rows (INT64
key k: k mod n; BYTES key k: crc32(k) mod n) and answers other keys as missing. A version whose
directory holds `delta.yaml` (`base: <version>`) is its base version plus this directory's rows
(added or replacing) less the keys of its optional `deleted.txt`; it shares the base's rows (no
copy), so the base must be loaded when the delta loads, and a delta may be the base of another.
"""

from __future__ import annotations

import os
import threading
import weakref
from collections.abc import Mapping
from typing import Any

import numpy as np
import yaml

from pyserving.errors import FailedPrecondition, Unavailable
from pyserving.platforms.common import FileLoader
from pyserving.platforms.lookup_files import Shard, read_keys, read_table
from pyserving.platforms.lookup_index import KeyIndex
from pyserving.platforms.servable import Servable
from pyserving.platforms.signature import DEFAULT_SIGNATURE, Signature, TensorSpec, v2_datatype

__all__ = ["DELETED_FILE", "DELTA_FILE", "TABLE_FILES", "LookupLoader", "LookupServable"]

TABLE_FILES = ("table.tsv", "table.csv", "table.npz", "table.parquet")
DELTA_FILE = "delta.yaml"
DELETED_FILE = "deleted.txt"

# Loaded tables by (model name, the directory holding its versions, version), so that a delta
# finds its base. Weak: an entry never keeps a table alive; unload removes it explicitly too.
_LOADED: weakref.WeakValueDictionary[tuple[str, str, int], LookupServable] = (
    weakref.WeakValueDictionary()
)
_LOADED_LOCK = threading.Lock()  # guards _LOADED


class LookupLoader(FileLoader):
    """Reads a table file (or a delta on a loaded version) into memory. Config keys: `default`,
    `key_type` (`int` | `string`), `header` (true | false; unset = detected, text tables only),
    `shard` ({index, count}).

    Thread-safety: as Loader.
    """

    resource_factor = 3.0  # parsed text tables take several times their size while loading

    def load_local(self, directory: str, override: Mapping[str, Signature] | None) -> Servable:
        candidates = (os.path.join(directory, name) for name in TABLE_FILES)
        file = next((path for path in candidates if os.path.isfile(path)), None)
        if file is None:
            raise FailedPrecondition(f"no {' / '.join(TABLE_FILES)} in {directory}")
        header = self.config.get("header")
        if header not in (None, True, False):
            raise FailedPrecondition(f"header must be true or false, not {header!r}")
        key_type = self.config.get("key_type")
        if key_type not in (None, "int", "string"):
            raise FailedPrecondition(f"key_type must be int or string, not {key_type!r}")
        base = self._delta_base(directory)
        if base is not None and key_type is None:  # a delta's keys are its base's kind
            key_type = "string" if base.string_keys else "int"
        shard = _shard_setting(self.config.get("shard"))
        keys, values = read_table(file, header, key_type, shard)
        deleted = None
        if base is not None and os.path.isfile(os.path.join(directory, DELETED_FILE)):
            deleted = read_keys(os.path.join(directory, DELETED_FILE), base.string_keys)
        servable = LookupServable(
            keys, values, self.config.get("default"), base=base, deleted=deleted
        )
        with _LOADED_LOCK:
            _LOADED[self._table_id(self.servable_id.version)] = servable
        servable.on_unload = self._forget
        return servable

    def _delta_base(self, directory: str) -> LookupServable | None:
        """The loaded base version this version's `delta.yaml` names; None when not a delta."""
        file = os.path.join(directory, DELTA_FILE)
        if not os.path.isfile(file):
            return None
        try:
            with open(file, encoding="utf-8") as stream:
                document = yaml.safe_load(stream)
        except (OSError, yaml.YAMLError) as exc:
            raise FailedPrecondition(f"{DELTA_FILE}: cannot read it: {exc}") from exc
        base = document.get("base") if isinstance(document, dict) else None
        if not isinstance(base, int) or isinstance(base, bool) or base >= self.servable_id.version:
            raise FailedPrecondition(
                f"{DELTA_FILE} must say base: <an earlier version> (got {base!r})"
            )
        with _LOADED_LOCK:
            table = _LOADED.get(self._table_id(base))
        if table is None:  # retried: the base may be loading now (the manager retries loads)
            raise Unavailable(
                f"version {self.servable_id.version} is a delta on version {base}, which is not"
                f" loaded: load version {base} first (a version policy that keeps both, e.g."
                " latest with num_versions 2, or all)"
            )
        return table

    def _table_id(self, version: int) -> tuple[str, str, int]:
        return (self.servable_id.name, os.path.dirname(self.path.rstrip("/")), version)

    def _forget(self, servable: LookupServable) -> None:
        key = self._table_id(self.servable_id.version)
        with _LOADED_LOCK:
            if _LOADED.get(key) is servable:
                del _LOADED[key]


class LookupServable(Servable):
    """An immutable in-memory table, or a delta layered on a base table it shares (no copy);
    lookups are vectorised for INT64 and BYTES keys.

    Thread-safety: `run` may be called from many threads (no layer is ever modified).
    Ownership: a delta keeps its base's rows alive after the base version unloads.
    """

    platform = "lookup"
    string_keys: bool
    values_dtype: np.dtype[Any]

    def __init__(
        self,
        keys: np.ndarray,
        values: np.ndarray,
        default: Any = None,
        base: LookupServable | None = None,
        deleted: np.ndarray | None = None,
    ) -> None:
        if len(keys) != len(values):
            raise FailedPrecondition(f"{len(keys)} keys but {len(values)} values")
        if base is not None and (
            values.dtype != base.values_dtype or values.shape[1:] != base.row_shape
        ):
            raise FailedPrecondition(
                f"the delta's values are {values.dtype} {list(values.shape[1:])}, its base's"
                f" {base.values_dtype} {list(base.row_shape)}: a delta must keep the value type"
            )
        self._index = KeyIndex(keys)
        self.string_keys = self._index.string_keys if base is None else base.string_keys
        if base is not None and len(keys) and self._index.string_keys != base.string_keys:
            raise FailedPrecondition("the delta's keys are not of its base's key type")
        self._values = values
        self._base = base
        self._deleted = KeyIndex(deleted) if deleted is not None and len(deleted) else None
        self.values_dtype = values.dtype
        self.row_shape: tuple[int, ...] = tuple(values.shape[1:])
        self._default = _default_row(values, default)
        self.on_unload: Any = None  # set by LookupLoader: forgets this table for deltas
        key_spec = TensorSpec("keys", "BYTES" if self.string_keys else "INT64", (-1,))
        value_spec = TensorSpec("values", v2_datatype(values.dtype), (-1, *self.row_shape))
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
        values = np.empty((len(keys), *self.row_shape), dtype=self.values_dtype)
        found = self._fill(keys, np.arange(len(keys)), values)
        if not found.all():
            values[~found] = self._default
        return {"values": values, "found": found}

    def _fill(self, keys: np.ndarray, slots: np.ndarray, out: np.ndarray) -> np.ndarray:
        """Write the rows of `keys` found in this table (or its bases) into `out[slots]`;
        returns which were found."""
        rows = self._index.rows(keys)
        found = rows >= 0
        if found.any():
            out[slots[found]] = self._values[rows[found]]
        if self._base is None or found.all():
            return found
        rest = np.flatnonzero(~found)
        if self._deleted is not None:  # deleted here: missing, whatever the base holds
            rest = rest[self._deleted.rows(keys[rest]) < 0]
        if len(rest):
            found[rest] = self._base._fill(keys[rest], slots[rest], out)
        return found

    def unload(self) -> None:
        if self.on_unload is not None:
            self.on_unload(self)

    def memory_bytes(self) -> int | None:
        """This layer's rows and index plus every base layer it keeps alive (counted again when
        the base version is loaded too: the budget errs on the safe side)."""
        size = self._values.nbytes + self._index.nbytes()
        if self._deleted is not None:
            size += self._deleted.nbytes()
        if self._base is not None:
            size += self._base.memory_bytes() or 0
        return int(size)


def _shard_setting(setting: Any) -> Shard | None:
    if setting is None:
        return None
    index = setting.get("index") if isinstance(setting, dict) else None
    count = setting.get("count") if isinstance(setting, dict) else None
    if not (isinstance(index, int) and isinstance(count, int) and 0 <= index < count):
        raise FailedPrecondition(
            f"shard must be {{index: i, count: n}} with 0 <= i < n, not {setting!r}"
        )
    return index, count


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
