"""The REST listener: HTTP/1.1 on asyncio with httptools' parser, calling the ASGI app directly.

Why not uvicorn: per request, its protocol and ASGI machinery cost more CPU than a request
needs (benchmarks/http_alternatives.py: a bare httptools protocol answers the small MLP in 49 to
59 µs of CPU, Starlette on uvicorn in 123 to 174); pyserving on uvicorn answered ~6,400 req/s at
64 connections, on this server ~7,000 in the same run. This server does only what the
REST app needs — HTTP/1.1 keep-alive and pipelining, `Expect: 100-continue`, chunked request
bodies, one write per response — and adds the limits a production listener needs: idle
keep-alive connections close after `keep_alive_timeout_s`, a request's headers must arrive within
`header_timeout_s` (408) and stay under `max_header_bytes` (431); an HTTP/1.1 request needs exactly
one `Host` (400); a transfer coding other than `chunked` and a malformed chunk are 400 at once,
even while the app reads the body; at most `max_connections` are open (the next one gets 503 and
is closed); a response is written `write_buffer_bytes` at a time and a client that reads none of
it for `write_timeout_s` is disconnected, so a client that never reads holds neither memory nor a
connection for long. The app itself bounds the body (413, 408). `shutdown` stops accepting, lets
in-flight requests finish within a bound, then cancels the rest (the app answers those 503).

Scope given to the app: type, asgi, http_version, method, scheme, path (percent-decoded),
raw_path, query_string, root_path, headers (lower-case names), client, server.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import logging
import socket
from collections.abc import Coroutine, Mapping
from dataclasses import dataclass
from typing import Any

from pyserving.api.rest.http_connection import Connection
from pyserving.api.rest.http_exchange import AsgiApp, plain_response

__all__ = ["HttpOptions", "HttpServer"]

logger = logging.getLogger("pyserving.http")

#: connections taken from the accept queue per wake-up (asyncio's own loop takes `backlog`)
_ACCEPTS_PER_WAKEUP = 512
#: accept() errors that mean "out of descriptors or memory": stop accepting for a moment
_RESOURCE_ERRNOS = frozenset((errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM))
_ACCEPT_RETRY_S = 1.0
_OVER_CAPACITY = plain_response(503, "too many open connections; retry later")


@dataclass(frozen=True, slots=True)
class HttpOptions:
    """Limits of the HTTP listener."""

    #: an idle keep-alive connection is closed after this long
    keep_alive_timeout_s: float = 5.0
    #: a request's line and headers must arrive within this time of its first byte, else 408
    header_timeout_s: float = 30.0
    #: the most bytes a request's target and headers may take, else 431
    max_header_bytes: int = 64 * 1024
    #: listen backlog
    backlog: int = 2048
    #: the most open connections; one more is answered 503 and closed at once
    max_connections: int = 4096
    #: a client that reads nothing of a pending response for this long is disconnected
    write_timeout_s: float = 30.0
    #: response bytes queued per connection before writing waits for the client to read
    write_buffer_bytes: int = 256 * 1024


class HttpServer:
    """Serves one ASGI app over HTTP/1.1 on a listening socket, and stops it gracefully.

    Accepting is its own: each time the listening socket is readable, up to 512 connections are
    taken from the accept queue at once. uvloop's server accepts one connection per event-loop
    turn, and a turn under load (1,000 busy keep-alive connections) takes tens of milliseconds:
    the queue drained at ~40 connections/s and a new connection (a liveness probe) waited
    seconds behind it (benchmarks/accept_latency.py). A connection's transport is made at once,
    and a liveness probe is answered in the turn its bytes arrive (`instant_answers`), so a new
    connection's first answer waits two loop turns, not five. Past `max_connections`, a new
    connection is answered 503 (on a TLS port: only closed) right there, before any transport
    exists.

    Thread-safety: every method runs on the event loop it was started on.
    """

    def __init__(self, app: AsgiApp, options: HttpOptions | None = None) -> None:
        self.app = app
        self.options = options or HttpOptions()
        self.connections: set[Connection] = set()
        self.shutting_down = False
        #: raw GET target → (content type, body) of a 200 the listener gives itself, with no
        #: task and no loop turn, when nothing else runs on the connection (the app's
        #: `instant_answers`; pyserving's REST app names liveness)
        self.instant_answers: Mapping[bytes, tuple[bytes, bytes]] = (
            getattr(app, "instant_answers", None) or {}
        )
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sock: socket.socket | None = None
        self._ssl: Any = None
        #: accepted sockets whose transport is being made (`connect_accepted_socket` runs)
        self._opening: set[Coroutine[Any, Any, Any]] = set()

    async def start(self, sock: socket.socket, ssl: Any = None) -> None:
        """Accept connections on `sock` (bound, not yet listening; the server closes it at
        shutdown) from now on; with `ssl` (an `ssl.SSLContext`), only TLS connections."""
        loop = asyncio.get_running_loop()
        sock.listen(self.options.backlog)
        sock.setblocking(False)
        self._loop, self._sock, self._ssl = loop, sock, ssl
        loop.add_reader(sock.fileno(), self._accept_ready)

    async def shutdown(self, timeout_s: float) -> None:
        """Stop accepting, close idle connections, give in-flight requests `timeout_s` to
        finish, cancel the rest (their app answers 503), close every connection."""
        self.shutting_down = True
        self._stop_accepting()
        for opening in list(self._opening):
            opening.close()  # its transport (if any) closes
        self._opening.clear()
        for connection in list(self.connections):
            connection.close_when_idle()
        running = [c.task for c in self.connections if c.task is not None]
        if running:
            _, late = await asyncio.wait(running, timeout=timeout_s)
            for task in late:
                task.cancel()
            if late:
                await asyncio.wait(late, timeout=5.0)  # the 503 answers go out
        for connection in list(self.connections):
            connection.close()

    # --- accepting -----------------------------------------------------------------------------

    def _accept_ready(self) -> None:
        sock = self._sock
        if sock is None:
            return
        for _ in range(_ACCEPTS_PER_WAKEUP):
            try:
                client, _ = sock.accept()
            except (BlockingIOError, InterruptedError):
                return  # the queue is empty
            except ConnectionAbortedError:
                continue  # the client left while queued
            except OSError as exc:
                if exc.errno not in _RESOURCE_ERRNOS:
                    raise
                # Out of descriptors or memory: the queued clients wait (the kernel keeps
                # them) instead of this callback spinning on the same error.
                logger.error(
                    "cannot accept connections (%s): retrying in %gs", exc, _ACCEPT_RETRY_S
                )
                self._pause_accepting()
                return
            self._open(client)

    def _open(self, client: socket.socket) -> None:
        client.setblocking(False)
        if len(self.connections) + len(self._opening) >= self.options.max_connections:
            if self._ssl is None:  # a TLS client would read plain text as a broken handshake
                with contextlib.suppress(OSError):  # a few bytes into an empty buffer: no wait
                    client.send(_OVER_CAPACITY)
            client.close()
            return
        loop = self._loop
        assert loop is not None
        # the TLS handshake counts against the header timeout, not asyncio's default 60 s
        handshake_s = self.options.header_timeout_s if self._ssl is not None else None
        opening = loop.connect_accepted_socket(
            lambda: Connection(self, loop), client, ssl=self._ssl, ssl_handshake_timeout=handshake_s
        )
        self._opening.add(opening)
        self._advance(opening, client)

    def _advance(self, opening: Coroutine[Any, Any, Any], client: socket.socket, *_: Any) -> None:
        """Run `connect_accepted_socket` up to its next wait now, as an eager task would: the
        transport exists before the next poll, not a loop turn later (on Python 3.11 a task
        would start only then). Resumed when the future it waits for (connection_made, or the
        TLS handshake) is done."""
        try:
            awaited = opening.send(None)
        except StopIteration:
            self._opening.discard(opening)
        except (OSError, asyncio.CancelledError) as exc:  # TLS handshake failed, client gone
            self._opening.discard(opening)
            logger.debug("connection not opened: %r", exc)
            client.close()
        else:
            resume = functools.partial(self._advance, opening, client)
            if isinstance(awaited, asyncio.Future):
                awaited._asyncio_future_blocking = False  # as Task does: we wait for it
                awaited.add_done_callback(resume)
            else:  # a bare yield (sleep(0)): go on next turn
                assert self._loop is not None
                self._loop.call_soon(resume)

    def _pause_accepting(self) -> None:
        assert self._loop is not None and self._sock is not None
        self._loop.remove_reader(self._sock.fileno())
        self._loop.call_later(_ACCEPT_RETRY_S, self._resume_accepting)

    def _resume_accepting(self) -> None:
        if self._sock is not None and self._loop is not None and not self.shutting_down:
            self._loop.add_reader(self._sock.fileno(), self._accept_ready)

    def _stop_accepting(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None and self._loop is not None:
            self._loop.remove_reader(sock.fileno())
            sock.close()
