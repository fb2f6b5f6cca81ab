"""The protocol-neutral request and response every codec translates its wire format to and from.

A codec (TF Serving or KServe V2, REST or gRPC, or warmup) builds one `InferRequest` and hands it
to `InferenceService.infer`, which answers with one `InferResponse`. The request's inputs are
either ready arrays or a `Decoder`: wire tensors are decoded only once the signature is known, so
that every declared shape and dtype is checked against it (and against the limits) before any
array is built.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from pyserving.errors import InvalidInput
from pyserving.platforms.signature import Signature

__all__ = [
    "MAX_VERSION_DIGITS",
    "Decoder",
    "InferRequest",
    "InferResponse",
    "Limits",
    "Reserve",
    "decode_reserve",
    "outputs_size",
    "parse_version",
    "strings_size",
]

#: the most digits a version number may have: versions are int64 (TF Serving's ModelSpec)
MAX_VERSION_DIGITS = 19
_MAX_VERSION = 2**63 - 1
#: string (BYTES) values of at most this many elements are measured one by one; more count as
#: `_UNMEASURED_SIZE` (measuring them would itself be work that grows on the event loop)
_MEASURED_STRINGS = 64
_UNMEASURED_SIZE = 1 << 30


class Limits(Protocol):
    """What decoding needs to know of the server's limits (`InferenceOptions` has both)."""

    @property
    def max_tensor_elements(self) -> int:
        """The most elements one input tensor may have."""
        ...

    @property
    def max_tensor_bytes(self) -> int:
        """The most bytes one input tensor may take once decoded (`--max-request-bytes`)."""
        ...


#: counts bytes a decoder is about to build in the server's in-flight budget before it builds
#: them; raises Unavailable when the budget cannot hold them
Reserve = Callable[[int], None]
#: the current request's `Reserve`, set by the transport edge that answers it (None: nothing is
#: counted: warmup, in-process callers). A codec reads it when it builds the request's decoder,
#: so decoding counts against the request that asked for it on whatever thread it runs.
decode_reserve: ContextVar[Reserve | None] = ContextVar("pyserving_decode_reserve", default=None)

#: (signature, limits) → the request's arrays, checked against both before any is allocated
Decoder = Callable[[Signature, Limits], dict[str, np.ndarray]]


@dataclass(slots=True)
class InferRequest:
    """One inference request, whatever protocol and transport it came in on."""

    model: str
    #: ready arrays (warmup, in-process callers) or wire tensors to decode against the signature
    inputs: dict[str, np.ndarray] | Decoder
    version: int | None = None
    label: str | None = None
    #: None or "" = "serving_default" (or the only signature)
    signature_name: str | None = None
    #: requested output names, in answer order; None = all of the signature's outputs
    outputs: Sequence[str] | None = None
    #: a `time.monotonic()` instant covering queueing and execution; None = none
    deadline: float | None = None
    #: the client's request id, echoed in the answer (V2)
    id: str | None = None
    #: bytes the request took on the wire: decoding that grows with it leaves the event loop
    size: int = 0


@dataclass(slots=True)
class InferResponse:
    """The answer to one InferRequest: who answered and the requested outputs, in order."""

    model: str
    version: int
    signature_name: str
    outputs: dict[str, np.ndarray]
    id: str | None = None
    #: response parameters (V2 `parameters`), e.g. the versions a pipeline's steps ran on
    parameters: Mapping[str, str] | None = None

    @property
    def nbytes(self) -> int:
        """About the bytes encoding the outputs works through (BYTES outputs: `strings_size`):
        what decides whether they are encoded off the event loop."""
        return outputs_size(self.outputs)


def outputs_size(outputs: Mapping[str, np.ndarray]) -> int:
    """About the bytes encoding `outputs` works through (BYTES outputs: `strings_size`)."""
    return sum(
        strings_size(array.size, array.flat) if array.dtype.kind == "O" else array.nbytes
        for array in outputs.values()
    )


def strings_size(count: int, values: Iterable[object]) -> int:
    """About the bytes of `count` string values (an object array's elements, a protobuf's repeated
    bytes): an object array holds pointers, so a few values are measured and many are taken as
    large (1 GiB) without being walked. Sizes work, to decide whether it leaves the event loop."""
    if count > _MEASURED_STRINGS:
        return _UNMEASURED_SIZE
    return sum(len(value) if isinstance(value, bytes | str) else 8 for value in values)


def parse_version(text: str) -> int:
    """A version number from a path or a V2 `model_version` field: ASCII digits only, at most
    MAX_VERSION_DIGITS of them, within int64. Raises InvalidInput otherwise (a Unicode digit or
    a 4,300-digit number is a bad request, not an unknown version and not a crash)."""
    if not (0 < len(text) <= MAX_VERSION_DIGITS and text.isascii() and text.isdigit()):
        raise InvalidInput(
            f"model version must be a non-negative integer of at most {MAX_VERSION_DIGITS}"
            f' digits, got "{text[:40]}"'
        )
    version = int(text)
    if version > _MAX_VERSION:
        raise InvalidInput(f"model version {text} exceeds the largest version, 2^63 - 1")
    return version
