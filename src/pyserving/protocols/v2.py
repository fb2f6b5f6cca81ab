"""KServe V2 (Open Inference Protocol) inference: its rules, shared by both transports, and its
REST codec (a JSON document plus binary tensors).

Pure translation (docs/rest-api.md, grpc-api.md): a request becomes an `InferRequest`, an
`InferResponse` a JSON body (gRPC messages: `protocols.v2_grpc`; metadata, config and repository
answers: `protocols.v2_metadata`). Both transports run the checks here in the same order, so the
same bad input gets the same message. Inputs are declared first (name, datatype, shape, where the
data is) and decoded only once the signature has accepted the declaration."""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Container, Mapping, Sequence
from types import MappingProxyType
from typing import Any

import numpy as np
import orjson

from pyserving.errors import InvalidInput, ModelError
from pyserving.platforms.signature import NUMPY_TO_V2, V2_TO_NUMPY, Signature
from pyserving.proto import grpc_service_pb2 as pb
from pyserving.protocols.json_tensor import bytes_to_json, dumps, to_array
from pyserving.protocols.request import (
    InferRequest,
    InferResponse,
    Limits,
    Reserve,
    decode_reserve,
    parse_version,
)
from pyserving.protocols.tensors import (
    check_declared,
    check_names,
    check_shape,
    decoded_size,
    encode_raw,
    raw_tensor,
    read_only,
    reserve_decoded,
)

__all__ = [
    "Declared",
    "bool_parameter",
    "check_declared_inputs",
    "check_requested_output",
    "declare_input",
    "json_parameters",
    "output_datatype",
    "parse_version",
    "request_from_json",
    "response_to_json",
    "signature_parameter",
    "timeout_deadline",
]

#: the largest V2 integer parameter (InferParameter.int64_param)
_MAX_INT64 = 2**63 - 1
_NO_PARAMETERS: Mapping[str, object] = MappingProxyType({})
#: (message subject, datatype, shape, data): the data is a memoryview (raw bytes), a JSON value,
#: or an `InferTensorContents` message
Declared = tuple[str, str, tuple[int, ...], Any]


# --- requests ------------------------------------------------------------------------------------


def request_from_json(
    model: str,
    version: int | None,
    document: object,
    binary: memoryview,
    deadline: float | None,
    max_json_depth: int,
) -> tuple[InferRequest, list[bool] | None, bool]:
    """A parsed REST infer body → (request, per requested output whether it goes binary or None
    for all outputs, the `binary_data_output` default). `binary` is the body after the JSON."""
    if not isinstance(document, dict):
        raise InvalidInput("inference request must be a JSON object")
    request_id = document.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise InvalidInput("'id' must be a string")
    parameters = json_parameters(document.get("parameters"), "request")
    binary_default = bool_parameter(parameters, "binary_data_output", "request")
    deadline = timeout_deadline(parameters, deadline)
    inputs = document.get("inputs")
    if not isinstance(inputs, list):
        raise InvalidInput("'inputs' must be a list of input tensors")
    outputs = document.get("outputs")
    names: list[str] | None = None
    flags: list[bool] | None = None
    if outputs is not None:
        if not isinstance(outputs, list):
            raise InvalidInput("'outputs' must be a list of requested outputs")
        names, flags = [], []
        for i, item in enumerate(outputs):
            if not isinstance(item, dict) or not isinstance(item.get("name"), str):
                raise InvalidInput(f"requested output {i}: must be an object with a string 'name'")
            name = item["name"]
            flags.append(
                check_requested_output(name, names, item.get("parameters"), binary_default)
            )
            names.append(name)
    decode = functools.partial(
        _decode_json_inputs, inputs, binary, max_json_depth, decode_reserve.get()
    )
    signature_name = signature_parameter(parameters)
    request = InferRequest(
        model, decode, version, None, signature_name, names, deadline, request_id
    )
    return request, flags, binary_default


