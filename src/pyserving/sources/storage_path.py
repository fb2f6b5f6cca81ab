"""StoragePathSource: polls model base paths (any fsspec filesystem) for numbered version dirs.

Follows TF Serving's FileSystemStoragePathSource (reference/tfserving.md §1.11) with one deliberate
difference: errors are per servable. A base path that is missing or unreadable sends nothing for
that servable (so its loaded versions keep serving) while the other servables are still polled.
"""

from __future__ import annotations

import hashlib
import logging
import os
import posixpath
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

import fsspec
from fsspec.implementations.local import LocalFileSystem

from pyserving.core.ids import ServableData, ServableId
from pyserving.sources.base import AspiredVersionsCallback

logger = logging.getLogger(__name__)

# Versions travel as int64 in both APIs; larger all-digit names are not versions.
_MAX_VERSION = 2**63 - 1
# File-info keys that carry a modification stamp, by filesystem (local, s3, gcs, memory).
_STAMP_KEYS = ("mtime", "LastModified", "updated", "created")


@dataclass(frozen=True, slots=True)
class VersionPolicy:
    """Which of the numbered versions under a base path are aspired: latest N, all, or specific."""

    kind: Literal["latest", "all", "specific"] = "latest"
    num_versions: int = 1
    versions: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if self.kind not in ("latest", "all", "specific"):
            raise ValueError(f"unknown version policy {self.kind!r}")
        # TF Serving clamps latest{num_versions} to at least 1.
        object.__setattr__(self, "num_versions", max(1, self.num_versions))
        object.__setattr__(self, "versions", tuple(sorted(set(self.versions))))

    @classmethod
    def latest(cls, n: int = 1) -> VersionPolicy:
        """The `n` highest versions; `n` is clamped to at least 1, as TF Serving does."""
        return cls("latest", num_versions=n)

    @classmethod
    def all(cls) -> VersionPolicy:
        return cls("all")

    @classmethod
    def specific(cls, versions: Iterable[int]) -> VersionPolicy:
        """Exactly these versions (matched numerically, so directory `0017` is version 17)."""
        return cls("specific", versions=tuple(versions))

    def select(self, available: Iterable[int]) -> list[int]:
        """The aspired versions among `available`, ascending."""
        present = sorted(set(available))
        if self.kind == "latest":
            return present[-self.num_versions :]
        if self.kind == "specific":
            wanted = set(self.versions)
            return [v for v in present if v in wanted]
        return present


@dataclass(frozen=True, slots=True)
class ServableToMonitor:
    """One servable stream: its name, base path (local path or fsspec URL) and version policy."""

    name: str
    base_path: str
    version_policy: VersionPolicy = field(default_factory=VersionPolicy.latest)


@dataclass(frozen=True, slots=True)
class StoragePathSourceOptions:
    """What to poll and how often; `file_system_poll_wait_seconds == 0` polls once."""

    servables: tuple[ServableToMonitor, ...] = ()
    file_system_poll_wait_seconds: float = 1.0

    def __post_init__(self) -> None:
        names = [s.name for s in self.servables]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"servable names must be unique; repeated: {', '.join(duplicates)}")
        if self.file_system_poll_wait_seconds < 0:
            raise ValueError("file_system_poll_wait_seconds must be >= 0")


