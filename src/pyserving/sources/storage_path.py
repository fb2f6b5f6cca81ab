"""StoragePathSource: polls model base paths (any fsspec filesystem) for numbered version dirs.

Follows TF Serving's FileSystemStoragePathSource (docs/repository.md) with one deliberate
difference: errors are per servable. A base path that is missing or unreadable sends nothing for
that servable (so its loaded versions keep serving) while the other servables are still polled.

Remote stores (s3://, gs://, memory://, ...) are listed the same way; each version's revision covers
its files' names, sizes, modification stamps and ETags. With a version ready marker (e.g. `_READY`)
a version counts only once that file exists in its directory: the safe way to publish versions to a
store whose uploads are not atomic per directory.
"""

from __future__ import annotations

import hashlib
import logging
import posixpath
import threading
import urllib.parse
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal

import fsspec
from fsspec.implementations.local import LocalFileSystem

from pyserving.core.ids import ServableData, ServableId
from pyserving.sources.base import AspiredVersionsCallback

logger = logging.getLogger(__name__)

# Versions travel as int64 in both APIs; larger all-digit names are not versions.
_MAX_VERSION = 2**63 - 1
# File-info keys that carry a modification stamp, by filesystem (local, s3, gcs, memory).
_STAMP_KEYS = ("mtime", "LastModified", "updated", "created")
# File-info keys that carry a content hash, by filesystem (s3, gcs, azure, http).
_ETAG_KEYS = ("ETag", "etag", "md5Hash", "md5", "crc32c")


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
    """One servable stream: its name, base path (local path or fsspec URL) and version policy.

    `servable_versions_always_present` (TF Serving's option, here per servable): a listing with
    no versions is taken for a transient state of the store, so the source sends nothing and the
    loaded versions keep serving, as when the base path itself is missing. Without it an empty
    listing unloads the servable, as in TF Serving, with a warning naming it.
    """

    name: str
    base_path: str
    version_policy: VersionPolicy = field(default_factory=VersionPolicy.latest)
    servable_versions_always_present: bool = False


@dataclass(frozen=True, slots=True)
class StoragePathSourceOptions:
    """What to poll and how often; `file_system_poll_wait_seconds == 0` polls once.

    `version_ready_marker`, when not empty, is a file name: a version directory counts only once
    it holds that file (the version policy picks among the ready versions).
    """

    servables: tuple[ServableToMonitor, ...] = ()
    file_system_poll_wait_seconds: float = 1.0
    version_ready_marker: str = ""

    def __post_init__(self) -> None:
        names = [s.name for s in self.servables]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"servable names must be unique; repeated: {', '.join(duplicates)}")
        if self.file_system_poll_wait_seconds < 0:
            raise ValueError("file_system_poll_wait_seconds must be >= 0")
        marker = self.version_ready_marker
        if marker and ("/" in marker or "\\" in marker or marker in (".", "..")):
            raise ValueError(f"version_ready_marker must be a plain file name, got {marker!r}")


class StoragePathSource:
    """Emits `ServableData[str]` (data = version directory path) per servable, from polling.

    Each item's `revision` fingerprints the version directory's files (relative names, sizes,
    modification stamps, ETags), so a version that failed to load is retried when its files change.
    A stream's list is sent only when it differs (ids, paths, revisions) from the last one sent
    for that stream; the first poll of a stream always sends.

    Thread-safety: every method may be called from any thread. Polls and config updates are
    serialised by one lock, and the callback runs with that lock held (from the polling thread
    or from the caller of `poll_once` / `update_config`), so a stream's lists arrive in order;
    the callback must not call back into this source.
    Blocking: `poll_once` and `update_config` do filesystem I/O; `stop` waits for a running poll.
    """

    def __init__(self, options: StoragePathSourceOptions) -> None:
        # guards _options, _callback, _last_sent, _warnings, _failing, _polled; held for a poll
        self._lock = threading.Lock()
        self._options = options
        self._callback: AspiredVersionsCallback[str] | None = None
        # stream name → (version, path, revision) of the last list sent
        self._last_sent: dict[str, tuple[tuple[int, str, str], ...]] = {}
        # stream name → warnings logged at the last poll (repeats are logged at DEBUG)
        self._warnings: dict[str, set[str]] = {}
        # streams whose last poll could not list their base path
        self._failing: set[str] = set()
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
            if options.version_ready_marker != old.version_ready_marker:
                raise ValueError("Changing version_ready_marker is not supported")
            self._options = options
            if self._callback is None:
                return
            kept = {s.name for s in options.servables}
            for servable in old.servables:
                if servable.name not in kept:
                    self._last_sent.pop(servable.name, None)
                    self._warnings.pop(servable.name, None)
                    self._failing.discard(servable.name)
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
        base_path = redact_url(servable.base_path)
        try:
            items = _list_aspired(servable, self._options.version_ready_marker, warnings)
        except Exception as exc:  # edge: per-servable isolation; never send a list on error
            if isinstance(exc, FileNotFoundError):
                message = f"Could not find base path {base_path} for servable {servable.name}"
            else:
                message = (
                    f"filesystem access error polling servable {servable.name} at base path "
                    f"{base_path}: {type(exc).__name__}: {exc}; its loaded versions keep serving"
                )
            self._log_warnings_locked(servable.name, [message])
            self._failing.add(servable.name)
            return
        if servable.name in self._failing:
            self._failing.discard(servable.name)
            logger.info("servable %s: base path %s is readable again", servable.name, base_path)
        if not items and servable.servable_versions_always_present:
            warnings.append(
                f"Servable {servable.name}: no versions under base path {base_path}; its loaded "
                "versions keep serving (servable_versions_always_present)"
            )
            self._log_warnings_locked(servable.name, warnings)
            return
        if not items and self._last_sent.get(servable.name):
            warnings.append(
                f"Servable {servable.name}: every version is gone from base path {base_path}; "
                "unloading it (set servable_versions_always_present: true to keep serving the "
                "loaded versions while the base path is empty)"
            )
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


