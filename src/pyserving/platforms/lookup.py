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
(added or replacing) less the keys of its optional `deleted.txt` (lookup_delta.py). It shares
the base's rows (no copy) when the base's table is in memory, and reads the base's files
otherwise, so a delta loads whether or not its base version is loaded; a delta may be the base of
another.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from pyserving.core.ids import ServableId
from pyserving.errors import FailedPrecondition
from pyserving.platforms.common import FileLoader, local_version_dir
from pyserving.platforms.lookup_delta import (
    DELETED_FILE,
    DELTA_FILE,
    TableKey,
    TableRegistry,
    files_fingerprint,
    read_delta_base,
    table_key,
    version_directories,
)
from pyserving.platforms.lookup_files import Shard, read_keys, read_table
from pyserving.platforms.lookup_index import KeyIndex
from pyserving.platforms.servable import Servable
from pyserving.platforms.signature import DEFAULT_SIGNATURE, Signature, TensorSpec, v2_datatype
from pyserving.sources.storage_path import redact_url

__all__ = ["TABLE_FILES", "LookupLoader", "LookupServable"]

TABLE_FILES = ("table.tsv", "table.csv", "table.npz", "table.parquet")

# Tables in memory, so that a delta shares its base's rows and a version shares the table a delta
# already read for it.
_TABLES = TableRegistry()


class LookupLoader(FileLoader):
    """Reads a table file (or a delta on its base version) into memory. Config keys: `default`,
    `key_type` (`int` | `string`), `header` (true | false; unset = detected, text tables only),
    `shard` ({index, count}).

    `origin` is where the version's files came from (the path, unless the loader reads a local
    copy of a remote version): a delta finds its base's directory next to it.
    Thread-safety: as Loader.
    """

    resource_factor = 3.0  # parsed text tables take several times their size while loading

    def __init__(
        self, servable_id: ServableId, path: str, config: Mapping[str, Any] | None = None
    ) -> None:
        super().__init__(servable_id, path, config)
        self.origin = path

    def estimate_resources(self) -> int:
        """The version's files, plus its bases' files down to the first base whose table is in
        memory: the delta then reads those bases' files itself."""
        total = super().estimate_resources()
        name, origin, version = self.servable_id.name, self.origin, self.servable_id.version
        try:
            siblings: dict[int, str] | None = None  # the version directories, listed once
            while True:  # a loop, not recursion: a chain may be hundreds of deltas deep
                base = read_delta_base(origin, version)
                if base is None:
                    return total
                if siblings is None:
                    siblings = version_directories(origin)
                base_origin = siblings.get(base)
                if base_origin is None:
                    return total
                if _TABLES.holds(table_key(name, origin, base)):
                    return total
                base_files = LookupLoader(ServableId(name, base), base_origin, self.config)
                total += FileLoader.estimate_resources(base_files)  # its files, not its bases
                origin, version = base_origin, base
        except (OSError, FailedPrecondition):
            return total  # the load reports what is wrong

    def load_local(self, directory: str, override: Mapping[str, Signature] | None) -> Servable:
        settings = _settings(self.config)
        return self._table(self.servable_id.version, self.origin, directory, settings)

    def _table(
        self, version: int, origin: str, directory: str, settings: _Settings
    ) -> LookupServable:
        """The table of `version` (files at `origin`, read from the local `directory`): the one
        in memory when its files and settings are unchanged, else read on the tables of its
        bases.

        Walks down the chain of bases in a loop (a chain may be hundreds of deltas deep, past
        Python's recursion limit), holding each layer's reading lock, to the first base whose
        table is in memory or to the full table; then reads the layers missing from the
        deepest up, putting each in memory.
        """
        missing: list[_Layer] = []  # layers to read, from `version` down
        table: LookupServable | None = None
        siblings: dict[int, str] | None = None  # the version directories, listed once
        with contextlib.ExitStack() as reading:
            at: tuple[int, str, str | None] = (version, origin, directory)
            while True:
                key = table_key(self.servable_id.name, at[1], at[0])
                identity = (files_fingerprint(at[1]), settings)
                reading.enter_context(_TABLES.reading(key))
                table = _TABLES.get(key, identity)
                if table is not None:
                    break
                layer = _Layer(*at, key, identity)
                missing.append(layer)
                try:
                    layer.base = read_delta_base(layer.directory or layer.origin, layer.version)
                    if layer.base is None:
                        break
                    if siblings is None:
                        siblings = version_directories(origin)
                    at = (layer.base, _base_origin(layer, siblings), None)
                except FailedPrecondition as exc:
                    raise _in_chain(missing, exc) from exc
            for depth in range(len(missing) - 1, -1, -1):
                layer = missing[depth]
                try:
                    if layer.directory is None:
                        with local_version_dir(layer.origin) as local:
                            table = self._read(layer, local, settings, table)
                    else:
                        table = self._read(layer, layer.directory, settings, table)
                except FailedPrecondition as exc:
                    raise _in_chain(missing[: depth + 1], exc) from exc
                _TABLES.put(layer.key, layer.identity, table)
        assert table is not None  # the walk read at least `version` or found it in memory
        return table

    def _read(
        self, layer: _Layer, directory: str, settings: _Settings, base: LookupServable | None
    ) -> LookupServable:
        """`layer`'s table from its files in `directory`, on `base` when it is a delta."""
        header, key_type, shard, default = settings
        candidates = (os.path.join(directory, name) for name in TABLE_FILES)
        file = next((path for path in candidates if os.path.isfile(path)), None)
        deleted_file = os.path.join(directory, DELETED_FILE)
        if base is None:
            if file is None:
                raise FailedPrecondition(f"no {' / '.join(TABLE_FILES)} in {directory}")
            keys, values = read_table(file, header, key_type, shard)
            return LookupServable(keys, values, default)
        if file is None and not os.path.isfile(deleted_file):
            raise FailedPrecondition(
                f"version {layer.version} is a delta on version {layer.base} ({DELTA_FILE}) but"
                f" holds neither rows added or replaced ({' / '.join(TABLE_FILES)}) nor keys"
                f" removed ({DELETED_FILE}); a delta needs one of them or both"
            )
        if file is None:  # a delta that only removes keys
            keys = np.zeros(0, dtype=object if base.string_keys else np.int64)
            values = np.zeros((0, *base.row_shape), dtype=base.values_dtype)
        else:  # a delta's keys are its base's kind
            keys, values = read_table(
                file, header, key_type or ("string" if base.string_keys else "int"), shard
            )
        deleted = None
        if os.path.isfile(deleted_file):
            deleted = read_keys(deleted_file, base.string_keys)
        return LookupServable(keys, values, default, base=base, deleted=deleted)


