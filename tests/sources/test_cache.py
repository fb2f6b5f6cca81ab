from __future__ import annotations

import logging
import os
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fsspec
import numpy as np
import pytest
from fsspec.implementations.memory import MemoryFileSystem

from pyserving.core.ids import ServableData, ServableId
from pyserving.demo import make_mlp
from pyserving.errors import NotFound, Unavailable
from pyserving.sources import cache as cache_module
from pyserving.sources.adapter import PlatformAdapter
from pyserving.sources.cache import CachedVersionLoader, ModelCache, ModelCacheOptions

LOGGER = "pyserving.sources.cache"


@pytest.fixture
def remote() -> Iterator[str]:
    """A fresh memory:// directory: a remote store as far as the cache is concerned."""
    root = f"memory://cache-test-{uuid.uuid4().hex}"
    yield root
    fs = fsspec.filesystem("memory")
    if fs.exists(root):
        fs.rm(root, recursive=True)


def put(url: str, data: bytes) -> None:
    with fsspec.open(url, "wb") as f:
        f.write(data)


def cached_files(path: str) -> dict[str, bytes]:
    root = Path(path)
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_fetch_copies_every_file_and_release_removes_the_copy(tmp_path: Path, remote: str) -> None:
    put(f"{remote}/1/model.onnx", b"m" * 100)
    put(f"{remote}/1/assets/vocab.txt", b"a\nb\n")
    cache = ModelCache(ModelCacheOptions(cache_dir=str(tmp_path)))

    local = cache.fetch(ServableId("m", 1), f"{remote}/1")

    assert cached_files(local) == {"model.onnx": b"m" * 100, "assets/vocab.txt": b"a\nb\n"}
    assert Path(local).parent == tmp_path / "m"
    assert Path(local + ".json").is_file()  # the commit mark
    cache.release(local)
    assert not Path(local).exists()
    assert not Path(local + ".json").exists()
    assert list((tmp_path / "m").iterdir()) == []  # no temp dir left either


def test_copy_is_reused_after_a_restart_when_the_listing_matches(
    tmp_path: Path, remote: str, caplog: pytest.LogCaptureFixture
) -> None:
    put(f"{remote}/3/model.onnx", b"x" * 10)
    first = ModelCache(ModelCacheOptions(cache_dir=str(tmp_path)))
    local = first.fetch(ServableId("m", 3), f"{remote}/3")
    first.begin_shutdown()
    first.release(local)  # a shutdown keeps the copy
    stamp = os.stat(Path(local) / "model.onnx").st_ino

    restarted = ModelCache(ModelCacheOptions(cache_dir=str(tmp_path)))
    with caplog.at_level(logging.DEBUG, LOGGER):
        again = restarted.fetch(ServableId("m", 3), f"{remote}/3")

    assert again == local
    assert os.stat(Path(again) / "model.onnx").st_ino == stamp  # not downloaded again
    assert any("using the cached copy" in r.getMessage() for r in caplog.records)
    assert not any("downloading" in r.getMessage() for r in caplog.records)


def test_changed_listing_downloads_a_new_copy_and_removes_the_stale_one(
    tmp_path: Path, remote: str
) -> None:
    put(f"{remote}/1/model.onnx", b"old")
    cache = ModelCache(ModelCacheOptions(cache_dir=str(tmp_path)))
    cache.begin_shutdown()
    old = cache.fetch(ServableId("m", 1), f"{remote}/1")
    cache.release(old)  # kept: shutting down

    put(f"{remote}/1/model.onnx", b"newer")
    new = ModelCache(ModelCacheOptions(cache_dir=str(tmp_path))).fetch(
        ServableId("m", 1), f"{remote}/1"
    )

    assert new != old
    assert cached_files(new) == {"model.onnx": b"newer"}
    assert not Path(old).exists() and not Path(old + ".json").exists()


