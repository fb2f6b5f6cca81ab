"""Warmup: `warmup/*.json` V2 requests replayed inside the load, before AVAILABLE."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pytest

from pyserving.core.ids import ServableId, ServableState
from pyserving.serving.config import ModelConfig, ModelServerConfig
from pyserving.serving.server_core import ServerCore, ServerOptions
from pyserving.serving.warmup import (
    WarmupError,
    WarmupLoader,
    WarmupOptions,
    WarmupRequest,
    read_warmup_requests,
    replay_warmup,
)
from pyserving.sources.storage_path import VersionPolicy
from tests.fakes import wait_until
from tests.serving.counting import (
    CountingLoader,
    CountingServable,
    counting_registry,
    make_versions,
)


def write_request(version_dir: Path, name: str, data: list[float], shape=(1, 2), **extra) -> None:
    warmup = version_dir / "warmup"
    warmup.mkdir(exist_ok=True)
    request = {"inputs": [{"name": "x", "datatype": "FP32", "shape": list(shape), "data": data}]}
    request.update(extra)
    (warmup / name).write_text(json.dumps(request))


def test_requests_are_read_in_name_order(tmp_path):
    write_request(tmp_path, "b.json", [3, 4])
    write_request(tmp_path, "a.json", [1, 2], parameters={"signature_name": "serving_default"})
    (tmp_path / "warmup" / "notes.txt").write_text("ignored")
    requests = read_warmup_requests(str(tmp_path))
    assert [r.source for r in requests] == ["warmup/a.json", "warmup/b.json"]
    assert requests[0].signature_name == "serving_default"
    signature = CountingServable(ServableId("m", 1)).signatures["serving_default"]
    arrays = requests[1].arrays(signature)
    np.testing.assert_array_equal(arrays["x"], np.array([[3, 4]], np.float32))
    assert read_warmup_requests(str(tmp_path / "none")) == []


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "cannot read it"),
        ('{"inputs": 3}', "'inputs' must be a list"),
        ('{"inputs": [], "parameters": {"signature_name": 3}}', "signature_name"),
        ('{"inputs": [], "parameters": {"timeout": "soon"}}', "timeout"),
    ],
)
def test_malformed_requests_name_the_file(tmp_path, content, message):
    (tmp_path / "warmup").mkdir()
    (tmp_path / "warmup" / "bad.json").write_text(content)
    with pytest.raises(WarmupError, match=f"warmup/bad.json.*{message}"):
        read_warmup_requests(str(tmp_path))


@pytest.mark.parametrize(
    ("tensor", "message"),
    [
        ({"datatype": "FP99", "shape": [1], "data": [1]}, "unsupported datatype"),
        (
            {"datatype": "FP32", "shape": [3], "data": [1]},
            r"expected FP32 \[-1, 2\], got FP32 \[3\]",
        ),
        ({"datatype": "FP32", "shape": [1, 2], "data": [1]}, "needs 2 elements, data has 1"),
        ({"datatype": "INT64", "shape": [1, 2], "data": [1, 2]}, "got INT64"),
        ({"datatype": "FP32", "shape": [1, -2], "data": []}, "negative dimension"),
        ({"datatype": "FP32", "shape": [2**40, 2**40], "data": [1]}, "exceed the limit"),
    ],
)
def test_files_are_checked_as_infer_requests_are_issue_14(tmp_path, tensor, message):
    """A warmup file goes through the V2 infer parser: the same checks, the same messages."""
    (tmp_path / "warmup").mkdir()
    document = {"inputs": [{"name": "x", **tensor}]}
    (tmp_path / "warmup" / "bad.json").write_text(json.dumps(document))
    requests = read_warmup_requests(str(tmp_path))
    servable = CountingServable(ServableId("m", 1))
    with pytest.raises(WarmupError, match=f"warmup request warmup/bad.json: .*{message}"):
        replay_warmup(servable, requests)
    assert servable.calls == 0


def test_replay_counts_iterations_and_checks_the_signature():
    servable = CountingServable(ServableId("m", 2))
    good = WarmupRequest("good", "", {"x": np.ones((3, 2), np.float32)})
    assert replay_warmup(servable, [good, good], iterations=3) == 6
    assert servable.calls == 6
    wrong_shape = WarmupRequest("shape", "", {"x": np.ones((3, 5), np.float32)})
    with pytest.raises(WarmupError, match='shape: input "x": expected FP32 \\[-1, 2\\]'):
        replay_warmup(servable, [wrong_shape])
    with pytest.raises(WarmupError, match='signature "other" not found'):
        replay_warmup(servable, [WarmupRequest("sig", "other", good.inputs)])
    failing = WarmupRequest("neg", "", {"x": -np.ones((1, 2), np.float32)})
    with pytest.raises(WarmupError, match="warmup request neg failed: negative input"):
        replay_warmup(servable, [failing])


def test_failed_warmup_unloads_what_was_loaded(tmp_path):
    make_versions(tmp_path, 1)
    write_request(tmp_path / "1", "a.json", [-1, 2])
    inner = CountingLoader(ServableId("m", 1), str(tmp_path / "1"), threading.Event())
    loader = WarmupLoader(inner, ServableId("m", 1), str(tmp_path / "1"), WarmupOptions())
    with pytest.raises(WarmupError, match="negative input"):
        loader.load()
    assert inner.servable is None


def make_core(base: Path, **options: object) -> ServerCore:
    config = ModelServerConfig(
        (ModelConfig("m", str(base), platform="counting", version_policy=VersionPolicy.all()),)
    )
    settings: dict[str, object] = {
        "model_config": config,
        "file_system_poll_wait_seconds": 0,
        "max_num_load_retries": 0,
    }
    settings.update(options)
    return ServerCore(ServerOptions(**settings), registry=counting_registry(threading.Event()))  # type: ignore[arg-type]


def test_warmup_runs_before_the_version_is_available(tmp_path):
    base = make_versions(tmp_path / "m", 1)
    write_request(base / "1", "a.json", [1, 2])
    write_request(base / "1", "b.json", [1, 2, 3, 4], shape=(2, 2))
    core = make_core(base, num_request_iterations_for_warmup=2)
    calls_when_available: list[int] = []

    def on_event(event) -> None:
        if event.state is ServableState.AVAILABLE:
            calls_when_available.append(CountingLoader.loaded[event.id].calls)

    core.manager.bus.subscribe(on_event)
    core.start()
    try:
        assert calls_when_available == [4]
    finally:
        assert core.stop(30)


def test_warmup_can_be_disabled(tmp_path):
    base = make_versions(tmp_path / "m", 1)
    write_request(base / "1", "a.json", [-1, 2])  # would fail
    core = make_core(base, enable_model_warmup=False)
    core.start()
    try:
        assert core.manager.available_versions("m") == [1]
        assert CountingLoader.loaded[ServableId("m", 1)].calls == 0
    finally:
        assert core.stop(30)


def test_failing_warmup_fails_the_load_and_the_old_version_keeps_serving(tmp_path):
    base = make_versions(tmp_path / "m", 1)
    core = make_core(base, num_request_iterations_for_warmup=1)
    core.start()
    try:
        make_versions(base, 2)
        write_request(base / "2", "a.json", [-1, 2])
        core.load_model("m")  # polls now: version 2 is aspired, and fails its warmup
    except Exception as exc:
        raise AssertionError("load_model raised although version 1 is available") from exc
    try:
        wait_until(
            lambda: core.manager.monitor.state(ServableId("m", 2)).state is ServableState.END,
            what="version 2 to fail",
        )
        status = {s.id.version: s for s in core.manager.monitor.states("m")}
        assert "warmup request warmup/a.json failed: negative input" in (status[2].error or "")
        assert core.manager.available_versions("m") == [1]
    finally:
        assert core.stop(30)
