"""KServe V2 (Open Inference Protocol) REST codec: metadata, config and infer, JSON and binary.

Follows `reference/v2-protocol.md` §1-3 and what an unmodified `tritonclient.http` sends (§8.1):
inputs as JSON `data` (flat or nested) or as binary blobs after the JSON header; outputs as JSON
or binary per the `binary_data` / `binary_data_output` parameters. Every function returns the body
of a 200 answer or raises a ServingError.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import orjson

from pyserving.api.rest.binary import decode_tensor, encode_tensor, split_body
from pyserving.api.rest.json_tensor import bytes_to_json, dumps, parse_json, to_array
from pyserving.errors import InvalidInput, ModelError, NotFound
from pyserving.platforms.servable import Servable
from pyserving.platforms.signature import NUMPY_TO_V2, V2_TO_NUMPY, TensorSpec
from pyserving.serving.inference import InferenceService

__all__ = [
    "check_repository_request",
    "index_from_service",
    "infer",
    "model_config",
    "model_metadata",
    "repository_index",
    "repository_index_request",
    "server_metadata",
]

#: extensions advertised by `GET /v2`
EXTENSIONS = ("binary_tensor_data", "model_configuration")

# Servable.platform → the V2 "<framework>_<format>" platform names the spec lists.
_PLATFORMS = {
    "onnx": "onnx_onnxv1",
    "tensorflow": "tensorflow_savedmodel",
    "torch": "pytorch_torchscript",
}
_MAX_RANK = 32


def server_metadata(server_version: str) -> bytes:
    """`GET /v2`: name, version and extensions."""
    return orjson.dumps(
        {"name": "pyserving", "version": server_version, "extensions": list(EXTENSIONS)}
    )


def model_metadata(service: InferenceService, name: str, version: int | None) -> bytes:
    """`GET /v2/models/{m}[/versions/{v}]`: versions, platform, inputs and outputs."""
    with service.acquire(name, version) as handle:
        signature = service.signature(handle, None)
        platform = _platform(handle.servable)
    return orjson.dumps(
        {
            "name": name,
            "versions": [str(v) for v in service.available_versions(name)],
            "platform": platform,
            "inputs": [_tensor_metadata(spec) for spec in signature.inputs],
            "outputs": [_tensor_metadata(spec) for spec in signature.outputs],
        }
    )


def model_config(service: InferenceService, name: str, version: int | None) -> bytes:
    """`GET /v2/models/{m}[/versions/{v}]/config`: a Triton-style model configuration."""
    with service.acquire(name, version) as handle:
        signature = service.signature(handle, None)
        servable = handle.servable
    return orjson.dumps(
        {
            "name": name,
            "platform": _platform(servable),
            "backend": getattr(servable, "platform", ""),
            "max_batch_size": 0,
            "input": [_tensor_config(spec) for spec in signature.inputs],
            "output": [_tensor_config(spec) for spec in signature.outputs],
        }
    )


async def infer(
    service: InferenceService,
    name: str,
    version: int | None,
    body: bytes,
    header_length: bytes | None,
    deadline: float | None,
    max_json_depth: int,
) -> tuple[bytes, int | None]:
    """`POST .../infer`: returns (response body, JSON header length when it carries binary data).

    `header_length` is the raw Inference-Header-Content-Length value, if the request had one.
    """
    json_part, binary = split_body(body, header_length)
    request = parse_json(json_part)
    if not isinstance(request, dict):
        raise InvalidInput("inference request must be a JSON object")
    request_id = request.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise InvalidInput("'id' must be a string")
    parameters = _parameters(request.get("parameters"), "request")
    binary_default = _bool_parameter(parameters, "binary_data_output", "request")
    deadline = _timeout_deadline(parameters, deadline)
    inputs = request.get("inputs")
    if not isinstance(inputs, list):
        raise InvalidInput("'inputs' must be a list of input tensors")
    output_names, binary_flags = _requested_outputs(request.get("outputs"), binary_default)
    with service.acquire(name, version) as handle:
        signature = service.signature(handle, None)
        arrays = _decode_inputs(inputs, binary, max_json_depth, service.options.max_tensor_elements)
        results = await service.run(handle, signature, arrays, output_names, deadline)
        answered = handle.id.version
    if binary_flags is None:
        binary_flags = [binary_default] * len(results)
    return _encode_response(name, answered, request_id, results, binary_flags)


# --- metadata ------------------------------------------------------------------------------------


def _platform(servable: Servable) -> str:
    platform = getattr(servable, "platform", "") or "python"
    return _PLATFORMS.get(platform, platform)


def _tensor_metadata(spec: TensorSpec) -> dict[str, Any]:
    return {"name": spec.name, "datatype": spec.datatype, "shape": list(spec.shape)}


def _tensor_config(spec: TensorSpec) -> dict[str, Any]:
    data_type = "TYPE_STRING" if spec.datatype == "BYTES" else f"TYPE_{spec.datatype}"
    return {"name": spec.name, "data_type": data_type, "dims": list(spec.shape)}


# --- request -------------------------------------------------------------------------------------


def _parameters(value: Any, what: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidInput(f"{what}: 'parameters' must be an object")
    return value


def _bool_parameter(parameters: dict[str, Any], key: str, what: str) -> bool:
    value = parameters.get(key, False)
    if not isinstance(value, bool):
        raise InvalidInput(f"{what}: parameter '{key}' must be true or false, got {value!r}")
    return value


def _timeout_deadline(parameters: dict[str, Any], deadline: float | None) -> float | None:
    """The earlier of the REST deadline and the V2 `timeout` parameter (microseconds)."""
    timeout_us = parameters.get("timeout")
    if timeout_us is None:
        return deadline
    if type(timeout_us) is not int or timeout_us < 0:
        raise InvalidInput(
            f"parameter 'timeout' must be a non-negative integer (microseconds), got {timeout_us!r}"
        )
    own = time.monotonic() + timeout_us / 1e6
    return own if deadline is None else min(own, deadline)


def _requested_outputs(
    outputs: Any, binary_default: bool
) -> tuple[list[str] | None, list[bool] | None]:
    """Requested output names and, per name, whether to send it binary; (None, None) = all."""
    if outputs is None:
        return None, None
    if not isinstance(outputs, list):
        raise InvalidInput("'outputs' must be a list of requested outputs")
    names: list[str] = []
    flags: list[bool] = []
    for i, item in enumerate(outputs):
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise InvalidInput(f"requested output {i}: must be an object with a string 'name'")
        name = item["name"]
        what = f'output "{name}"'
        if name in names:
            raise InvalidInput(f"{what} is requested more than once")
        parameters = _parameters(item.get("parameters"), what)
        if parameters.get("classification"):
            raise InvalidInput(f"{what}: the classification extension is not supported")
        if parameters.get("shared_memory_region") is not None:
            raise InvalidInput(f"{what}: shared memory is not supported")
        binary = parameters.get("binary_data", binary_default)
        if not isinstance(binary, bool):
            raise InvalidInput(f"{what}: parameter 'binary_data' must be true or false")
        names.append(name)
        flags.append(binary)
    return names, flags


def _shape(value: Any, what: str) -> tuple[int, ...]:
    if not isinstance(value, list):
        raise InvalidInput(f"{what}: 'shape' must be a list of non-negative integers")
    if len(value) > _MAX_RANK:
        raise InvalidInput(f"{what}: rank {len(value)} exceeds the limit of {_MAX_RANK}")
    for dim in value:
        if type(dim) is not int or dim < 0:
            raise InvalidInput(
                f"{what}: 'shape' must be a list of non-negative integers, got {_show(value)}"
            )
    return tuple(value)


def _decode_inputs(
    inputs: list[Any], binary: memoryview, max_json_depth: int, max_elements: int
) -> dict[str, np.ndarray]:
    arrays: dict[str, np.ndarray] = {}
    offset = 0
    for i, item in enumerate(inputs):
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise InvalidInput(f"input {i}: must be an object with a string 'name'")
        name = item["name"]
        what = f'input "{name}"'
        if name in arrays:
            raise InvalidInput(f"{what} appears more than once")
        datatype = item.get("datatype")
        if not isinstance(datatype, str) or datatype not in V2_TO_NUMPY:
            raise InvalidInput(f"{what}: unsupported datatype {_show(datatype)}")
        shape = _shape(item.get("shape"), what)
        count = math.prod(shape)
        if count > max_elements:
            raise InvalidInput(f"{what}: {count} elements exceed the limit of {max_elements}")
        parameters = _parameters(item.get("parameters"), what)
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
            arrays[name] = decode_tensor(datatype, shape, binary[offset : offset + size], what)
            offset += size
        elif "data" in item:
            arrays[name] = _json_data(
                item["data"], datatype, shape, what, max_json_depth, max_elements
            )
        else:
            raise InvalidInput(f"{what}: has neither 'data' nor a binary_data_size parameter")
    if offset != len(binary):
        raise InvalidInput(
            f"binary data: {len(binary) - offset} bytes after the last binary input are not"
            " described by any input's binary_data_size"
        )
    return arrays


def _json_data(
    data: Any,
    datatype: str,
    shape: tuple[int, ...],
    what: str,
    max_json_depth: int,
    max_elements: int,
) -> np.ndarray:
    if datatype == "FP16":
        raise InvalidInput(
            f"{what}: FP16 data cannot be sent as JSON; use the binary tensor data extension"
        )
    array = to_array(data, datatype, what, max_depth=max_json_depth, max_elements=max_elements)
    if array.ndim <= 1:  # flat (or a bare scalar)
        if array.size != math.prod(shape):
            raise InvalidInput(
                f"{what}: shape {list(shape)} needs {math.prod(shape)} elements, data has"
                f" {array.size}"
            )
        return array.reshape(shape)
    if array.shape != shape:
        raise InvalidInput(
            f"{what}: nested data has shape {list(array.shape)}, the declared shape is"
            f" {list(shape)}"
        )
    return array


def _show(value: Any) -> str:
    try:
        return orjson.dumps(value).decode()[:80]
    except TypeError:
        return repr(value)[:80]


# --- response ------------------------------------------------------------------------------------


def _encode_response(
    name: str,
    version: int,
    request_id: str | None,
    results: dict[str, np.ndarray],
    binary_flags: list[bool],
) -> tuple[bytes, int | None]:
    outputs: list[dict[str, Any]] = []
    blobs: list[bytes] = []
    floats: list[np.ndarray] = []
    for (output, array), binary in zip(results.items(), binary_flags, strict=True):
        datatype = _datatype(output, array)
        entry: dict[str, Any] = {"name": output, "datatype": datatype, "shape": list(array.shape)}
        if binary:
            blob = encode_tensor(array)
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        elif datatype == "BYTES":
            entry["data"] = bytes_to_json(
                array.reshape(-1), encoding="utf8", what=f'output "{output}"'
            )
        else:
            flat = array.reshape(-1)
            entry["data"] = flat
            floats.append(flat)
        outputs.append(entry)
    document: dict[str, Any] = {"model_name": name, "model_version": str(version)}
    if request_id is not None:
        document["id"] = request_id
    document["outputs"] = outputs
    header = dumps(document, floats)
    if not blobs:
        return header, None
    return b"".join([header, *blobs]), len(header)


def _datatype(name: str, array: np.ndarray) -> str:
    if array.dtype.kind in "OSU":
        return "BYTES"
    datatype = NUMPY_TO_V2.get(array.dtype)
    if datatype is None:
        raise ModelError(f'output "{name}" has dtype {array.dtype}, which V2 cannot represent')
    return datatype


# --- model repository ----------------------------------------------------------------------------


def repository_index_request(body: bytes) -> bool:
    """Parse a `POST /v2/repository/index` body (may be empty); returns its `ready` flag."""
    if not body.strip():
        return False
    request = parse_json(body)
    if not isinstance(request, dict):
        raise InvalidInput("repository index request must be a JSON object")
    ready = request.get("ready", False)
    if not isinstance(ready, bool):
        raise InvalidInput("repository index request: 'ready' must be true or false")
    return ready


def repository_index(entries: Iterable[Mapping[str, str]], ready_only: bool) -> bytes:
    """The index response: a JSON array of {name, version, state, reason}."""
    items = [
        {
            "name": str(e.get("name", "")),
            "version": str(e.get("version", "")),
            "state": str(e.get("state", "")),
            "reason": str(e.get("reason", "")),
        }
        for e in entries
    ]
    if ready_only:
        items = [item for item in items if item["state"] == "READY"]
    return orjson.dumps(items)


def index_from_service(service: InferenceService) -> list[Mapping[str, str]]:
    """Index entries from the models the service knows (model control disabled)."""
    entries: list[Mapping[str, str]] = []
    for name in service.model_names():
        try:
            states = service.model_status(name)
        except NotFound:
            entries.append({"name": name, "version": "", "state": "UNAVAILABLE", "reason": ""})
            continue
        for status in sorted(states, key=lambda s: s.id.version):
            ready = status.state.name == "AVAILABLE"
            entries.append(
                {
                    "name": name,
                    "version": str(status.id.version),
                    "state": "READY" if ready else "UNAVAILABLE",
                    "reason": status.error or ("" if ready else status.state.name),
                }
            )
    return entries


def check_repository_request(body: bytes, action: str) -> None:
    """Validate a load/unload body: empty, or an object whose `parameters` we support (none
    for load; `unload_dependents` for unload, a no-op: models have no dependents here)."""
    if not body.strip():
        return
    request = parse_json(body)
    if not isinstance(request, dict):
        raise InvalidInput(f"repository {action} request must be a JSON object")
    parameters = _parameters(request.get("parameters"), f"repository {action} request")
    allowed = ("unload_dependents",) if action == "unload" else ()
    unsupported = sorted(k for k in parameters if k not in allowed)
    if unsupported:
        raise InvalidInput(
            f"repository {action} request: unsupported parameter(s) {', '.join(unsupported)};"
            " models load from the configured repository only"
        )
