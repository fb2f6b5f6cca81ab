"""ServerCore in process: runtime reload, labels, traffic split, model control, config polling.

Uses a private platform registry whose servables count their calls (tests/serving/counting.py)
over real version directories and the real source → adapter → manager chain.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from pyserving.errors import FailedPrecondition, NotFound, PermissionDenied, ServingError
from pyserving.proto import model_server_config_pb2 as config_pb2
from pyserving.serving.config import ConfigError, ModelConfig, ModelServerConfig
from pyserving.serving.server_core import ServerCore, ServerOptions
from pyserving.sources.storage_path import VersionPolicy
from tests.fakes import wait_until
from tests.serving.counting import counting_registry, make_versions


def model(name: str, base: Path, **kwargs: object) -> ModelConfig:
    return ModelConfig(name, str(base), platform="counting", **kwargs)  # type: ignore[arg-type]


@pytest.fixture
def gate() -> Iterator[threading.Event]:
    event = threading.Event()
    yield event
    event.set()


def make_core(config: ModelServerConfig, gate: threading.Event, **options: object) -> ServerCore:
    settings: dict[str, object] = {
        "model_config": config,
        "file_system_poll_wait_seconds": 0,
        "max_num_load_retries": 0,
        "initial_load_timeout_s": 30.0,
    }
    settings.update(options)
    return ServerCore(ServerOptions(**settings), registry=counting_registry(gate))  # type: ignore[arg-type]


@pytest.fixture
def started(gate: threading.Event) -> Iterator[list[ServerCore]]:
    cores: list[ServerCore] = []
    yield cores
    gate.set()
    for core in cores:
        assert core.stop(30)


def start(cores: list[ServerCore], core: ServerCore) -> ServerCore:
    cores.append(core)
    core.start()
    return core


def version_of(core: ServerCore, name: str, version=None, label=None) -> int:
    with core.service.acquire(name, version, label) as handle:
        return handle.id.version


def test_reload_adds_and_removes_models_without_disturbing_the_others(tmp_path, gate, started):
    a, b, c = (make_versions(tmp_path / n, 1) for n in "abc")
    core = start(started, make_core(ModelServerConfig((model("a", a), model("b", b))), gate))
    with core.service.acquire("a") as handle:
        servable_a = handle.servable
    core.apply_config(ModelServerConfig((model("a", a), model("c", c))))
    assert version_of(core, "c") == 1
    wait_until(lambda: not core.manager.available_versions("b"), what="b unloaded")
    with pytest.raises(NotFound):
        core.service.acquire("b")
    with core.service.acquire("a") as handle:
        assert handle.servable is servable_a  # never reloaded
    assert core.model_names() == ["a", "c"]


def test_reload_applies_a_changed_version_policy(tmp_path, gate, started):
    base = make_versions(tmp_path / "m", 1, 2)
    core = start(started, make_core(ModelServerConfig((model("m", base),)), gate))
    assert core.manager.available_versions("m") == [2]
    core.apply_config(ModelServerConfig((model("m", base, version_policy=VersionPolicy.all()),)))
    wait_until(lambda: core.manager.available_versions("m") == [2, 1], what="both versions")


def test_a_rejected_config_changes_nothing(tmp_path, gate, started):
    a, b = make_versions(tmp_path / "a", 1), make_versions(tmp_path / "b", 1)
    core = start(started, make_core(ModelServerConfig((model("a", a),)), gate))
    before = core.config
    with pytest.raises(FailedPrecondition, match="Illegal to change a model's platform"):
        core.apply_config(ModelServerConfig((ModelConfig("a", str(a), platform="onnx"),)))
    with pytest.raises(ConfigError, match="Model b requests unsupported platform nope"):
        core.apply_config(
            ModelServerConfig((model("a", a), ModelConfig("b", str(b), platform="nope")))
        )
    assert core.config is before
    assert core.manager.stream_names() == ["a"]
    assert version_of(core, "a") == 1


def test_added_model_that_cannot_load_is_reported_by_name(tmp_path, gate, started):
    a = make_versions(tmp_path / "a", 1)
    core = start(started, make_core(ModelServerConfig((model("a", a),)), gate))
    with pytest.raises(ServingError, match=r"1 servable\(s\) did not become available.*ghost"):
        core.apply_config(ModelServerConfig((model("a", a), model("ghost", tmp_path / "none"))))
    assert version_of(core, "a") == 1


def test_startup_label_may_name_a_version_still_loading(tmp_path, gate, started):
    base = make_versions(tmp_path / "m", 1, 2)
    (base / "2" / "block").write_text("")
    config = ModelServerConfig(
        (model("m", base, version_policy=VersionPolicy.all(), labels={"canary": 2}),)
    )
    core = make_core(config, gate)
    started.append(core)
    starter = threading.Thread(target=core.start)
    starter.start()
    wait_until(lambda: core.manager.available_versions("m") == [1], what="version 1")
    with pytest.raises(NotFound):
        core.service.acquire("m", label="canary")
    gate.set()
    starter.join()
    assert version_of(core, "m", label="canary") == 2


def test_moving_a_label_needs_an_available_version(tmp_path, gate, started):
    base = make_versions(tmp_path / "m", 1, 2)
    policy = VersionPolicy.specific([1])
    core = start(
        started,
        make_core(
            ModelServerConfig((model("m", base, version_policy=policy, labels={"s": 1}),)), gate
        ),
    )
    moved = ModelServerConfig((model("m", base, version_policy=policy, labels={"s": 2}),))
    with pytest.raises(FailedPrecondition, match="version 2 of model m, which is not currently"):
        core.apply_config(moved)
    assert version_of(core, "m", label="s") == 1
    # Load version 2 first, then the move is accepted and takes effect at once.
    both = VersionPolicy.specific([1, 2])
    core.apply_config(ModelServerConfig((model("m", base, version_policy=both, labels={"s": 1}),)))
    wait_until(lambda: core.manager.available_versions("m") == [2, 1], what="version 2")
    core.apply_config(ModelServerConfig((model("m", base, version_policy=both, labels={"s": 2}),)))
    assert version_of(core, "m", label="s") == 2


def test_new_label_on_unavailable_version_needs_the_flag(tmp_path, gate, started):
    base = make_versions(tmp_path / "m", 1, 2)
    policy = VersionPolicy.specific([1])
    first = ModelServerConfig((model("m", base, version_policy=policy),))
    labelled = ModelServerConfig((model("m", base, version_policy=policy, labels={"next": 2}),))
    strict = start(started, make_core(first, gate))
    with pytest.raises(FailedPrecondition, match="not currently available"):
        strict.apply_config(labelled)
    lenient = start(
        started, make_core(first, gate, allow_version_labels_for_unavailable_models=True)
    )
    lenient.apply_config(labelled)
    assert lenient.resolve_label("m", "next") == 2


def test_label_move_under_load_never_fails_a_request(tmp_path, gate, started):
    base = make_versions(tmp_path / "m", 1, 2)
    both = VersionPolicy.all()
    configs = [
        ModelServerConfig((model("m", base, version_policy=both, labels={"s": v}),)) for v in (1, 2)
    ]
    core = start(started, make_core(configs[0], gate))
    stop = threading.Event()
    seen: Counter[int] = Counter()
    errors: list[Exception] = []

    def client() -> None:
        while not stop.is_set():
            try:
                seen[version_of(core, "m", label="s")] += 1
            except Exception as exc:  # the assertion below reports it
                errors.append(exc)

    threads = [threading.Thread(target=client) for _ in range(4)]
    for thread in threads:
        thread.start()
    for i in range(100):
        target = 2 - i % 2  # 2, 1, 2, ...
        before = seen[target]
        core.apply_config(configs[target - 1])
        wait_until(lambda t=target, b=before: seen[t] > b, what=f"a request on version {target}")
    stop.set()
    for thread in threads:
        thread.join()
    assert not errors
    assert seen[1] and seen[2]


def test_traffic_split_spreads_requests_by_weight(tmp_path, gate, started):
    base = make_versions(tmp_path / "m", 1, 2)
    config = ModelServerConfig(
        (
            model(
                "m",
                base,
                version_policy=VersionPolicy.all(),
                labels={"stable": 1, "canary": 2},
                traffic={"stable": 90, "canary": 10},
            ),
        )
    )
    core = start(started, make_core(config, gate))
    counts = Counter(version_of(core, "m") for _ in range(2000))
    assert abs(counts[2] / 2000 - 0.10) < 0.03, counts
    # Naming a version or a label bypasses the split.
    assert {version_of(core, "m", label="canary") for _ in range(50)} == {2}
    assert {version_of(core, "m", version=1) for _ in range(50)} == {1}


def test_traffic_split_falls_back_to_available_versions(tmp_path, gate, started):
    base = make_versions(tmp_path / "m", 1, 2)
    (base / "2" / "block").write_text("")
    config = ModelServerConfig(
        (
            model(
                "m",
                base,
                version_policy=VersionPolicy.all(),
                labels={"stable": 1, "canary": 2},
                traffic={"stable": 50, "canary": 50},
            ),
        )
    )
    core = make_core(config, gate)
    started.append(core)
    starter = threading.Thread(target=core.start)
    starter.start()
    wait_until(lambda: core.manager.available_versions("m") == [1], what="version 1")
    assert {version_of(core, "m") for _ in range(100)} == {1}
    gate.set()
    starter.join()
    assert {version_of(core, "m") for _ in range(200)} == {1, 2}


def test_unload_holds_until_an_explicit_load(tmp_path, gate, started):
    a, b = make_versions(tmp_path / "a", 1), make_versions(tmp_path / "b", 1)
    core = start(started, make_core(ModelServerConfig((model("a", a), model("b", b))), gate))
    core.unload_model("a")
    assert core.manager.available_versions("a") == []
    assert core.model_names() == ["b"]
    assert {"name": "a", "version": "1", "state": "UNAVAILABLE", "reason": ""} in list(
        core.repository_index()
    )
    make_versions(a, 2)
    core.load_model("b")  # polls every base path again: "a" must stay unloaded
    assert core.manager.available_versions("a") == []
    core.load_model("a")
    assert core.manager.available_versions("a") == [2]
    assert {"name": "a", "version": "2", "state": "READY", "reason": ""} in list(
        core.repository_index()
    )
    with pytest.raises(NotFound, match='model "zzz" is not in the model config'):
        core.load_model("zzz")
    with pytest.raises(NotFound):
        core.unload_model("zzz")


def test_reload_config_takes_tf_serving_message_with_relative_paths(tmp_path, gate, started):
    make_versions(tmp_path / "models" / "m", 3)
    config_file = tmp_path / "models.config"
    config_file.write_text("model_config_list {}")
    core = start(
        started,
        make_core(
            ModelServerConfig(()),
            gate,
            model_config_file=str(config_file),
            model_control_roots=(str(tmp_path / "models"),),
        ),
    )
    message = config_pb2.ModelServerConfig()
    entry = message.model_config_list.config.add()
    entry.name, entry.base_path, entry.model_platform = "m", "models/m", "counting"
    core.reload_config(message)
    assert version_of(core, "m") == 3
    core.reload_config(config_pb2.ModelServerConfig())  # nothing set: a no-op, as in TF Serving
    assert core.model_names() == ["m"]


def test_reload_config_outside_the_started_base_paths_changes_nothing_issue_15(
    tmp_path, gate, started
):
    a, elsewhere = make_versions(tmp_path / "a", 1), make_versions(tmp_path / "elsewhere", 1)
    config = ModelServerConfig((ModelConfig("a", str(a), platform="counting"),))
    core = start(started, make_core(config, gate))
    message = config_pb2.ModelServerConfig()
    for name, base_path in (("a", str(a / "1")), ("b", str(elsewhere))):
        entry = message.model_config_list.config.add()
        entry.name, entry.base_path, entry.model_platform = name, base_path, "counting"
    with pytest.raises(PermissionDenied, match=r'model "b": base path .*elsewhere is not allowed'):
        core.reload_config(message)
    assert core.config is config and core.model_names() == ["a"]


def test_config_file_poll_applies_edits_and_rejects_malformed_ones(tmp_path, gate, started, caplog):
    a, b = make_versions(tmp_path / "a", 1), make_versions(tmp_path / "b", 1)
    config_file = tmp_path / "models.yaml"
    config_file.write_text(f"models:\n  - {{name: a, base_path: {a}, platform: counting}}\n")
    core = start(
        started,
        make_core(
            None,  # type: ignore[arg-type]
            gate,
            model_config_file=str(config_file),
            model_config_file_poll_wait_seconds=0.02,
        ),
    )
    config_file.write_text(f"models:\n  - {{name: b, base_path: {b}, platform: counting}}\n")
    wait_until(lambda: core.manager.available_versions("b") == [1], what="b loaded")
    wait_until(lambda: not core.manager.available_versions("a"), what="a unloaded")
    caplog.set_level(logging.ERROR, logger="pyserving")
    config_file.write_text("models: [unclosed\n")
    wait_until(lambda: "rejected" in caplog.text, what="the rejection logged")
    assert "not valid YAML" in caplog.text
    assert core.model_names() == ["b"] and version_of(core, "b") == 1


def test_allow_python_servables_opts_in_only_the_command_line_model_issue_15(tmp_path):
    opted = ServerOptions(model_base_path=str(tmp_path), allow_python_servables=True)
    assert opted.resolve_model_config().models[0].options == {"allow_python": True}
    plain = ServerOptions(model_base_path=str(tmp_path))
    assert "allow_python" not in plain.resolve_model_config().models[0].options
