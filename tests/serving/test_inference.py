"""InferenceService: resolving handles and signatures, validating inputs, running off the loop.

Also home of the fakes the REST tests share: NumpyServable (a Servable computing with numpy) and
FakeManager (the Manager's request-path surface over a fixed set of versions).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable

import numpy as np
import pytest

from pyserving.core.handle import ServableHandle, VersionRefCount
from pyserving.core.ids import ServableId, ServableRequest, ServableState
from pyserving.core.monitor import VersionStatus
from pyserving.errors import (
    DeadlineExceeded,
    FailedPrecondition,
    InvalidInput,
    ModelError,
    NotFound,
    ServableNotFound,
    Unavailable,
)
from pyserving.platforms.servable import Servable
from pyserving.platforms.signature import Signature, TensorSpec
from pyserving.serving.inference import InferenceOptions, InferenceService

# --- fakes shared with tests/api ------------------------------------------------------------------

Compute = Callable[[str, dict[str, np.ndarray]], dict[str, np.ndarray]]


class NumpyServable(Servable):
    """A Servable whose `run` is a numpy function; records the threads it ran on."""

    platform = "numpy"

    def __init__(self, signatures: dict[str, Signature], compute: Compute) -> None:
        self._signatures = signatures
        self._compute = compute
        self.threads: list[int] = []
        self.calls = 0

    @property
    def signatures(self) -> dict[str, Signature]:
        return self._signatures

    def run(self, signature: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.threads.append(threading.get_ident())
        self.calls += 1
        return self._compute(signature, inputs)


def add_sub_servable(offset: float = 0.0) -> NumpyServable:
    """a, b FP32 [-1, 4] → sum = a + b + offset, diff = a - b (two inputs, two outputs)."""
    signature = Signature(
        "serving_default",
        (TensorSpec("a", "FP32", (-1, 4)), TensorSpec("b", "FP32", (-1, 4))),
        (TensorSpec("sum", "FP32", (-1, 4)), TensorSpec("diff", "FP32", (-1, 4))),
    )
    return NumpyServable(
        {"serving_default": signature},
        lambda _sig, x: {"sum": x["a"] + x["b"] + np.float32(offset), "diff": x["a"] - x["b"]},
    )


def scale_servable(factor: float = 2.0) -> NumpyServable:
    """x FP32 [-1, 3] → y = x * factor (one input, one output)."""
    signature = Signature(
        "serving_default", (TensorSpec("x", "FP32", (-1, 3)),), (TensorSpec("y", "FP32", (-1, 3)),)
    )
    return NumpyServable(
        {"serving_default": signature}, lambda _sig, x: {"y": x["x"] * np.float32(factor)}
    )


def kitchen_servable() -> NumpyServable:
    """One signature per dtype family: "strings" (BYTES), "ints" (INT32), "flags" (BOOL)."""

    def compute(signature: str, x: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if signature == "strings":
            text = x["text"]
            upper = np.array([v.upper() for v in text.ravel()], dtype=object).reshape(text.shape)
            length = np.array([len(v) for v in text.ravel()], np.int64).reshape(text.shape)
            return {"upper": upper, "length": length, "raw_bytes": text}
        if signature == "ints":
            return {"twice": x["n"] * 2}
        return {"negated": ~x["flag"]}

    signatures = {
        "strings": Signature(
            "strings",
            (TensorSpec("text", "BYTES", (-1,)),),
            (
                TensorSpec("upper", "BYTES", (-1,)),
                TensorSpec("length", "INT64", (-1,)),
                TensorSpec("raw_bytes", "BYTES", (-1,)),
            ),
        ),
        "ints": Signature(
            "ints", (TensorSpec("n", "INT32", (-1,)),), (TensorSpec("twice", "INT32", (-1,)),)
        ),
        "flags": Signature(
            "flags", (TensorSpec("flag", "BOOL", (-1,)),), (TensorSpec("negated", "BOOL", (-1,)),)
        ),
    }
    return NumpyServable(signatures, compute)


class FakeMonitor:
    def __init__(self) -> None:
        self.statuses: dict[str, dict[int, VersionStatus]] = {}

    def states(self, name: str) -> list[VersionStatus]:
        versions = self.statuses.get(name, {})
        return [versions[v] for v in sorted(versions, reverse=True)]


class FakeManager:
    """The Manager's request-path API over versions added by the test."""

    def __init__(self) -> None:
        self.monitor = FakeMonitor()
        self._refs: dict[str, dict[int, VersionRefCount]] = {}

    def add(self, name: str, version: int, servable: Servable) -> FakeManager:
        servable_id = ServableId(name, version)
        self._refs.setdefault(name, {})[version] = VersionRefCount(servable_id, servable)
        self.set_state(name, version, ServableState.AVAILABLE)
        return self

    def set_state(
        self, name: str, version: int, state: ServableState, error: str | None = None
    ) -> None:
        code = "OK" if error is None else "UNKNOWN"
        status = VersionStatus(ServableId(name, version), state, error, code)
        self.monitor.statuses.setdefault(name, {})[version] = status
        if state is not ServableState.AVAILABLE:
            self._refs.get(name, {}).pop(version, None)

    def get_handle(self, request: ServableRequest) -> ServableHandle:
        versions = self._refs.get(request.name)
        if versions:
            version = max(versions) if request.version is None else request.version
            ref = versions.get(version)
            if ref is not None and ref.try_acquire():
                return ServableHandle(ref)
        raise ServableNotFound(
            f"Servable not found for request: {request}", request.name, request.version
        )

    def available_versions(self, name: str) -> list[int]:
        return sorted(self._refs.get(name, {}), reverse=True)

    def stream_names(self) -> list[str]:
        return sorted(self.monitor.statuses)

    def in_flight(self, name: str, version: int) -> int:
        return self._refs[name][version].in_flight

    def servable(self, name: str, version: int) -> Servable:
        return self._refs[name][version].servable