def redact_url(url: str) -> str:
    """`url` without a password or other credentials in its user part (for logs and messages)."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme and "@" in parts.netloc:
        host = parts.netloc.rsplit("@", 1)[1]
        return urllib.parse.urlunsplit(parts._replace(netloc=f"***@{host}"))
    return url


def is_remote(path: str) -> bool:
    """True when `path` is on a non-local fsspec filesystem (s3://, gs://, memory://, ...)."""
    return fsspec.utils.get_protocol(path) not in ("file", "local")


@dataclass(frozen=True, slots=True, order=True)
class FileEntry:
    """One file of a version directory: its name relative to it, size, and ETag or stamp."""

    relative: str
    size: int
    tag: str


def list_files(fs: fsspec.AbstractFileSystem, directory: str) -> list[FileEntry]:
    """Every file under `directory` (recursively), sorted by relative name.

    The tag is the file's ETag (or content hash) plus its modification stamp, whichever the
    filesystem reports, so a re-uploaded file of the same size gets a new tag.
    Raises what the filesystem raises when `directory` cannot be listed.
    """
    prefix = directory.rstrip("/") + "/"
    entries = []
    for path, info in fs.find(directory, detail=True).items():
        if info.get("type") == "directory":
            continue
        relative = path[len(prefix) :] if path.startswith(prefix) else posixpath.basename(path)
        etag = next((str(info[k]) for k in _ETAG_KEYS if info.get(k) is not None), "")
        stamp = next((str(info[k]) for k in _STAMP_KEYS if info.get(k) is not None), "")
        entries.append(FileEntry(relative, int(info.get("size") or 0), f"{etag}|{stamp}"))
    return sorted(entries)


def fingerprint(entries: Iterable[FileEntry], *extra: str) -> str:
    """A short hash of `entries` (names, sizes, tags) and of any `extra` strings."""
    digest = hashlib.sha256()
    for text in extra:
        digest.update(f"{text}\n".encode())
    for entry in entries:
        digest.update(f"{entry.relative}\0{entry.size}\0{entry.tag}\n".encode())
    return digest.hexdigest()[:16]


def _list_aspired(
    servable: ServableToMonitor, marker: str, warnings: list[str]
) -> list[ServableData[str]]:
    """The aspired items of one servable, ascending; appends what to warn about to `warnings`.

    Raises FileNotFoundError when the base path does not exist, or whatever the filesystem
    raises when it cannot be read.
    """
    base_path = redact_url(servable.base_path)
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
            logger.debug("ignoring non-numeric directory %r under %s", child, base_path)
            continue
        if version in by_version:
            # Sorted listing: the first name wins, so the choice is stable from poll to poll.
            warnings.append(
                f"Servable {servable.name}: directories {by_version[version]!r} and {child!r} "
                f"under base path {base_path} are both version {version}; "
                f"using {by_version[version]!r}"
            )
            continue
        by_version[version] = child

    if not by_version:
        warnings.append(
            f"No versions of servable {servable.name} found under base path "
            f"{base_path}. Did you forget to name your leaf directory as a number "
            "(eg. '/1/')?"
        )
        return []
    policy = servable.version_policy
    if marker:
        selected = _select_ready(fs, root, by_version, policy, marker)
    else:
        selected = policy.select(by_version)
    if policy.kind == "specific":
        missing = sorted(set(policy.versions) - set(selected))
        if missing:
            state = f"ready (no {marker} file) or found" if marker else "found"
            warnings.append(
                f"Servable {servable.name}: versions {missing} not {state} under base path "
                f"{base_path}"
            )
    items = []
    for version in selected:
        child = by_version[version]
        fs_path = posixpath.join(root, child)
        data = fs_path if local else servable.base_path.rstrip("/") + "/" + child
        revision = fingerprint(list_files(fs, fs_path))
        items.append(ServableData(ServableId(servable.name, version), data, revision=revision))
    return items


def _select_ready(
    fs: fsspec.AbstractFileSystem,
    root: str,
    by_version: dict[int, str],
    policy: VersionPolicy,
    marker: str,
) -> list[int]:
    """The policy's pick among the versions whose directory holds `marker`, ascending.

    Checks as few directories as the policy allows (latest N: from the highest down), since each
    check is a request on a remote store.
    """

    def ready(version: int) -> bool:
        return bool(fs.exists(posixpath.join(root, by_version[version], marker)))

    if policy.kind == "latest":
        picked: list[int] = []
        for version in sorted(by_version, reverse=True):
            if len(picked) == policy.num_versions:
                break
            if ready(version):
                picked.append(version)
        return sorted(picked)
    return [version for version in policy.select(by_version) if ready(version)]


def _parse_version(name: str) -> int | None:
    if not (name.isascii() and name.isdigit()):
        return None
    version = int(name)
    return version if version <= _MAX_VERSION else None
