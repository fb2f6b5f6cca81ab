"""InferenceService with batching on: the request path through the shared BatchScheduler."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator

import numpy as np
import onnxruntime as ort
import pytest

from pyserving.batching import QUEUE_FULL_MESSAGE, BatchingOptions, BatchingPolicy
from pyserving.core.handle import VersionRefCount
from pyserving.demo import make_mlp
from pyserving.errors import DeadlineExceeded, InvalidInput, Unavailable
from pyserving.metrics import REGISTRY
from pyserving.platforms.signature import Signature, TensorSpec
from pyserving.serving.inference import InferenceService
from pyserving.serving.server_core import ServerCore, ServerOptions
from tests.batching.recording import RecordingServable, rows
from tests.fakes import wait_until
from tests.serving.test_inference import FakeManager

pytestmark = pytest.mark.asyncio


def policy(**fields) -> BatchingPolicy:
    return BatchingPolicy(enabled=True, server=BatchingOptions(num_batch_threads=1, **fields))


@pytest.fixture
def servable() -> RecordingServable:
    return RecordingServable(hold_first=True)


@pytest.fixture
def manager(servable) -> FakeManager:
    return FakeManager().add("m", 1, servable)


def make_service(manager: FakeManager, **fields) -> InferenceService:
    return InferenceService(manager, batching=policy(**fields))


@pytest.fixture
def service(manager) -> Iterator[InferenceService]:
    service = make_service(manager)
    yield service
    service.close(wait=True)


async def predict(
    service: InferenceService, x: np.ndarray, deadline: float | None = None
) -> np.ndarray:
    with service.acquire("m") as handle:
        signature = service.signature(handle)
        return (await service.run(handle, signature, {"x": x}, deadline=deadline))["y"]


async def hold_the_batch_thread(
    service: InferenceService, servable: RecordingServable
) -> asyncio.Task:
    busy = asyncio.create_task(predict(service, rows(-1, 1)))
    await asyncio.to_thread(servable.first_started.wait, 10)
    return busy


async def wait_for_tasks(service: InferenceService, n: int) -> None:
    def queued() -> bool:
        scheduler = service.batch_scheduler
        return scheduler is not None and scheduler.statistics().enqueued_tasks == n

    await asyncio.to_thread(wait_until, queued, 10.0, f"{n} tasks queued")


async def test_concurrent_requests_share_model_calls_and_get_their_own_rows(service, servable):
    busy = await hold_the_batch_thread(service, servable)
    inputs = [rows(10 * i, 1 + i % 3) for i in range(12)]
    calls = [asyncio.create_task(predict(service, x)) for x in inputs]
    await wait_for_tasks(service, len(inputs))
    servable.release()
    await busy
    for x, result in zip(inputs, await asyncio.gather(*calls), strict=True):
        np.testing.assert_array_equal(result, x * 2)
    assert servable.batch_sizes == [1, sum(len(x) for x in inputs)]
    assert service.pending_requests == 0


async def test_request_past_its_deadline_is_dropped_before_the_model(service, servable):
    busy = await hold_the_batch_thread(service, servable)
    with pytest.raises(DeadlineExceeded):
        await predict(service, rows(0, 1), deadline=time.monotonic() + 0.05)
    servable.release()
    await busy
    await predict(service, rows(5, 1))  # the queue keeps working
    assert servable.batch_sizes == [1, 1]
    np.testing.assert_array_equal(servable.calls[1]["x"], rows(5, 1))


async def test_cancelled_client_never_reaches_the_model(service, servable):
    busy = await hold_the_batch_thread(service, servable)
    gone = asyncio.create_task(predict(service, rows(0, 4)))
    await wait_for_tasks(service, 1)
    gone.cancel()
    with pytest.raises(asyncio.CancelledError):
        await gone
    servable.release()
    await busy
    await predict(service, rows(7, 1))
    assert servable.batch_sizes == [1, 1]
    assert service.batch_scheduler.statistics().tasks_dropped == 1
    assert service.pending_requests == 0


async def test_full_queue_answers_unavailable_at_once(manager, servable):
    service = make_service(manager, max_batch_size=2, max_enqueued_batches=1)
    try:
        busy = await hold_the_batch_thread(service, servable)
        queued = asyncio.create_task(predict(service, rows(0, 2)))
        await wait_for_tasks(service, 1)
        with pytest.raises(Unavailable, match=QUEUE_FULL_MESSAGE):
            await predict(service, rows(9, 1))
        servable.release()
        await busy
        np.testing.assert_array_equal(await queued, rows(0, 2) * 2)
        assert service.pending_requests == 0
    finally:
        service.close(wait=True)


async def test_task_larger_than_max_batch_size_is_invalid_input(manager):
    service = make_service(manager, max_batch_size=4)
    try:
        with pytest.raises(InvalidInput, match="Task size 6 is larger than maximum batch size 4"):
            await predict(service, rows(0, 6))
        assert service.pending_requests == 0
    finally:
        service.close(wait=True)


async def test_model_without_batching_runs_on_the_executor(manager, servable):
    servable.release()
    service = InferenceService(
        manager, batching=BatchingPolicy(enabled=True, per_model={"m": None})
    )
    try:
        np.testing.assert_array_equal(await predict(service, rows(0, 2)), rows(0, 2) * 2)
        assert service.batch_scheduler is None
    finally:
        service.close(wait=True)


async def test_unload_waits_until_the_versions_queue_has_drained(manager, service, servable):
    busy = await hold_the_batch_thread(service, servable)
    inputs = [rows(10 * i, 2) for i in range(5)]
    calls = [asyncio.create_task(predict(service, x)) for x in inputs]
    await wait_for_tasks(service, len(inputs))
    ref: VersionRefCount = manager._refs["m"][1]
    unloaded = threading.Event()

    def unload() -> None:  # what the Manager does before it unloads a version
        ref.close_and_wait()
        unloaded.set()

    unloader = threading.Thread(target=unload)
    unloader.start()
    try:
        assert not unloaded.wait(0.2), "the version closed while its queue held requests"
        servable.release()
        await busy
        for x, result in zip(inputs, await asyncio.gather(*calls), strict=True):
            np.testing.assert_array_equal(result, x * 2)
    finally:
        servable.release()
        unloader.join(10)
    assert unloaded.is_set()


async def test_signature_with_a_fixed_dimension_zero_runs_unbatched():
    servable = RecordingServable()
    fixed = Signature(
        "serving_default", (TensorSpec("x", "FP32", (2, 3)),), (TensorSpec("y", "FP32", (2, 3)),)
    )
    servable.signatures["serving_default"] = fixed
    service = make_service(FakeManager().add("m", 1, servable))
    try:
        np.testing.assert_array_equal(await predict(service, rows(0, 2)), rows(0, 2) * 2)
        assert service.batch_scheduler is None
    finally:
        service.close(wait=True)


async def test_model_config_batching_mapping_batches_a_real_onnx_model(tmp_path):
    make_mlp(tmp_path / "mlp" / "1" / "model.onnx", seed=1)
    make_mlp(tmp_path / "plain" / "1" / "model.onnx", seed=2)
    config = tmp_path / "models.yaml"
    # Batches run only when full (fixed wait): the four requests answer only if they share one
    # call.
    config.write_text(
        "models:\n"
        "  - {name: mlp, base_path: mlp, batching:"
        " {max_batch_size: 4, batch_timeout_micros: 600000000, batch_wait: timeout}}\n"
        "  - {name: plain, base_path: plain}\n"
    )
    core = ServerCore(ServerOptions(model_config_file=str(config), file_system_poll_wait_seconds=0))
    core.start()
    try:
        service = core.service
        batches = REGISTRY.get_sample_value("pyserving_batch_size_count", {"model": "mlp"}) or 0
        x = np.random.default_rng(0).standard_normal((4, 64)).astype(np.float32)

        async def one(name: str, row: np.ndarray) -> np.ndarray:
            with service.acquire(name) as handle:
                signature = service.signature(handle)
                outputs = await service.run(handle, signature, {"input": row[None]})
                return outputs["output"][0]

        got = await asyncio.wait_for(asyncio.gather(*(one("mlp", row) for row in x)), 30)
        expected = ort.InferenceSession(
            str(tmp_path / "mlp" / "1" / "model.onnx"), providers=["CPUExecutionProvider"]
        ).run(None, {"input": x})[0]
        np.testing.assert_allclose(np.stack(got), expected, rtol=1e-5, atol=1e-6)
        assert REGISTRY.get_sample_value("pyserving_batch_size_count", {"model": "mlp"}) == (
            batches + 1
        )
        assert REGISTRY.get_sample_value("pyserving_batch_size_sum", {"model": "mlp"}) >= 4
        await one("plain", x[0])  # no batching: runs at once on the executor
        assert REGISTRY.get_sample_value("pyserving_batch_size_count", {"model": "plain"}) is None
    finally:
        core.stop()


async def test_version_pyserving_yaml_batching_applies_unless_the_model_config_says_otherwise(
    tmp_path,
):
    # Batches run only when full (fixed wait): the four requests answer only if they share one
    # call.
    version_batching = (
        "batching: {max_batch_size: 4, batch_timeout_micros: 600000000, batch_wait: timeout}\n"
    )
    for name in ("own", "overridden"):
        make_mlp(tmp_path / name / "1" / "model.onnx", seed=1)
        (tmp_path / name / "1" / "pyserving.yaml").write_text(version_batching)
    config = tmp_path / "models.yaml"
    config.write_text(
        "models:\n"
        "  - {name: own, base_path: own}\n"
        "  - {name: overridden, base_path: overridden, batching: false}\n"
    )
    core = ServerCore(ServerOptions(model_config_file=str(config), file_system_poll_wait_seconds=0))
    core.start()
    try:
        service = core.service
        x = np.random.default_rng(0).standard_normal((4, 64)).astype(np.float32)

        async def one(name: str, row: np.ndarray) -> np.ndarray:
            with service.acquire(name) as handle:
                signature = service.signature(handle)
                outputs = await service.run(handle, signature, {"input": row[None]})
                return outputs["output"][0]

        before = REGISTRY.get_sample_value("pyserving_batch_size_count", {"model": "own"}) or 0
        await asyncio.wait_for(asyncio.gather(*(one("own", row) for row in x)), 30)
        assert REGISTRY.get_sample_value("pyserving_batch_size_count", {"model": "own"}) == (
            before + 1
        )
        await asyncio.wait_for(one("overridden", x[0]), 10)  # alone: it would wait forever batched
        assert (
            REGISTRY.get_sample_value("pyserving_batch_size_count", {"model": "overridden"}) is None
        )
    finally:
        core.stop()
