"""serving/streaming.py: a generator's parts on the model's execution threads, closing it where it
runs (after a running step returns), deadlines, async generators on the loop, and what the
one-answer path does with each kind of `run` (issue 19). Races are provoked with events."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pyserving.core.ids import ServableId
from pyserving.errors import DeadlineExceeded, FailedPrecondition, ModelError
from pyserving.platforms.python import PythonLoader
from pyserving.platforms.servable import Servable
from pyserving.platforms.signature import Signature, TensorSpec
from pyserving.protocols.request import InferRequest
from pyserving.serving.inference import InferenceService
from pyserving.serving.streaming import open_stream
from tests.fakes import wait_until
from tests.serving.test_inference import FakeManager

SIGNATURE = Signature(
    "serving_default",
    inputs=(TensorSpec("n", "INT32", (1,)),),
    outputs=(TensorSpec("i", "INT32", (1,)),),
)
INPUTS = {"n": np.array([5], dtype=np.int32)}


class ScriptedServable(Servable):
    """A python-like servable whose `start` returns what the test scripted."""

    platform = "python"

    def __init__(self, kind: str, start: Any) -> None:
        self.run_kind = kind
        self._start = start

    @property
    def signatures(self) -> dict[str, Signature]:
        return {"serving_default": SIGNATURE}

    def run(self, signature: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        raise AssertionError("a streaming servable's run is never called as a function")

    def start(self, signature: str, inputs: dict[str, np.ndarray]) -> Any:
        return self._start()


class Gate:
    """A generator that yields part 0, then blocks in part 1 until released; notes where its
    steps and its `finally` ran."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()
        self.finally_thread: int | None = None
        self.step_thread: int | None = None

    def generator(self) -> Iterator[dict[str, np.ndarray]]:
        try:
            yield {"i": np.array([0], np.int32)}
            self.step_thread = threading.get_ident()
            self.entered.set()
            self.release.wait(10)
            yield {"i": np.array([1], np.int32)}
        finally:
            self.finally_thread = threading.get_ident()


def service_with(servable: Servable) -> tuple[InferenceService, FakeManager]:
    manager = FakeManager().add("m", 1, servable)
    return InferenceService(manager), manager


def request(deadline: float | None = None) -> InferRequest:
    return InferRequest("m", dict(INPUTS), deadline=deadline)


@pytest.mark.asyncio
async def test_closing_during_a_running_step_closes_the_generator_on_its_thread_after_it():
    gate = Gate()
    service, manager = service_with(ScriptedServable("generator", gate.generator))
    try:
        stream = await open_stream(service, request())
        assert stream is not None
        first = await stream.next_part()
        assert first is not None and first["i"].tolist() == [0]
        # the next part is computed ahead of the writer: it is running now
        await asyncio.to_thread(gate.entered.wait, 10)
        await stream.aclose()
        assert gate.finally_thread is None  # not while the step runs
        assert manager.in_flight("m", 1) == 1  # the version stays loaded meanwhile
        gate.release.set()
        wait_until(lambda: gate.finally_thread is not None, what="the generator's finally")
        assert gate.finally_thread == gate.step_thread
        wait_until(lambda: manager.in_flight("m", 1) == 0, what="the handle released")
        wait_until(lambda: service.pending_requests == 0, what="no call pending")
        assert await stream.next_part() is None
    finally:
        gate.release.set()
        service.close()


@pytest.mark.asyncio
async def test_a_deadline_passing_in_a_running_step_fails_the_stream_and_closes_it():
    gate = Gate()
    service, manager = service_with(ScriptedServable("generator", gate.generator))
    try:
        # the step after the first blocks until the test releases it, after the deadline
        stream = await open_stream(service, request(time.monotonic() + 1.0))
        assert stream is not None
        await stream.next_part()
        await asyncio.to_thread(gate.entered.wait, 10)
        with pytest.raises(DeadlineExceeded):
            await stream.next_part()
        gate.release.set()
        wait_until(lambda: gate.finally_thread is not None, what="the generator's finally")
        wait_until(lambda: manager.in_flight("m", 1) == 0, what="the handle released")
    finally:
        gate.release.set()
        service.close()


@pytest.mark.asyncio
async def test_a_generator_that_raises_is_a_model_error_and_releases_the_version():
    def failing() -> Iterator[dict[str, np.ndarray]]:
        yield {"i": np.array([0], np.int32)}
        raise RuntimeError("no more")

    service, manager = service_with(ScriptedServable("generator", failing))
    try:
        stream = await open_stream(service, request())
        assert stream is not None
        await stream.next_part()
        with pytest.raises(ModelError, match="no more"):
            await stream.next_part()
        wait_until(lambda: manager.in_flight("m", 1) == 0, what="the handle released")
    finally:
        service.close()


@pytest.mark.asyncio
async def test_an_async_generator_runs_on_the_loop_and_a_cancelled_reader_closes_it():
    loop_thread = threading.get_ident()
    seen: dict[str, Any] = {}
    blocked = asyncio.Event()

    async def parts() -> AsyncIterator[dict[str, np.ndarray]]:
        seen["thread"] = threading.get_ident()
        try:
            yield {"i": np.array([0], np.int32)}
            blocked.set()
            await asyncio.sleep(30)
            yield {"i": np.array([1], np.int32)}
        finally:
            seen["finally"] = True

    service, manager = service_with(ScriptedServable("async_generator", parts))
    try:
        stream = await open_stream(service, request())
        assert stream is not None
        assert (await stream.next_part() or {})["i"].tolist() == [0]
        assert seen["thread"] == loop_thread
        reader = asyncio.ensure_future(stream.next_part())
        await blocked.wait()
        reader.cancel()
        with pytest.raises(asyncio.CancelledError):
            await reader
        assert seen["finally"] is True
        assert manager.in_flight("m", 1) == 0
    finally:
        service.close()