def labels(table: dict[tuple[str, str], int]) -> Callable[[str, str], int | None]:
    return lambda name, label: table.get((name, label))


# --- tests ----------------------------------------------------------------------------------------


@pytest.fixture
def manager() -> FakeManager:
    return FakeManager().add("addsub", 1, add_sub_servable()).add("addsub", 2, add_sub_servable(10))


@pytest.fixture
def service(manager):
    service = InferenceService(
        manager, InferenceOptions(executor_threads=2), labels({("addsub", "stable"): 1})
    )
    yield service
    service.close(wait=True)


def ab(rows: int = 2) -> dict[str, np.ndarray]:
    a = np.arange(rows * 4, dtype=np.float32).reshape(rows, 4)
    return {"a": a, "b": np.ones((rows, 4), np.float32)}


def test_acquire_resolves_latest_specific_and_label(service):
    with service.acquire("addsub") as latest:
        assert latest.id == ServableId("addsub", 2)
    with service.acquire("addsub", version=1) as specific:
        assert specific.id.version == 1
    with service.acquire("addsub", label="stable") as labelled:
        assert labelled.id.version == 1


def test_acquire_with_version_and_label_is_invalid(service):
    with pytest.raises(InvalidInput, match="not both"):
        service.acquire("addsub", version=1, label="stable")


def test_acquire_unknown_label_model_or_version_is_not_found(service):
    with pytest.raises(NotFound, match="Unrecognized servable version label: canary"):
        service.acquire("addsub", label="canary")
    with pytest.raises(NotFound, match=r"Servable not found for request: Latest\(nope\)"):
        service.acquire("nope")
    with pytest.raises(NotFound, match=r"Specific\(addsub, 7\)"):
        service.acquire("addsub", version=7)


def test_signature_defaults_to_serving_default_or_the_only_one(service):
    with service.acquire("addsub") as handle:
        assert service.signature(handle, None).name == "serving_default"
        assert service.signature(handle, "").name == "serving_default"
    manager = FakeManager().add("k", 1, kitchen_servable())
    single = {"only": Signature("only", (), ())}
    manager.add("one", 1, NumpyServable(single, lambda s, x: {}))
    other = InferenceService(manager)
    try:
        with other.acquire("one") as handle:
            assert other.signature(handle, None).name == "only"
        with other.acquire("k") as handle, pytest.raises(FailedPrecondition) as info:
            other.signature(handle, None)
        assert info.value.message == 'Serving signature key "serving_default" not found.'
    finally:
        other.close()