@dataclasses.dataclass
class _Layer:
    """One version in a chain of deltas: where its files are, and (once known) its base."""

    version: int
    origin: str
    directory: str | None  # a local copy of `origin` when there is one
    key: TableKey
    identity: object  # what its table is made from: files and settings
    base: int | None = None  # None: the full table (or not read yet)


def _base_origin(layer: _Layer, siblings: dict[int, str]) -> str:
    """The directory of `layer`'s base version among its `siblings`; FailedPrecondition when
    there is none."""
    assert layer.base is not None
    base_origin = siblings.get(layer.base)
    if base_origin is None:
        raise FailedPrecondition(
            f"version {layer.version} is a delta on version {layer.base} ({DELTA_FILE}), which"
            f" does not exist: no directory of version {layer.base} next to"
            f" {redact_url(layer.origin)}"
        )
    return base_origin


def _in_chain(chain: list[_Layer], exc: FailedPrecondition) -> FailedPrecondition:
    """`exc`, raised for the last layer of `chain`, as the failure of the first layer: a delta
    whose base (or a base further down) cannot be read says which."""
    if len(chain) == 1:
        return exc
    top, bases = chain[0], [layer.version for layer in chain[1:]]
    through = "" if len(bases) == 1 else f" (its bases {' → '.join(map(str, bases))})"
    return FailedPrecondition(
        f"version {top.version} is a delta on version {bases[0]}, which cannot be read"
        f"{through}: {exc.message}"
    )


#: a table's settings from the model config: header, key_type, shard, default
_Settings = tuple[bool | None, str | None, "Shard | None", Any]


def _settings(config: Mapping[str, Any]) -> _Settings:
    header = config.get("header")
    if header not in (None, True, False):
        raise FailedPrecondition(f"header must be true or false, not {header!r}")
    key_type = config.get("key_type")
    if key_type not in (None, "int", "string"):
        raise FailedPrecondition(f"key_type must be int or string, not {key_type!r}")
    default = config.get("default")
    if isinstance(default, list):
        default = tuple(default)  # a table's identity must not share the config's mutable list
    return header, key_type, _shard_setting(config.get("shard")), default


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
        found = self._fill(keys, values)
        if not found.all():
            values[~found] = self._default
        return {"values": values, "found": found}

    def _fill(self, keys: np.ndarray, out: np.ndarray) -> np.ndarray:
        """Write the rows of `keys` found in this table (or its bases) into `out`; returns which
        were found. Walks the layers in a loop: a chain may be hundreds of deltas deep."""
        found = np.zeros(len(keys), dtype=bool)
        rest = np.arange(len(keys))  # the keys no layer above has answered
        layer, layer_keys = self, keys
        while True:
            rows = layer._index.rows(layer_keys)
            hit = rows >= 0
            if hit.any():
                out[rest[hit]] = layer._values[rows[hit]]
                found[rest[hit]] = True
            rest = rest[~hit]
            if layer._deleted is not None and len(rest):  # deleted here: missing below too
                rest = rest[layer._deleted.rows(keys[rest]) < 0]
            if layer._base is None or not len(rest):
                return found
            layer, layer_keys = layer._base, keys[rest]

    def memory_bytes(self) -> int | None:
        """This layer's rows and index plus every base layer it keeps alive (counted again when
        the base version is loaded too: the budget errs on the safe side)."""
        size = 0
        layer: LookupServable | None = self
        while layer is not None:
            size += layer._values.nbytes + layer._index.nbytes()
            if layer._deleted is not None:
                size += layer._deleted.nbytes()
            layer = layer._base
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
