"""ControlRoots: where a base path sent over the network (model control) may point.

A base path that arrives over the network (gRPC HandleReloadConfigRequest) decides which files
the server imports and runs, so it must lie under a base path of the configuration the server
started with, or under a prefix of `--model-control-roots`. Local paths are compared as resolved
real paths (so `..` and symlinks cannot leave a root); a URL must have a root's scheme and host
and lie under its path, and may hold no `.`/`..` segment; fsspec chains (`a::b`) are refused.
"""

from __future__ import annotations

import os
import posixpath
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

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
    Blocking: `check` resolves local paths (a few `stat`s), so it runs off the event loop.
    """

    def __init__(self, started: Iterable[str], extra: Iterable[str] = ()) -> None:
        """`started`: the base paths of the configuration the server started with; `extra`:
        the prefixes of `--model-control-roots`."""
        self._described = [p for p in (*started, *extra) if p]
        self._local: list[str] = []
        self._urls: list[_Url] = []
        for root in self._described:
            url = _as_url(root)
            if url is None:
                self._local.append(os.path.realpath(_local_path(root)))
            else:
                self._urls.append(url)

    def check(self, model: str, base_path: str) -> None:
        """Return when `base_path` lies under a root; raise PermissionDenied saying why not."""
        if "::" in base_path:
            # fsspec reads "a::b" as a chain of filesystems; what it opens is not what we compare
            raise self._denied(model, base_path, "chained fsspec URLs ('::') are not allowed")
        url = _as_url(base_path)
        if url is None:
            resolved = os.path.realpath(_local_path(base_path))
            if any(_is_under(resolved, root, os.sep) for root in self._local):
                return
            shown = base_path if resolved == base_path else f"{base_path} (resolves to {resolved})"
            raise self._denied(model, shown, "it is outside every allowed root")
        if _has_dot_segment(url.path):
            raise self._denied(model, base_path, "its path holds a '.' or '..' segment")
        for root in self._urls:
            if (root.scheme, root.netloc) == (url.scheme, url.netloc) and _is_under(
                url.path, root.path, "/"
            ):
                return
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


def _as_url(path: str) -> _Url | None:
    """The URL parts of `path`, or None for a local path (`file://` URLs count as local)."""
    if "://" not in path:
        return None
    parts = urlsplit(path)
    scheme = parts.scheme.lower()
    if scheme in ("file", "local"):
        return None
    # fsspec reads "?" and "#" as part of some paths: keep them, so they never widen a match
    raw = parts.path + (f"?{parts.query}" if parts.query else "")
    raw += f"#{parts.fragment}" if parts.fragment else ""
    path = "/" + raw.strip("/") if raw.strip("/") else "/"
    return _Url(scheme, parts.netloc.lower(), path)


def _local_path(path: str) -> str:
    if "://" in path:
        path = urlsplit(path).path
    return os.path.abspath(path)


def _is_under(path: str, root: str, sep: str) -> bool:
    return path == root or path.startswith(root.rstrip(sep) + sep)


def _has_dot_segment(path: str) -> bool:
    decoded = unquote(path)
    segments = [*path.split("/"), *decoded.split("/"), *decoded.split("\\")]
    return any(s in (".", "..") for s in segments) or posixpath.normpath(path) != path
