"""Wire tensors, checked before they are allocated: the rules every protocol shares.

A declared tensor (name, V2 datatype, shape) is checked in two steps, both before any array of it
exists. `check_shape` needs no signature: rank, non-negative dimensions, the element limit.
`check_declared` then holds it against the signature (the input exists, dtype, rank, fixed
dimensions) and the byte limit, with the same messages InferenceService's own validation gives.
What arrives must then match the declaration exactly (`raw_tensor`: the bytes received).

Raw tensors follow the V2 binary tensor format, which TF Serving's `tensor_content` and V2 gRPC's
`raw_input_contents` share: fixed-size types little-endian and row-major, BOOL one byte per
element, BYTES (V2 only) a 4-byte little-endian length before each element.
"""

from __future__ import annotations

import math
import struct
import sys
from collections.abc import Collection, Iterable, Sequence

import numpy as np

from pyserving.errors import InvalidInput
from pyserving.platforms.signature import V2_TO_NUMPY, Signature
from pyserving.protocols.request import Limits, Reserve

__all__ = [
    "MAX_RANK",
    "check_declared",
    "check_names",
    "check_shape",
    "decoded_size",
    "encode_raw",
    "mismatch_message",
    "raw_tensor",
    "read_only",
    "reserve_decoded",
]

#: the highest rank a request tensor may declare
MAX_RANK = 32
#: bytes one decoded BYTES element takes besides its payload: its reference in the object array
#: and the header of its `bytes` object (an empty one is 33 bytes on CPython)
BYTES_ELEMENT_SIZE = 8 + sys.getsizeof(b"")

_LENGTH = struct.Struct("<I")
# Bytes per element of each datatype when bounding a declaration (BYTES: see decoded_size).
_ITEM_SIZE: dict[str, int] = {
    name: BYTES_ELEMENT_SIZE if name == "BYTES" else dtype.itemsize
    for name, dtype in V2_TO_NUMPY.items()
}
# Little-endian dtypes for every fixed-size V2 datatype (BOOL is decoded through uint8).
_WIRE_DTYPES: dict[str, np.dtype] = {
    name: dtype.newbyteorder("<") for name, dtype in V2_TO_NUMPY.items() if name != "BYTES"
}


def check_shape(dims: Sequence[int], what: str, limits: Limits) -> tuple[int, ...]:
    """`dims` as a shape, refused when its rank, a negative dimension or its element count
    (the non-zero dimensions' product too: numpy cannot shape `[0, 2**40, 2**40]`) is out of
    bounds. Returns the shape."""
    if len(dims) > MAX_RANK:
        raise InvalidInput(f"{what}: rank {len(dims)} exceeds the limit of {MAX_RANK}")
    shape = tuple(dims[:])  # a slice: a protobuf container's iteration ends in a raised error
    if shape and min(shape) < 0:
        raise InvalidInput(
            f"{what}: shape {list(shape)} has a negative dimension; dimensions are non-negative"
        )
    limit = limits.max_tensor_elements
    count = math.prod(shape)
    if count > limit or (not count and math.prod(d for d in shape if d) > limit):
        raise InvalidInput(
            f"{what}: shape {list(shape)} would exceed the limit of {limit} elements"
        )
    return shape


def check_names(signature: Signature, names: Collection[str]) -> None:
    """Refuse a set of distinct input names that is not the signature's (TF Serving's wording)."""
    if len(names) == len(signature.inputs):
        lookup = signature.input
        for name in names:
            if lookup(name) is None:
                break
        else:
            return
    raise InvalidInput(mismatch_message(names, signature.input_names))


def mismatch_message(sent: Iterable[str], wanted: Iterable[str]) -> str:
    """TF Serving's text (predict_util.cc) for inputs that are not the signature's, names sorted."""
    sent_sorted = sorted(sent)
    wanted_sorted = sorted(wanted)
    extra = [n for n in sent_sorted if n not in wanted_sorted]
    missing = [n for n in wanted_sorted if n not in sent_sorted]
    return (
        f"input size does not match signature: {len(sent_sorted)}!={len(wanted_sorted)}"
        f" len({{{','.join(sent_sorted)}}}) != len({{{','.join(wanted_sorted)}}})."
        f" Sent extra: {{{','.join(extra)}}}. Missing but required: {{{','.join(missing)}}}."
    )


def decoded_size(datatype: str, count: int, payload: int = 0) -> int:
    """Bytes `count` elements of `datatype` take once decoded; BYTES elements at their real cost
    (`BYTES_ELEMENT_SIZE` each, plus `payload`: the bytes of their values, where known)."""
    if datatype == "BYTES":
        return count * BYTES_ELEMENT_SIZE + payload
    return count * _ITEM_SIZE[datatype]


def reserve_decoded(reserve: Reserve | None, size: int) -> None:
    """Count `size` decoded bytes in the request's in-flight budget (`decode_reserve`) before
    they are built; raises Unavailable when the budget cannot hold them."""
    if reserve is not None and size > 0:
        reserve(size)


def check_declared(
    signature: Signature,
    name: str,
    datatype: str,
    shape: tuple[int, ...],
    limits: Limits,
    payload: int = 0,
) -> int:
    """Hold a declared input against `signature` and the byte limit (its `decoded_size`, with
    `payload` bytes of BYTES values); returns its element count.

    The mismatch message is InferenceService's, so a tensor refused here reads as one refused
    after decoding would.
    """
    spec = signature.input(name)
    if spec is None:
        raise InvalidInput(mismatch_message([name], signature.input_names))
    wanted = spec.shape
    matches = datatype == spec.datatype and len(shape) == len(wanted)
    if matches:
        for want, got in zip(wanted, shape, strict=True):
            if want != got and want != -1:
                matches = False
                break
    if not matches:
        raise InvalidInput(
            f'input "{name}": expected {spec.describe()}, got {datatype} {list(shape)}'
        )
    count = math.prod(shape)
    size = decoded_size(datatype, count, payload)
    if size > limits.max_tensor_bytes:
        raise InvalidInput(
            f'input "{name}": {datatype} {list(shape)} takes {size} bytes, over the limit of'
            f" {limits.max_tensor_bytes} bytes per tensor"
        )
    return count


def raw_tensor(datatype: str, shape: tuple[int, ...], data: memoryview, what: str) -> np.ndarray:
    """The tensor in `data` (exactly its bytes), without copying where alignment allows.

    The array is read-only (see `read_only`). Raises InvalidInput when the byte count does not
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
            f"{what}: {len(data)} bytes of data do not match {datatype} {list(shape)}"
            f" ({expected} bytes)"
        )
    array: np.ndarray
    if datatype == "BOOL":
        array = np.frombuffer(data, np.uint8) != 0
        return array.reshape(shape)
    array = np.frombuffer(data, dtype).reshape(shape)
    if not array.flags.aligned:
        # A JSON header has any length, so an offset can be misaligned; some runtimes need
        # aligned buffers, and a copy of a misaligned tensor is the cheaper fix.
        array = array.copy()
        array.flags.writeable = False
    return array


def read_only(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """`arrays`, each made read-only (a flag, no copy): every decoded input is, whatever its size,
    encoding and transport, since many are views of the request's bytes and copying those to
    make them writable would cost every request. Returns `arrays`."""
    for array in arrays.values():
        array.flags.writeable = False
    return arrays


def encode_raw(array: np.ndarray) -> bytes:
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
