"""ModelCache: local copies of remote versions, made atomically before their Loader runs.

A version on a remote store (s3://, gs://, memory://, ...) is downloaded into a temporary directory
under the cache directory, every file's size is checked against the remote listing, and the
directory is renamed into place; a manifest written next to it (its commit mark) records the
listing it was made from. A later load of the same version with the same listing (names, sizes,
ETags) reuses the copy, also after a restart. Layout:

    <cache_dir>/<model>/<version>-<listing hash>/...      the version's files
    <cache_dir>/<model>/<version>-<listing hash>.json     manifest: the listing
    <cache_dir>/<model>/.tmp-<version>-<pid>-<random>/   a download under way
"""

from __future__ import annotations

import json
import logging
import os
import posixpath
import shutil
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import fsspec

from pyserving.core.ids import ServableId
from pyserving.core.loader import Loader
from pyserving.errors import NotFound, Unavailable
from pyserving.sources.private_dir import ensure_private_dir, user_cache_dir
from pyserving.sources.storage_path import FileEntry, fingerprint, list_files, redact_url

logger = logging.getLogger(__name__)

_CHUNK_BYTES = 4 * 1024 * 1024
_MANIFEST_FORMAT = 1


def default_cache_dir() -> str:
    """`$XDG_CACHE_HOME/pyserving/model-cache` (else `~/.cache/...`), the default of
    `--model-cache-dir`: per user, never a shared temp path another user could plant copies in."""
    return str(user_cache_dir() / "model-cache")


@dataclass(frozen=True, slots=True)
class ModelCacheOptions:
    """Where copies live, how many files download at once, and when to log progress."""

    cache_dir: str = field(default_factory=default_cache_dir)
    max_concurrent_downloads: int = 4
    progress_log_bytes: int = 64 * 1024 * 1024  # versions at least this large log their progress
    progress_interval_s: float = 5.0

    def __post_init__(self) -> None:
        if self.max_concurrent_downloads < 1:
            raise ValueError("max_concurrent_downloads must be >= 1")


