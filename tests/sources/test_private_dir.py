"""Per-user private directories for the model cache (0700, ownership and mode checked)."""

from __future__ import annotations

import os
import stat
import uuid
from pathlib import Path

import fsspec
import pytest

from pyserving.core.ids import ServableId
from pyserving.errors import FailedPrecondition
from pyserving.sources.cache import ModelCache, ModelCacheOptions, default_cache_dir
from pyserving.sources.private_dir import ensure_private_dir


def test_a_missing_dir_is_created_0700_issue_15(tmp_path: Path) -> None:
    created = ensure_private_dir(tmp_path / "a" / "cache", "model cache directory")
    assert created.is_dir()
    assert stat.S_IMODE(created.stat().st_mode) == 0o700


def test_a_group_or_world_writable_dir_is_refused_issue_15(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    for mode in (0o777, 0o770, 0o1777):
        shared.chmod(mode)
        with pytest.raises(FailedPrecondition, match=r"writable by other users .*chmod 700"):
            ensure_private_dir(shared, "model cache directory")


def test_a_dir_of_another_user_is_refused_issue_15(tmp_path: Path) -> None:
    if os.getuid() == 0:
        theirs = tmp_path / "theirs"
        theirs.mkdir(mode=0o700)
        os.chown(theirs, 65534, 65534)
    else:
        theirs = Path("/")  # owned by root
    with pytest.raises(FailedPrecondition, match=r"belongs to user id \d+, not to this user"):
        ensure_private_dir(theirs, "model cache directory")


def test_a_symlink_is_refused_issue_15(tmp_path: Path) -> None:
    target = tmp_path / "target"
    target.mkdir(mode=0o700)
    (tmp_path / "link").symlink_to(target)
    with pytest.raises(FailedPrecondition, match="is not a directory"):
        ensure_private_dir(tmp_path / "link", "model cache directory")


def test_the_default_cache_dir_is_per_user_not_in_the_temp_dir_issue_15(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == str(tmp_path / "xdg" / "pyserving" / "model-cache")
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert default_cache_dir() == str(Path.home() / ".cache" / "pyserving" / "model-cache")


def test_the_model_cache_refuses_a_cache_dir_others_can_write_before_copying_issue_15(
    tmp_path: Path,
) -> None:
    remote = f"memory://private-dir-{uuid.uuid4().hex}"
    with fsspec.open(f"{remote}/1/model.onnx", "wb") as stream:
        stream.write(b"model")
    shared = tmp_path / "shared-cache"
    shared.mkdir()
    shared.chmod(0o777)
    try:
        with pytest.raises(FailedPrecondition, match=r"model cache directory .* writable by other"):
            ModelCache(ModelCacheOptions(cache_dir=str(shared))).fetch(
                ServableId("m", 1), f"{remote}/1"
            )
        assert list(shared.iterdir()) == []
        fresh = tmp_path / "fresh" / "cache"
        copy = ModelCache(ModelCacheOptions(cache_dir=str(fresh))).fetch(
            ServableId("m", 1), f"{remote}/1"
        )
        assert Path(copy, "model.onnx").read_bytes() == b"model"
        assert stat.S_IMODE(fresh.stat().st_mode) == 0o700
    finally:
        fsspec.filesystem("memory").rm(remote, recursive=True)


def test_an_ancestor_others_may_write_is_refused_unless_sticky_issue_15(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)  # anyone may `mv cache x && mkdir cache` here
    with pytest.raises(FailedPrecondition, match=r"ancestor .*shared is writable by other users"):
        ensure_private_dir(shared / "cache", "model cache directory")
    shared.chmod(0o1777)  # sticky, as /tmp: only the owner may rename or remove an entry
    assert ensure_private_dir(shared / "cache", "model cache directory").is_dir()


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to give a directory to another user")
def test_an_ancestor_or_symlink_of_another_user_is_refused_issue_15(tmp_path: Path) -> None:
    theirs = tmp_path / "theirs"
    theirs.mkdir(mode=0o755)
    os.chown(theirs, 65534, 65534)
    with pytest.raises(FailedPrecondition, match=r"ancestor .*theirs belongs to user id 65534"):
        ensure_private_dir(theirs / "cache", "model cache directory")
    (tmp_path / "mine").mkdir(mode=0o700)
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "mine")
    os.lchown(link, 65534, 65534)
    with pytest.raises(FailedPrecondition, match=r"link is a symlink of user id 65534"):
        ensure_private_dir(link / "cache", "model cache directory")