class StoragePathSource:
    """Emits `ServableData[str]` (data = version directory path) per servable, from polling.

    Each item's `revision` fingerprints the version directory's files (relative names, sizes,
    modification stamps), so a version that failed to load is retried when its files change.
    A stream's list is sent only when it differs (ids, paths, revisions) from the last one sent
    for that stream; the first poll of a stream always sends.

    Thread-safety: every method may be called from any thread. Polls and config updates are
    serialised by one lock, and the callback runs with that lock held (from the polling thread
    or from the caller of `poll_once` / `update_config`), so a stream's lists arrive in order;
    the callback must not call back into this source.
    Blocking: `poll_once` and `update_config` do filesystem I/O; `stop` waits for a running poll.
    """

    def __init__(self, options: StoragePathSourceOptions) -> None:
        # guards _options, _callback, _last_sent, _warnings, _polled; held for a whole poll
        self._lock = threading.Lock()
        self._options = options
        self._callback: AspiredVersionsCallback[str] | None = None
        # stream name → (version, path, revision) of the last list sent
        self._last_sent: dict[str, tuple[tuple[int, str, str], ...]] = {}
        # stream name → warnings logged at the last poll (repeats are logged at DEBUG)
        self._warnings: dict[str, set[str]] = {}
        self._polled = False
        self._stop_event = threading.Event()
        self._thread: threading.Thread | None = None

    def set_aspired_versions_callback(self, callback: AspiredVersionsCallback[str]) -> None:
        """Set where lists go; raises RuntimeError when called a second time."""
        with self._lock:
            if self._callback is not None:
                raise RuntimeError("StoragePathSource: aspired versions callback already set")
            self._callback = callback

    def poll_once(self) -> None:
        """Poll every servable once, synchronously, sending the lists that changed."""
        with self._lock:
            self._require_callback_locked()
            for servable in self._options.servables:
                self._poll_servable_locked(servable)
            self._polled = True

    def start(self) -> None:
        """Poll in a daemon thread every `file_system_poll_wait_seconds`; `stop()` ends it.

        The first poll runs at once unless `poll_once()` already ran. With a poll wait of 0 the
        source polls once in all, so after a `poll_once()` no thread is started. Raises
        RuntimeError when already started or when no callback is set.
        """
        with self._lock:
            self._require_callback_locked()
            if self._thread is not None:
                raise RuntimeError("StoragePathSource already started")
            wait_s = self._options.file_system_poll_wait_seconds
            if self._polled and wait_s == 0:
                return
            self._thread = threading.Thread(
                target=self._poll_loop,
                args=(wait_s, self._polled),
                name="pyserving-storage-path-poll",
                daemon=True,
            )
            self._thread.start()

    def stop(self) -> None:
        """Stop polling for good; waits for a poll that is under way, never for the interval."""
        self._stop_event.set()
        thread = self._thread
        if thread is not None:
            thread.join()

    def update_config(self, options: StoragePathSourceOptions) -> None:
        """Replace the servables: removed ones get an empty list at once, new or changed ones are
        polled at once. Raises ValueError when the poll wait changes, as TF Serving does."""
        with self._lock:
            old = self._options
            if options.file_system_poll_wait_seconds != old.file_system_poll_wait_seconds:
                raise ValueError("Changing file_system_poll_wait_seconds is not supported")
            self._options = options
            if self._callback is None:
                return
            kept = {s.name for s in options.servables}
            for servable in old.servables:
                if servable.name not in kept:
                    self._last_sent.pop(servable.name, None)
                    self._warnings.pop(servable.name, None)
                    self._send_locked(servable.name, [])
            previous = set(old.servables)
            for servable in options.servables:
                if servable not in previous:
                    self._poll_servable_locked(servable)

    # ------------------------------------------------------------------------------ helpers

    def _require_callback_locked(self) -> None:
        if self._callback is None:
            raise RuntimeError("StoragePathSource: set_aspired_versions_callback() first")

    def _poll_loop(self, wait_s: float, wait_first: bool) -> None:
        if wait_first and self._stop_event.wait(wait_s):
            return
        while not self._stop_event.is_set():
            try:
                self.poll_once()
            except Exception:  # edge: a broken target must not end polling for every model
                logger.exception("storage path poll failed")
            if wait_s == 0 or self._stop_event.wait(wait_s):
                return

    def _poll_servable_locked(self, servable: ServableToMonitor) -> None:
        warnings: list[str] = []
        try:
            items = _list_aspired(servable, warnings)
        except Exception as exc:  # edge: per-servable isolation; never send a list on error
            if isinstance(exc, FileNotFoundError):
                message = (
                    f"Could not find base path {servable.base_path} for servable {servable.name}"
                )
            else:
                message = (
                    f"filesystem access error polling servable {servable.name} at base path "
                    f"{servable.base_path}: {type(exc).__name__}: {exc}"
                )
            self._log_warnings_locked(servable.name, [message])
            return
        self._log_warnings_locked(servable.name, warnings)
        key = tuple((item.id.version, item.data or "", item.revision) for item in items)
        if self._last_sent.get(servable.name) == key:
            return
        self._last_sent[servable.name] = key
        self._send_locked(servable.name, items)

    def _send_locked(self, name: str, items: list[ServableData[str]]) -> None:
        assert self._callback is not None
        logger.debug("aspiring %s: versions %s", name, [item.id.version for item in items])
        self._callback(name, items)

    def _log_warnings_locked(self, name: str, messages: list[str]) -> None:
        # WARNING the first time a message appears for this servable, DEBUG while it repeats.
        before = self._warnings.get(name, set())
        for message in messages:
            logger.log(logging.DEBUG if message in before else logging.WARNING, "%s", message)
        self._warnings[name] = set(messages)