def json_parameters(value: object, what: str) -> dict[str, object]:
    """A JSON body's `parameters` object (`what` names its owner in the message); {} if absent."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidInput(f"{what}: 'parameters' must be an object")
    return value


def bool_parameter(parameters: Mapping[str, object], key: str, what: str) -> bool:
    value = parameters.get(key, False)
    if not isinstance(value, bool):
        raise InvalidInput(f"{what}: parameter '{key}' must be true or false, got {_show(value)}")
    return value


def signature_parameter(parameters: Mapping[str, object]) -> str | None:
    """The `signature_name` parameter (our extension, as TF Serving's field): None = default."""
    name = parameters.get("signature_name")
    if name is not None and not isinstance(name, str):
        raise InvalidInput(f"parameter 'signature_name' must be a string, got {_show(name)}")
    return name


def timeout_deadline(parameters: Mapping[str, object], deadline: float | None) -> float | None:
    """The earlier of the transport's deadline and the V2 `timeout` parameter (microseconds)."""
    timeout_us = parameters.get("timeout")
    if timeout_us is None:
        return deadline
    if type(timeout_us) is not int or not 0 <= timeout_us <= _MAX_INT64:
        # JSON parsers read integers past 64 bits as floats: show them as the integer sent
        shown = timeout_us
        if type(shown) is float and shown.is_integer():
            shown = int(shown)
        raise InvalidInput(
            "parameter 'timeout' must be a non-negative integer (microseconds) of at most"
            f" 2^63 - 1, got {_show(shown)}"
        )
    own = time.monotonic() + timeout_us / 1e6
    return own if deadline is None else min(own, deadline)


def check_requested_output(
    name: str, seen: Sequence[str], parameters: object, binary_default: bool
) -> bool:
    """Check one requested output; returns whether it goes out binary (REST)."""
    what = f'output "{name[:80]}"'
    if name in seen:
        raise InvalidInput(f"{what} is requested more than once")
    parameters = json_parameters(parameters, what)
    if parameters.get("classification"):
        raise InvalidInput(f"{what}: the classification extension is not supported")
    if parameters.get("shared_memory_region") is not None:
        raise InvalidInput(f"{what}: shared memory is not supported")
    binary = parameters.get("binary_data", binary_default)
    if not isinstance(binary, bool):
        raise InvalidInput(f"{what}: parameter 'binary_data' must be true or false")
    return binary


def declare_input(
    what: str, name: str, seen: Container[str], datatype: object, parameters: Mapping[str, object]
) -> str:
    """The rules every input meets before its shape is read (`what` names it in messages);
    returns its datatype."""
    if name in seen:
        raise InvalidInput(f"{what} appears more than once")
    if parameters.get("shared_memory_region") is not None:
        raise InvalidInput(f"{what}: shared memory is not supported")
    if not isinstance(datatype, str) or datatype not in V2_TO_NUMPY:
        raise InvalidInput(f"{what}: unsupported datatype {_show(datatype)}")
    return datatype


def _decode_json_inputs(
    items: list[object],
    binary: memoryview,
    max_depth: int,
    reserve: Reserve | None,
    signature: Signature,
    limits: Limits,
) -> dict[str, np.ndarray]:
    declared: dict[str, Declared] = {}
    offset = 0
    for i, item in enumerate(items):
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise InvalidInput(f"input {i}: must be an object with a string 'name'")
        name = item["name"]
        what = f'input "{name[:80]}"'
        parameters = item.get("parameters")
        parameters = _NO_PARAMETERS if parameters is None else json_parameters(parameters, what)
        datatype = declare_input(what, name, declared, item.get("datatype"), parameters)
        dims = item.get("shape")
        if type(dims) is not list or any(type(d) is not int for d in dims):
            raise InvalidInput(
                f"{what}: 'shape' must be a list of non-negative integers, got {_show(dims)}"
            )
        shape = check_shape(dims, what, limits)
        size = parameters.get("binary_data_size")
        if size is not None:
            if type(size) is not int or size < 0:
                raise InvalidInput(f"{what}: binary_data_size must be a non-negative integer")
            if "data" in item:
                raise InvalidInput(f"{what}: has both 'data' and a binary_data_size parameter")
            left = len(binary) - offset
            if size > left:
                raise InvalidInput(
                    f"{what}: binary_data_size {size} exceeds the {left} bytes of binary data"
                    " left (check Inference-Header-Content-Length)"
                )
            declared[name] = (what, datatype, shape, binary[offset : offset + size])
            offset += size
        elif "data" in item:
            if datatype == "FP16":
                raise InvalidInput(
                    f"{what}: FP16 data cannot be sent as JSON; use the binary tensor data"
                    " extension"
                )
            declared[name] = (what, datatype, shape, item["data"])
        else:
            raise InvalidInput(f"{what}: has neither 'data' nor a binary_data_size parameter")
    if offset != len(binary):
        raise InvalidInput(
            f"binary data: {len(binary) - offset} bytes after the last binary input are not"
            " described by any input's binary_data_size"
        )
    counts = check_declared_inputs(declared, signature, limits, reserve)
    arrays: dict[str, np.ndarray] = {}
    for name, (what, datatype, shape, data) in declared.items():
        if isinstance(data, memoryview):
            arrays[name] = raw_tensor(datatype, shape, data, what)
        else:
            arrays[name] = _json_data(data, datatype, shape, counts[name], what, max_depth, limits)
    return read_only(arrays)


def check_declared_inputs(
    declared: Mapping[str, Declared], signature: Signature, limits: Limits, reserve: Reserve | None
) -> dict[str, int]:
    """Hold every declared input against the signature and the limits, then count what decoding
    them builds in the in-flight budget (before any is built); returns their element counts."""
    check_names(signature, declared)
    counts: dict[str, int] = {}
    total = 0
    for name, (_, datatype, shape, data) in declared.items():
        # the bytes of BYTES values: what arrived for them (raw bytes or a contents message)
        payload = 0
        if datatype == "BYTES":
            payload = len(data) if isinstance(data, memoryview) else _payload(data, shape)
        counts[name] = check_declared(signature, name, datatype, shape, limits, payload)
        total += decoded_size(datatype, counts[name], payload)
    reserve_decoded(reserve, total)
    return counts


def _payload(data: object, shape: tuple[int, ...]) -> int:
    """Bytes BYTES values sent as a contents message hold (JSON strings are counted in the body
    they were parsed from); 0 for a value count decoding refuses (not worth walking them)."""
    if isinstance(data, pb.InferTensorContents) and len(data.bytes_contents) == math.prod(shape):
        return data.ByteSize()
    return 0


def _json_data(
    data: object,
    datatype: str,
    shape: tuple[int, ...],
    count: int,
    what: str,
    max_depth: int,
    limits: Limits,
) -> np.ndarray:
    array = to_array(
        data, datatype, what, max_depth=max_depth, max_elements=limits.max_tensor_elements
    )
    if array.ndim <= 1:  # flat (or a bare scalar)
        if array.size != count:
            raise InvalidInput(
                f"{what}: shape {list(shape)} needs {count} elements, data has {array.size}"
            )
        return array.reshape(shape)
    if array.shape != shape:
        raise InvalidInput(
            f"{what}: nested data has shape {list(array.shape)}, the declared shape is"
            f" {list(shape)}"
        )
    return array


# --- responses -----------------------------------------------------------------------------------


def response_to_json(
    response: InferResponse, binary_flags: list[bool] | None, binary_default: bool
) -> tuple[bytes, int | None]:
    """(REST body, JSON header length when binary outputs follow it, else None)."""
    outputs: list[dict[str, object]] = []
    blobs: list[bytes] = []
    results = response.outputs
    flags = binary_flags if binary_flags is not None else [binary_default] * len(results)
    for (output, array), binary in zip(results.items(), flags, strict=True):
        datatype = output_datatype(output, array)
        entry: dict[str, object] = {
            "name": output,
            "datatype": datatype,
            "shape": list(array.shape),
        }
        if binary:
            blob = encode_raw(array)
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        elif datatype == "BYTES":
            entry["data"] = bytes_to_json(
                array.reshape(-1), encoding="utf8", what=f'output "{output}"'
            )
        else:
            entry["data"] = array.reshape(-1)
        outputs.append(entry)
    document: dict[str, object] = {
        "model_name": response.model,
        "model_version": str(response.version),
    }
    if response.id is not None:
        document["id"] = response.id
    if response.parameters:
        document["parameters"] = dict(response.parameters)
    document["outputs"] = outputs
    # NaN / ±Infinity become null: the body stays JSON that any parser reads (a client that
    # needs them asks for binary outputs)
    header = dumps(document, literal_nonfinite=False)
    if not blobs:
        return header, None
    return b"".join([header, *blobs]), len(header)


def output_datatype(name: str, array: np.ndarray) -> str:
    if array.dtype.kind in "OSU":
        return "BYTES"
    datatype = NUMPY_TO_V2.get(array.dtype)
    if datatype is None:
        raise ModelError(f'output "{name}" has dtype {array.dtype}, which V2 cannot represent')
    return datatype


def _show(value: object) -> str:
    try:
        return orjson.dumps(value).decode()[:80]
    except TypeError:
        return repr(value)[:80]