def test_unknown_signature_is_a_failed_precondition_with_tf_text_issue_16(service):
    # TF Serving's predict: FAILED_PRECONDITION (REST 400), not NOT_FOUND
    with service.acquire("addsub") as handle, pytest.raises(FailedPrecondition) as info:
        service.signature(handle, "nope")
    assert info.value.message == 'Serving signature key "nope" not found.'


@pytest.mark.asyncio
async def test_run_computes_on_an_executor_thread_not_the_event_loop(service, manager):
    with service.acquire("addsub") as handle:
        signature = service.signature(handle, None)
        out = await service.run(handle, signature, ab())
    np.testing.assert_array_equal(out["sum"], ab()["a"] + 1 + 10)
    assert list(out) == ["sum", "diff"]
    servable = manager.servable("addsub", 2)
    assert servable.threads and threading.get_ident() not in servable.threads
    assert manager.in_flight("addsub", 2) == 0


async def run_scale(service: InferenceService, rows: int = 1) -> None:
    with service.acquire("m") as handle:
        x = {"x": np.ones((rows, 3), np.float32)}
        out = await service.run(handle, service.signature(handle, None), x)
    np.testing.assert_array_equal(out["y"], x["x"] * 2)


@pytest.mark.asyncio
async def test_model_code_never_runs_on_the_event_loop_even_when_cheap_issue_14():
    # The inline path ran calls measured as cheap on the loop; now every call takes a thread.
    servable = scale_servable()
    service = InferenceService(FakeManager().add("m", 1, servable))
    try:
        for rows in [1] * 50 + [2, 100]:
            await run_scale(service, rows)
        assert len(servable.threads) == 52
        assert threading.get_ident() not in servable.threads
    finally:
        service.close(wait=True)


@pytest.mark.asyncio
async def test_a_model_with_stuck_threads_is_not_ready_and_others_still_answer_issue_14():
    release = threading.Event()
    started = threading.Semaphore(0)

    def hang(_sig, x):
        started.release()
        assert release.wait(10)
        return {"y": x["x"]}

    stuck = scale_servable()
    stuck._compute = hang
    manager = FakeManager().add("stuck", 1, stuck).add("m", 1, scale_servable())
    service = InferenceService(manager, InferenceOptions(executor_threads=2))
    x = {"x": np.zeros((1, 3), np.float32)}

    async def call_stuck() -> None:
        with service.acquire("stuck") as handle:
            await service.run(handle, service.signature(handle, None), x)

    try:
        # Two calls take its two threads; their requests give up (cancelled) while they run.
        tasks = [asyncio.ensure_future(call_stuck()) for _ in range(2)]
        for _ in range(2):
            assert await asyncio.to_thread(started.acquire, True, 10)
        assert service.model_ready("stuck")  # running calls with waiting requests are fine
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        assert not service.model_ready("stuck")
        reason = service.model_not_ready_reason("stuck")
        assert reason is not None and "all 2 execution thread(s) are busy" in reason
        # the model is not ready, the server is: a hung model must not take it out of the
        # load balancer (issue 14)
        assert service.not_ready_reasons(["stuck", "m"]) == {}
        assert service.is_ready(["stuck", "m"])
        await run_scale(service)  # the other model has its own threads
        release.set()
        deadline = time.monotonic() + 5
        while not service.model_ready("stuck") and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        assert service.model_ready("stuck")
        assert manager.in_flight("stuck", 1) == 0
    finally:
        release.set()
        service.close(wait=True)