class ModelCache:
    """Local copies of remote version directories, shared by every CachedVersionLoader.

    Thread-safety: every method may be called from any thread (the Manager's load and unload
    threads). Copies in use are reference counted, so a release never removes a directory another
    loader still uses.
    Blocking: `fetch` downloads (at most `max_concurrent_downloads` files at once, server-wide).
    """

    def __init__(self, options: ModelCacheOptions | None = None) -> None:
        self.options = options if options is not None else ModelCacheOptions()
        self._root = Path(self.options.cache_dir)
        self._downloads = threading.BoundedSemaphore(self.options.max_concurrent_downloads)
        # guards _refs, _swept, _keep_on_release, and commits and removals of copy directories
        self._lock = threading.Lock()
        self._refs: dict[Path, int] = {}  # copy directory → loaders using it
        self._swept = False
        self._keep_on_release = False

    def fetch(self, servable_id: ServableId, remote_path: str) -> str:
        """The local directory holding a complete copy of the version at `remote_path`.

        Reuses a copy made from the same remote listing; otherwise downloads one. The caller owns
        one reference: it must call `release` with the returned path once done with it.
        Raises NotFound when the remote directory is empty or gone, Unavailable when the store
        cannot be read or a file changed while it was copied (the load is retried),
        FailedPrecondition when the cache directory is not private to this user.
        """
        # Copies are reused across restarts, so nobody else may be able to write them.
        ensure_private_dir(self._root, "model cache directory (--model-cache-dir)")
        self._sweep_once()
        fs, root = fsspec.core.url_to_fs(remote_path)
        where = redact_url(remote_path)
        try:
            fs.invalidate_cache(root)
            entries = list_files(fs, root)
        except FileNotFoundError:
            entries = []
        except Exception as exc:  # edge: any store error fails this load only, retried later
            raise Unavailable(
                f"could not list {where} for {_describe(servable_id)}: {type(exc).__name__}: {exc}"
            ) from exc
        if not entries:
            raise NotFound(f"version directory {where} of {_describe(servable_id)} is empty")
        model_dir = self._root / _safe_name(servable_id.name)
        key = fingerprint(entries, remote_path)
        target = model_dir / f"{servable_id.version}-{key}"
        with self._lock:
            self._refs[target] = self._refs.get(target, 0) + 1
        try:
            if _is_complete(target, entries):
                logger.info("%s: using the cached copy at %s", _describe(servable_id), target)
            else:
                self._download(servable_id, fs, root, where, entries, target)
            self._remove_stale_siblings(target, servable_id.version)
        except BaseException:
            self.release(str(target))
            raise
        return str(target)

    def release(self, local_path: str) -> None:
        """Drop one reference to a copy; the last one removes it (unless shutting down)."""
        target = Path(local_path)
        with self._lock:
            count = self._refs.get(target, 0) - 1
            if count > 0:
                self._refs[target] = count
                return
            self._refs.pop(target, None)
            if self._keep_on_release:
                return
            # Manifest first: without it a half-removed directory is never taken as complete.
            target.with_name(target.name + ".json").unlink(missing_ok=True)
            shutil.rmtree(target, ignore_errors=True)

    def begin_shutdown(self) -> None:
        """Keep the copies released from now on, so the next start reuses them."""
        with self._lock:
            self._keep_on_release = True

    # ------------------------------------------------------------------------------ helpers

    def _download(
        self,
        servable_id: ServableId,
        fs: fsspec.AbstractFileSystem,
        root: str,
        where: str,
        entries: list[FileEntry],
        target: Path,
    ) -> None:
        target.parent.mkdir(parents=True, exist_ok=True)
        temp = target.parent / f".tmp-{servable_id.version}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        progress = _Progress(servable_id, where, entries, self.options)
        try:
            temp.mkdir()
            workers = min(len(entries), self.options.max_concurrent_downloads)
            with ThreadPoolExecutor(workers, thread_name_prefix="pyserving-download") as pool:
                copies = [
                    pool.submit(self._copy_file, fs, root, temp, entry, progress)
                    for entry in entries
                ]
                for copy in copies:
                    copy.result()
            with self._lock:  # commits of one copy directory take turns
                if not _is_complete(target, entries):
                    # A leftover without a manifest was never committed, so nobody uses it.
                    shutil.rmtree(target, ignore_errors=True)
                    os.rename(temp, target)
                    _write_manifest(target, entries, where)
        except (NotFound, Unavailable):
            raise
        except Exception as exc:  # edge: any store or disk error fails this load only
            raise Unavailable(
                f"could not copy {where} for {_describe(servable_id)}: {type(exc).__name__}: {exc}"
            ) from exc
        finally:
            shutil.rmtree(temp, ignore_errors=True)
        progress.finish(target)

    def _copy_file(
        self,
        fs: fsspec.AbstractFileSystem,
        root: str,
        temp: Path,
        entry: FileEntry,
        progress: _Progress,
    ) -> None:
        local = temp.joinpath(*entry.relative.split("/"))
        if not local.resolve().is_relative_to(temp.resolve()):
            raise Unavailable(f"refusing to copy {entry.relative!r}: it leaves the version dir")
        local.parent.mkdir(parents=True, exist_ok=True)
        written = 0
        with (
            self._downloads,
            fs.open(posixpath.join(root, entry.relative), "rb") as src,
            local.open("wb") as dst,
        ):
            while chunk := src.read(_CHUNK_BYTES):
                dst.write(chunk)
                written += len(chunk)
                progress.add(len(chunk))
        if written != entry.size:
            raise Unavailable(
                f"{entry.relative} changed while it was copied ({written} bytes read, listed "
                f"as {entry.size}); is the version still being uploaded?"
            )

    def _remove_stale_siblings(self, target: Path, version: int) -> None:
        # Copies of this version made from an older listing are never used again.
        prefix = f"{version}-"
        with self._lock:
            for sibling in target.parent.iterdir():
                name = sibling.name.removesuffix(".json")
                stale = sibling.parent / name
                if not name.startswith(prefix) or stale == target or stale in self._refs:
                    continue
                if sibling.is_dir():
                    shutil.rmtree(sibling, ignore_errors=True)
                else:
                    sibling.unlink(missing_ok=True)

    def _sweep_once(self) -> None:
        # Downloads left by a process that died midway are removed on the first fetch.
        with self._lock:
            if self._swept:
                return
            self._swept = True
        if not self._root.is_dir():
            return
        for temp in self._root.glob("*/.tmp-*"):
            parts = temp.name.split("-")
            if len(parts) >= 4 and parts[2].isdigit() and not _pid_alive(int(parts[2])):
                shutil.rmtree(temp, ignore_errors=True)


