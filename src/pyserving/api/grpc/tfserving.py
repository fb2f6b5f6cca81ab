"""TF Serving gRPC: `tensorflow.serving.PredictionService` and `ModelService`.

Wire-compatible with the `tensorflow-serving-api` stubs (tfserving.md §4). Request tensors are
read from `tensor_content` (without copying) or from the typed `*_val` fields (one value fills
the whole shape, as TF does); numeric outputs go out in `tensor_content`, strings in
`string_val`, both of which `tf.make_ndarray` reads.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Iterable
from typing import Any

import grpc
import numpy as np

from pyserving.api.grpc.control import ModelControl, require_control
from pyserving.api.grpc.rpc import Context, deadline_of, unary_handler
from pyserving.core.monitor import VersionStatus
from pyserving.errors import InvalidInput, ModelError
from pyserving.platforms.signature import V2_TO_TF, Signature, TensorSpec
from pyserving.proto import tf_error_codes_pb2, tf_meta_graph_pb2, tf_types_pb2
from pyserving.proto import tf_serving_apis_pb2 as apis
from pyserving.serving import classify
from pyserving.serving.classify import CLASSIFY_METHOD, REGRESS_METHOD
from pyserving.serving.inference import InferenceService

__all__ = ["MODEL_SERVICE", "PREDICTION_SERVICE", "ModelServicer", "PredictionServicer"]

PREDICTION_SERVICE = "tensorflow.serving.PredictionService"
MODEL_SERVICE = "tensorflow.serving.ModelService"

_DT = tf_types_pb2.DataType
_MAX_RANK = 32
# TF DataType → numpy dtype for numeric tensors (DT_STRING is handled apart)
_NUMPY: dict[int, np.dtype] = {
    _DT.Value("DT_FLOAT"): np.dtype("<f4"),
    _DT.Value("DT_DOUBLE"): np.dtype("<f8"),
    _DT.Value("DT_HALF"): np.dtype("<f2"),
    _DT.Value("DT_INT8"): np.dtype("i1"),
    _DT.Value("DT_INT16"): np.dtype("<i2"),
    _DT.Value("DT_INT32"): np.dtype("<i4"),
    _DT.Value("DT_INT64"): np.dtype("<i8"),
    _DT.Value("DT_UINT8"): np.dtype("u1"),
    _DT.Value("DT_UINT16"): np.dtype("<u2"),
    _DT.Value("DT_UINT32"): np.dtype("<u4"),
    _DT.Value("DT_UINT64"): np.dtype("<u8"),
    _DT.Value("DT_BOOL"): np.dtype("?"),
}
_DTYPE_TO_TF: dict[np.dtype, int] = {dtype.newbyteorder("="): tf for tf, dtype in _NUMPY.items()}
# TF DataType → the typed TensorProto field holding its values
_TYPED_FIELD = {
    _DT.Value("DT_FLOAT"): "float_val",
    _DT.Value("DT_DOUBLE"): "double_val",
    _DT.Value("DT_HALF"): "half_val",
    _DT.Value("DT_INT8"): "int_val",
    _DT.Value("DT_INT16"): "int_val",
    _DT.Value("DT_INT32"): "int_val",
    _DT.Value("DT_UINT8"): "int_val",
    _DT.Value("DT_UINT16"): "int_val",
    _DT.Value("DT_INT64"): "int64_val",
    _DT.Value("DT_UINT32"): "uint32_val",
    _DT.Value("DT_UINT64"): "uint64_val",
    _DT.Value("DT_BOOL"): "bool_val",
}
_STRING = _DT.Value("DT_STRING")
_SIGNATURE_DEF = "signature_def"
_ERROR_CODES: dict[str, int] = dict(tf_error_codes_pb2.Code.items())


class PredictionServicer:
    """`tensorflow.serving.PredictionService` over one InferenceService.

    Thread-safety: stateless per call; RPCs run concurrently on the event loop.
    Blocking: models run on InferenceService's threads; no handler blocks the event loop.
    Cancellation: a cancelled or expired call's queued work is dropped (InferenceService.run).
    """

    def __init__(self, service: InferenceService) -> None:
        self._service = service

    def handler(self) -> grpc.GenericRpcHandler:
        """The generic handler to add to a grpc.aio server."""
        methods = {
            "Predict": unary_handler(self.predict, apis.PredictRequest, _spec_name, _answered),
            "Classify": unary_handler(
                self.classify, apis.ClassificationRequest, _spec_name, _answered
            ),
            "Regress": unary_handler(self.regress, apis.RegressionRequest, _spec_name, _answered),
            "MultiInference": unary_handler(self.multi_inference, apis.MultiInferenceRequest),
            "GetModelMetadata": unary_handler(
                self.get_model_metadata, apis.GetModelMetadataRequest
            ),
        }
        return grpc.method_handlers_generic_handler(PREDICTION_SERVICE, methods)

    async def predict(self, request: apis.PredictRequest, context: Context) -> Any:
        service = self._service
        name, version, label = _model_spec(request)
        output_names = _output_filter(request.output_filter)
        deadline = deadline_of(context)
        with service.acquire(name, version, label) as handle:
            signature = service.signature(handle, request.model_spec.signature_name)
            limit = service.options.max_tensor_elements
            inputs = {key: decode_tensor(key, t, limit) for key, t in request.inputs.items()}
            results = await service.run(handle, signature, inputs, output_names, deadline)
            answered = handle.id.version
        response = apis.PredictResponse(model_spec=_answer_spec(name, answered, signature.name))
        for key, array in results.items():
            encode_tensor(key, array, response.outputs[key])
        return response

    async def classify(self, request: apis.ClassificationRequest, context: Context) -> Any:
        name, version, label = _model_spec(request)
        examples, shared = classify.examples_from_proto(request.input)
        result = await classify.classify(
            self._service,
            name,
            version,
            label,
            request.model_spec.signature_name,
            examples,
            shared,
            deadline_of(context),
        )
        return apis.ClassificationResponse(
            model_spec=_answer_spec(name, result.version, result.signature_name),
            result=_classification_result(result),
        )

    async def regress(self, request: apis.RegressionRequest, context: Context) -> Any:
        name, version, label = _model_spec(request)
        examples, shared = classify.examples_from_proto(request.input)
        result = await classify.regress(
            self._service,
            name,
            version,
            label,
            request.model_spec.signature_name,
            examples,
            shared,
            deadline_of(context),
        )
        return apis.RegressionResponse(
            model_spec=_answer_spec(name, result.version, result.signature_name),
            result=_regression_result(result),
        )

    async def multi_inference(self, request: apis.MultiInferenceRequest, context: Context) -> Any:
        """Every task (same model, distinct signatures) over the one shared input, in order."""
        tasks = _checked_tasks(request.tasks)
        examples, shared = classify.examples_from_proto(request.input)
        deadline = deadline_of(context)
        response = apis.MultiInferenceResponse()
        for task in tasks:
            name, version, label = _model_spec(task)
            run = classify.classify if task.method_name == CLASSIFY_METHOD else classify.regress
            result = await run(
                self._service,
                name,
                version,
                label,
                task.model_spec.signature_name,
                examples,
                shared,
                deadline,
            )
            answer = response.results.add(
                model_spec=_answer_spec(name, result.version, result.signature_name)
            )
            if isinstance(result, classify.ClassifyResult):
                answer.classification_result.CopyFrom(_classification_result(result))
            else:
                answer.regression_result.CopyFrom(_regression_result(result))
        return response

    async def get_model_metadata(
        self, request: apis.GetModelMetadataRequest, context: Context
    ) -> Any:
        name, version, label = _model_spec(request)
        if not request.metadata_field:
            raise InvalidInput("GetModelMetadataRequest must specify at least one metadata_field")
        for field in request.metadata_field:
            if field != _SIGNATURE_DEF:
                raise InvalidInput(f"Metadata field {field[:80]} is not supported")
        with self._service.acquire(name, version, label) as handle:
            signatures: dict[str, Signature] = dict(handle.servable.signatures)
            answered = handle.id.version
        signature_map = apis.SignatureDefMap()
        for key, signature in signatures.items():
            signature_map.signature_def[key].CopyFrom(_signature_def(signature))
        response = apis.GetModelMetadataResponse(
            model_spec=_answer_spec(name, answered, request.model_spec.signature_name)
        )
        response.metadata[_SIGNATURE_DEF].Pack(signature_map)
        return response


class ModelServicer:
    """`tensorflow.serving.ModelService`: version status and config reload.

    Thread-safety: stateless per call. Blocking: a reload runs on a worker thread.
    """

    def __init__(
        self, service: InferenceService, model_control: ModelControl | None = None
    ) -> None:
        self._service = service
        self._control = model_control

    def handler(self) -> grpc.GenericRpcHandler:
        """The generic handler to add to a grpc.aio server."""
        methods = {
            "GetModelStatus": unary_handler(self.get_model_status, apis.GetModelStatusRequest),
            "HandleReloadConfigRequest": unary_handler(
                self.handle_reload_config_request, apis.ReloadConfigRequest
            ),
        }
        return grpc.method_handlers_generic_handler(MODEL_SERVICE, methods)

    async def get_model_status(self, request: apis.GetModelStatusRequest, context: Context) -> Any:
        if not request.HasField("model_spec"):
            raise InvalidInput("Missing ModelSpec")
        name, version, label = _model_spec(request)
        states = self._service.model_status(name, version, label)
        return apis.GetModelStatusResponse(model_version_status=[_status(s) for s in states])

    async def handle_reload_config_request(
        self, request: apis.ReloadConfigRequest, context: Context
    ) -> Any:
        control = require_control(self._control)
        if request.config.WhichOneof("config") != "model_config_list":
            raise InvalidInput(
                "ServerCore::HandleReloadConfigRequest only supports reloading model_config_list"
            )
        await asyncio.to_thread(control.reload_config, request.config)
        return apis.ReloadConfigResponse(status=apis.StatusProto(error_code=0))


# --- classify / regress ----------------------------------------------------------------------


def _checked_tasks(tasks: Any) -> list[apis.InferenceTask]:
    """TF Serving's rules: at least one task, one model, each signature once, known methods."""
    if not tasks:
        raise InvalidInput("MultiInferenceRequest must contain at least one task")
    seen: set[str] = set()
    for task in tasks:
        if task.model_spec.name != tasks[0].model_spec.name:
            raise InvalidInput("All tasks of a MultiInferenceRequest must use the same model")
        if task.method_name not in (CLASSIFY_METHOD, REGRESS_METHOD):
            raise InvalidInput(f"Unsupported signature method_name: {task.method_name[:80]}")
        if task.model_spec.signature_name in seen:
            raise InvalidInput(
                f"Duplicate evaluation of signature: {task.model_spec.signature_name[:80]}"
            )
        seen.add(task.model_spec.signature_name)
    return list(tasks)