def test_a_copy_without_its_manifest_is_never_reused(tmp_path: Path, remote: str) -> None:
    put(f"{remote}/1/model.onnx", b"good")
    cache = ModelCache(ModelCacheOptions(cache_dir=str(tmp_path)))
    cache.begin_shutdown()
    local = cache.fetch(ServableId("m", 1), f"{remote}/1")
    cache.release(local)
    Path(local + ".json").unlink()  # as if the process died between rename and commit
    (Path(local) / "model.onnx").write_bytes(b"bad!")

    again = ModelCache(ModelCacheOptions(cache_dir=str(tmp_path))).fetch(
        ServableId("m", 1), f"{remote}/1"
    )

    assert cached_files(again) == {"model.onnx": b"good"}


def test_shared_copy_is_removed_only_by_its_last_release(tmp_path: Path, remote: str) -> None:
    put(f"{remote}/1/model.onnx", b"x")
    cache = ModelCache(ModelCacheOptions(cache_dir=str(tmp_path)))
    a = cache.fetch(ServableId("m", 1), f"{remote}/1")
    b = cache.fetch(ServableId("m", 1), f"{remote}/1")
    assert a == b
    cache.release(a)
    assert Path(b, "model.onnx").read_bytes() == b"x"
    cache.release(b)
    assert not Path(b).exists()


