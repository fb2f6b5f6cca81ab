"""The one exception tree of pyserving and the one table from error code to HTTP / gRPC status.

Every client-visible failure is a ServingError. Each subclass carries a Code named after gRPC's
canonical codes; `Code.http_status` follows TF Serving's `ToHTTPStatusCode` table and
docs/errors.md.
This module imports nothing from the package (and not grpc): the gRPC layer maps `Code.name` to
`grpc.StatusCode` at its own edge.
"""

from __future__ import annotations

import enum


class Code(enum.IntEnum):
    """Canonical status codes (numbers as gRPC and tensorflow.error.Code use them)."""

    OK = 0
    CANCELLED = 1
    UNKNOWN = 2
    INVALID_ARGUMENT = 3
    DEADLINE_EXCEEDED = 4
    NOT_FOUND = 5
    ALREADY_EXISTS = 6
    PERMISSION_DENIED = 7
    RESOURCE_EXHAUSTED = 8
    FAILED_PRECONDITION = 9
    ABORTED = 10
    OUT_OF_RANGE = 11
    UNIMPLEMENTED = 12
    INTERNAL = 13
    UNAVAILABLE = 14
    DATA_LOSS = 15
    UNAUTHENTICATED = 16

    @property
    def http_status(self) -> int:
        """The HTTP status TF Serving's REST API answers with for this code."""
        return _HTTP_STATUS[self]


_HTTP_STATUS: dict[Code, int] = {
    Code.OK: 200,
    Code.CANCELLED: 499,
    Code.UNKNOWN: 500,
    Code.INVALID_ARGUMENT: 400,
    Code.DEADLINE_EXCEEDED: 504,
    Code.NOT_FOUND: 404,
    Code.ALREADY_EXISTS: 409,
    Code.PERMISSION_DENIED: 403,
    Code.RESOURCE_EXHAUSTED: 429,
    Code.FAILED_PRECONDITION: 400,
    Code.ABORTED: 409,
    Code.OUT_OF_RANGE: 400,
    Code.UNIMPLEMENTED: 501,
    Code.INTERNAL: 500,
    Code.UNAVAILABLE: 503,
    Code.DATA_LOSS: 500,
    Code.UNAUTHENTICATED: 401,
}


class ServingError(Exception):
    """Base of every client-visible error: `.code` and `.message` (the text the client sees)."""

    code: Code = Code.UNKNOWN

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    @property
    def http_status(self) -> int:
        return self.code.http_status


class InvalidInput(ServingError):
    """Bad tensor, dtype, shape or JSON in a request."""

    code = Code.INVALID_ARGUMENT


class NotFound(ServingError):
    """Unknown model, version, label or signature."""

    code = Code.NOT_FOUND


class ServableNotFound(NotFound):
    """No AVAILABLE version answers `name` (at `version`; None: the latest): each protocol words
    it its own way (TF Serving's text is the message; KServe V2 says it as Triton does)."""

    def __init__(self, message: str, name: str, version: int | None) -> None:
        super().__init__(message)
        self.name = name
        self.version = version


class PermissionDenied(ServingError):
    """The operation is disabled on this server (e.g. model control)."""

    code = Code.PERMISSION_DENIED


class Unauthenticated(ServingError):
    """A control call without the right token (`--control-token-file`)."""

    code = Code.UNAUTHENTICATED


class Unavailable(ServingError):
    """Queue full, or the server is shutting down."""

    code = Code.UNAVAILABLE


class DeadlineExceeded(ServingError):
    """The request's deadline passed before it could be answered."""

    code = Code.DEADLINE_EXCEEDED


class ResourceExhausted(ServingError):
    """The memory budget does not fit a load, or TF batching's queue timeout."""

    code = Code.RESOURCE_EXHAUSTED


class ModelMemoryExhausted(ResourceExhausted):
    """An on-demand model cannot load: nothing can be unloaded to fit the memory budget.

    RESOURCE_EXHAUSTED over gRPC, but 503 over REST (not 429): the server, not the client, is
    out of room, and a retry may find a model unloaded by then (INTERFACE §13).
    """

    @property
    def http_status(self) -> int:
        return 503


class FailedPrecondition(ServingError):
    """An illegal lifecycle request (duplicate load, unload of a version not loaded)."""

    code = Code.FAILED_PRECONDITION


class Unimplemented(ServingError):
    """The API exists but no loaded platform supports it (e.g. classify on ONNX)."""

    code = Code.UNIMPLEMENTED


class Cancelled(ServingError):
    """The work was cancelled (a load whose version stopped being aspired)."""

    code = Code.CANCELLED


class ModelError(ServingError):
    """The model raised while loading or running; carries the model's own message."""

    code = Code.INTERNAL
