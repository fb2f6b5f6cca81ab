"""KServe V2 inference over gRPC: an `inference.ModelInferRequest` becomes an `InferRequest`, an
`InferResponse` a `ModelInferResponse` (or its wire bytes, `response_to_wire`).

The rules both transports share (parameters, requested outputs, declared inputs) are
`protocols.v2`'s, run in the same order as for REST, so the same bad input gets the same message.
Inputs are decoded only once the signature has accepted their declaration."""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence

import numpy as np

from pyserving.errors import InvalidInput
from pyserving.platforms.signature import V2_TO_NUMPY, Signature
from pyserving.proto import grpc_service_pb2 as pb
from pyserving.protocols.request import (
    InferRequest,
    InferResponse,
    Limits,
    Reserve,
    decode_reserve,
    parse_version,
    strings_size,
)
from pyserving.protocols.tensors import (
    MAX_RANK,
    check_shape,
    decoded_size,
    encode_raw,
    raw_tensor,
    read_only,
)
from pyserving.protocols.v2 import (
    Declared,
    bool_parameter,
    check_declared_inputs,
    check_requested_output,
    declare_input,
    output_datatype,
    signature_parameter,
    timeout_deadline,
)
from pyserving.protocols.v2_wire import infer_response_bytes, packed_values

__all__ = ["request_from_proto", "response_to_proto", "response_to_wire"]

# datatype → the InferTensorContents field that carries it (FP16 has none: raw only)
_CONTENTS_FIELD = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}
_CONTENTS_FIELDS = tuple(sorted(set(_CONTENTS_FIELD.values())))


def request_from_proto(request: pb.ModelInferRequest, deadline: float | None) -> InferRequest:
    """A gRPC ModelInferRequest → the request (`deadline`: the client's, or None)."""
    # The order of REST's checks: the path's version first, then the body's.
    version = parse_version(request.model_version) if request.model_version else None
    parameters = _proto_parameters(request.parameters)
    bool_parameter(parameters, "binary_data_output", "request")
    deadline = timeout_deadline(parameters, deadline)
    names: list[str] = []
    # slices, not the containers: iterating a upb container ends in a raised (and formatted)
    # IndexError, a cost per loop that a slice's list does not have
    for item in request.outputs[:]:
        check_requested_output(item.name, names, _proto_parameters(item.parameters), False)
        names.append(item.name)
    decode = functools.partial(_decode_proto_inputs, request, decode_reserve.get())
    return InferRequest(
        request.model_name,
        decode,
        version,
        None,
        signature_parameter(parameters),
        names or None,
        deadline,
        request.id or None,
        _declared_size(request.inputs, request.raw_input_contents),
    )


def _declared_size(
    inputs: Sequence[pb.ModelInferRequest.InferInputTensor], raw: Sequence[bytes]
) -> int:
    """Bytes the inputs declare (unchecked): whether decoding them leaves the event loop. Data
    that does not match its declaration is refused before it is read; not ByteSize(), which
    walks every value on the loop. BYTES values count what arrived for them (`strings_size`
    of typed contents), which the declared element count says nothing of."""
    total = 0
    for i, item in enumerate(inputs[:]):
        dims = item.shape
        if len(dims) > MAX_RANK:
            continue  # refused when it is decoded; not worth multiplying here
        datatype = item.datatype if item.datatype in V2_TO_NUMPY else "BYTES"
        payload = 0
        if datatype == "BYTES":
            if i < len(raw):
                payload = len(raw[i])
            else:
                values = item.contents.bytes_contents
                payload = strings_size(len(values), values)
        total += decoded_size(datatype, max(math.prod(dims[:]), 0), payload)
    return total


def _proto_parameters(parameters: Mapping[str, pb.InferParameter]) -> dict[str, object]:
    """InferParameter values as the JSON form has them (an unset one is None)."""
    if not parameters:
        return {}
    values: dict[str, object] = {}
    for key, parameter in parameters.items():
        kind = parameter.WhichOneof("parameter_choice")
        values[key] = None if kind is None else getattr(parameter, kind)
    return values


