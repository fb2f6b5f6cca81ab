"""Key indexes of the lookup platform and the shard a key belongs to, all vectorised.

INT64 keys: a sorted copy and `np.searchsorted`. BYTES keys: the same over the keys' 64-bit
hashes, each hit checked against the stored key (so a hash collision between a request key and a
table key is a miss, not a wrong row); the rare table keys that share a hash with another table key
go to a small dict. Both paths touch each request key only through C-level calls (`map(hash)`,
numpy), never a Python loop per key.

Shards (docs/big-tables.md): INT64 key `k` belongs to shard `k mod n`, BYTES key `k` to
`zlib.crc32(k) mod n` (UTF-8 for text keys).
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from typing import Any

import numpy as np

from pyserving.errors import FailedPrecondition

__all__ = ["KeyIndex", "as_bytes_list", "shard_of"]


class KeyIndex:
    """Row numbers of keys in one immutable key array (INT64 or BYTES).

    Thread-safety: immutable once built; `rows` may run on many threads at once.
    """

    def __init__(self, keys: np.ndarray) -> None:
        self.string_keys = keys.dtype == object
        self.size = len(keys)
        self._keys = keys
        # BYTES keys are indexed by hash; `_collided` holds the keys whose hash another key shares
        self._collided: dict[bytes, int] = {}
        self._collided_hashes = np.zeros(0, dtype=np.int64)
        listed = keys.tolist() if self.string_keys else []
        sortable = _hashes(listed) if self.string_keys else keys
        self._order = np.argsort(sortable, kind="stable")
        self._sorted = sortable[self._order]
        # the index and, for BYTES keys, the key objects: counted once, the keys never change
        self._nbytes = self._sorted.nbytes + self._order.nbytes
        if self.string_keys:
            self._nbytes += keys.nbytes + sum(map(len, listed)) + 33 * self.size
        same = self._sorted[1:] == self._sorted[:-1] if self.size > 1 else np.zeros(0, bool)
        if not same.any():
            return
        if not self.string_keys:
            raise FailedPrecondition(
                f"the table has duplicate keys (e.g. {self._sorted[1:][same][0]})"
            )
        shared = np.unique(self._sorted[1:][same])
        rows = np.flatnonzero(np.isin(sortable, shared))
        collided = {keys[row]: int(row) for row in rows.tolist()}
        if len(collided) != len(rows):
            raise FailedPrecondition("the table has duplicate keys")
        self._collided, self._collided_hashes = collided, shared

    def nbytes(self) -> int:
        """Bytes held by the index (and, for BYTES keys, the key objects)."""
        return int(self._nbytes)

    def rows(self, keys: np.ndarray) -> np.ndarray:
        """The row of each key (INT64 [len(keys)]), -1 where the key is not in the table."""
        if not self.size:
            return np.full(len(keys), -1, dtype=np.int64)
        if not self.string_keys:
            return self._search(np.asarray(keys, dtype=np.int64))
        wanted = as_bytes_list(keys)
        hashes = _hashes(wanted)
        rows = self._search(hashes)
        hit = rows >= 0
        if hit.any():  # a request key whose hash equals a table key's is that key only if equal
            same = self._keys[rows[hit]] == np.array(wanted, dtype=object)[hit]
            rows[np.flatnonzero(hit)[~same.astype(bool)]] = -1
        if self._collided:
            for i in np.flatnonzero(np.isin(hashes, self._collided_hashes)).tolist():
                rows[i] = self._collided.get(wanted[i], -1)
        return rows

    def _search(self, keys: np.ndarray) -> np.ndarray:
        positions = np.minimum(np.searchsorted(self._sorted, keys), self.size - 1)
        hit = self._sorted[positions] == keys
        return np.where(hit, self._order[positions], -1)


def as_bytes_list(keys: np.ndarray | Sequence[Any]) -> list[bytes]:
    """BYTES keys as a list of `bytes` (text keys encoded as UTF-8)."""
    items = keys.tolist() if isinstance(keys, np.ndarray) else list(keys)
    if set(map(type, items)) <= {bytes}:  # C-level check, no Python loop per key
        return items
    return [k if isinstance(k, bytes) else str(k).encode() for k in items]


def shard_of(keys: np.ndarray | Sequence[Any], count: int) -> np.ndarray:
    """The shard (INT64 [len(keys)]) of each key among `count` shards."""
    array = keys if isinstance(keys, np.ndarray) else np.asarray(keys)
    if array.dtype.kind in "iu":
        return np.mod(array.astype(np.int64), count)
    checksums = np.fromiter(map(zlib.crc32, as_bytes_list(array)), np.int64, len(array))
    return np.mod(checksums, count)


def _hashes(keys: list[Any]) -> np.ndarray:
    return np.fromiter(map(hash, keys), np.int64, len(keys))
