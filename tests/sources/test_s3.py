"""StoragePathSource and ModelCache against a real S3 server (moto, a child process)."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import s3fs

from pyserving.core.ids import ServableId
from pyserving.sources.cache import ModelCache, ModelCacheOptions
from pyserving.sources.storage_path import (
    ServableToMonitor,
    StoragePathSource,
    StoragePathSourceOptions,
)
from tests.sources.s3_server import MotoServer
from tests.sources.test_storage_path import Recorder

LOGGER = "pyserving.sources.storage_path"


@pytest.fixture(scope="module")
def moto() -> Iterator[MotoServer]:
    server = MotoServer()
    server.start()
    yield server
    server.stop()


@pytest.fixture
def s3(moto: MotoServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[s3fs.S3FileSystem]:
    """A client of the moto server through the standard AWS variables; a fresh bucket."""
    for key, value in moto.env().items():
        monkeypatch.setenv(key, value)
    s3fs.S3FileSystem.clear_instance_cache()  # instances remember the endpoint they were made with
    fs = s3fs.S3FileSystem()
    if not fs.exists("models"):
        fs.mkdir("models")
    yield fs
    s3fs.S3FileSystem.clear_instance_cache()


def make_source(base_path: str, marker: str = "") -> tuple[StoragePathSource, Recorder]:
    options = StoragePathSourceOptions(
        (ServableToMonitor("m", base_path),), version_ready_marker=marker
    )
    source = StoragePathSource(options)
    recorder = Recorder()
    source.set_aspired_versions_callback(recorder)
    return source, recorder


@pytest.fixture
def base(s3: s3fs.S3FileSystem) -> str:
    return f"models/m-{uuid.uuid4().hex[:8]}"


def test_s3_versions_are_listed_and_revision_covers_etag(s3: s3fs.S3FileSystem, base: str) -> None:
    s3.pipe(f"{base}/1/model.onnx", b"aaaa")
    s3.pipe(f"{base}/2/model.onnx", b"bbbb")
    source, recorder = make_source(f"s3://{base}")

    source.poll_once()
    (item,) = recorder.last("m")
    assert (item.id.version, item.data) == (2, f"s3://{base}/2")

    s3.pipe(f"{base}/2/model.onnx", b"cccc")  # same name and size, new content
    source.poll_once()
    assert recorder.last("m")[0].revision != item.revision


def test_s3_marker_hides_versions_until_it_exists(s3: s3fs.S3FileSystem, base: str) -> None:
    s3.pipe(f"{base}/1/model.onnx", b"a")
    s3.pipe(f"{base}/1/_READY", b"")
    s3.pipe(f"{base}/2/model.onnx", b"b")  # v2 still being uploaded: no marker yet
    source, recorder = make_source(f"s3://{base}", marker="_READY")

    source.poll_once()
    assert recorder.lists("m") == [[1]]
    s3.pipe(f"{base}/2/_READY", b"")
    source.poll_once()
    assert recorder.lists("m") == [[1], [2]]


@pytest.mark.slow
def test_s3_outage_sends_nothing_logs_once_per_poll_and_recovers(
    moto: MotoServer, s3: s3fs.S3FileSystem, base: str, caplog: pytest.LogCaptureFixture
) -> None:
    s3.pipe(f"{base}/1/model.onnx", b"a")
    source, recorder = make_source(f"s3://{base}")
    source.poll_once()
    assert recorder.lists("m") == [[1]]

    moto.stop()
    try:
        with caplog.at_level(logging.DEBUG, LOGGER):
            for _ in range(3):
                source.poll_once()
        assert recorder.lists("m") == [[1]]  # never an empty list: v1 keeps serving
        errors = [r for r in caplog.records if "filesystem access error" in r.getMessage()]
        assert [r.levelno for r in errors] == [logging.WARNING, logging.DEBUG, logging.DEBUG]
        assert "testing-secret" not in caplog.text
    finally:
        moto.start()

    # moto restarted empty: the bucket is gone until re-created, and still nothing is sent.
    s3fs.S3FileSystem.clear_instance_cache()
    source.poll_once()
    assert recorder.lists("m") == [[1]]
    fs = s3fs.S3FileSystem()
    fs.mkdir("models")
    fs.pipe(f"{base}/3/model.onnx", b"c")
    with caplog.at_level(logging.INFO, LOGGER):
        source.poll_once()
    assert recorder.lists("m") == [[1], [3]]


def test_s3_version_is_copied_into_the_cache(
    s3: s3fs.S3FileSystem, base: str, tmp_path: Path
) -> None:
    s3.pipe(f"{base}/4/model.onnx", b"m" * 1000)
    s3.pipe(f"{base}/4/variables/data", b"d" * 10)
    cache = ModelCache(ModelCacheOptions(cache_dir=str(tmp_path)))

    local = Path(cache.fetch(ServableId("m", 4), f"s3://{base}/4"))

    assert (local / "model.onnx").read_bytes() == b"m" * 1000
    assert (local / "variables" / "data").read_bytes() == b"d" * 10
    cache.release(str(local))
    assert not local.exists()