def _list_aspired(servable: ServableToMonitor, warnings: list[str]) -> list[ServableData[str]]:
    """The aspired items of one servable, ascending; appends what to warn about to `warnings`.

    Raises FileNotFoundError when the base path does not exist, or whatever the filesystem
    raises when it cannot be read.
    """
    fs, root = fsspec.core.url_to_fs(servable.base_path)
    fs.invalidate_cache(root)  # remote filesystems cache listings; a poll must see new versions
    if not fs.isdir(root):
        raise FileNotFoundError(root)
    local = isinstance(fs, LocalFileSystem)
    by_version: dict[int, str] = {}  # version → directory name
    for info in sorted(fs.ls(root, detail=True), key=lambda i: i["name"]):
        if info.get("type") != "directory":
            continue
        child = posixpath.basename(info["name"].rstrip("/"))
        version = _parse_version(child)
        if version is None:
            logger.debug("ignoring non-numeric directory %r under %s", child, servable.base_path)
            continue
        if version in by_version:
            # Sorted listing: the first name wins, so the choice is stable from poll to poll.
            warnings.append(
                f"Servable {servable.name}: directories {by_version[version]!r} and {child!r} "
                f"under base path {servable.base_path} are both version {version}; "
                f"using {by_version[version]!r}"
            )
            continue
        by_version[version] = child

    if not by_version:
        warnings.append(
            f"No versions of servable {servable.name} found under base path "
            f"{servable.base_path}. Did you forget to name your leaf directory as a number "
            "(eg. '/1/')?"
        )
        return []
    policy = servable.version_policy
    selected = policy.select(by_version)
    if policy.kind == "specific":
        missing = sorted(set(policy.versions) - set(selected))
        if missing:
            warnings.append(
                f"Servable {servable.name}: versions {missing} not found under base path "
                f"{servable.base_path}"
            )
    items = []
    for version in selected:
        child = by_version[version]
        fs_path = posixpath.join(root, child)
        data = fs_path if local else servable.base_path.rstrip("/") + "/" + child
        revision = _fingerprint(fs.find(fs_path, detail=True), fs_path)
        items.append(ServableData(ServableId(servable.name, version), data, revision=revision))
    return items


def _parse_version(name: str) -> int | None:
    if not (name.isascii() and name.isdigit()):
        return None
    version = int(name)
    return version if version <= _MAX_VERSION else None


def _fingerprint(files: dict[str, dict[str, Any]], directory: str) -> str:
    """A short hash of the relative names, sizes and modification stamps of `files`."""
    digest = hashlib.sha256()
    prefix = directory.rstrip("/") + "/"
    for path in sorted(files):
        info = files[path]
        relative = path[len(prefix) :] if path.startswith(prefix) else os.path.basename(path)
        stamp = next((info[k] for k in _STAMP_KEYS if info.get(k) is not None), "")
        digest.update(f"{relative}\0{info.get('size')}\0{stamp}\n".encode())
    return digest.hexdigest()[:16]