def _classification_result(result: classify.ClassifyResult) -> apis.ClassificationResult:
    out = apis.ClassificationResult()
    for pairs in result.classes:
        classes = out.classifications.add().classes
        for label, score in pairs:
            classes.add(label=label.decode("utf-8", "replace"), score=score)
    return out


def _regression_result(result: classify.RegressResult) -> apis.RegressionResult:
    out = apis.RegressionResult()
    for value in result.values:
        out.regressions.add(value=value)
    return out


# --- model spec ----------------------------------------------------------------------------------


def _spec_name(request: Any) -> str:
    return request.model_spec.name


def _answered(response: Any) -> int | None:
    spec = response.model_spec
    return spec.version.value if spec.HasField("version") else None


def _model_spec(request: Any) -> tuple[str, int | None, str | None]:
    """(name, version, label) of the request's ModelSpec, as TF's ServableRequestFromModelSpec."""
    spec = request.model_spec
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


def _answer_spec(name: str, version: int, signature_name: str) -> apis.ModelSpec:
    spec = apis.ModelSpec(name=name, signature_name=signature_name)
    spec.version.value = version
    return spec


def _output_filter(names: Iterable[str]) -> list[str] | None:
    seen: list[str] = []
    for name in names:
        if name in seen:
            raise InvalidInput(f"duplicate output tensor name: {name[:80]}")
        seen.append(name)
    return seen or None


