"""TF Serving's Predict rules for REST (row / columnar JSON) and gRPC (TensorProto) alike.

Pure translation (docs/rest-api.md, grpc-api.md): a request becomes an `InferRequest`, an
`InferResponse` becomes JSON or a PredictResponse, model specs are read the same way for both
transports. Tensors are decoded only once the signature has accepted their declared dtype and
shape (`protocols.tensors`), so TF's one-value fill (one `float_val` for a whole shape) can never
build more than the byte limit allows. Classify / Regress examples are in `protocols.tf_examples`,
signature defs and version status in `protocols.tf_metadata`."""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable, Mapping
from typing import Any, TypeGuard

import numpy as np

from pyserving.errors import InvalidInput, ModelError, Unimplemented
from pyserving.platforms.signature import V2_TO_TF, Signature, TensorSpec
from pyserving.proto import tf_serving_apis_pb2 as apis
from pyserving.proto import tf_types_pb2
from pyserving.protocols.json_tensor import bytes_to_json, dumps, json_shape, to_array
from pyserving.protocols.request import (
    InferRequest,
    InferResponse,
    Limits,
    Reserve,
    decode_reserve,
    strings_size,
)
from pyserving.protocols.tensors import (
    check_declared,
    check_names,
    check_shape,
    decoded_size,
    raw_tensor,
    read_only,
    reserve_decoded,
)

__all__ = [
    "answer_spec",
    "encode_tensor",
    "is_b64",
    "model_spec",
    "predict_from_json",
    "predict_from_proto",
    "predict_to_json",
    "predict_to_proto",
]

_DT = tf_types_pb2.DataType
# TF DataType → V2 datatype name (the signature's vocabulary)
_V2_NAME: dict[int, str] = {_DT.Value(tf): v2 for v2, tf in V2_TO_TF.items()}
_NUMPY: dict[tf_types_pb2.DataType, np.dtype] = {
    tf_types_pb2.DT_FLOAT: np.dtype("<f4"),
    tf_types_pb2.DT_DOUBLE: np.dtype("<f8"),
    tf_types_pb2.DT_HALF: np.dtype("<f2"),
    tf_types_pb2.DT_INT8: np.dtype("i1"),
    tf_types_pb2.DT_INT16: np.dtype("<i2"),
    tf_types_pb2.DT_INT32: np.dtype("<i4"),
    tf_types_pb2.DT_INT64: np.dtype("<i8"),
    tf_types_pb2.DT_UINT8: np.dtype("u1"),
    tf_types_pb2.DT_UINT16: np.dtype("<u2"),
    tf_types_pb2.DT_UINT32: np.dtype("<u4"),
    tf_types_pb2.DT_UINT64: np.dtype("<u8"),
    tf_types_pb2.DT_BOOL: np.dtype("?"),
}
_DTYPE_TO_TF: dict[np.dtype, tf_types_pb2.DataType] = {
    dtype.newbyteorder("="): tf for tf, dtype in _NUMPY.items()
}
# TF DataType → the typed TensorProto field holding its values
_TYPED_FIELD = {
    tf_types_pb2.DT_FLOAT: "float_val",
    tf_types_pb2.DT_DOUBLE: "double_val",
    tf_types_pb2.DT_HALF: "half_val",
    tf_types_pb2.DT_INT8: "int_val",
    tf_types_pb2.DT_INT16: "int_val",
    tf_types_pb2.DT_INT32: "int_val",
    tf_types_pb2.DT_UINT8: "int_val",
    tf_types_pb2.DT_UINT16: "int_val",
    tf_types_pb2.DT_INT64: "int64_val",
    tf_types_pb2.DT_UINT32: "uint32_val",
    tf_types_pb2.DT_UINT64: "uint64_val",
    tf_types_pb2.DT_BOOL: "bool_val",
    tf_types_pb2.DT_STRING: "string_val",
}
_STRING = tf_types_pb2.DT_STRING
_HALF = tf_types_pb2.DT_HALF


# --- model spec ----------------------------------------------------------------------------------


def model_spec(spec: apis.ModelSpec) -> tuple[str, int | None, str | None]:
    """(name, version, label) of a ModelSpec, as TF's ServableRequestFromModelSpec reads it."""
    if not spec.name:
        raise InvalidInput("ModelSpec has no name specified.")
    choice = spec.WhichOneof("version_choice")
    if choice == "version":
        if spec.version.value < 0:
            raise InvalidInput(f"version must be non-negative, got {spec.version.value}")
        return spec.name, spec.version.value, None
    if choice == "version_label":
        return spec.name, None, spec.version_label
    return spec.name, None, None