class CachedVersionLoader(Loader):
    """Wraps the platform Loader of a remote version: copies the version into the ModelCache,
    then loads it from the local copy; unloading removes the copy.

    Thread-safety: as Loader (the Manager serialises load and unload).
    Ownership: holds one cache reference from a successful `load` until `unload`.
    """

    def __init__(
        self,
        servable_id: ServableId,
        remote_path: str,
        cache: ModelCache,
        make_loader: Callable[[str], Loader],
    ) -> None:
        self.servable_id = servable_id
        self.remote_path = remote_path
        self._cache = cache
        self._make_loader = make_loader
        # Built on the remote path for the estimate only: platforms size versions through fsspec.
        self._remote_loader = make_loader(remote_path)
        self._inner: Loader | None = None
        self._local_path: str | None = None

    def estimate_resources(self) -> int:
        return self._remote_loader.estimate_resources()

    def load(self) -> Any:
        """Copy the version locally (or reuse the cached copy), then run the platform's load."""
        local_path = self._cache.fetch(self.servable_id, self.remote_path)
        try:
            inner = self._make_loader(local_path)
            servable = inner.load()
        except BaseException:
            self._cache.release(local_path)
            raise
        self._inner, self._local_path = inner, local_path
        return servable

    def resources_after_load(self) -> int | None:
        return self._inner.resources_after_load() if self._inner is not None else None

    def unload(self) -> None:
        inner, local_path = self._inner, self._local_path
        self._inner = self._local_path = None
        try:
            if inner is not None:
                inner.unload()
        finally:
            if local_path is not None:
                self._cache.release(local_path)


class _Progress:
    """Counts the bytes of one version's download; logs progress when the version is large.

    Thread-safety: `add` is called from the download threads.
    """

    def __init__(
        self,
        servable_id: ServableId,
        where: str,
        entries: list[FileEntry],
        options: ModelCacheOptions,
    ) -> None:
        self._what = _describe(servable_id)
        self._total = sum(entry.size for entry in entries)
        self._interval_s = options.progress_interval_s
        self._verbose = self._total >= options.progress_log_bytes
        # guards _done and _next_log_s
        self._lock = threading.Lock()
        self._done = 0
        self._started = time.monotonic()
        self._next_log_s = self._started + self._interval_s
        level = logging.INFO if self._verbose else logging.DEBUG
        logger.log(
            level,
            "%s: downloading %d files (%s) from %s",
            self._what,
            len(entries),
            _mib(self._total),
            where,
        )

    def add(self, size: int) -> None:
        with self._lock:
            self._done += size
            now = time.monotonic()
            if not self._verbose or now < self._next_log_s:
                return
            self._next_log_s = now + self._interval_s
            done = self._done
        percent = 100 * done // max(1, self._total)
        logger.info(
            "%s: downloaded %s of %s (%d%%)", self._what, _mib(done), _mib(self._total), percent
        )

    def finish(self, target: Path) -> None:
        level = logging.INFO if self._verbose else logging.DEBUG
        logger.log(
            level,
            "%s: downloaded %s in %.1fs into %s",
            self._what,
            _mib(self._total),
            time.monotonic() - self._started,
            target,
        )


def _describe(servable_id: ServableId) -> str:
    return f"model {servable_id.name} version {servable_id.version}"


def _mib(size: int) -> str:
    return f"{size / (1024 * 1024):.1f} MiB"


def _safe_name(name: str) -> str:
    # A model name becomes one directory name: no separators, no dot-only names.
    safe = "".join(
        c if c.isascii() and (c.isalnum() or c in "-_.") else f"%{ord(c):02X}" for c in name
    )
    return safe if safe.strip(".") else safe.replace(".", "%2E")


def _manifest_path(target: Path) -> Path:
    return target.with_name(target.name + ".json")


def _write_manifest(target: Path, entries: list[FileEntry], where: str) -> None:
    manifest = {
        "format": _MANIFEST_FORMAT,
        "source": where,
        "files": [[e.relative, e.size, e.tag] for e in entries],
    }
    temp = target.with_name(f".{target.name}.json.{uuid.uuid4().hex[:8]}")
    temp.write_text(json.dumps(manifest))
    os.replace(temp, _manifest_path(target))


def _is_complete(target: Path, entries: list[FileEntry]) -> bool:
    """True when `target` is a committed copy of exactly `entries` whose files are all intact."""
    try:
        manifest = json.loads(_manifest_path(target).read_text())
        listed = [FileEntry(str(r), int(s), str(t)) for r, s, t in manifest["files"]]
    except (OSError, ValueError, KeyError, TypeError):
        return False
    if manifest.get("format") != _MANIFEST_FORMAT or listed != entries:
        return False
    try:
        return all(
            target.joinpath(*e.relative.split("/")).stat().st_size == e.size for e in entries
        )
    except OSError:
        return False


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
