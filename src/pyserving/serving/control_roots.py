"""ControlRoots: where a base path sent over the network (model control) may point.

A base path that arrives over the network (gRPC HandleReloadConfigRequest) decides which files
the server imports and runs, so it must lie under a base path of the configuration the server
started with, or under a prefix of `--model-control-roots`. A local path (`file://` and
`local://` URLs included) is compared as the resolved real path of exactly what fsspec will open
(`file://HOST/p` opens `HOST/p` relative to the working directory, so the host is part of the
path), so `..` and symlinks cannot leave a root; `check` returns that real path, to be stored and
polled instead of the path as sent (a symlink retargeted after the check then changes nothing).
A URL must have a root's scheme and host and lie under its path, and may hold no `.`/`..`
segment; fsspec chains (`a::b`) and NUL bytes are refused.
"""

from __future__ import annotations

import os
import posixpath
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

import fsspec.utils
from fsspec.implementations.local import LocalFileSystem

from pyserving.errors import PermissionDenied

__all__ = ["ControlRoots"]

_FLAG = "--model-control-roots"


@dataclass(frozen=True, slots=True)
class _Url:
    scheme: str
    netloc: str
    path: str  # no trailing "/", except the root "/"


class ControlRoots:
    """The local directories and URL prefixes that model control may name as base paths.

    Thread-safety: immutable after construction; `check` may be called from any thread.
    Blocking: `check` resolves local paths (a few `stat`s), so it runs off the event loop. It
    never contacts a remote store.
    """

    def __init__(self, started: Iterable[str], extra: Iterable[str] = ()) -> None:
        """`started`: the base paths of the configuration the server started with; `extra`:
        the prefixes of `--model-control-roots`."""
        self._described = [p for p in (*started, *extra) if p]
        self._local: list[str] = []
        self._urls: list[_Url] = []
        for root in self._described:
            if _is_local(root):
                try:
                    self._local.append(_real_local_path(root))
                except ValueError:
                    continue  # a root no path can lie under (e.g. a NUL byte)
            else:
                self._urls.append(_as_url(root))

    def check(self, model: str, base_path: str) -> str:
        """The base path to store and poll when `base_path` lies under a root: for a local path
        its resolved real path, else `base_path` itself. Raises PermissionDenied saying why not."""
        if "\x00" in base_path:
            raise self._denied(model, repr(base_path), "it holds a NUL byte")
        if "::" in base_path:
            # fsspec reads "a::b" as a chain of filesystems; what it opens is not what we compare
            raise self._denied(model, base_path, "chained fsspec URLs ('::') are not allowed")
        if _is_local(base_path):
            try:
                resolved = _real_local_path(base_path)
            except ValueError as exc:
                raise self._denied(
                    model, repr(base_path), f"it is not a valid path ({exc})"
                ) from None
            if any(_is_under(resolved, root, os.sep) for root in self._local):
                return resolved
            shown = base_path if resolved == base_path else f"{base_path} (resolves to {resolved})"
            raise self._denied(model, shown, "it is outside every allowed root")
        url = _as_url(base_path)
        if _has_dot_segment(url.path):
            raise self._denied(model, base_path, "its path holds a '.' or '..' segment")
        for root in self._urls:
            if (root.scheme, root.netloc) == (url.scheme, url.netloc) and _is_under(
                url.path, root.path, "/"
            ):
                return base_path
        schemes = sorted({r.scheme for r in self._urls})
        why = (
            f"no allowed root uses the {url.scheme}:// scheme"
            if url.scheme not in schemes
            else "it is outside every allowed root"
        )
        raise self._denied(model, base_path, why)

    def _denied(self, model: str, base_path: str, why: str) -> PermissionDenied:
        roots = ", ".join(self._described) or "none"
        return PermissionDenied(
            f'model "{model}": base path {base_path} is not allowed over model control: {why}'
            f" (allowed: under a base path the server started with or a {_FLAG} prefix: {roots})."
            f" To allow it, restart the server with {_FLAG}=<prefix>"
        )


def _is_local(path: str) -> bool:
    """True when fsspec opens `path` on the local filesystem (a plain path, `file:`, `local:`)."""
    return fsspec.utils.get_protocol(path) in ("file", "local")


def _real_local_path(path: str) -> str:
    """The resolved real path of the file fsspec opens for local `path` (against the working
    directory, as fsspec does). Raises ValueError for a path no file can have (a NUL byte)."""
    opened: str = LocalFileSystem._strip_protocol(path)
    if opened.startswith("//"):
        opened = "/" + opened.lstrip("/")  # POSIX may treat "//x" apart; Linux reads it as "/x"
    return os.path.realpath(opened)


def _as_url(path: str) -> _Url:
    """The URL parts of a non-local `path`."""
    parts = urlsplit(path)
    scheme = parts.scheme.lower()
    # fsspec reads "?" and "#" as part of some paths: keep them, so they never widen a match
    raw = parts.path + (f"?{parts.query}" if parts.query else "")
    raw += f"#{parts.fragment}" if parts.fragment else ""
    path = "/" + raw.strip("/") if raw.strip("/") else "/"
    return _Url(scheme, parts.netloc.lower(), path)


def _is_under(path: str, root: str, sep: str) -> bool:
    return path == root or path.startswith(root.rstrip(sep) + sep)


def _has_dot_segment(path: str) -> bool:
    decoded = unquote(path)
    segments = [*path.split("/"), *decoded.split("/"), *decoded.split("\\")]
    return any(s in (".", "..") for s in segments) or posixpath.normpath(path) != path
