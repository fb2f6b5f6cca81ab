"""The KServe V2 binary tensor data extension's REST framing: where the JSON header ends.

A request or response body is a JSON header of `Inference-Header-Content-Length` bytes followed by
the raw tensors of the binary inputs (outputs), in the order they are listed; the tensors
themselves are `pyserving.protocols.tensors`' raw format.
"""

from __future__ import annotations

from pyserving.errors import InvalidInput

__all__ = ["HEADER_LENGTH", "split_body"]

#: the header naming the JSON part's length (lower case, as ASGI delivers header names)
HEADER_LENGTH = b"inference-header-content-length"


def split_body(body: bytes, header_length: bytes | None) -> tuple[memoryview, memoryview]:
    """Split a body into (JSON header, binary section) by the Inference-Header-Content-Length value.

    Without the header the whole body is JSON. Raises InvalidInput for a value that is not a
    number, is negative or exceeds the body, or is 0 (raw binary requests are not supported).
    """
    view = memoryview(body)
    if header_length is None:
        return view, view[len(view) :]
    text = header_length.strip()
    if not (text.isdigit() and len(text) <= 19):
        raise InvalidInput(
            f"Inference-Header-Content-Length must be a non-negative integer, got {_show(text)}"
        )
    length = int(text)
    if length > len(body):
        raise InvalidInput(
            f"Inference-Header-Content-Length {length} exceeds the body length {len(body)}"
        )
    if length == 0:
        raise InvalidInput(
            "Inference-Header-Content-Length 0 (a raw binary request) is not supported: send a"
            " JSON header describing the inputs"
        )
    return view[:length], view[length:]


def _show(value: bytes) -> str:
    return repr(value.decode("latin-1")[:40])
