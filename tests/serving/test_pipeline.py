"""Pipelines in a ServerCore (issue 19): a lookup -> MLP pipeline answers what the two models
answer one after the other; a request keeps the step versions it started with across a swap;
status follows the steps; a step's error names the step; a reload serves the new definition as
the next version."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import yaml

from pyserving import ServerCore, ServerOptions
from pyserving.core.ids import ServableState
from pyserving.demo import make_mlp
from pyserving.errors import (
    DeadlineExceeded,
    FailedPrecondition,
    InvalidInput,
    ModelError,
    NotFound,
    ServingError,
)
from pyserving.metrics import BATCH_SIZE
from pyserving.protocols.request import InferRequest, InferResponse
from pyserving.serving.config_file import load_config_file
from pyserving.serving.pipeline import STEP_VERSIONS_PARAMETER
from tests.fakes import wait_until

KEYS = np.array([3, 7, 150, 0], dtype=np.int64)  # 150 is not in the table

# Holds its request until the file `release` exists (the test opens the gate); passes x through.
GATE = """
import os
import time

from pyserving.platforms import Signature, TensorSpec

DIR = {dir!r}


class Gate:
    def __init__(self):
        x = (TensorSpec("x", "FP32", (-1, 8)),)
        y = (TensorSpec("y", "FP32", (-1, 8)),)
        self.signatures = {{"serving_default": Signature("serving_default", x, y)}}

    def load(self, path):
        pass

    def run(self, signature, inputs):
        open(os.path.join(DIR, "started"), "w").close()
        deadline = time.monotonic() + 30
        while not os.path.exists(os.path.join(DIR, "release")):
            if time.monotonic() > deadline:
                raise RuntimeError("the test never opened the gate")
            time.sleep(0.005)
        if (inputs["x"] < -100).any():
            raise ValueError("x below -100")
        return {{"y": inputs["x"]}}
"""


# Fails, but only once the gate has started (so a parallel gate is running when it fails).
BOOM = """
import os
import time

from pyserving.platforms import Signature, TensorSpec

DIR = {dir!r}


class Boom:
    def __init__(self):
        x = (TensorSpec("x", "FP32", (-1, 8)),)
        self.signatures = {{"serving_default": Signature("serving_default", x, x)}}

    def load(self, path):
        pass

    def run(self, signature, inputs):
        deadline = time.monotonic() + 30
        while not os.path.exists(os.path.join(DIR, "started")) and time.monotonic() < deadline:
            time.sleep(0.005)
        raise ValueError("boom")
