"""Noticing a REST client that goes away while its answer is computed or written.

ASGI's `receive`, once the body was read, waits until the client disconnects: a task awaiting
it races the work, and the work is cancelled when the client leaves first (`ClientGone`). The
streaming routes watch for the whole answer; a pipeline request watches while its steps run
(`until_client_gone`, through `pyserving.serving.pipeline.client_watch`), so that the steps not
yet run are never run for nobody. Ordinary unary requests are not watched: one model call is
not worth a task per request.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from pyserving.serving.streaming import PartStream

__all__ = ["ClientGone", "ClientWatch", "until_client_gone"]

Receive = Callable[[], Awaitable[dict[str, Any]]]


class ClientGone(Exception):
    """The client closed the connection before its answer: nothing is sent."""

    status = 0  # as responses.Disconnected: app.py counts it as "client closed"


class ClientWatch:
    """Waits for the client to go away while the answer is computed or written.

    Needs `receive` to wait once the body was read (as ASGI says it does) until the client
    disconnects. Cancellation: `until_gone` cancels the work it races when the client leaves.
    """

    def __init__(self, receive: Receive) -> None:
        self._task = asyncio.ensure_future(_disconnected(receive))

    @property
    def gone(self) -> bool:
        return self._task.done()

    async def until_gone(self, work: Awaitable[Any]) -> Any:
        """`work`'s result; ClientGone (the work cancelled) when the client leaves first."""
        task = asyncio.ensure_future(work)
        done, _ = await asyncio.wait((task, self._task), return_when=asyncio.FIRST_COMPLETED)
        if task in done:
            return task.result()
        task.cancel()
        await asyncio.wait((task,))
        if not task.cancelled() and task.exception() is None:
            stream = task.result()
            if isinstance(stream, PartStream):  # opened meanwhile: nobody else will close it
                await stream.aclose()
        raise ClientGone

    def stop(self) -> None:
        self._task.cancel()


async def until_client_gone(receive: Receive, work: Awaitable[Any]) -> Any:
    """`work`'s result; ClientGone (the work cancelled) when the client leaves first."""
    watch = ClientWatch(receive)
    try:
        return await watch.until_gone(work)
    finally:
        watch.stop()


async def _disconnected(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