def answer_spec(name: str, version: int, signature_name: str) -> apis.ModelSpec:
    """The ModelSpec an answer carries: the model, the version that ran, the signature."""
    spec = apis.ModelSpec(name=name, signature_name=signature_name)
    spec.version.value = version
    return spec


# --- predict over gRPC ---------------------------------------------------------------------------


def predict_from_proto(request: apis.PredictRequest, deadline: float | None) -> InferRequest:
    """A PredictRequest → the request (output_filter names once each)."""
    name, version, label = model_spec(request.model_spec)
    outputs: list[str] = []
    for output in request.output_filter:
        if output in outputs:
            raise InvalidInput(f"duplicate output tensor name: {output[:80]}")
        outputs.append(output)
    decode = functools.partial(_decode_protos, request.inputs, decode_reserve.get())
    signature_name = request.model_spec.signature_name
    # What decoding builds can pass what arrived many times over (one value fills a shape): the
    # declared size decides whether it leaves the event loop (a message whose data does not
    # match it is refused before its data is read). Not ByteSize(): it walks every value.
    size = _declared_size(request.inputs)
    return InferRequest(
        name, decode, version, label, signature_name, outputs or None, deadline, None, size
    )


def _declared_size(tensors: Mapping[str, tf_types_pb2.TensorProto]) -> int:
    """Bytes the tensors declare (unchecked: only to size the decoding work); string values
    count what arrived for them (`strings_size`), which the shape says nothing of."""
    total = 0
    for tensor in tensors.values():
        count = math.prod(dim.size for dim in tensor.tensor_shape.dim)
        payload = 0
        if tensor.dtype == _STRING:
            values = tensor.string_val
            payload = strings_size(len(values), values)
        total += decoded_size(_V2_NAME.get(tensor.dtype, "BYTES"), max(count, 0), payload)
    return total


def predict_to_proto(response: InferResponse) -> apis.PredictResponse:
    """The PredictResponse: numeric outputs in tensor_content, strings in string_val."""
    out = apis.PredictResponse(
        model_spec=answer_spec(response.model, response.version, response.signature_name)
    )
    for key, array in response.outputs.items():
        encode_tensor(key, array, out.outputs[key])
    return out


def _decode_protos(
    tensors: Mapping[str, tf_types_pb2.TensorProto],
    reserve: Reserve | None,
    signature: Signature,
    limits: Limits,
) -> dict[str, np.ndarray]:
    # A protobuf map has no order: names are checked sorted, then in the signature's order.
    declared: dict[str, tuple[str, tuple[int, ...], tf_types_pb2.TensorProto]] = {}
    for name in sorted(tensors):
        tensor = tensors[name]
        what = f'input "{name[:80]}"'
        if tensor.tensor_shape.unknown_rank:
            raise InvalidInput(f"{what}: the tensor shape has unknown rank")
        shape = check_shape([dim.size for dim in tensor.tensor_shape.dim], what, limits)
        datatype = _V2_NAME.get(tensor.dtype)
        if datatype is None:
            label = _DT.Name(tensor.dtype) if tensor.dtype in _DT.values() else str(tensor.dtype)
            raise InvalidInput(f"{what}: unsupported dtype {label}")
        declared[name] = (datatype, shape, tensor)
    check_names(signature, declared)
    counts: dict[str, int] = {}
    total = 0
    for name in signature.input_names:
        datatype, shape, tensor = declared[name]
        # string values arrive in the message: its size bounds their bytes (not counted for a
        # value count that decoding refuses: that would walk the values for nothing)
        payload = 0
        if tensor.dtype == _STRING and len(tensor.string_val) == math.prod(shape):
            payload = tensor.ByteSize()
        counts[name] = check_declared(signature, name, datatype, shape, limits, payload)
        total += decoded_size(datatype, counts[name], payload)
    # Every input's decoded size is counted in the in-flight budget before any is built, so
    # many small requests that fill large shapes cannot build more than the budget.
    reserve_decoded(reserve, total)
    arrays: dict[str, np.ndarray] = {}
    for name in signature.input_names:
        datatype, shape, tensor = declared[name]
        what = f'input "{name[:80]}"'
        arrays[name] = _tensor_values(tensor, datatype, shape, counts[name], what)
    return read_only(arrays)


