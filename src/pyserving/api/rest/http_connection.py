"""One REST client connection: HTTP/1.1 framing with httptools, requests run in order (each an
`http_exchange.Exchange`: the ASGI `receive`/`send`), and the per-connection limits (header
timeout and size, Host and transfer-coding checks, malformed bodies answered at once, write slices
and the write timeout).
`http_server.HttpServer` accepts connections and owns the set of them.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import re
from typing import TYPE_CHECKING
from urllib.parse import unquote

import httptools

from pyserving.api.rest.http_exchange import Exchange, Scope, date_header, plain_response

if TYPE_CHECKING:
    from pyserving.api.rest.http_server import HttpServer

__all__ = ["Connection"]

logger = logging.getLogger("pyserving.http")

_ASGI = {"version": "3.0", "spec_version": "2.3"}
#: a Host value: uri-host [":" port] (RFC 9110 §7.2, RFC 3986 §3.2.2), IPv6 literals included
_HOST = re.compile(rb"[A-Za-z0-9\-._~%!$&'()*+,;=:\[\]]+")


class Connection(asyncio.Protocol):
    """One client connection: parses requests and runs them one at a time, in order."""

    def __init__(self, server: HttpServer, loop: asyncio.AbstractEventLoop) -> None:
        self.server = server
        self._options = server.options
        self.loop = loop
        self._parser = httptools.HttpRequestParser(self)
        self._transport: asyncio.Transport | None = None
        self._client: tuple[str, int] | None = None
        self._sockname: tuple[str, int] | None = None
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._header_bytes = 0
        self._headers_too_large = False
        self._parsing: Exchange | None = None  # the request whose bytes are arriving
        self._pending: collections.deque[Exchange] = collections.deque()  # pipelined, waiting
        self._running: Exchange | None = None
        self.task: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._in_headers = False
        self._broken = False  # a malformed request: ignore the rest of the stream
        self._rejection: tuple[int, str] | None = None  # why a parser callback stopped parsing
        self._late_answer: bytes | None = None  # answers a bad pipelined request in its turn
        self._lost = False
        self.slice_bytes = server.options.write_buffer_bytes
        self.write_paused = False
        self._drained: asyncio.Future[None] | None = None

    # --- asyncio.Protocol ----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]  # uvloop's is no subclass
        limits = self._options.write_buffer_bytes
        transport.set_write_buffer_limits(high=limits)  # type: ignore[attr-defined]
        peer = transport.get_extra_info("peername")
        local = transport.get_extra_info("sockname")
        self._client = (str(peer[0]), int(peer[1])) if isinstance(peer, tuple) else None
        self._sockname = (str(local[0]), int(local[1])) if isinstance(local, tuple) else None
        self.server.connections.add(self)
        self._arm(self._options.keep_alive_timeout_s)

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        self.server.connections.discard(self)
        self._disarm()
        for request in (self._parsing, self._running, *self._pending):
            if request is not None:
                request.disconnect()
        self._pending.clear()
        self.resume_writing()

    def data_received(self, data: bytes) -> None:
        if self._broken:
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._reject(400, "protocol upgrades are not supported")
        except httptools.HttpParserError as exc:
            if self._headers_too_large:
                self._reject(431, f"request headers exceed {self._options.max_header_bytes} bytes")
            elif self._rejection is not None:
                self._reject(*self._rejection)
            else:
                self._reject(400, f"malformed HTTP request: {exc}")

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)
        self._drained = None

    # --- httptools callbacks -------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._url = b""
        self._headers = []
        self._header_bytes = 0
        self._in_headers = True
        self._arm(self._options.header_timeout_s)

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._count_header_bytes(len(url))

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name.lower(), value))
        self._count_header_bytes(len(name) + len(value))

    def on_headers_complete(self) -> None:
        self._in_headers = False
        self._disarm()
        problem = _framing_problem(self._headers, self._parser.get_http_version())
        if problem is not None:
            self._rejection = (400, problem)
            raise ValueError(problem)  # httptools stops parsing; data_received answers
        if self._running is None and self._answer_instantly():
            return
        request = Exchange(self, self._scope(), self._parser.should_keep_alive())
        self._parsing = request
        if self._running is None:
            self._start(request)
        else:
            self._pending.append(request)
            self._pause_reading()  # one request ahead is enough

    def on_body(self, body: bytes) -> None:
        if self._parsing is not None:
            self._parsing.add_body(body)

    def on_message_complete(self) -> None:
        if self._parsing is not None:
            self._parsing.complete_body()
            self._parsing = None

    # --- requests ------------------------------------------------------------------------------

    def _answer_instantly(self) -> bool:
        """Answer a GET the server knows by heart (`HttpServer.instant_answers`) right here,
        without a task; False when this request is not one."""
        answers = self.server.instant_answers
        if not answers or self._parser.get_method() != b"GET":
            return False
        known = answers.get(self._url.partition(b"?")[0])
        if known is None:
            return False
        content_type, body = known
        keep_alive = self._parser.should_keep_alive() and not self.server.shutting_down
        if not keep_alive:
            connection = b"connection: close\r\n"
        elif self._parser.get_http_version() == "1.0":
            connection = b"connection: keep-alive\r\n"
        else:
            connection = b""
        self.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: %s\r\ncontent-length: %d\r\n%s%s\r\n%s"
            % (content_type, len(body), date_header(), connection, body)
        )
        if keep_alive:
            self._arm(self._options.keep_alive_timeout_s)
        else:
            self._broken = True  # whatever follows is not read
            self.close()
        return True

    def _scope(self) -> Scope:
        raw_path, _, query = self._url.partition(b"?")
        path = raw_path.decode("latin-1")
        if "%" in path:
            path = unquote(path, encoding="utf-8", errors="replace")
        return {
            "type": "http",
            "asgi": _ASGI,
            "http_version": self._parser.get_http_version(),
            "method": self._parser.get_method().decode("ascii"),
            "scheme": "http",
            "path": path,
            "raw_path": raw_path,
            "query_string": query,
            "root_path": "",
            "headers": self._headers,
            "client": self._client,
            "server": self._sockname,
        }

    def _start(self, request: Exchange) -> None:
        self._running = request
        self.task = self.loop.create_task(self._run(request))

    async def _run(self, request: Exchange) -> None:
        try:
            await self.server.app(request.scope, request.receive, request.send)
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("unhandled error in the REST app")
            if not request.response_started:
                await request.send_plain(500, "Internal Server Error")
        finally:
            self._finish(request)

    def _finish(self, request: Exchange) -> None:
        self._running = None
        self.task = None
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        if (
            not request.response_complete
            or not request.keep_alive
            or not request.body_complete  # the unread rest of a body would be parsed as a request
            or self.server.shutting_down
        ):
            transport.close()
            return
        if self._pending:
            self._start(self._pending.popleft())
            if not self._pending:
                transport.resume_reading()
        elif self._late_answer is not None:  # a later request was malformed: its turn now
            self.write(self._late_answer)
            self.close()
        elif self._parsing is None and not self._in_headers:  # else a request timer runs
            self._arm(self._options.keep_alive_timeout_s)

    # --- writing -------------------------------------------------------------------------------

    def write(self, data: bytes | memoryview) -> None:
        transport = self._transport
        if transport is not None and not transport.is_closing():
            transport.write(data)

    async def write_all(self, data: bytes) -> None:
        """Write `data` a slice at a time, each once the client has read enough of the last:
        the transport never holds more than a slice beyond its buffer limit."""
        size = self.slice_bytes
        if len(data) <= size:
            self.write(data)
            await self.drain()
            return
        view = memoryview(data)
        for start in range(0, len(view), size):
            self.write(view[start : start + size])
            await self.drain()

    async def drain(self) -> None:
        """Wait while the client is not reading what was written; a client that reads none of
        it within `write_timeout_s` is disconnected (the wait then ends, and later writes are
        dropped)."""
        transport = self._transport
        if self.write_paused and transport is not None and not transport.is_closing():
            if self._drained is None:
                self._drained = self.loop.create_future()
            try:
                async with asyncio.timeout(self._options.write_timeout_s):
                    await self._drained
            except TimeoutError:
                logger.debug(
                    "client %s read nothing for %gs: disconnected",
                    self._client,
                    self._options.write_timeout_s,
                )
                transport.abort()

    # --- closing -------------------------------------------------------------------------------

    def close_when_idle(self) -> None:
        """At shutdown: close now when no request runs, else after its response."""
        self._pending.clear()
        if self._running is None:
            self.close()

    def close(self) -> None:
        """Close after what was written is sent; a client that does not read it within
        `write_timeout_s` is disconnected then."""
        transport = self._transport
        if transport is not None and not transport.is_closing():
            transport.close()
            if transport.get_write_buffer_size():
                self.loop.call_later(self._options.write_timeout_s, self._abort)

    def _abort(self) -> None:
        if not self._lost and self._transport is not None:
            self._transport.abort()

    def _reject(self, status: int, message: str) -> None:
        """A request that cannot be parsed: answer it in its turn and close the connection.

        A malformed body of the running request is answered at once (the app's reads end as a
        disconnect and its answer is dropped); a bad pipelined request after the ones before it.
        """
        self._broken = True
        self._disarm()
        answer = plain_response(status, message)
        request, self._parsing = self._parsing, None
        if request is not None and request is self._running:
            request.fail(answer, status)
            self.close()
        elif self._running is None:
            self.write(answer)
            self.close()
        else:
            if request is not None and request in self._pending:
                self._pending.remove(request)
            self._late_answer = answer

    def _count_header_bytes(self, count: int) -> None:
        self._header_bytes += count
        if self._header_bytes > self._options.max_header_bytes:
            self._headers_too_large = True
            raise ValueError("request headers too large")

    def _pause_reading(self) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.pause_reading()

    def _arm(self, seconds: float) -> None:
        self._disarm()
        self._timer = self.loop.call_later(seconds, self._on_timer)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _on_timer(self) -> None:
        self._timer = None
        if self._in_headers:
            self._broken = True
            self.write(plain_response(408, "request headers not received in time"))
        self.close()


def _framing_problem(headers: list[tuple[bytes, bytes]], http_version: str) -> str | None:
    """Why a request's headers cannot be served (a 400), or None.

    HTTP/1.1 requires exactly one Host (RFC 9112 §3.2); two could route one request two ways,
    and one that is not a host name or address (empty, spaces) names no server.
    Only the `chunked` transfer coding is implemented, and a body in any other coding cannot be
    framed (RFC 9112 §6.1).
    """
    hosts = 0
    codings: list[bytes] = []
    for name, value in headers:
        if name == b"host":
            hosts += 1
            if _HOST.fullmatch(value.strip(b" \t")) is None:
                shown = value.decode("latin-1")[:80].encode("unicode_escape").decode("ascii")
                return f"invalid Host header {shown!r}"
        elif name == b"transfer-encoding":
            codings.extend(c.strip().lower() for c in value.split(b","))
    if hosts > 1:
        return "more than one Host header"
    if hosts == 0 and http_version == "1.1":
        return "an HTTP/1.1 request needs a Host header"
    if codings and codings != [b"chunked"]:
        shown = b", ".join(codings).decode("latin-1")
        return f"unsupported Transfer-Encoding {shown!r}: only chunked is implemented"
    return None
