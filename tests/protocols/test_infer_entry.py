"""InferenceService.infer, the entry every codec uses: resolve, decode against the signature
(on a codec thread when the request is large), run, answer with the version that ran."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import numpy as np
import pytest

from pyserving.errors import InvalidInput, NotFound
from pyserving.platforms import Servable, Signature, TensorSpec
from pyserving.protocols.request import InferRequest, Limits
from pyserving.serving.inference import InferenceService
from pyserving.serving.off_loop import OFF_LOOP_BYTES
from tests.serving.test_inference import FakeManager

SIGNATURE = Signature(
    "serving_default", (TensorSpec("x", "FP32", (-1, 2)),), (TensorSpec("y", "FP32", (-1, 2)),)
)


class Doubler(Servable):
    platform = "test"

    @property
    def signatures(self) -> dict[str, Signature]:
        return {"serving_default": SIGNATURE}

    def run(self, signature: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {"y": inputs["x"] * 2}


@pytest.fixture
def service() -> Iterator[InferenceService]:
    service = InferenceService(FakeManager().add("m", 3, Doubler()))
    yield service
    service.close()


class RecordingDecoder:
    """A decoder that notes the thread it ran on and the limits it was given."""

    def __init__(self) -> None:
        self.thread: threading.Thread | None = None
        self.limits: Limits | None = None

    def __call__(self, signature: Signature, limits: Limits) -> dict[str, np.ndarray]:
        assert signature is SIGNATURE
        self.thread, self.limits = threading.current_thread(), limits
        return {"x": np.ones((1, 2), np.float32)}


@pytest.mark.asyncio
async def test_infer_decodes_against_the_signature_and_answers_with_the_version(service):
    decoder = RecordingDecoder()
    response = await service.infer(InferRequest("m", decoder, id="r1", size=100))
    assert (response.model, response.version, response.signature_name, response.id) == (
        "m",
        3,
        "serving_default",
        "r1",
    )
    np.testing.assert_array_equal(response.outputs["y"], [[2.0, 2.0]])
    assert decoder.thread is threading.main_thread()  # small: decoded inline
    assert decoder.limits is service.options and response.nbytes == 8


@pytest.mark.asyncio
async def test_a_large_request_decodes_off_the_event_loop_issue_14(service):
    decoder = RecordingDecoder()
    await service.infer(InferRequest("m", decoder, size=OFF_LOOP_BYTES + 1))
    assert decoder.thread is not None and decoder.thread is not threading.main_thread()


@pytest.mark.asyncio
async def test_ready_arrays_skip_decoding_and_errors_pass_through(service):
    response = await service.infer(InferRequest("m", {"x": np.zeros((2, 2), np.float32)}))
    assert response.outputs["y"].shape == (2, 2)
    with pytest.raises(NotFound):
        await service.infer(InferRequest("nope", {"x": np.zeros((1, 2), np.float32)}))
    with pytest.raises(InvalidInput, match="unknown output"):
        await service.infer(InferRequest("m", {"x": np.zeros((1, 2), np.float32)}, outputs=["z"]))
