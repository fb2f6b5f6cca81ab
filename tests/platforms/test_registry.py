from __future__ import annotations

import importlib.metadata
import sys
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import fsspec
import pytest

from pyserving.core.ids import ServableId
from pyserving.core.loader import Loader
from pyserving.demo import make_mlp
from pyserving.errors import FailedPrecondition, NotFound
from pyserving.platforms.onnx import OnnxLoader
from pyserving.platforms.registry import (
    ENTRY_POINT_GROUP,
    PlatformRegistry,
    detect_platform,
    known_platforms,
    make_loader,
    platform_display_name,
)
from tests.fakes import FakeLoader

ID = ServableId("m", 1)


def fake_factory(servable_id: ServableId, path: str, config: Mapping[str, Any]) -> Loader:
    """A LoaderFactory for the tests (also the target of a fake entry point)."""
    return FakeLoader(servable_id)


@pytest.mark.parametrize(
    ("file_name", "platform"),
    [
        ("saved_model.pb", "tensorflow"),
        ("model.onnx", "onnx"),
        ("model.pt2", "torch"),
        ("model.pt", "torch"),
        ("model.skops", "sklearn"),
        ("model.joblib", "sklearn"),
        ("model.pkl", "sklearn"),
        ("model.ubj", "xgboost"),
        ("model.xgb", "xgboost"),
        ("model.lgb", "lightgbm"),
        ("table.tsv", "lookup"),
        ("table.csv", "lookup"),
        ("table.npz", "lookup"),
        ("table.parquet", "lookup"),
        ("servable.py", "python"),
    ],
)
def test_detect_platform_from_each_file_of_the_table(
    tmp_path: Path, file_name: str, platform: str
) -> None:
    (tmp_path / "pyserving.yaml").write_text("")
    (tmp_path / file_name).write_bytes(b"")
    assert detect_platform(str(tmp_path)) == platform


def test_detect_platform_without_a_known_file_is_none(tmp_path: Path) -> None:
    (tmp_path / "README.md").write_text("")
    (tmp_path / "variables").mkdir()
    assert detect_platform(str(tmp_path)) is None


def test_servable_py_wins_over_the_model_file_it_wraps(tmp_path: Path) -> None:
    (tmp_path / "model.onnx").write_bytes(b"")
    (tmp_path / "servable.py").write_text("")
    assert detect_platform(str(tmp_path)) == "python"


def test_detect_platform_on_memory_filesystem() -> None:
    url = f"memory://pyserving-test-{uuid.uuid4().hex}/1"
    fs, path = fsspec.core.url_to_fs(url)
    fs.pipe(f"{path}/model.ubj", b"")
    try:
        assert detect_platform(url) == "xgboost"
    finally:
        fs.rm(path, recursive=True)


def test_detect_platform_on_a_missing_directory_raises(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        detect_platform(str(tmp_path / "missing"))


def test_make_loader_onnx_is_cheap_and_returns_an_onnx_loader(tmp_path: Path) -> None:
    loader = make_loader("onnx", ID, str(tmp_path), {"intra_op_num_threads": 2})
    assert isinstance(loader, OnnxLoader)  # nothing on disk was read: the directory is empty
    assert loader.intra_op_num_threads == 2


@pytest.mark.parametrize(
    ("platform", "loader"),
    [
        ("lookup", "LookupLoader"),
        ("python", "PythonLoader"),
        ("sklearn", "SklearnLoader"),
        ("xgboost", "XGBoostLoader"),
        ("lightgbm", "LightGBMLoader"),
        ("torch", "TorchLoader"),
    ],  # tensorflow: in a process of its own, see test_tensorflow.py
)
def test_every_builtin_platform_makes_its_loader_without_reading(
    platform: str, loader: str
) -> None:
    made = make_loader(platform, ID, "/nowhere")  # construction is cheap: nothing is read
    assert type(made).__name__ == loader


def test_unknown_platform_is_not_found_and_names_the_known_ones() -> None:
    with pytest.raises(NotFound) as info:
        make_loader("caffe", ID, "/nowhere")
    assert info.value.message.startswith('unknown platform "caffe" (known: ')
    for platform in ("onnx", "torch", "sklearn", "python"):
        assert platform in info.value.message


def test_builtin_platform_whose_module_cannot_be_imported(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pyserving.platforms.onnx", None)  # import raises ImportError
    registry = PlatformRegistry()
    with pytest.raises(FailedPrecondition, match='platform "onnx" could not be imported'):
        registry.make_loader("onnx", ID, "/nowhere")


def test_registered_factory_takes_precedence_and_gets_the_config() -> None:
    seen: list[tuple[ServableId, str, Mapping[str, Any]]] = []

    def factory(servable_id: ServableId, path: str, config: Mapping[str, Any]) -> Loader:
        seen.append((servable_id, path, config))
        return FakeLoader(servable_id)

    registry = PlatformRegistry()
    registry.register("onnx", factory, display_name="my_onnx")

    loader = registry.make_loader("onnx", ID, "/p", {"k": 1})

    assert isinstance(loader, FakeLoader)
    assert seen == [(ID, "/p", {"k": 1})]
    assert registry.display_name("onnx") == "my_onnx"


def test_entry_point_platforms_are_discovered_lazily(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []

    def entry_points(*, group: str) -> list[importlib.metadata.EntryPoint]:
        calls.append(group)
        return [
            importlib.metadata.EntryPoint("fake", f"{__name__}:fake_factory", ENTRY_POINT_GROUP),
            importlib.metadata.EntryPoint(
                "broken", "pyserving_no_such_module:factory", ENTRY_POINT_GROUP
            ),
        ]

    monkeypatch.setattr(importlib.metadata, "entry_points", entry_points)
    registry = PlatformRegistry()
    assert calls == []

    assert isinstance(registry.make_loader("fake", ID, "/p"), FakeLoader)
    assert {"fake", "broken", "onnx"} <= set(registry.known_platforms())
    with pytest.raises(FailedPrecondition, match='platform "broken" could not be imported'):
        registry.make_loader("broken", ID, "/p")
    assert calls == [ENTRY_POINT_GROUP]  # read once, then cached


def test_known_platforms_lists_every_builtin() -> None:
    assert {
        "onnx",
        "tensorflow",
        "torch",
        "sklearn",
        "xgboost",
        "lightgbm",
        "lookup",
        "python",
    } <= set(known_platforms())


@pytest.mark.parametrize(
    ("platform", "display_name"),
    [
        ("onnx", "onnxruntime_onnx"),
        ("torch", "pytorch_torchscript"),
        ("tensorflow", "tensorflow_savedmodel"),
        ("sklearn", "sklearn"),
        ("xgboost", "xgboost"),
        ("lightgbm", "lightgbm"),
        ("somebody_elses", "somebody_elses"),
    ],
)
def test_platform_display_name(platform: str, display_name: str) -> None:
    assert platform_display_name(platform) == display_name


def test_make_loader_on_a_demo_model_loads(tmp_path: Path) -> None:
    make_mlp(tmp_path / "model.onnx", seed=0)
    loader = make_loader(detect_platform(str(tmp_path)) or "", ID, str(tmp_path))
    servable = loader.load()
    try:
        assert servable.platform == "onnx"
    finally:
        loader.unload()
