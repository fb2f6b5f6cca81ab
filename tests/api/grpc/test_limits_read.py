"""A unary call's request message under `limit_handlers` (issue 17: read in the call's own task
with loop timers, not a task of its own under asyncio.wait): a message that never arrives ends
DEADLINE_EXCEEDED with the call's task no longer cancelling; one that arrives is answered and
holds nothing in the budget afterwards. The e2e tests (test_grpc_admission,
test_transport_limits) drive the same paths over real sockets."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest

from pyserving.api.grpc.limits import CallLimits, limit_handlers
from pyserving.api.limits import RequestBytesBudget

pytestmark = pytest.mark.asyncio

METHOD = "/test.Echo/Echo"


class Aborted(Exception):
    pass


class FakeContext:
    """`read` answers `message` (never, when None); `abort` records the status and the call's
    task's cancellation count at that moment."""

    def __init__(self, message: bytes | None) -> None:
        self.message = message
        self.aborted: tuple[grpc.StatusCode, str, int] | None = None

    async def read(self) -> bytes:
        if self.message is None:
            await asyncio.Event().wait()  # a message that never comes
        assert self.message is not None
        return self.message

    async def abort(self, code: grpc.StatusCode, details: str) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.aborted = (code, details, task.cancelling())
        raise Aborted


class Details:
    method = METHOD


def echo_handler(limits: CallLimits) -> Any:
    async def echo(request: bytes, context: Any) -> bytes:
        return request

    methods = {"Echo": grpc.unary_unary_rpc_method_handler(echo)}
    (handler,) = limit_handlers(
        (grpc.method_handlers_generic_handler("test.Echo", methods),), limits
    )
    return handler.service(Details()).stream_unary


def limits(budget: RequestBytesBudget, timeout_s: float) -> CallLimits:
    return CallLimits(budget, None, lambda: (), max_calls=4, request_timeout_s=timeout_s)


async def test_a_message_that_never_arrives_ends_deadline_exceeded_not_cancelled() -> None:
    budget = RequestBytesBudget(1 << 20)
    call_limits = limits(budget, 0.05)
    context = FakeContext(None)
    with pytest.raises(Aborted):
        await echo_handler(call_limits)(None, context)
    assert context.aborted is not None
    code, details, cancelling = context.aborted
    assert code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert "--grpc-request-timeout-seconds" in details
    assert cancelling == 0  # the timer's own cancellation was taken back
    assert call_limits.calls == 0


async def test_a_message_that_arrives_is_answered_and_releases_the_budget() -> None:
    budget = RequestBytesBudget(1 << 20)
    call_limits = limits(budget, 30.0)
    assert await echo_handler(call_limits)(None, FakeContext(b"hello")) == b"hello"
    assert budget.used_bytes == 0
    assert call_limits.calls == 0


async def test_cancelling_the_call_while_it_waits_for_its_message_cancels_it() -> None:
    budget = RequestBytesBudget(1 << 20)
    call_limits = limits(budget, 30.0)
    context = FakeContext(None)
    task = asyncio.ensure_future(echo_handler(call_limits)(None, context))
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert context.aborted is None
    assert call_limits.calls == 0
