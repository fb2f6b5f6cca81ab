"""serving/pipeline.py (F4): a step whose input is an earlier step's output gets it read-only, as
it would from a client, so a step that writes into its input fails the same way wherever it sits;
the earlier model's own array stays writable for it (the step's outputs are read-only views)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import yaml

from pyserving import ServerCore, ServerOptions
from pyserving.errors import ModelError
from pyserving.protocols.request import InferRequest
from pyserving.protocols.tensors import read_only

SERVABLE = """
import numpy as np

from pyserving.platforms import Signature, TensorSpec


class M:
    def __init__(self):
        x = (TensorSpec("x", "FP32", (-1, 4)),)
        y = (TensorSpec("y", "FP32", (-1, 4)),)
        self.signatures = {{"serving_default": Signature("serving_default", x, y)}}
        self.kept = np.zeros((2, 4), np.float32)

    def load(self, path):
        pass

    def run(self, signature, inputs):
        x = inputs["x"]
{body}
"""
BODIES = {
    "fresh": "        return {'y': np.array(x, copy=True)}  # a new, writable array",
    "mutate": "        x += 1\n        return {'y': x}",
    "keeper": "        self.kept += 1  # its own array, returned every call\n"
    "        return {'y': self.kept}",
}


def pipeline(name: str, first: str, second: str) -> dict[str, object]:
    steps = [
        {"model": first, "inputs": {"x": "x"}},
        {"model": second, "inputs": {"x": f"{first}.y"}},
    ]
    return {"name": name, "pipeline": {"steps": steps, "outputs": {"y": f"{second}.y"}}}


@pytest.fixture
def core(tmp_path: Path) -> Iterator[ServerCore]:
    models: list[dict[str, object]] = []
    for name, body in BODIES.items():
        (tmp_path / name / "1").mkdir(parents=True)
        (tmp_path / name / "1" / "servable.py").write_text(SERVABLE.format(body=body))
        models.append({"name": name, "base_path": name, "allow_python": True})
    models += [pipeline("fresh_mutate", "fresh", "mutate"), pipeline("kept", "keeper", "fresh")]
    config = tmp_path / "models.yaml"
    config.write_text(yaml.safe_dump({"models": models}, sort_keys=False))
    server = ServerCore(ServerOptions(model_config_file=str(config)))
    try:
        server.start()
        yield server
    finally:
        server.stop()


def infer(core: ServerCore, model: str) -> dict[str, np.ndarray]:
    inputs = read_only({"x": np.ones((2, 4), np.float32)})  # as every decoder makes them
    return asyncio.run(core.service.infer(InferRequest(model, inputs))).outputs


def test_a_step_writing_into_an_earlier_steps_output_is_told_inputs_are_read_only(core):
    with pytest.raises(ModelError, match="request inputs are read-only") as direct:
        infer(core, "mutate")
    with pytest.raises(ModelError, match="request inputs are read-only") as piped:
        infer(core, "fresh_mutate")
    assert direct.value.message in piped.value.message  # the same error, named for its step


def test_a_model_keeps_writing_the_array_it_returned_to_a_pipeline(core):
    assert infer(core, "kept")["y"].tolist() == [[1.0] * 4] * 2
    assert infer(core, "kept")["y"].tolist() == [[2.0] * 4] * 2
