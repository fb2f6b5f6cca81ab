from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import fsspec
import pytest

from pyserving.core.ids import ServableData, ServableId
from pyserving.core.loader import Loader
from pyserving.demo import make_mlp
from pyserving.platforms.onnx import OnnxLoader
from pyserving.platforms.registry import PlatformRegistry
from pyserving.sources.adapter import PlatformAdapter
from pyserving.sources.base import SourceAdapter, connect
from pyserving.sources.storage_path import (
    ServableToMonitor,
    StoragePathSource,
    StoragePathSourceOptions,
)
from tests.fakes import FakeLoader, wait_until


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[str, list[ServableData[Any]]]] = []

    def __call__(self, name: str, items: list[ServableData[Any]]) -> None:
        self.calls.append((name, list(items)))


def path_item(path: Path | str, version: int = 1, revision: str = "r1") -> ServableData[str]:
    return ServableData(ServableId("m", version), str(path), revision=revision)


def adapt_one(adapter: PlatformAdapter, item: ServableData[str]) -> ServableData[Loader]:
    recorder = Recorder()
    adapter.set_aspired_versions_callback(recorder)
    adapter.aspire_versions(item.id.name, [item])
    ((name, (out,)),) = recorder.calls
    assert name == item.id.name
    return out


class Doubler(SourceAdapter[int, int]):
    def adapt(self, item: ServableData[int]) -> ServableData[int]:
        if item.data == 13:
            raise ValueError("unlucky number")
        if item.data == 0:
            raise ZeroDivisionError
        return ServableData(item.id, (item.data or 0) * 2)


@pytest.fixture
def models_url(tmp_path: Path) -> Iterator[str]:
    """An fsspec memory-filesystem repository: mlp versions 1 and 2."""
    url = f"memory://pyserving-test-{uuid.uuid4().hex}"
    fs, root = fsspec.core.url_to_fs(url)
    for version in (1, 2):
        model = make_mlp(tmp_path / str(version) / "model.onnx", seed=version)
        fs.pipe(f"{root}/mlp/{version}/model.onnx", model.read_bytes())
    yield url
    fs.rm(root, recursive=True)


# ------------------------------------------------------------------------------ SourceAdapter


def test_source_adapter_converts_each_item_and_carries_revisions() -> None:
    adapter, recorder = Doubler(), Recorder()
    connect(adapter, recorder)

    adapter.aspire_versions(
        "s",
        [
            ServableData(ServableId("s", 1), 5, revision="a"),
            ServableData(ServableId("s", 2), 13, revision="b"),
            ServableData(ServableId("s", 3), 0, revision="c"),
            ServableData(ServableId("s", 4), error="upstream failed", revision="d"),
        ],
    )

    ((name, items),) = recorder.calls
    assert name == "s"
    assert items == [
        ServableData(ServableId("s", 1), 10, revision="a"),
        ServableData(ServableId("s", 2), error="unlucky number", revision="b"),
        ServableData(ServableId("s", 3), error="ZeroDivisionError", revision="c"),
        ServableData(ServableId("s", 4), error="upstream failed", revision="d"),
    ]


def test_source_adapter_passes_an_empty_list_on() -> None:
    adapter, recorder = Doubler(), Recorder()
    connect(adapter, recorder)
    adapter.aspire_versions("s", [])
    assert recorder.calls == [("s", [])]


def test_source_adapter_waits_for_its_callback_before_passing_lists_on() -> None:
    adapter, recorder = Doubler(), Recorder()
    delivered = threading.Event()

    def aspire() -> None:
        adapter.aspire_versions("s", [ServableData(ServableId("s", 1), 1)])
        delivered.set()

    thread = threading.Thread(target=aspire)
    thread.start()
    assert not delivered.wait(0.05)

    adapter.set_aspired_versions_callback(recorder)
    wait_until(delivered.is_set, what="the list to be delivered")
    thread.join()
    assert recorder.calls == [("s", [ServableData(ServableId("s", 1), 2)])]


def test_source_adapter_callback_can_be_set_only_once() -> None:
    adapter = Doubler()
    adapter.set_aspired_versions_callback(Recorder())
    with pytest.raises(RuntimeError, match="already set"):
        adapter.set_aspired_versions_callback(Recorder())