@pytest.mark.asyncio
async def test_run_returns_only_requested_outputs_in_requested_order(service):
    with service.acquire("addsub") as handle:
        out = await service.run(handle, service.signature(handle, None), ab(), ["diff"])
    assert list(out) == ["diff"]
    with service.acquire("addsub") as handle, pytest.raises(InvalidInput, match='"nope"'):
        await service.run(handle, service.signature(handle, None), ab(), ["nope"])


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        (
            {"a": np.zeros((1, 4), np.float32)},
            "input size does not match signature: 1!=2 len({a}) != len({a,b})."
            " Sent extra: {}. Missing but required: {b}.",
        ),
        (
            {**ab(), "c": np.zeros((2, 4), np.float32)},
            "Sent extra: {c}. Missing but required: {}.",
        ),
        (
            {"a": np.zeros((2, 3), np.int64), "b": np.zeros((2, 4), np.float32)},
            'input "a": expected FP32 [-1, 4], got INT64 [2, 3]',
        ),
        (
            {"a": np.zeros((2, 3), np.float32), "b": np.zeros((2, 4), np.float32)},
            'input "a": expected FP32 [-1, 4], got FP32 [2, 3]',
        ),
        (
            {"a": np.zeros((4,), np.float32), "b": np.zeros((2, 4), np.float32)},
            'input "a": expected FP32 [-1, 4], got FP32 [4]',
        ),
        (
            {"a": np.zeros((2, 4), np.float32), "b": np.zeros((3, 4), np.float32)},
            'inputs disagree on dimension 0 (the batch size): "a" has 2, "b" has 3',
        ),
    ],
    ids=["missing", "extra", "dtype", "shape", "rank", "batch"],
)
async def test_run_rejects_inputs_that_do_not_match_the_signature(
    service, manager, inputs, message
):
    with service.acquire("addsub") as handle:
        with pytest.raises(InvalidInput) as info:
            await service.run(handle, service.signature(handle, None), inputs)
        assert message in info.value.message
    assert manager.servable("addsub", 2).calls == 0


@pytest.mark.asyncio
async def test_model_exception_becomes_model_error_with_its_message():
    def boom(_sig, _x):
        raise RuntimeError("weights on fire")

    broken = scale_servable()
    broken._compute = boom
    service = InferenceService(FakeManager().add("m", 1, broken))
    try:
        with service.acquire("m") as handle:
            x = {"x": np.zeros((1, 3), np.float32)}
            with pytest.raises(ModelError, match="weights on fire") as info:
                await service.run(handle, service.signature(handle, None), x)
        assert isinstance(info.value.__cause__, RuntimeError)
    finally:
        service.close()


@pytest.mark.asyncio
async def test_serving_error_from_the_model_passes_through_unwrapped():
    def invalid(_sig, _x):
        raise InvalidInput('input "x": must be UTF-8')

    servable = scale_servable()
    servable._compute = invalid
    service = InferenceService(FakeManager().add("m", 1, servable))
    try:
        with service.acquire("m") as handle, pytest.raises(InvalidInput, match="UTF-8"):
            await service.run(
                handle, service.signature(handle, None), {"x": np.zeros((1, 3), np.float32)}
            )
    finally:
        service.close()


@pytest.mark.asyncio
async def test_expired_deadline_is_refused_before_the_model_runs(service, manager):
    with service.acquire("addsub") as handle, pytest.raises(DeadlineExceeded):
        await service.run(
            handle, service.signature(handle, None), ab(), deadline=time.monotonic() - 1
        )
    assert manager.servable("addsub", 2).calls == 0


@pytest.mark.asyncio
async def test_deadline_during_a_slow_run_answers_504_and_keeps_the_version_referenced():
    release = threading.Event()
    started = threading.Event()

    def slow(_sig, x):
        started.set()
        assert release.wait(10)
        return {"y": x["x"]}

    servable = scale_servable()
    servable._compute = slow
    manager = FakeManager().add("m", 1, servable)
    service = InferenceService(manager)
    try:
        with service.acquire("m") as handle:
            x = {"x": np.zeros((1, 3), np.float32)}
            with pytest.raises(DeadlineExceeded):
                await service.run(
                    handle, service.signature(handle, None), x, deadline=time.monotonic() + 1.0
                )
        assert started.is_set()
        # The caller released its handle, but the call still runs: the version stays referenced.
        assert manager.in_flight("m", 1) == 1
        release.set()
        deadline = time.monotonic() + 5
        while manager.in_flight("m", 1) and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        assert manager.in_flight("m", 1) == 0
    finally:
        release.set()
        service.close(wait=True)