def _tensor_values(
    tensor: tf_types_pb2.TensorProto, datatype: str, shape: tuple[int, ...], count: int, what: str
) -> np.ndarray:
    """The declared (and accepted) tensor's values: tensor_content, or the typed field with as
    many values as the shape has elements, or one value that fills it (as TF parses it)."""
    if tensor.tensor_content:
        if tensor.dtype == _STRING:
            raise InvalidInput(
                f"{what}: DT_STRING values must be in string_val, not tensor_content"
            )
        return raw_tensor(datatype, shape, memoryview(tensor.tensor_content), what)
    field = _TYPED_FIELD[tensor.dtype]
    values = getattr(tensor, field)
    if len(values) not in (count, 1):
        raise InvalidInput(
            f"{what}: shape {list(shape)} needs {count} values, {field} has {len(values)}"
        )
    if tensor.dtype == _STRING:
        typed = np.empty(len(values), dtype=object)
        typed[:] = list(values)
    elif tensor.dtype == _HALF:
        wide = np.array(values, dtype=np.int64)
        if wide.size and (wide.min() < 0 or wide.max() > 0xFFFF):
            raise InvalidInput(f"{what}: half_val holds values that are not 16-bit patterns")
        typed = wide.astype(np.uint16).view(np.float16)
    else:
        dtype = _NUMPY[tensor.dtype]
        typed = np.array(values, dtype=np.float64 if dtype.kind == "f" else None)
        if dtype.kind in "iu" and typed.size:
            info = np.iinfo(dtype)
            if typed.min() < info.min or typed.max() > info.max:
                raise InvalidInput(f"{what}: {field} has values out of range for {dtype}")
        typed = typed.astype(dtype, copy=False)
    if len(values) == count:
        return typed.reshape(shape)
    # One value for the whole shape; check_declared has bounded the shape's bytes.
    return np.full(shape, typed[0], dtype=typed.dtype)


def encode_tensor(name: str, array: np.ndarray, out: tf_types_pb2.TensorProto) -> None:
    """Write `array` into `out`: numeric data as tensor_content, strings as string_val."""
    for size in array.shape:
        out.tensor_shape.dim.add(size=size)
    if array.dtype.kind in "OSU":
        out.dtype = _STRING
        out.string_val.extend(
            v.encode() if isinstance(v, str) else bytes(v) for v in array.reshape(-1)
        )
        return
    dtype_enum = _DTYPE_TO_TF.get(array.dtype.newbyteorder("="))
    if dtype_enum is None:
        raise ModelError(f'output "{name}" has dtype {array.dtype}, which TF cannot represent')
    out.dtype = dtype_enum
    if array.dtype.byteorder == ">":
        array = array.astype(array.dtype.newbyteorder("<"))
    out.tensor_content = np.ascontiguousarray(array).tobytes()


# --- predict over REST ---------------------------------------------------------------------------


def predict_from_json(
    name: str,
    version: int | None,
    label: str | None,
    document: object,
    deadline: float | None,
    max_json_depth: int,
) -> tuple[InferRequest, bool]:
    """A parsed `:predict` body → (request, True for the row format `instances`)."""
    if not isinstance(document, dict):
        raise InvalidInput("Malformed request: the body must be a JSON object")
    signature_name = document.get("signature_name")
    if signature_name is not None and not isinstance(signature_name, str):
        raise InvalidInput("'signature_name' attribute must be a string")
    rows = "instances" in document
    if rows and "inputs" in document:
        raise InvalidInput(
            "Not formatted correctly expecting only one of 'inputs' or 'instances' keys to exist"
        )
    if not rows and "inputs" not in document:
        raise InvalidInput("Missing 'inputs' or 'instances' key")
    reserve = decode_reserve.get()
    if rows:
        decode = functools.partial(_rows_to_inputs, document["instances"], max_json_depth, reserve)
    else:
        decode = functools.partial(_columns_to_inputs, document["inputs"], max_json_depth, reserve)
    return InferRequest(name, decode, version, label, signature_name, None, deadline), rows


def predict_to_json(response: InferResponse, rows: bool) -> bytes:
    """`{"predictions": ...}` (row format) or `{"outputs": ...}` (columnar)."""
    outputs = response.outputs
    if rows:
        return _encode_rows(outputs)
    values = {name: _output_value(name, array) for name, array in outputs.items()}
    document = next(iter(values.values())) if len(values) == 1 else values
    return dumps({"outputs": document}, outputs.values())


def is_b64(value: object) -> TypeGuard[dict[str, object]]:
    """True for TF's `{"b64": ...}` object (binary data in a JSON string)."""
    return isinstance(value, dict) and len(value) == 1 and "b64" in value


