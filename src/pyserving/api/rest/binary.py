"""The KServe V2 binary tensor data extension: framing, zero-copy decoding, encoding.

A request or response body is a JSON header of `Inference-Header-Content-Length` bytes followed by
the raw tensors of the binary inputs (outputs), in the order they are listed. Fixed-size types are
little-endian, row-major; BOOL is one byte per element; BYTES is, per element, a 4-byte
little-endian length followed by the bytes (tritonclient's `serialize_byte_tensor`).
"""

from __future__ import annotations

import math
import struct

import numpy as np

from pyserving.errors import InvalidInput
from pyserving.platforms.signature import V2_TO_NUMPY

__all__ = [
    "HEADER_LENGTH",
    "decode_tensor",
    "encode_tensor",
    "split_body",
]

#: the header naming the JSON part's length (lower case, as ASGI delivers header names)
HEADER_LENGTH = b"inference-header-content-length"

_LENGTH = struct.Struct("<I")
# Little-endian dtypes for every fixed-size V2 datatype (BOOL is decoded through uint8).
_WIRE_DTYPES: dict[str, np.dtype] = {
    name: dtype.newbyteorder("<") for name, dtype in V2_TO_NUMPY.items() if name != "BYTES"
}


def split_body(body: bytes, header_length: bytes | None) -> tuple[memoryview, memoryview]:
    """Split a body into (JSON header, binary section) by the Inference-Header-Content-Length value.

    Without the header the whole body is JSON. Raises InvalidInput for a value that is not a
    number, is negative or exceeds the body, or is 0 (raw binary requests are not supported).
    """
    view = memoryview(body)
    if header_length is None:
        return view, view[len(view) :]
    text = header_length.strip()
    if not text.isdigit():
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


def decode_tensor(datatype: str, shape: tuple[int, ...], data: memoryview, what: str) -> np.ndarray:
    """The tensor in `data` (exactly its bytes), without copying where alignment allows.

    Arrays over request bytes are read-only. Raises InvalidInput when the byte count does not
    match `shape` and `datatype`, or for a malformed BYTES tensor.
    """
    count = math.prod(shape)
    if datatype == "BYTES":
        return _decode_bytes(data, count, what).reshape(shape)
    dtype = _WIRE_DTYPES.get(datatype)
    if dtype is None:
        raise InvalidInput(f'{what}: unsupported datatype "{datatype}"')
    expected = count * dtype.itemsize
    if len(data) != expected:
        raise InvalidInput(
            f"{what}: binary_data_size {len(data)} does not match {datatype} {list(shape)}"
            f" ({expected} bytes)"
        )
    if datatype == "BOOL":
        return (np.frombuffer(data, np.uint8) != 0).reshape(shape)
    array = np.frombuffer(data, dtype).reshape(shape)
    if not array.flags.aligned:
        # The JSON header has any length, so an offset can be misaligned; some runtimes need
        # aligned buffers, and a copy of a misaligned tensor is the cheaper fix.
        array = array.copy()
    return array


def encode_tensor(array: np.ndarray) -> bytes:
    """The wire bytes of one output tensor (little-endian, row-major; BYTES length-prefixed)."""
    if array.dtype.kind in "OSU":
        return _encode_bytes(array)
    if array.dtype.byteorder == ">":
        array = array.astype(array.dtype.newbyteorder("<"))
    return np.ascontiguousarray(array).tobytes()


def _decode_bytes(data: memoryview, count: int, what: str) -> np.ndarray:
    total = len(data)
    if count * _LENGTH.size > total:
        raise InvalidInput(
            f"{what}: {total} bytes cannot hold {count} BYTES elements (each needs a 4-byte"
            " length prefix)"
        )
    out = np.empty(count, dtype=object)
    unpack = _LENGTH.unpack_from
    offset = 0
    for i in range(count):
        if offset + 4 > total:
            raise InvalidInput(f"{what}: BYTES element {i} has no length prefix (data too short)")
        (size,) = unpack(data, offset)
        offset += 4
        if offset + size > total:
            raise InvalidInput(
                f"{what}: BYTES element {i} declares {size} bytes but only {total - offset} remain"
            )
        out[i] = bytes(data[offset : offset + size])
        offset += size
    if offset != total:
        raise InvalidInput(f"{what}: {total - offset} bytes left over after {count} BYTES elements")
    return out


def _encode_bytes(array: np.ndarray) -> bytes:
    pack = _LENGTH.pack
    parts: list[bytes] = []
    for value in array.ravel():
        if isinstance(value, str):
            value = value.encode()
        elif not isinstance(value, bytes):
            value = bytes(value)
        parts.append(pack(len(value)))
        parts.append(value)
    return b"".join(parts)


def _show(value: bytes) -> str:
    return repr(value.decode("latin-1")[:40])