# --- tensors -------------------------------------------------------------------------------------


def decode_tensor(name: str, tensor: tf_types_pb2.TensorProto, max_elements: int) -> np.ndarray:
    """The array a TensorProto holds; InvalidInput naming `name` when it is malformed."""
    what = f'input "{name}"'
    shape_proto = tensor.tensor_shape
    if shape_proto.unknown_rank:
        raise InvalidInput(f"{what}: the tensor shape has unknown rank")
    shape = tuple(dim.size for dim in shape_proto.dim)
    if len(shape) > _MAX_RANK:
        raise InvalidInput(f"{what}: rank {len(shape)} exceeds the limit of {_MAX_RANK}")
    if any(size < 0 for size in shape):
        raise InvalidInput(f"{what}: shape {list(shape)} has a negative dimension")
    count = math.prod(shape)
    # the non-zero dimensions are bounded too: numpy cannot shape (0, huge, huge)
    if count > max_elements or math.prod(size for size in shape if size) > max_elements:
        raise InvalidInput(
            f"{what}: shape {list(shape)} exceeds the limit of {max_elements} elements"
        )
    dtype_enum = tensor.dtype
    if dtype_enum == _STRING:
        return _string_tensor(tensor, shape, count, what)
    dtype = _NUMPY.get(dtype_enum)
    if dtype is None:
        label = _DT.Name(dtype_enum) if dtype_enum in _DT.values() else str(dtype_enum)
        raise InvalidInput(f"{what}: unsupported dtype {label}")
    if tensor.tensor_content:
        content = tensor.tensor_content
        if len(content) != count * dtype.itemsize:
            raise InvalidInput(
                f"{what}: tensor_content has {len(content)} bytes, shape {list(shape)} of"
                f" {_DT.Name(dtype_enum)} needs {count * dtype.itemsize}"
            )
        return np.frombuffer(content, dtype=dtype).reshape(shape)
    field = _TYPED_FIELD[dtype_enum]
    values = getattr(tensor, field)
    if dtype_enum == _DT.Value("DT_HALF"):
        typed = np.array(values, dtype=np.int64)
        if typed.size and (typed.min() < 0 or typed.max() > 0xFFFF):
            raise InvalidInput(f"{what}: half_val holds values that are not 16-bit patterns")
        typed = typed.astype(np.uint16).view(np.float16)
    else:
        typed = np.array(values, dtype=np.float64 if dtype.kind == "f" else None)
        if dtype.kind in "iu" and typed.size:
            info = np.iinfo(dtype)
            if typed.min() < info.min or typed.max() > info.max:
                raise InvalidInput(f"{what}: {field} has values out of range for {dtype}")
        typed = typed.astype(dtype, copy=False)
    return _fill(typed, shape, count, field, what)