"""


def _write_models(root: Path) -> None:
    values = np.random.default_rng(0).standard_normal((100, 8)).astype(np.float32)
    (root / "features" / "1").mkdir(parents=True)
    np.savez(root / "features/1/table.npz", keys=np.arange(100, dtype=np.int64), values=values)
    (root / "mlp" / "1").mkdir(parents=True)
    make_mlp(root / "mlp/1/model.onnx", seed=1, dims=(8, 16, 4))
    (root / "gate" / "1").mkdir(parents=True)
    (root / "gate/1/servable.py").write_text(GATE.format(dir=str(root)))
    (root / "boom" / "1").mkdir(parents=True)
    (root / "boom/1/servable.py").write_text(BOOM.format(dir=str(root)))


def _config(root: Path, pipelines: list[dict[str, object]], **mlp: object) -> Path:
    models: list[dict[str, object]] = [
        {"name": "features", "base_path": "features"},
        {"name": "mlp", "base_path": "mlp", **mlp},
        {"name": "gate", "base_path": "gate", "allow_python": True},
        {"name": "boom", "base_path": "boom", "allow_python": True},
        *pipelines,
    ]
    path = root / "models.yaml"
    path.write_text(yaml.safe_dump({"models": models}, sort_keys=False))
    return path


SCORER = {
    "name": "scorer",
    "pipeline": {
        "steps": [
            {"model": "features", "inputs": {"keys": "user"}},
            {"model": "mlp", "inputs": {"input": "features.values"}},
        ],
        "outputs": {"score": "mlp.output", "known": "features.found"},
    },
}
GATED = {
    "name": "gated",
    "pipeline": {
        "steps": [
            {"model": "features", "inputs": {"keys": "user"}},
            {"model": "gate", "inputs": {"x": "features.values"}},
            {"model": "mlp", "inputs": {"input": "gate.y"}},
        ],
        "outputs": {"score": "mlp.output"},
    },
}


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    _write_models(tmp_path)
    return tmp_path


@pytest.fixture
def core(repo: Path) -> Iterator[ServerCore]:
    server = ServerCore(
        ServerOptions(
            model_config_file=str(_config(repo, [SCORER, GATED])),
            file_system_poll_wait_seconds=0.05,
        )
    )
    try:
        server.start()
        yield server
    finally:
        (repo / "release").touch()  # a failed test must not leave a gate thread waiting
        server.stop()


def infer(
    core: ServerCore, model: str, inputs: dict[str, np.ndarray], **kw: object
) -> InferResponse:
    return asyncio.run(core.service.infer(InferRequest(model, inputs, **kw)))  # type: ignore[arg-type]


def step_versions(response: InferResponse) -> dict[str, int]:
    assert response.parameters is not None
    return json.loads(response.parameters[STEP_VERSIONS_PARAMETER])


def test_the_pipeline_answers_what_its_models_answer_one_after_the_other(core: ServerCore) -> None:
    assert core.is_ready()
    features = infer(core, "features", {"keys": KEYS})
    mlp = infer(core, "mlp", {"input": features.outputs["values"]})
    answer = infer(core, "scorer", {"user": KEYS})
    assert answer.version == 1
    np.testing.assert_array_equal(answer.outputs["score"], mlp.outputs["output"])
    np.testing.assert_array_equal(answer.outputs["known"], features.outputs["found"])
    assert step_versions(answer) == {"features": 1, "mlp": 1}
    only = infer(core, "scorer", {"user": KEYS}, outputs=["known"])
    assert list(only.outputs) == ["known"]
    with core.service.acquire("scorer") as handle:
        signature = core.service.signature(handle)
    assert [(t.name, t.datatype, t.shape) for t in signature.inputs] == [("user", "INT64", (-1,))]
    assert [(t.name, t.shape) for t in signature.outputs] == [("score", (-1, 4)), ("known", (-1,))]


def test_bad_input_names_the_pipeline_input(core: ServerCore) -> None:
    with pytest.raises(InvalidInput, match='input "user": expected INT64 \\[-1\\], got FP32'):
        infer(core, "scorer", {"user": KEYS.astype(np.float32)})


def test_a_request_keeps_the_versions_it_started_with_across_a_swap(
    core: ServerCore, repo: Path
) -> None:
    """The gate holds a request between its lookup and its MLP step while MLP version 2 becomes
    AVAILABLE: that request still runs MLP 1 (kept loaded for it), the next one runs MLP 2."""

    async def scenario() -> tuple[InferResponse, InferResponse]:
        held = asyncio.ensure_future(core.service.infer(InferRequest("gated", {"user": KEYS})))
        while not (repo / "started").exists():
            await asyncio.sleep(0.005)
        (repo / "mlp" / "2").mkdir()
        make_mlp(repo / "mlp/2/model.onnx", seed=2, dims=(8, 16, 4))
        monitor = core.manager.monitor
        assert await asyncio.to_thread(monitor.wait_until_available, "mlp", 2, 30.0)
        state = monitor.state(next(s.id for s in monitor.states("mlp") if s.id.version == 1))
        assert state is not None and state.state is not ServableState.END  # held by the request
        (repo / "release").touch()
        first = await held
        second = await core.service.infer(InferRequest("gated", {"user": KEYS}))
        return first, second

    first, second = asyncio.run(scenario())
    values = infer(core, "features", {"keys": KEYS}).outputs["values"]
    assert step_versions(first) == {"features": 1, "gate": 1, "mlp": 1}
    assert step_versions(second) == {"features": 1, "gate": 1, "mlp": 2}
    assert first.version == second.version == 1
    np.testing.assert_array_equal(
        second.outputs["score"], infer(core, "mlp", {"input": values}).outputs["output"]
    )
    assert not np.array_equal(first.outputs["score"], second.outputs["score"])
    wait_until(lambda: core.manager.available_versions("mlp") == [2])


def test_a_failing_step_fails_the_request_with_its_status_and_name(
    core: ServerCore, repo: Path
) -> None:
    (repo / "release").touch()
    bad = {
        "name": "raw",
        "pipeline": {
            "steps": [{"model": "gate", "inputs": {"x": "x"}}],
            "outputs": {"y": "gate.y"},
        },
    }
    core.apply_config(load_config_file(_config(repo, [SCORER, GATED, bad])))
    with pytest.raises(ModelError) as caught:
        infer(core, "raw", {"x": np.full((1, 8), -500, np.float32)})
    assert caught.value.message == 'pipeline "raw" step "gate" (model "gate"): x below -100'


def test_status_follows_the_steps(core: ServerCore) -> None:
    core.unload_model("mlp")
    wait_until(lambda: not core.service.available_versions("scorer"))
    assert not core.is_ready()
    assert core.service.available_versions("features") == [1]
    core.load_model("mlp")
    wait_until(lambda: core.service.available_versions("scorer") == [1])
    assert infer(core, "scorer", {"user": KEYS}).version == 1


def test_a_reload_serves_a_changed_pipeline_as_its_next_version(
    core: ServerCore, repo: Path
) -> None:
    changed = json.loads(json.dumps(SCORER))
    changed["pipeline"]["outputs"] = {"score": "mlp.output"}
    core.apply_config(load_config_file(_config(repo, [changed, GATED])))
    wait_until(lambda: core.service.available_versions("scorer") == [2])
    answer = infer(core, "scorer", {"user": KEYS})
    assert (answer.version, list(answer.outputs)) == (2, ["score"])


def test_wiring_that_does_not_fit_the_loaded_models_fails_the_load_naming_the_step(
    repo: Path,
) -> None:
    wrong = {
        "name": "wrong",
        "pipeline": {
            "steps": [
                {"model": "features", "inputs": {"keys": "user"}},
                {"model": "mlp", "inputs": {"input": "features.found"}},
            ],
            "outputs": {"score": "mlp.output"},
        },
    }
    server = ServerCore(
        ServerOptions(
            model_config_file=str(_config(repo, [wrong])), file_system_poll_wait_seconds=0
        )
    )
    try:
        server.start()
        (status,) = server.service.model_status("wrong")
        assert status.state is ServableState.END
        assert status.error is not None
        assert (
            'step "mlp" (model "mlp"): input "input" takes FP32 [-1, 8], but "features.found"'
            " gives BOOL [-1]" in status.error
        )
        with pytest.raises(ServingError):
            infer(server, "wrong", {"user": KEYS})
    finally:
        server.stop()


def test_the_example_pipeline_serves(tmp_path: Path) -> None:
    examples = Path(__file__).resolve().parents[2] / "examples"
    (tmp_path / "pipeline.yaml").write_text((examples / "pipeline.yaml").read_text())
    subprocess.run(
        [sys.executable, str(examples / "pipeline_models.py"), str(tmp_path / "pipeline-models")],
        check=True,
        timeout=120,
    )
    server = ServerCore(
        ServerOptions(
            model_config_file=str(tmp_path / "pipeline.yaml"), file_system_poll_wait_seconds=0
        )
    )
    try:
        server.start()
        answer = infer(server, "scorer", {"user": np.array([3, 7, 1000], np.int64)})
        assert answer.outputs["scores"].shape == (3, 4)
        assert answer.outputs["known_user"].tolist() == [True, True, False]
    finally:
        server.stop()


FORK = {
    "name": "fork",
    "pipeline": {
        "steps": [
            {"model": "features", "inputs": {"keys": "user"}},
            {"model": "gate", "inputs": {"x": "features.values"}},
            {"model": "boom", "inputs": {"x": "features.values"}},
        ],
        "outputs": {"y": "gate.y", "z": "boom.x"},
    },
}


def test_a_failing_step_cancels_its_parallel_steps_without_waiting_for_them(
    core: ServerCore, repo: Path
) -> None:
    """`gate` and `boom` both read `features` and run together; boom fails while gate is still
    running: the request fails at once with boom's error; gate's call finishes on its own thread
    later (its version stays referenced until then)."""
    core.apply_config(load_config_file(_config(repo, [SCORER, GATED, FORK])))
    with pytest.raises(ModelError) as caught:
        infer(core, "fork", {"user": KEYS})
    assert caught.value.message == 'pipeline "fork" step "boom" (model "boom"): boom'
    assert (repo / "started").exists() and not (repo / "release").exists()
    assert core.service.executor.stuck_calls == 1  # gate, abandoned but still running
    (repo / "release").touch()
    wait_until(lambda: core.service.executor.stuck_calls == 0)
    wait_until(lambda: core.service.pending_requests == 0)


def test_the_deadline_covers_every_step_and_names_the_one_it_stopped(core: ServerCore) -> None:
    with pytest.raises(DeadlineExceeded) as caught:
        infer(core, "gated", {"user": KEYS}, deadline=time.monotonic() + 0.2)
    assert caught.value.message.startswith('pipeline "gated" step "gate" (model "gate"): ')


def test_a_step_with_batching_goes_through_its_batcher(repo: Path) -> None:
    config = _config(repo, [SCORER], batching={"max_batch_size": 8, "batch_timeout_micros": 100})
    server = ServerCore(
        ServerOptions(model_config_file=str(config), file_system_poll_wait_seconds=0)
    )
    batches = BATCH_SIZE.labels("mlp")
    try:
        server.start()
        before = _count(batches)
        answer = infer(server, "scorer", {"user": KEYS})
        assert _count(batches) == before + 1  # mlp's part ran as a batch
        values = infer(server, "features", {"keys": KEYS}).outputs["values"]
        np.testing.assert_array_equal(
            answer.outputs["score"], infer(server, "mlp", {"input": values}).outputs["output"]
        )
    finally:
        server.stop()


def test_model_control_unloads_and_loads_a_pipeline(core: ServerCore) -> None:
    core.unload_model("scorer")
    assert core.service.available_versions("scorer") == []
    assert core.service.available_versions("mlp") == [1]  # its steps stay
    with pytest.raises(NotFound):
        infer(core, "scorer", {"user": KEYS})
    core.load_model("scorer")
    assert core.service.available_versions("scorer") == [1]
    assert infer(core, "scorer", {"user": KEYS}).version == 1


def _count(histogram: object) -> float:
    samples = histogram.collect()[0].samples  # type: ignore[attr-defined]
    return next(s.value for s in samples if s.name.endswith("_count"))


def test_a_step_version_with_another_signature_makes_the_next_pipeline_version(
    core: ServerCore, repo: Path
) -> None:
    staging = repo / "staging"
    make_mlp(staging / "model.onnx", seed=2, dims=(8, 16, 6))
    staging.rename(repo / "mlp" / "2")
    wait_until(lambda: core.service.available_versions("scorer") == [2], 30)
    answer = infer(core, "scorer", {"user": KEYS})
    assert answer.version == 2 and answer.outputs["score"].shape == (4, 6)
    assert step_versions(answer) == {"features": 1, "mlp": 2}
    assert core.service.available_versions("gated") == [2]


def test_a_step_version_that_breaks_the_wiring_leaves_the_pipeline_serving_and_says_why(
    core: ServerCore, repo: Path
) -> None:
    staging = repo / "staging"
    make_mlp(staging / "model.onnx", seed=2, dims=(16, 16, 4))
    staging.rename(repo / "mlp" / "2")

    def failed() -> str | None:
        states = {s.id.version: s for s in core.service.model_status("scorer")}
        return states[2].error if 2 in states and states[2].state is ServableState.END else None

    wait_until(lambda: failed() is not None, 30)
    assert 'step "mlp" (model "mlp"): input "input" takes FP32 [-1, 16], but' in str(failed())
    assert core.service.available_versions("scorer") == [1]
    with pytest.raises(InvalidInput) as caught:
        infer(core, "scorer", {"user": KEYS})
    assert caught.value.message.startswith('pipeline "scorer" step "mlp" (model "mlp"): input')


def test_requests_that_share_a_failed_batch_each_get_the_error_named_once(repo: Path) -> None:
    """Every task of a failed batch gets the same exception object: naming the step must not
    change it for the other requests."""
    (repo / "started").touch()  # boom raises at once
    raw = {
        "name": "raw",
        "pipeline": {
            "steps": [{"model": "boom", "inputs": {"x": "x"}}],
            "outputs": {"y": "boom.x"},
        },
    }
    config = _config(repo, [raw])
    text = config.read_text().replace(
        "name: boom\n", "name: boom\n  batching: {max_batch_size: 8, batch_timeout_micros: 50000}\n"
    )
    config.write_text(text)
    server = ServerCore(
        ServerOptions(model_config_file=str(config), file_system_poll_wait_seconds=0)
    )

    async def together() -> list[BaseException | InferResponse]:
        x = {"x": np.zeros((1, 8), np.float32)}
        calls = [server.service.infer(InferRequest("raw", dict(x))) for _ in range(3)]
        return await asyncio.gather(*calls, return_exceptions=True)

    try:
        server.start()
        errors = asyncio.run(together())
        messages = [e.message for e in errors if isinstance(e, ModelError)]
        assert messages == ['pipeline "raw" step "boom" (model "boom"): boom'] * 3
    finally:
        server.stop()


def test_a_reload_adding_a_pipeline_that_does_not_fit_its_steps_says_which_step(
    core: ServerCore, repo: Path
) -> None:
    wrong = {
        "name": "wrong",
        "pipeline": {
            "steps": [{"model": "mlp", "inputs": {"input": "x", "extra": "y"}}],
            "outputs": {"score": "mlp.output"},
        },
    }
    with pytest.raises(FailedPrecondition) as caught:
        core.apply_config(load_config_file(_config(repo, [SCORER, GATED, wrong])))
    assert 'pipeline "wrong": step "mlp" (model "mlp"): it has no input "extra"' in str(
        caught.value.message
    )
    assert infer(core, "scorer", {"user": KEYS}).version == 1  # the others serve on
