"""Protobuf wire bytes of the V2 gRPC hot path, written and read without building messages.

Building a `ModelInferResponse` message, then serializing it, costs the event loop several
microseconds per request; `infer_response_bytes` writes the same wire bytes directly (proto3
rules: fields in number order, empty strings left out, `shape` packed), with each output's
descriptor and each (model, version)'s name fields encoded once and cached. `packed_values`
reads FP32 and FP64 typed contents as the packed little-endian array they are on the wire,
instead of converting one Python float per element.
"""

from __future__ import annotations

from collections.abc import Sequence

from pyserving.proto import grpc_service_pb2 as pb

__all__ = ["infer_response_bytes", "packed_values"]

_LENGTH_DELIMITED = 2
_ONE_BYTE = tuple(bytes((i,)) for i in range(0x80))  # the varints of 0..127
#: the most entries each cache below holds before it starts again (bounds model churn)
_MAX_CACHED_OUTPUTS = 4096
#: (name, datatype, shape) → the encoded `outputs` entry of a ModelInferResponse
_output_entries: dict[tuple[str, str, tuple[int, ...]], bytes] = {}
#: (model, version) → the encoded model_name and model_version fields
_model_fields: dict[tuple[str, str], bytes] = {}

_RESPONSE = pb.ModelInferResponse.DESCRIPTOR.fields_by_name
_OUTPUT = pb.ModelInferResponse.InferOutputTensor.DESCRIPTOR.fields_by_name
_CONTENTS = pb.InferTensorContents.DESCRIPTOR.fields_by_name


def _varint(value: int) -> bytes:
    """`value` (non-negative, below 2^64) as a protobuf varint."""
    if value < 0x80:
        return _ONE_BYTE[value]
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _tag(number: int) -> bytes:
    return _varint(number << 3 | _LENGTH_DELIMITED)


def _field(tag: bytes, payload: bytes) -> bytes:
    """One length-delimited field: its tag, the payload's length, the payload."""
    return tag + _varint(len(payload)) + payload


def _string_field(tag: bytes, text: str) -> bytes:
    """A proto3 string field: nothing at all when it is empty (the default is never written)."""
    return _field(tag, text.encode()) if text else b""


_MODEL_NAME = _tag(_RESPONSE["model_name"].number)
_MODEL_VERSION = _tag(_RESPONSE["model_version"].number)
_ID = _tag(_RESPONSE["id"].number)
_OUTPUTS = _tag(_RESPONSE["outputs"].number)
_RAW_OUTPUT = _tag(_RESPONSE["raw_output_contents"].number)
_OUTPUT_NAME = _tag(_OUTPUT["name"].number)
_OUTPUT_DATATYPE = _tag(_OUTPUT["datatype"].number)
_OUTPUT_SHAPE = _tag(_OUTPUT["shape"].number)


def _output_entry(name: str, datatype: str, shape: tuple[int, ...]) -> bytes:
    key = (name, datatype, shape)
    entry = _output_entries.get(key)
    if entry is None:
        tensor = _string_field(_OUTPUT_NAME, name) + _string_field(_OUTPUT_DATATYPE, datatype)
        if shape:
            tensor += _field(_OUTPUT_SHAPE, b"".join(_varint(d) for d in shape))
        entry = _field(_OUTPUTS, tensor)
        if len(_output_entries) >= _MAX_CACHED_OUTPUTS:
            _output_entries.clear()
        _output_entries[key] = entry  # whole-entry assignment: safe without a lock under the GIL
    return entry


def infer_response_bytes(
    model: str,
    version: str,
    request_id: str,
    outputs: Sequence[tuple[str, str, tuple[int, ...], bytes]],
) -> bytes:
    """The wire bytes of a ModelInferResponse without parameters: `outputs` are (name, datatype,
    shape, raw bytes), in order, the raw bytes going in `raw_output_contents`."""
    fields = _model_fields.get((model, version))
    if fields is None:
        fields = _string_field(_MODEL_NAME, model) + _string_field(_MODEL_VERSION, version)
        if len(_model_fields) >= _MAX_CACHED_OUTPUTS:
            _model_fields.clear()
        _model_fields[model, version] = fields
    parts = [fields, _string_field(_ID, request_id)]
    for name, datatype, shape, _ in outputs:
        parts.append(_output_entry(name, datatype, shape))
    for *_, raw in outputs:
        parts += (_RAW_OUTPUT, _varint(len(raw)), raw)
    return b"".join(parts)


#: typed contents field → its tag; only fixed-width fields (floats, doubles) are packed as the
#: raw little-endian values (integers are varints)
_PACKED_TAGS = {name: _tag(_CONTENTS[name].number) for name in ("fp32_contents", "fp64_contents")}


def packed_values(contents: pb.InferTensorContents, field: str, nbytes: int) -> memoryview | None:
    """The `nbytes` little-endian bytes of `contents.<field>` when that field (fp32_contents or
    fp64_contents) is the only one set, else None (read the values one by one)."""
    tag = _PACKED_TAGS.get(field)
    if tag is None or nbytes <= 0:
        return None
    wire = contents.SerializeToString()
    prefix = tag + _varint(nbytes)
    if len(wire) != len(prefix) + nbytes or not wire.startswith(prefix):
        return None  # other fields are set too
    return memoryview(wire)[len(prefix) :]