def _convert(
    value: object,
    spec: TensorSpec,
    signature: Signature,
    depth: int,
    limits: Limits,
    reserve: Reserve | None,
) -> np.ndarray:
    """A JSON value (or a column of instances' values) as `spec`'s array; its shape is checked
    against the signature and the limits before numpy sees it."""
    what = f'input "{spec.name}"'
    if spec.datatype == "FP16":
        raise Unimplemented(f"{what}: Conversion of JSON Value to type half is not supported")
    shape = check_shape(json_shape(value, what, depth), what, limits)
    count = check_declared(signature, spec.name, spec.datatype, shape, limits)
    reserve_decoded(reserve, decoded_size(spec.datatype, count))
    array = to_array(
        value,
        spec.datatype,
        what,
        max_depth=depth,
        max_elements=limits.max_tensor_elements,
        allow_b64=True,
    )
    array.flags.writeable = False  # as every decoded input (tensors.read_only)
    return array


def _rows_to_inputs(
    instances: object, depth: int, reserve: Reserve | None, signature: Signature, limits: Limits
) -> dict[str, np.ndarray]:
    if not isinstance(instances, list) or not instances:
        raise InvalidInput("'instances' must be a non-empty list, one element per example")
    specs = signature.inputs
    first = instances[0]
    if not isinstance(first, dict) or is_b64(first):
        if len(specs) != 1:
            raise InvalidInput(
                f"'instances' elements must be objects keyed by input name: signature"
                f' "{signature.name}" has {len(specs)} inputs ({_names(signature.input_names)})'
            )
        return {specs[0].name: _convert(instances, specs[0], signature, depth, limits, reserve)}
    wanted = set(signature.input_names)
    columns: dict[str, list[object]] = {spec.name: [] for spec in specs}
    for i, item in enumerate(instances):
        if not isinstance(item, dict) or is_b64(item):
            raise InvalidInput(
                f"Failed to process element: {i} of 'instances' list: expected an object keyed"
                f" by input name ({_names(signature.input_names)})"
            )
        if item.keys() != wanted:
            missing = sorted(wanted - item.keys())
            extra = sorted(item.keys() - wanted)
            raise InvalidInput(
                f"Failed to process element: {i} of 'instances' list: its keys must be the"
                f" signature's inputs ({_names(sorted(wanted))}); missing: {_names(missing)};"
                f" extra: {_names(extra)}"
            )
        for key, column in columns.items():
            column.append(item[key])
    return {
        spec.name: _convert(columns[spec.name], spec, signature, depth, limits, reserve)
        for spec in specs
    }


def _columns_to_inputs(
    value: object, depth: int, reserve: Reserve | None, signature: Signature, limits: Limits
) -> dict[str, np.ndarray]:
    specs = signature.inputs
    if isinstance(value, dict) and not is_b64(value):
        inputs = {}
        for spec in specs:
            if spec.name not in value:
                raise InvalidInput(f"Missing named input: {spec.name} in 'inputs' object.")
            inputs[spec.name] = _convert(value[spec.name], spec, signature, depth, limits, reserve)
        return inputs  # extra names are ignored, as TF Serving does
    if len(specs) != 1:
        raise InvalidInput(
            f"'inputs' must be an object keyed by input name: signature \"{signature.name}\""
            f" has {len(specs)} inputs ({_names(signature.input_names)})"
        )
    return {specs[0].name: _convert(value, specs[0], signature, depth, limits, reserve)}


def _names(names: Iterable[str]) -> str:
    return ", ".join(names) or "none"


def _output_value(name: str, array: np.ndarray) -> Any:
    if array.dtype.kind in "OSU":
        # TF Serving writes {"b64": ...} only for outputs whose alias ends in "_bytes".
        encoding = "b64" if name.endswith("_bytes") else "utf8_or_b64"
        return bytes_to_json(array, encoding=encoding, what=f'output "{name}"')
    return array


def _encode_rows(outputs: dict[str, np.ndarray]) -> bytes:
    batch = -1
    first = ""
    for name, array in outputs.items():
        if array.ndim == 0:
            raise InvalidInput(f"Tensor name: {name} has no shape information ")
        if batch < 0:
            batch, first = array.shape[0], name
        elif array.shape[0] != batch:
            raise InvalidInput(
                f"Tensor name: {name} has inconsistent batch size: {array.shape[0]}"
                f" expecting: {batch} (the batch size of {first})"
            )
    values = {name: _output_value(name, array) for name, array in outputs.items()}
    if len(values) == 1:
        (predictions,) = values.values()
    else:
        predictions = [{name: value[i] for name, value in values.items()} for i in range(batch)]
    return dumps({"predictions": predictions}, outputs.values())