def _string_tensor(
    tensor: tf_types_pb2.TensorProto, shape: tuple[int, ...], count: int, what: str
) -> np.ndarray:
    if tensor.tensor_content:
        raise InvalidInput(f"{what}: DT_STRING values must be in string_val, not tensor_content")
    values = np.empty(len(tensor.string_val), dtype=object)
    values[:] = list(tensor.string_val)
    return _fill(values, shape, count, "string_val", what)


def _fill(values: np.ndarray, shape: tuple[int, ...], count: int, field: str, what: str) -> Any:
    """`values` shaped as `shape`; a single value fills the whole tensor, as TF parses it."""
    if values.size == count:
        return values.reshape(shape)
    if values.size == 1:
        return np.full(shape, values[0], dtype=values.dtype)
    raise InvalidInput(
        f"{what}: shape {list(shape)} needs {count} values, {field} has {values.size}"
    )


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


# --- metadata and status -------------------------------------------------------------------------


def _signature_def(signature: Signature) -> tf_meta_graph_pb2.SignatureDef:
    out = tf_meta_graph_pb2.SignatureDef(method_name=signature.method_name)
    for spec in signature.inputs:
        out.inputs[spec.name].CopyFrom(_tensor_info(spec))
    for spec in signature.outputs:
        out.outputs[spec.name].CopyFrom(_tensor_info(spec))
    return out


def _tensor_info(spec: TensorSpec) -> tf_meta_graph_pb2.TensorInfo:
    info = tf_meta_graph_pb2.TensorInfo(
        name=spec.name, dtype=_DT.Value(V2_TO_TF.get(spec.datatype, "DT_INVALID"))
    )
    for size in spec.shape:
        info.tensor_shape.dim.add(size=size)
    return info


def _status(status: VersionStatus) -> apis.ModelVersionStatus:
    code = _ERROR_CODES.get(status.error_code, tf_error_codes_pb2.UNKNOWN)
    return apis.ModelVersionStatus(
        version=status.id.version,
        state=int(status.state),
        status=apis.StatusProto(error_code=code, error_message=status.error or ""),
    )
