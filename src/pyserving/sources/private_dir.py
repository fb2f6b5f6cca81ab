"""Per-user private directories: created 0700, and refused when someone else could write in them.

A directory whose files the server loads (the model cache) must not be one another local user can
plant files in: a predictable shared path like `/tmp/pyserving-model-cache` could be created first
by anyone. `ensure_private_dir` makes the directory 0700 when it is missing and otherwise checks
that it belongs to this user and is not group- or world-writable. Its ancestors are checked too:
whoever may write a directory on the way can rename the leaf away and put their own in its place,
so each must belong to root or this user and be writable by no one else unless it is sticky (as
`/tmp` is), and a symlink on the way must belong to root or this user.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from pyserving.errors import FailedPrecondition

__all__ = ["ensure_private_dir", "user_cache_dir"]


def user_cache_dir() -> Path:
    """`$XDG_CACHE_HOME/pyserving`, else `~/.cache/pyserving` (nothing is created)."""
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    base = Path(xdg) if os.path.isabs(xdg) else Path.home() / ".cache"
    return base / "pyserving"


def ensure_private_dir(path: str | os.PathLike[str], what: str) -> Path:
    """`path` as a directory only this user may write: created 0700 (parents too) when missing.

    Raises FailedPrecondition naming `what` and the path when it is not a directory, belongs to
    another user, or is group- or world-writable.
    """
    directory = Path(path)
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        info = os.stat(directory, follow_symlinks=False)
    except OSError as exc:
        raise FailedPrecondition(
            f"{what} {directory} cannot be created: {exc.strerror or exc}"
        ) from None
    if not stat.S_ISDIR(info.st_mode):
        raise FailedPrecondition(f"{what} {directory} is not a directory (a symlink or a file)")
    uid = os.getuid() if hasattr(os, "getuid") else None
    if uid is not None and info.st_uid != uid:
        raise FailedPrecondition(
            f"{what} {directory} belongs to user id {info.st_uid}, not to this user ({uid}):"
            " refusing to use it; remove it or choose another directory"
        )
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise FailedPrecondition(
            f"{what} {directory} is writable by other users (mode {stat.S_IMODE(info.st_mode):o}):"
            f" refusing to use it; run `chmod 700 {directory}` or choose another directory"
        )
    if uid is not None:
        _check_ancestors(directory, what, uid)
    return directory


def _check_ancestors(directory: Path, what: str, uid: int) -> None:
    """Raise FailedPrecondition when another user could swap `directory` (or a directory above
    it) for their own: a symlink on the way or an ancestor that is theirs or writable by them."""
    trusted = (0, uid)
    path = Path(os.path.abspath(directory))
    for link in (path, *path.parents):  # the path as given: a symlink's owner picks its target
        info = os.lstat(link)
        if stat.S_ISLNK(info.st_mode) and info.st_uid not in trusted:
            raise FailedPrecondition(
                f"{what} {directory}: {link} is a symlink of user id {info.st_uid}, who decides"
                " where it points: refusing to use it; choose another directory"
            )
    for parent in Path(os.path.realpath(path)).parents:
        info = os.stat(parent)
        mode = stat.S_IMODE(info.st_mode)
        if info.st_uid not in trusted:
            raise FailedPrecondition(
                f"{what} {directory}: its ancestor {parent} belongs to user id {info.st_uid},"
                " who could replace it: refusing to use it; choose a directory under one only you"
                " (or root) own"
            )
        if mode & (stat.S_IWGRP | stat.S_IWOTH) and not mode & stat.S_ISVTX:
            raise FailedPrecondition(
                f"{what} {directory}: its ancestor {parent} is writable by other users and not"
                f" sticky (mode {mode:o}), so they could replace it: refusing to use it; run"
                f" `chmod o-w,g-w {parent}` (or `chmod +t`) or choose another directory"
            )