def test_size_mismatch_fails_with_unavailable_and_leaves_nothing(
    tmp_path: Path, remote: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    put(f"{remote}/1/model.onnx", b"12345")
    real_list_files = cache_module.list_files

    def listing_larger_than_the_file(fs: Any, directory: str) -> list[Any]:
        return [type(e)(e.relative, e.size + 1, e.tag) for e in real_list_files(fs, directory)]

    monkeypatch.setattr(cache_module, "list_files", listing_larger_than_the_file)
    cache = ModelCache(ModelCacheOptions(cache_dir=str(tmp_path)))

    with pytest.raises(Unavailable, match=r"model.onnx changed while it was copied"):
        cache.fetch(ServableId("m", 1), f"{remote}/1")
    assert list((tmp_path / "m").iterdir()) == []


def test_empty_or_missing_version_is_not_found(tmp_path: Path, remote: str) -> None:
    cache = ModelCache(ModelCacheOptions(cache_dir=str(tmp_path)))
    with pytest.raises(NotFound, match=r"version directory .*/7 of model m version 7 is empty"):
        cache.fetch(ServableId("m", 7), f"{remote}/7")


def test_downloads_left_by_a_dead_process_are_swept(tmp_path: Path, remote: str) -> None:
    dead = tmp_path / "m" / ".tmp-1-999999999-abcd1234"
    alive = tmp_path / "m" / f".tmp-1-{os.getpid()}-abcd1234"
    for leftover in (dead, alive):
        leftover.mkdir(parents=True)
        (leftover / "model.onnx").write_bytes(b"half")
    put(f"{remote}/2/model.onnx", b"x")

    ModelCache(ModelCacheOptions(cache_dir=str(tmp_path))).fetch(ServableId("m", 2), f"{remote}/2")

    assert not dead.exists()
    assert alive.exists()  # a live process may still be writing it


def test_large_version_logs_its_progress(
    tmp_path: Path, remote: str, caplog: pytest.LogCaptureFixture
) -> None:
    for i in range(3):
        put(f"{remote}/1/part{i}", b"p" * 1000)
    options = ModelCacheOptions(
        cache_dir=str(tmp_path), progress_log_bytes=1, progress_interval_s=0
    )
    with caplog.at_level(logging.INFO, LOGGER):
        ModelCache(options).fetch(ServableId("m", 1), f"{remote}/1")
    messages = [r.getMessage() for r in caplog.records]
    assert any("downloading 3 files" in m for m in messages), messages
    assert any("downloaded 0.0 MiB of 0.0 MiB (100%)" in m for m in messages), messages


class _GatedMemoryFileSystem(MemoryFileSystem):
    """memory:// that records how many files are being read at once.

    Each open waits (bounded) for a third concurrent reader, so a missing bound of 2 shows up.
    """

    protocol = "gatedmem"
    changed = threading.Condition()
    active = 0
    max_active = 0

    @classmethod
    def _strip_protocol(cls, path: str) -> str:
        return super()._strip_protocol(path.replace("gatedmem://", "memory://", 1))

    def _open(self, path: str, mode: str = "rb", **kwargs: Any) -> Any:
        f = super()._open(path, mode, **kwargs)
        if mode != "rb":
            return f
        cls = type(self)
        original_close = f.close

        with cls.changed:
            cls.active += 1
            cls.max_active = max(cls.max_active, cls.active)
            cls.changed.notify_all()
            cls.changed.wait_for(lambda: cls.max_active > 2, timeout=0.3)

        def close() -> None:
            with cls.changed:
                cls.active -= 1
            original_close()

        f.close = close
        return f


def test_download_concurrency_is_bounded_server_wide(tmp_path: Path) -> None:
    fsspec.register_implementation("gatedmem", _GatedMemoryFileSystem, clobber=True)
    root = f"gatedmem://bounded-{uuid.uuid4().hex}"
    fs = fsspec.filesystem("gatedmem")
    for version in (1, 2, 3):
        for i in range(2):
            fs.pipe(f"{root}/{version}/f{i}", b"x" * 10)
    cache = ModelCache(ModelCacheOptions(cache_dir=str(tmp_path), max_concurrent_downloads=2))
    barrier = threading.Barrier(3)
    errors: list[BaseException] = []

    def fetch(version: int) -> None:
        barrier.wait()
        try:
            cache.fetch(ServableId("m", version), f"{root}/{version}")
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=fetch, args=(v,)) for v in (1, 2, 3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    assert errors == []
    assert _GatedMemoryFileSystem.max_active == 2
    fs.rm(root, recursive=True)


def test_adapter_loads_a_remote_version_from_its_local_copy_and_unload_removes_it(
    tmp_path: Path, remote: str
) -> None:
    model = make_mlp(tmp_path / "src" / "model.onnx", seed=1, dims=(4, 8, 3))
    put(f"{remote}/1/model.onnx", Path(model).read_bytes())
    cache = ModelCache(ModelCacheOptions(cache_dir=str(tmp_path / "cache")))
    adapter = PlatformAdapter(cache=cache)

    item = adapter.adapt(ServableData(ServableId("m", 1), f"{remote}/1", revision="r1"))
    loader = item.data
    assert isinstance(loader, CachedVersionLoader)
    assert loader.estimate_resources() > 0  # sized from the remote listing, nothing copied yet
    assert not (tmp_path / "cache").exists()

    servable = loader.load()
    outputs = servable.run("serving_default", {"input": np.ones((2, 4), np.float32)})
    assert next(iter(outputs.values())).shape == (2, 3)
    assert len(list((tmp_path / "cache" / "m").glob("1-*/model.onnx"))) == 1
    loader.unload()
    assert list((tmp_path / "cache" / "m").iterdir()) == []


def test_failed_load_releases_its_copy(tmp_path: Path, remote: str) -> None:
    put(f"{remote}/1/model.onnx", b"not an onnx model")
    cache = ModelCache(ModelCacheOptions(cache_dir=str(tmp_path)))
    item = PlatformAdapter(cache=cache).adapt(ServableData(ServableId("m", 1), f"{remote}/1"))
    assert item.data is not None
    with pytest.raises(Exception, match=r"(?i)protobuf|onnx|load"):
        item.data.load()
    assert list((tmp_path / "m").iterdir()) == []


def test_local_paths_are_not_copied(tmp_path: Path) -> None:
    version = tmp_path / "repo" / "1"
    make_mlp(version / "model.onnx", seed=1, dims=(4, 8, 3))
    cache = ModelCache(ModelCacheOptions(cache_dir=str(tmp_path / "cache")))
    adapter = PlatformAdapter(cache=cache)
    for path in (str(version), f"file://{version}"):
        loader = adapter.adapt(ServableData(ServableId("m", 1), path)).data
        assert not isinstance(loader, CachedVersionLoader)


def test_model_names_become_one_safe_directory(tmp_path: Path, remote: str) -> None:
    put(f"{remote}/1/model.onnx", b"x")
    cache = ModelCache(ModelCacheOptions(cache_dir=str(tmp_path / "cache")))
    for name in ("..", "a/b", "ünï"):
        local = Path(cache.fetch(ServableId(name, 1), f"{remote}/1"))
        assert local.parent.parent == tmp_path / "cache"
        cache.release(str(local))