@pytest.mark.asyncio
async def test_the_one_answer_path_refuses_generators_and_awaits_coroutines():
    service, _ = service_with(ScriptedServable("generator", lambda: iter(())))
    try:
        with pytest.raises(FailedPrecondition, match="generate_stream"):
            await service.infer(request())
    finally:
        service.close()

    async def answer() -> dict[str, np.ndarray]:
        await asyncio.sleep(0)
        return {"i": np.array([7], np.int32)}

    async def hang() -> dict[str, np.ndarray]:
        await asyncio.sleep(30)
        raise AssertionError("unreachable")

    service, _ = service_with(ScriptedServable("coroutine", answer))
    try:
        response = await service.infer(request())
        assert response.outputs["i"].tolist() == [7]
        assert await open_stream(service, request()) is None  # answered by infer instead
    finally:
        service.close()
    service, _ = service_with(ScriptedServable("coroutine", hang))
    try:
        with pytest.raises(DeadlineExceeded):
            await service.infer(request(time.monotonic() + 0.05))
    finally:
        service.close()


def test_the_example_text_generator_streams_word_by_word():
    version = Path(__file__).resolve().parents[2] / "examples" / "text-generator" / "1"
    loader = PythonLoader(ServableId("generator", 1), str(version), {"allow_python": True})
    servable = loader.load()
    try:
        assert servable.run_kind == "generator"
        inputs = {
            "text_input": np.array([b"the server"], dtype=object),
            "max_tokens": np.array([3], dtype=np.int32),
        }
        parts = list(servable.start("serving_default", inputs))  # type: ignore[attr-defined]
        assert len(parts) == 3
        assert all(part["text_output"][0].startswith(b" ") for part in parts)
        # called as a function (warmup does), the stream runs to its end: the last part answers
        np.testing.assert_array_equal(
            servable.run("serving_default", inputs)["text_output"], parts[-1]["text_output"]
        )
    finally:
        loader.unload()


def test_a_signature_override_renames_each_part_and_closes_the_inner_generator(tmp_path):
    version = tmp_path / "renamed" / "1"
    version.mkdir(parents=True)
    (version / "servable.py").write_text(
        "import numpy as np\n"
        "from pyserving.platforms import Signature, TensorSpec\n"
        "class Parts:\n"
        "    signatures = {'serving_default': Signature('serving_default',"
        " (TensorSpec('n', 'INT32', (1,)),), (TensorSpec('i', 'INT32', (1,)),))}\n"
        "    closed = False\n"
        "    def load(self, path): pass\n"
        "    def run(self, signature, inputs):\n"
        "        try:\n"
        "            for i in range(int(inputs['n'][0])):\n"
        "                yield {'i': np.array([i], np.int32)}\n"
        "        finally:\n"
        "            Parts.closed = True\n"
    )
    (version / "pyserving.yaml").write_text(
        "signatures:\n  serving_default:\n"
        "    inputs: [{name: count, datatype: INT32, shape: [1]}]\n"
        "    outputs: [{name: index, datatype: INT32, shape: [1]}]\n"
    )
    loader = PythonLoader(ServableId("renamed", 1), str(version), {"allow_python": True})
    servable = loader.load()
    try:
        assert servable.run_kind == "generator"
        parts = servable.start(  # type: ignore[attr-defined]
            "serving_default", {"count": np.array([5], np.int32)}
        )
        assert next(parts)["index"].tolist() == [0]
        parts.close()
        assert servable.inner.instance.closed is True  # type: ignore[attr-defined]
    finally:
        loader.unload()


def _success_fail(service: InferenceService) -> tuple[int, int, int]:
    numbers = service.version_statistics("m", 1)
    assert numbers is not None, "no statistics recorded"
    phases = numbers["inference_stats"]
    assert numbers["last_inference"] > 0
    return phases["success"]["count"], phases["fail"]["count"], phases["success"]["ns"]


@pytest.mark.asyncio
@pytest.mark.parametrize("kind", ["generator", "async_generator"])
async def test_each_stream_counts_once_in_its_versions_success_or_fail(kind: str):
    def parts(fail: bool) -> Any:
        def generator() -> Iterator[dict[str, np.ndarray]]:
            yield {"i": np.array([0], np.int32)}
            if fail:
                raise RuntimeError("no more")
            yield {"i": np.array([1], np.int32)}

        async def async_generator() -> AsyncIterator[dict[str, np.ndarray]]:
            for part in generator():
                yield part

        return generator() if kind == "generator" else async_generator()

    outcome = {"fail": False}
    service, _ = service_with(ScriptedServable(kind, lambda: parts(outcome["fail"])))
    try:
        stream = await open_stream(service, request())  # read to its end: a success
        assert stream is not None
        while await stream.next_part() is not None:
            pass
        await stream.aclose()
        assert _success_fail(service)[:2] == (1, 0)
        assert _success_fail(service)[2] > 0
        outcome["fail"] = True  # the generator raises: a failure
        stream = await open_stream(service, request())
        assert stream is not None
        await stream.next_part()
        with pytest.raises(ModelError):
            await stream.next_part()
        await stream.aclose()
        assert _success_fail(service)[:2] == (1, 1)
        outcome["fail"] = False  # closed before its end (the client left): a failure
        stream = await open_stream(service, request())
        assert stream is not None
        await stream.next_part()
        await stream.aclose()
        assert _success_fail(service)[:2] == (1, 2)
        # refused after its version resolved (an unknown output): a failure
        with pytest.raises(Exception, match="nope"):
            await open_stream(service, InferRequest("m", dict(INPUTS), outputs=["nope"]))
        assert _success_fail(service)[:2] == (1, 3)
    finally:
        service.close()