@pytest.mark.asyncio
async def test_a_request_abandoning_a_call_on_a_closing_version_waits_for_the_call_to_return():
    # The version is unloading, so no new handle can keep it alive: the request keeps its own
    # until the call returns, and the version never unloads under a running call.
    release = threading.Event()
    started = threading.Event()

    def slow(_sig, x):
        started.set()
        assert release.wait(10)
        return {"y": x["x"]}

    servable = scale_servable()
    servable._compute = slow
    manager = FakeManager().add("m", 1, servable)
    ref = manager._refs["m"][1]
    service = InferenceService(manager)

    async def request() -> None:
        with service.acquire("m") as handle:
            x = {"x": np.zeros((1, 3), np.float32)}
            await service.run(handle, service.signature(handle, None), x)

    try:
        task = asyncio.ensure_future(request())
        assert await asyncio.to_thread(started.wait, 10)
        manager.set_state("m", 1, ServableState.UNLOADING)  # get_handle fails from now on
        task.cancel()
        await asyncio.sleep(0.05)
        assert not task.done() and ref.in_flight == 1
        release.set()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(task, 10)
        assert ref.in_flight == 0
    finally:
        release.set()
        service.close(wait=True)


@pytest.mark.asyncio
async def test_cancelled_request_keeps_the_version_referenced_until_the_call_ends():
    release = threading.Event()
    started = threading.Event()

    def slow(_sig, x):
        started.set()
        assert release.wait(10)
        return {"y": x["x"]}

    servable = scale_servable()
    servable._compute = slow
    manager = FakeManager().add("m", 1, servable)
    service = InferenceService(manager)

    async def request() -> None:
        with service.acquire("m") as handle:
            x = {"x": np.zeros((1, 3), np.float32)}
            await service.run(handle, service.signature(handle, None), x)

    try:
        task = asyncio.ensure_future(request())
        while not started.is_set():
            await asyncio.sleep(0.005)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert manager.in_flight("m", 1) == 1
        release.set()
        deadline = time.monotonic() + 5
        while manager.in_flight("m", 1) and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        assert manager.in_flight("m", 1) == 0
    finally:
        release.set()
        service.close(wait=True)


@pytest.mark.asyncio
async def test_requests_over_the_pending_bound_are_refused_unavailable():
    release = threading.Event()

    def slow(_sig, x):
        assert release.wait(10)
        return {"y": x["x"]}

    servable = scale_servable()
    servable._compute = slow
    service = InferenceService(
        FakeManager().add("m", 1, servable),
        InferenceOptions(executor_threads=1, max_pending_requests=2),
    )

    async def request() -> None:
        with service.acquire("m") as handle:
            x = {"x": np.zeros((1, 3), np.float32)}
            await service.run(handle, service.signature(handle, None), x)

    try:
        running = [asyncio.ensure_future(request()) for _ in range(2)]
        while service.pending_requests < 2:
            await asyncio.sleep(0.001)
        with pytest.raises(Unavailable, match="too many requests"):
            await request()
        release.set()
        await asyncio.gather(*running)
        await request()  # the bound frees up again
    finally:
        release.set()
        service.close(wait=True)


def test_model_status_lists_versions_highest_first_and_filters(service, manager):
    manager.set_state("addsub", 3, ServableState.END, error="corrupt file")
    states = service.model_status("addsub")
    assert [(s.id.version, s.state) for s in states] == [
        (3, ServableState.END),
        (2, ServableState.AVAILABLE),
        (1, ServableState.AVAILABLE),
    ]
    assert [s.id.version for s in service.model_status("addsub", version=2)] == [2]
    assert [s.id.version for s in service.model_status("addsub", label="stable")] == [1]
    with pytest.raises(NotFound, match="Could not find any versions of model nope"):
        service.model_status("nope")
    with pytest.raises(NotFound, match="Could not find version 9 of model addsub"):
        service.model_status("addsub", version=9)


def test_readiness_helpers(service, manager):
    assert service.model_ready("addsub") and service.model_ready("addsub", 1)
    assert not service.model_ready("addsub", 9) and not service.model_ready("nope")
    assert service.is_ready(["addsub"]) and not service.is_ready(["addsub", "nope"])
    assert service.not_ready(["addsub", "nope"]) == ["nope"]
    assert service.not_ready_reasons(["addsub", "nope"]) == {"nope": "no AVAILABLE version"}
    assert service.model_names() == ["addsub"]
