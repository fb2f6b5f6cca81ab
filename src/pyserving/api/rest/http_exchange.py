"""One HTTP exchange on a REST connection: the request body as it arrives and the response as
the ASGI app sends it (its `receive` and `send`), with the response head we add (Date,
Content-Length, Connection). `http_connection.Connection` parses requests and runs their
exchanges in order.
"""

from __future__ import annotations

import asyncio
import email.utils
import http
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pyserving.api.rest.http_connection import Connection

__all__ = [
    "ANSWERED_STATUS",
    "AsgiApp",
    "Exchange",
    "Message",
    "Scope",
    "date_header",
    "plain_response",
]

# ASGI scopes and messages are dicts (as api/rest/asgi.py types them)
Scope = dict[str, Any]
Message = dict[str, Any]
AsgiApp = Callable[
    [Scope, Callable[[], Awaitable[Message]], Callable[[Message], Awaitable[None]]],
    Awaitable[None],
]

_REASONS = {status.value: status.phrase.encode() for status in http.HTTPStatus}
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
#: the key of an `http.disconnect` message carrying the status the server answered for the app
#: (a malformed body), so that the app logs what was sent rather than a client that left
ANSWERED_STATUS = "pyserving.answered_status"


class Exchange:
    """One request's body as it arrives and its response as the app sends it (ASGI's
    `receive` and `send`)."""

    __slots__ = (
        "_body",
        "_body_delivered",
        "_connection",
        "_continue_sent",
        "_disconnected",
        "_failed",
        "_head_only",
        "_head_sent",
        "_response_headers",
        "_waiter",
        "body_complete",
        "keep_alive",
        "response_complete",
        "response_started",
        "scope",
        "status",
    )

    def __init__(self, connection: Connection, scope: Scope, keep_alive: bool) -> None:
        self._connection = connection
        self.scope = scope
        self.keep_alive = keep_alive
        self._body: list[bytes] = []
        self.body_complete = False
        self._body_delivered = False  # the last body message was received by the app
        self._disconnected = False
        self._failed = False  # the server answered for the app (a malformed body)
        self._waiter: asyncio.Future[None] | None = None
        self._continue_sent = False
        self._head_only = scope["method"] == "HEAD"
        self.response_started = False
        self.response_complete = False
        self.status = 0
        self._response_headers: list[tuple[bytes, bytes]] = []
        self._head_sent = False

    # --- from the parser -----------------------------------------------------------------------

    def add_body(self, chunk: bytes) -> None:
        if not self.response_complete:  # else nobody will read it
            self._body.append(chunk)
            self._wake()

    def complete_body(self) -> None:
        self.body_complete = True
        self._wake()

    def disconnect(self) -> None:
        self._disconnected = True
        self._wake()

    def fail(self, answer: bytes, status: int) -> None:
        """The body cannot be parsed: send `answer` (of `status`) unless a response has begun;
        the app's reads see a disconnect (saying `status` was answered) from now on and what it
        sends is dropped."""
        self._failed = self._disconnected = True
        if not self.response_started:
            self.response_started = self.response_complete = True
            self.status = status
            self._connection.write(answer)
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # --- ASGI ----------------------------------------------------------------------------------

    async def receive(self) -> Message:
        # Once the whole body was handed over, a receive waits for the client to go away (ASGI):
        # a streaming answer watches for that while it writes.
        while not self._disconnected and (
            self._body_delivered or (not self._body and not self.body_complete)
        ):
            if (
                not self._continue_sent
                and not self._body_delivered
                and (b"expect", b"100-continue") in self.scope["headers"]
            ):
                self._continue_sent = True
                self._connection.write(_CONTINUE)
            self._waiter = self._connection.loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        if self._disconnected or self.response_complete:
            if self._failed and self.status:
                return {"type": "http.disconnect", ANSWERED_STATUS: self.status}
            return {"type": "http.disconnect"}
        chunks = self._body
        body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        chunks.clear()
        self._body_delivered = self.body_complete
        return {"type": "http.request", "body": body, "more_body": not self.body_complete}

    async def send(self, message: Message) -> None:
        if self._failed:
            return
        kind = message["type"]
        if kind == "http.response.start":
            if self.response_started:
                raise RuntimeError("the response has already started")
            self.response_started = True
            self.status = int(message["status"])
            self._response_headers = list(message.get("headers", ()))
            return
        if kind != "http.response.body":
            raise RuntimeError(f"unexpected ASGI message {kind!r}")
        if not self.response_started or self.response_complete:
            raise RuntimeError("http.response.body outside a response")
        body: bytes = message.get("body", b"")
        more = bool(message.get("more_body", False))
        if self._head_only:
            body = b""
        if not more:
            self.response_complete = True
        if not self._head_sent:
            self._head_sent = True
            head = self._head(len(message.get("body", b"")) if not more else None)
            if len(body) <= self._connection.slice_bytes:
                await self._connection.write_all(head + body)  # one write for a small answer
                return
            self._connection.write(head)
        await self._connection.write_all(body)

    async def send_plain(self, status: int, text: str) -> None:
        self.keep_alive = False
        self._connection.write(plain_response(status, text))
        self.response_started = self.response_complete = True

    def _head(self, length: int | None) -> bytes:
        """The status line and headers; adds Date, Content-Length when the app gave none and
        the body is whole, and Connection: close when the connection will close."""
        lines = [b"HTTP/1.1 %d %s\r\n" % (self.status, _REASONS.get(self.status, b""))]
        has_length = False
        for name, value in self._response_headers:
            lowered = name.lower()
            if lowered == b"content-length":
                has_length = True
            elif lowered == b"connection" and value.lower() == b"close":
                self.keep_alive = False
                continue  # added below, once
            lines.append(b"%s: %s\r\n" % (name, value))
        if not has_length:
            if length is None:
                self.keep_alive = False  # the end of the body is the end of the connection
            else:
                lines.append(b"content-length: %d\r\n" % length)
        lines.append(date_header())
        if not self.keep_alive or self._connection.server.shutting_down:
            self.keep_alive = False
            lines.append(b"connection: close\r\n")
        elif self.scope["http_version"] == "1.0":  # its default is to close
            lines.append(b"connection: keep-alive\r\n")
        lines.append(b"\r\n")
        return b"".join(lines)


def plain_response(status: int, text: str) -> bytes:
    body = text.encode()
    return (
        b"HTTP/1.1 %d %s\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: %d\r\n"
        b"%sconnection: close\r\n\r\n%s"
        % (status, _REASONS.get(status, b""), len(body), date_header(), body)
    )


_date_cache: list[Any] = [0, b""]  # [second, header line]


def date_header() -> bytes:
    """`date: ...` for this second (formatted at most once a second)."""
    now = int(time.time())
    if _date_cache[0] != now:
        _date_cache[0] = now
        _date_cache[1] = b"date: %s\r\n" % email.utils.formatdate(now, usegmt=True).encode()
    line: bytes = _date_cache[1]
    return line