def _decode_proto_inputs(
    request: pb.ModelInferRequest, reserve: Reserve | None, signature: Signature, limits: Limits
) -> dict[str, np.ndarray]:
    raw = request.raw_input_contents
    inputs = request.inputs
    if raw and len(raw) != len(inputs):
        raise InvalidInput(
            f"raw_input_contents has {len(raw)} entries but the request has {len(inputs)}"
            " inputs; give one entry per input, in the order of 'inputs'"
        )
    declared: dict[str, Declared] = {}
    for i, item in enumerate(inputs[:]):  # a slice: see request_from_proto
        # each field read once: a upb field read builds a new Python object every time
        name = item.name
        datatype = item.datatype
        what = f'input "{name[:80]}"'
        declare_input(what, name, declared, datatype, _proto_parameters(item.parameters))
        shape = check_shape(item.shape, what, limits)
        if raw:
            if item.HasField("contents"):
                raise InvalidInput(
                    f"{what}: contents field must not be specified when using raw_input_contents"
                )
            declared[name] = (what, datatype, shape, memoryview(raw[i]))
        else:
            if _CONTENTS_FIELD.get(datatype) is None:
                raise InvalidInput(
                    f"{what}: {datatype} data has no typed contents field; use raw_input_contents"
                )
            declared[name] = (what, datatype, shape, item.contents)
    counts = check_declared_inputs(declared, signature, limits, reserve)
    arrays: dict[str, np.ndarray] = {}
    for name, (what, datatype, shape, data) in declared.items():
        if isinstance(data, memoryview):
            arrays[name] = raw_tensor(datatype, shape, data, what)
        else:
            arrays[name] = _typed_contents(data, datatype, shape, counts[name], what)
    return read_only(arrays)


def _typed_contents(
    contents: pb.InferTensorContents, datatype: str, shape: tuple[int, ...], count: int, what: str
) -> np.ndarray:
    field = _CONTENTS_FIELD[datatype]
    values = getattr(contents, field)
    if len(values) != count:
        for other in _CONTENTS_FIELDS:
            if other != field and len(getattr(contents, other)):
                # data of another type: say so, as REST does for JSON data of the wrong type
                raise InvalidInput(
                    f"{what}: {datatype} data goes in contents.{field}, but the request has"
                    f" {len(getattr(contents, other))} values in contents.{other}"
                )
        raise InvalidInput(
            f"{what}: shape {list(shape)} needs {count} elements, data has {len(values)}"
        )
    if datatype == "BYTES":
        array = np.empty(count, dtype=object)
        array[:] = list(values)
        return array.reshape(shape)
    dtype = V2_TO_NUMPY[datatype]
    if dtype.kind == "f":  # FP32 and FP64 contents hold values of exactly that type
        packed = packed_values(contents, field, count * dtype.itemsize)
        if packed is not None:  # their wire bytes, not one Python float per value
            return raw_tensor(datatype, shape, packed, what)
        return np.array(values, dtype=dtype).reshape(shape)
    wide = np.array(values)
    if dtype.kind in "iu" and wide.size:
        info = np.iinfo(dtype)
        if wide.min() < info.min or wide.max() > info.max:
            raise InvalidInput(f"{what}: contents.{field} has values out of range for {datatype}")
    return wide.astype(dtype, copy=False).reshape(shape)


def response_to_proto(response: InferResponse) -> pb.ModelInferResponse:
    """The gRPC answer: every output's bytes in `raw_output_contents`, in order."""
    out = pb.ModelInferResponse(
        model_name=response.model, model_version=str(response.version), id=response.id or ""
    )
    for key, value in (response.parameters or {}).items():
        out.parameters[key].string_param = value
    raw = out.raw_output_contents
    for name, array in response.outputs.items():
        out.outputs.add(name=name, datatype=output_datatype(name, array), shape=array.shape)
        raw.append(encode_raw(array))
    return out


def response_to_wire(response: InferResponse) -> bytes:
    """`response_to_proto`'s wire bytes, written without building the message."""
    if response.parameters:
        return response_to_proto(response).SerializeToString()
    outputs = [
        (name, output_datatype(name, array), array.shape, encode_raw(array))
        for name, array in response.outputs.items()
    ]
    return infer_response_bytes(response.model, str(response.version), response.id or "", outputs)
