"""Reading a REST request: its body within its limits (size, arrival time, the in-flight
budget), its headers, and the path segments that name a model and a version."""

from __future__ import annotations

import asyncio
import time
import zlib
from contextvars import ContextVar
from dataclasses import dataclass
from urllib.parse import unquote_to_bytes

from pyserving.api.limits import Reservation
from pyserving.api.rest.asgi import Receive, Scope
from pyserving.api.rest.http_exchange import ANSWERED_STATUS
from pyserving.api.rest.responses import Disconnected, HttpError, error_json, too_large
from pyserving.errors import InvalidInput
from pyserving.protocols.request import parse_version
from pyserving.serving.off_loop import run_off_loop, run_sized

#: what the current request holds in the in-flight budget (its body, then what decoding it
#: builds); released when it is answered
request_reservation: ContextVar[Reservation | None] = ContextVar(
    "pyserving_reservation", default=None
)

#: the header naming the JSON part's length (lower case, as ASGI delivers header names)
HEADER_LENGTH = b"inference-header-content-length"
#: the model the current request names (None: none); set by the routes, read by the app
request_model: ContextVar[str | None] = ContextVar("pyserving_request_model", default=None)
# wbits for zlib: 32 + 15 detects a gzip or a zlib header ("deflate" as HTTP means it).
_AUTO_HEADER = 32 + zlib.MAX_WBITS


@dataclass(frozen=True, slots=True)
class RequestLimits:
    """What one REST request may take: its body's size and arrival time, its deadline, and how
    deep its JSON tensor data may nest."""

    #: larger request bodies (after decompression too) are refused with 413
    max_request_bytes: int
    #: a request body must arrive within this many seconds, else 408; None = no limit
    body_read_timeout_s: float | None
    #: deadline of a predict / infer request (queueing and execution); 0 = none
    timeout_s: float
    #: JSON tensor data nested deeper than this is refused with 400
    max_json_depth: int

    def deadline(self) -> float | None:
        """The time.monotonic() by which a request starting now must be answered; None: none."""
        return time.monotonic() + self.timeout_s if self.timeout_s > 0 else None

    async def read_body(self, scope: Scope, receive: Receive) -> tuple[bytes, bytes | None]:
        """The request body (decompressed) and the Inference-Header-Content-Length value.

        Raises HttpError(413) as soon as the declared or received size passes the limit.
        """
        limit = self.max_request_bytes
        encoding = header_length = None
        declared = 0
        for key, value in scope["headers"]:
            if key == b"content-length":
                declared = int(value) if value.isdigit() else 0
                if declared > limit:
                    raise too_large(limit)
            elif key == HEADER_LENGTH:
                header_length = value
            elif key == b"content-encoding":
                encoding = value.strip().lower()
        reservation = request_reservation.get()
        # What the body will hold is reserved before it is read: refused at once, unread.
        reserved = 0
        if reservation is not None and declared:
            reservation.reserve(declared)
            reserved = declared
        chunks: list[bytes] = []
        size = 0
        try:
            # One timer for the whole body: a client that trickles it cannot hold the request.
            async with asyncio.timeout(self.body_read_timeout_s):
                while True:
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        raise Disconnected(message.get(ANSWERED_STATUS, 0))
                    chunk = message.get("body", b"")
                    if chunk:
                        size += len(chunk)
                        if size > limit:
                            raise too_large(limit)
                        if reservation is not None and size > reserved:
                            reservation.reserve(size - reserved)
                            reserved = size
                        chunks.append(chunk)
                    if not message.get("more_body", False):
                        break
        except TimeoutError:
            raise HttpError(
                408,
                error_json(
                    f"Request body not received within {self.body_read_timeout_s:g} s"
                    f" ({size} bytes arrived)"
                ),
                [(b"connection", b"close")],
            ) from None
        # Joining copies the whole body: a large one is joined on a codec thread (bytes.join
        # also releases the GIL for large joins), a small one here (off_loop.run_sized's rule).
        body = chunks[0] if len(chunks) == 1 else await run_sized(size, b"".join, chunks)
        if encoding and encoding != b"identity":
            # Its cost grows with the (decompressed) body: never on the event loop.
            body = await run_off_loop(_decompress, body, encoding, limit)
            if reservation is not None:
                reservation.reserve(len(body))  # held beside the compressed body
        return body, header_length


def header(scope: Scope, name: bytes) -> str | None:
    """The first value of header `name` (lower case), or None."""
    for key, value in scope["headers"]:
        if key.lower() == name:
            return value.decode("latin-1")
    return None


def path_segment(raw: str) -> str:
    """A path segment as sent (latin-1 of its bytes) → the text it percent-encodes (UTF-8)."""
    if "%" not in raw and raw.isascii():
        return raw
    return unquote_to_bytes(raw.encode("latin-1")).decode("utf-8", errors="replace")


def path_version(text: str | None) -> int | None:
    """A path's version segment (any text: the routes leave it to this) as gRPC reads a
    `model_version`, so that both transports refuse the same text with the same 400."""
    return None if text is None else parse_version(path_segment(text))


def _decompress(body: bytes, encoding: bytes, limit: int) -> bytes:
    if encoding not in (b"gzip", b"x-gzip", b"deflate"):
        raise InvalidInput(f"unsupported Content-Encoding: {encoding.decode('latin-1')}")
    decompressor = zlib.decompressobj(_AUTO_HEADER)
    try:
        out = decompressor.decompress(body, limit + 1)
    except zlib.error as exc:
        raise InvalidInput(f"cannot decompress the {encoding.decode()} body: {exc}") from exc
    if len(out) > limit or decompressor.unconsumed_tail:
        raise too_large(limit)
    if not decompressor.eof:
        raise InvalidInput(f"the {encoding.decode()} body is truncated")
    return out