# ------------------------------------------------------------------------------ PlatformAdapter


def test_detected_onnx_version_becomes_an_onnx_loader_without_loading(tmp_path: Path) -> None:
    make_mlp(tmp_path / "1" / "model.onnx", seed=0)

    out = adapt_one(PlatformAdapter(), path_item(tmp_path / "1"))

    assert out.error is None
    assert isinstance(out.data, OnnxLoader)
    assert out.data.path == str(tmp_path / "1")
    assert out.revision == "r1"


def test_directory_without_a_platform_file_becomes_an_error_item(tmp_path: Path) -> None:
    (tmp_path / "1").mkdir()
    (tmp_path / "1" / "weights.bin").write_bytes(b"")

    out = adapt_one(PlatformAdapter(), path_item(tmp_path / "1", version=1))

    assert out.data is None
    assert out.revision == "r1"
    assert out.error is not None
    assert out.error.startswith(
        f"No platform found for model m version 1 at {tmp_path / '1'} (expected one of: "
    )
    assert "model.onnx" in out.error
    assert "saved_model.pb" in out.error


def test_platform_override_wins_over_detection(tmp_path: Path) -> None:
    make_mlp(tmp_path / "1" / "model.onnx", seed=0)
    # The forced platform's own file is there too (without it the override is refused, naming
    # the files found: tests/platforms/test_forced_platform.py).
    (tmp_path / "1" / "model.pt").write_bytes(b"")

    out = adapt_one(PlatformAdapter(platform_overrides={"m": "torch"}), path_item(tmp_path / "1"))

    assert out.error is None
    assert type(out.data).__name__ == "TorchLoader"


def test_unknown_platform_override_becomes_an_error_item(tmp_path: Path) -> None:
    out = adapt_one(PlatformAdapter(platform_overrides={"m": "caffe"}), path_item(tmp_path))
    assert out.error is not None
    assert out.error.startswith('unknown platform "caffe" (known: ')


def test_missing_version_directory_becomes_an_error_item(tmp_path: Path) -> None:
    out = adapt_one(PlatformAdapter(), path_item(tmp_path / "gone"))
    assert out.data is None
    assert out.error


def test_model_config_reaches_the_loader_factory_and_can_be_updated(tmp_path: Path) -> None:
    seen: list[Mapping[str, Any]] = []

    def factory(servable_id: ServableId, path: str, config: Mapping[str, Any]) -> Loader:
        seen.append(config)
        return FakeLoader(servable_id)

    registry = PlatformRegistry()
    registry.register("fake", factory)
    adapter = PlatformAdapter({"m": "fake"}, {"m": {"threads": 2}}, registry=registry)
    recorder = Recorder()
    adapter.set_aspired_versions_callback(recorder)

    adapter.aspire_versions("m", [path_item(tmp_path, version=1)])
    adapter.update_config({"m": "fake"}, {"m": {"threads": 4}})
    adapter.aspire_versions("m", [path_item(tmp_path, version=2)])
    adapter.update_config({}, {})
    adapter.aspire_versions("m", [path_item(tmp_path, version=3)])  # detection: no platform

    assert seen == [{"threads": 2}, {"threads": 4}]
    assert all(isinstance(items[0].data, FakeLoader) for _, items in recorder.calls[:2])
    assert (recorder.calls[2][1][0].error or "").startswith("No platform found")


def test_storage_path_source_through_adapter_on_memory_filesystem(models_url: str) -> None:
    source = StoragePathSource(
        StoragePathSourceOptions((ServableToMonitor("mlp", f"{models_url}/mlp"),))
    )
    adapter, recorder = PlatformAdapter(), Recorder()
    connect(source, adapter.aspire_versions)
    connect(adapter, recorder)

    source.poll_once()

    ((name, (out,)),) = recorder.calls
    assert name == "mlp"
    assert out.id == ServableId("mlp", 2)
    assert isinstance(out.data, OnnxLoader)
    assert out.revision
    servable = out.data.load()
    assert servable.signatures["serving_default"].input_names == ("input",)
    out.data.unload()
