"""What the REST routes answer: a (status, body, headers) triple with a JSON body, or one of the
errors the REST layer decides on its own (404, 405, 408, 413) rather than a ServingError."""

from __future__ import annotations

import orjson

from pyserving.api.rest import generate

JSON = b"application/json"
OCTET_STREAM = b"application/octet-stream"
NOT_FOUND = orjson.dumps({"error": "Not Found"})
METHOD_NOT_ALLOWED = orjson.dumps({"error": "Method Not Allowed"})

Headers = list[tuple[bytes, bytes]]
#: a body is bytes, or an event stream the app sends part by part (`/generate_stream`)
Response = tuple[int, "bytes | generate.EventStream", Headers]


class HttpError(Exception):
    """A response the REST layer decides on its own (404, 405, 413), not a ServingError."""

    def __init__(self, status: int, body: bytes, headers: Headers | None = None) -> None:
        super().__init__(status)
        self.status = status
        self.body = body
        self.headers = headers or []


class Disconnected(Exception):
    """The client went away before sending its whole body, or the listener answered for us (a
    malformed body: `status`): answer nothing."""

    def __init__(self, status: int = 0) -> None:
        super().__init__(status)
        self.status = status


def ok(body: bytes) -> Response:
    """200 with a JSON body."""
    return 200, body, [(b"content-type", JSON)]


def error_json(message: str) -> bytes:
    """The body of every error answer: `{"error": message}`."""
    return orjson.dumps({"error": message})


def require_method(method: str, allowed: str) -> None:
    """Raises HttpError(405) unless `method` is `allowed`."""
    if method != allowed:
        raise HttpError(405, METHOD_NOT_ALLOWED, [(b"allow", allowed.encode())])


def too_large(limit: int) -> HttpError:
    """The 413 for a body over `limit` bytes."""
    # Closing the connection spares reading the rest of a body nobody will use.
    return HttpError(
        413,
        error_json(f"Request body exceeds the limit of {limit} bytes"),
        [(b"connection", b"close")],
    )
