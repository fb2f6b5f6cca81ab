"""Deltas of the lookup platform: reading `delta.yaml`, finding the base version's directory, and
the tables already in memory that a delta (or a version) shares instead of reading them again.

A delta needs its base's rows whenever it loads, whether or not the base version is loaded: after
a restart with `latest: 1` only the delta is aspired, and a worker that replaces a killed one
loads only what the others serve now. So a delta shares its base's table when one is in memory
(the base version is loaded, or another delta holds it) and reads the base's files otherwise
(docs/big-tables.md). Tables in memory are found by (model, the directory of its versions,
version) and used only while their files and the settings that shaped them are unchanged.
"""

from __future__ import annotations

import contextlib
import difflib
import hashlib
import posixpath
import threading
import weakref
from collections.abc import Iterator
from typing import Any

import fsspec
import yaml

from pyserving.errors import FailedPrecondition

__all__ = ["DELETED_FILE", "DELTA_FILE", "DELTA_KEYS", "TableRegistry", "files_fingerprint"]

DELTA_FILE = "delta.yaml"
DELETED_FILE = "deleted.txt"
#: every key `delta.yaml` may hold
DELTA_KEYS = ("base",)

#: (model name, the directory holding its versions, version)
TableKey = tuple[str, str, int]


def read_delta_base(directory: str, version: int) -> int | None:
    """The base version that `directory/delta.yaml` names (`directory`: a local path or an fsspec
    URL); None when the version is not a delta.

    Raises FailedPrecondition naming the key and the problem when the file is malformed.
    """
    fs, root = fsspec.core.url_to_fs(directory)
    file = posixpath.join(root, DELTA_FILE)
    if not fs.isfile(file):
        return None
    where = f"version {version}'s {DELTA_FILE}"
    try:
        with fs.open(file, "rb") as stream:
            document = yaml.safe_load(stream.read().decode("utf-8"))
    except (OSError, yaml.YAMLError, UnicodeDecodeError) as exc:
        raise FailedPrecondition(f"{where}: cannot read it: {exc}") from exc
    if not isinstance(document, dict):
        raise FailedPrecondition(
            f"{where} must be a mapping with the key base: <an earlier version> (got {document!r})"
        )
    for key in document:
        if key not in DELTA_KEYS:
            close = difflib.get_close_matches(str(key), DELTA_KEYS, n=1, cutoff=0.6)
            hint = f"did you mean {close[0]!r}?" if close else f"known: {', '.join(DELTA_KEYS)}"
            raise FailedPrecondition(f"{where}: unknown key {key!r} ({hint})")
    base = document.get("base")
    if not isinstance(base, int) or isinstance(base, bool) or not 0 <= base < version:
        raise FailedPrecondition(
            f"{where}: base must be an earlier version, an integer from 0 to {version - 1}"
            f" (got {base!r})"
        )
    return base


def version_directories(origin: str) -> dict[int, str]:
    """The version directories next to the version directory `origin` (a local path or an
    fsspec URL), by version, spelt like `origin`: directory `0007` is version 7. Listed once, so
    that walking a chain of deltas lists their directory once, not once a layer."""
    fs, root = fsspec.core.url_to_fs(origin)
    parent = posixpath.dirname(root.rstrip("/"))
    try:
        entries = fs.ls(parent, detail=True)
    except FileNotFoundError:
        return {}
    names = sorted(
        posixpath.basename(str(info["name"]).rstrip("/"))
        for info in entries
        if info.get("type") == "directory"
    )
    origin_parent = origin.rstrip("/").rsplit("/", 1)[0]
    directories: dict[int, str] = {}
    for name in names:
        if name.isascii() and name.isdigit():
            directories.setdefault(int(name), f"{origin_parent}/{name}")
    return directories


def files_fingerprint(origin: str) -> str:
    """A hash of the files under the version directory `origin`: names, sizes, stamps, ETags."""
    fs, root = fsspec.core.url_to_fs(origin)
    digest = hashlib.sha256()
    for name, info in sorted(fs.find(root, detail=True).items()):
        stamp = next((info[k] for k in ("mtime", "ETag", "etag", "LastModified") if k in info), "")
        digest.update(f"{name}\0{info.get('size')}\0{stamp}\n".encode())
    return digest.hexdigest()[:16]


def table_key(name: str, origin: str, version: int) -> TableKey:
    return (name, origin.rstrip("/").rsplit("/", 1)[0], version)


class _KeyLock:
    """A lock per table key, kept only while some thread holds or waits for it."""

    __slots__ = ("__weakref__", "lock")

    def __init__(self) -> None:
        self.lock = threading.Lock()


class TableRegistry:
    """The tables in memory, by key, with what they were made from (`identity`: their files'
    fingerprint and the settings that shaped them). Weak: an entry never keeps a table alive.

    Thread-safety: every method may be called from any thread. `reading(key)` serialises the
    reads of one table, so two loads that need it at once read it once; it is only ever taken
    from a version down to its base (an earlier version), so the locks cannot deadlock.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()  # guards _tables, _identities and _locks
        self._tables: weakref.WeakValueDictionary[TableKey, Any] = weakref.WeakValueDictionary()
        self._identities: dict[TableKey, object] = {}  # key → what its table was made from
        self._locks: weakref.WeakValueDictionary[TableKey, _KeyLock] = weakref.WeakValueDictionary()

    @contextlib.contextmanager
    def reading(self, key: TableKey) -> Iterator[None]:
        with self._lock:
            key_lock = self._locks.get(key)
            if key_lock is None:
                key_lock = self._locks[key] = _KeyLock()
        with key_lock.lock:
            yield

    def get(self, key: TableKey, identity: object) -> Any | None:
        """The table in memory for `key` made from `identity`, or None."""
        with self._lock:
            table = self._tables.get(key)
            if table is None or self._identities.get(key) != identity:
                return None
            return table

    def holds(self, key: TableKey) -> bool:
        """Whether some table for `key` is in memory (whatever it was made from)."""
        with self._lock:
            return self._tables.get(key) is not None

    def put(self, key: TableKey, identity: object, table: Any) -> None:
        with self._lock:
            self._tables[key] = table
            self._identities[key] = identity
            for stale in [k for k in self._identities if k not in self._tables]:
                del self._identities[stale]  # bounded: entries of tables no longer in memory
