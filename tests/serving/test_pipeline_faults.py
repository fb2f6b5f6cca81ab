"""Pipelines whose steps cannot serve them (issue 19): a step pinned to a version or label its
model lacks, a streaming step, and a step whose outputs break its own signature are refused or
answered naming the step, never blamed on the client."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import yaml

from pyserving import ServerCore, ServerOptions
from pyserving.core.ids import ServableState
from pyserving.errors import ModelError, NotFound
from pyserving.protocols.request import InferRequest
from pyserving.serving.pipeline import STEP_VERSIONS_PARAMETER
from tests.fakes import wait_until


def _xy_servable(cls: str, run: str) -> str:
    """servable.py of a model `cls` whose signature is x FP32 [-1] → y FP32 [-1], running `run`
    (its body)."""
    return f"""
import numpy as np

from pyserving.platforms import Signature, TensorSpec


class {cls}:
    def __init__(self):
        x, y = (TensorSpec("x", "FP32", (-1,)),), (TensorSpec("y", "FP32", (-1,)),)
        self.signatures = {{"serving_default": Signature("serving_default", x, y)}}

    def load(self, path):
        pass

    def run(self, signature, inputs):
{run}"""


# y: x itself; or, for x[0] == 1, an FP64 [2, 3] that breaks its own signature
LIAR = _xy_servable(
    "Liar",
    """        if inputs["x"][0] == 1:
            return {"y": np.ones((2, 3))}
        return {"y": inputs["x"]}
""",
)

# a streaming model: its run yields parts
GEN = _xy_servable("Gen", """        yield {"y": inputs["x"]}\n""")


def _pipeline(name: str, first: dict[str, object]) -> dict[str, object]:
    return {
        "name": name,
        "pipeline": {
            "steps": [
                {"inputs": {"x": "x"}, **first},
                {"name": "echo", "model": "liar", "inputs": {"x": "first.y"}},
            ],
            "outputs": {"y": "echo.y"},
        },
    }


@pytest.fixture(scope="module")
def core(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerCore]:
    root = tmp_path_factory.mktemp("faults")
    for name, source in (("liar", LIAR), ("gen", GEN)):
        (root / name / "1").mkdir(parents=True)
        (root / name / "1" / "servable.py").write_text(source)
    models = [
        {"name": "liar", "base_path": "liar", "allow_python": True},
        {"name": "gen", "base_path": "gen", "allow_python": True},
        _pipeline("pinned", {"name": "first", "model": "liar", "version": 7}),
        _pipeline("labelled", {"name": "first", "model": "liar", "label": "nosuch"}),
        _pipeline("streams", {"name": "first", "model": "gen"}),
        _pipeline("lies", {"name": "first", "model": "liar"}),
    ]
    path = root / "models.yaml"
    path.write_text(yaml.safe_dump({"models": models}, sort_keys=False))
    server = ServerCore(ServerOptions(model_config_file=str(path), file_system_poll_wait_seconds=0))
    try:
        server.start()
        yield server
    finally:
        server.stop()


def _infer(core: ServerCore, model: str, x: list[float]) -> object:
    inputs = {"x": np.array(x, dtype=np.float32)}
    return asyncio.run(core.service.infer(InferRequest(model, inputs)))


def _failed_load(core: ServerCore, name: str) -> str:
    (status,) = core.service.model_status(name)
    assert status.state is ServableState.END
    assert status.error is not None
    return status.error


def test_a_step_pinned_to_a_missing_version_or_label_names_the_step_and_the_pin(
    core: ServerCore,
) -> None:
    error = _failed_load(core, "pinned")
    assert 'step "first" (model "liar"): version 7 does not serve' in error
    error = _failed_load(core, "labelled")
    assert 'step "first" (model "liar"): label "nosuch" does not serve' in error
    with pytest.raises(NotFound):
        _infer(core, "pinned", [2.0])


def test_a_streaming_step_is_refused_at_load_naming_the_step(core: ServerCore) -> None:
    error = _failed_load(core, "streams")
    assert 'step "first" (model "gen") streams its results' in error


def test_a_step_that_breaks_its_own_signature_fails_naming_the_step_not_the_client(
    core: ServerCore,
) -> None:
    assert _infer(core, "lies", [2.0]).outputs["y"].tolist() == [2.0]  # type: ignore[attr-defined]
    with pytest.raises(ModelError) as failed:
        _infer(core, "lies", [1.0])
    assert failed.value.http_status == 500
    assert (
        failed.value.message
        == 'pipeline "lies" step "first" (model "liar"): output "y" is FP64 [2, 3], but the'
        " model's signature declares FP32 [-1]"
    )


def test_a_pipeline_pinned_to_a_missing_version_loads_once_that_version_arrives(
    tmp_path: Path,
) -> None:
    (tmp_path / "liar" / "1").mkdir(parents=True)
    (tmp_path / "liar" / "1" / "servable.py").write_text(LIAR)
    liar = {"name": "liar", "base_path": "liar", "allow_python": True}
    models = [
        {**liar, "version_policy": {"latest": 2}},
        _pipeline("p", {"name": "first", "model": "liar", "version": 2}),
    ]
    path = tmp_path / "models.yaml"
    path.write_text(yaml.safe_dump({"models": models}, sort_keys=False))
    server = ServerCore(
        ServerOptions(model_config_file=str(path), file_system_poll_wait_seconds=0.05)
    )
    try:
        server.start()
        assert "version 2 does not serve" in _failed_load(server, "p")
        shutil.copytree(tmp_path / "liar" / "1", tmp_path / "liar" / "2")
        wait_until(lambda: server.service.available_versions("p") != [], what="the pipeline")
        assert _infer(server, "p", [2.0]).parameters == {  # type: ignore[attr-defined]
            STEP_VERSIONS_PARAMETER: '{"first":2,"echo":2}'
        }
    finally:
        server.stop()
