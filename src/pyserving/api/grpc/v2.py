"""KServe V2 gRPC: `inference.GRPCInferenceService`, wire-compatible with `tritonclient.grpc`.

Inputs come from `raw_input_contents` (one entry per input, in order; decoded without copying)
or from typed `contents`; outputs always go out in `raw_output_contents`, one per output in
order (v2-protocol.md §5.4-5.5, §8.2). Every inference goes through InferenceService.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import math
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from typing import Any

import grpc
import numpy as np

from pyserving import metrics
from pyserving.api.grpc.control import ModelControl, require_control
from pyserving.api.grpc.rpc import (
    Context,
    deadline_of,
    error_status,
    observe,
    parse,
    stream_handler,
    unary_handler,
)
from pyserving.api.rest.binary import decode_tensor, encode_tensor
from pyserving.api.rest.v2 import index_from_service
from pyserving.errors import InvalidInput, ModelError, NotFound
from pyserving.platforms.signature import NUMPY_TO_V2, V2_TO_NUMPY, TensorSpec
from pyserving.proto import grpc_service_pb2 as pb
from pyserving.serving.inference import InferenceService

__all__ = ["SERVICE_NAME", "V2Servicer"]

SERVICE_NAME = "inference.GRPCInferenceService"
#: extensions advertised by ServerMetadata (the gRPC API has no binary tensor extension)
EXTENSIONS = ("model_configuration", "model_repository", "statistics")

_PLATFORMS = {  # Servable.platform → the V2 "<framework>_<format>" platform name
    "onnx": "onnx_onnxv1",
    "tensorflow": "tensorflow_savedmodel",
    "torch": "pytorch_torchscript",
}
_MAX_RANK = 32
_DATA_TYPES: dict[str, int] = dict(pb.DataType.items())
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


class V2Servicer:
    """The KServe V2 service over one InferenceService.

    Thread-safety: stateless per call; any number of RPCs may run concurrently on the event loop.
    Blocking: inference runs on InferenceService's threads and model control on worker threads;
    no handler blocks the event loop.
    Cancellation: a cancelled or expired call's queued work is dropped (InferenceService.run).
    """

    def __init__(
        self,
        service: InferenceService,
        ready_names: Callable[[], Iterable[str]] | None = None,
        model_control: ModelControl | None = None,
        server_version: str = "",
    ) -> None:
        self._service = service
        self._ready_names = ready_names or service.model_names
        self._control = model_control
        self._server_version = server_version or _package_version()

    def handler(self) -> grpc.GenericRpcHandler:
        """The generic handler to add to a grpc.aio server."""

        def model_name(request: Any) -> str:
            return request.model_name

        def answered(response: Any) -> int | None:
            return int(response.model_version) if response.model_version else None

        methods = {
            "ServerLive": unary_handler(self.server_live, pb.ServerLiveRequest),
            "ServerReady": unary_handler(self.server_ready, pb.ServerReadyRequest),
            "ModelReady": unary_handler(self.model_ready, pb.ModelReadyRequest),
            "ServerMetadata": unary_handler(self.server_metadata, pb.ServerMetadataRequest),
            "ModelMetadata": unary_handler(self.model_metadata, pb.ModelMetadataRequest),
            "ModelInfer": unary_handler(
                self.model_infer, pb.ModelInferRequest, model_name, answered
            ),
            "ModelStreamInfer": stream_handler(self.model_stream_infer),
            "ModelConfig": unary_handler(self.model_config, pb.ModelConfigRequest),
            "ModelStatistics": unary_handler(self.model_statistics, pb.ModelStatisticsRequest),
            "RepositoryIndex": unary_handler(self.repository_index, pb.RepositoryIndexRequest),
            "RepositoryModelLoad": unary_handler(
                self.repository_model_load, pb.RepositoryModelLoadRequest
            ),
            "RepositoryModelUnload": unary_handler(
                self.repository_model_unload, pb.RepositoryModelUnloadRequest
            ),
        }
        return grpc.method_handlers_generic_handler(SERVICE_NAME, methods)

    # --- health and metadata -------------------------------------------------------------------

    async def server_live(self, request: pb.ServerLiveRequest, context: Context) -> Any:
        return pb.ServerLiveResponse(live=True)

    async def server_ready(self, request: pb.ServerReadyRequest, context: Context) -> Any:
        return pb.ServerReadyResponse(ready=self._service.is_ready(self._ready_names()))

    async def model_ready(self, request: pb.ModelReadyRequest, context: Context) -> Any:
        version = _version(request.version)
        return pb.ModelReadyResponse(ready=self._service.model_ready(request.name, version))

    async def server_metadata(self, request: pb.ServerMetadataRequest, context: Context) -> Any:
        return pb.ServerMetadataResponse(
            name="pyserving", version=self._server_version, extensions=EXTENSIONS
        )

    async def model_metadata(self, request: pb.ModelMetadataRequest, context: Context) -> Any:
        service = self._service
        with service.acquire(request.name, _version(request.version)) as handle:
            signature = service.signature(handle, None)
            platform = _platform(handle.servable)
        return pb.ModelMetadataResponse(
            name=request.name,
            versions=[str(v) for v in service.available_versions(request.name)],
            platform=platform,
            inputs=[_tensor_metadata(spec) for spec in signature.inputs],
            outputs=[_tensor_metadata(spec) for spec in signature.outputs],
        )

    async def model_config(self, request: pb.ModelConfigRequest, context: Context) -> Any:
        service = self._service
        with service.acquire(request.name, _version(request.version)) as handle:
            signature = service.signature(handle, None)
            servable = handle.servable
        return pb.ModelConfigResponse(
            config=pb.ModelConfig(
                name=request.name,
                platform=_platform(servable),
                backend=getattr(servable, "platform", "") or "python",
                max_batch_size=0,
                input=[
                    pb.ModelInput(name=s.name, data_type=_data_type(s), dims=s.shape)
                    for s in signature.inputs
                ],
                output=[
                    pb.ModelOutput(name=s.name, data_type=_data_type(s), dims=s.shape)
                    for s in signature.outputs
                ],
            )
        )

    async def model_statistics(self, request: pb.ModelStatisticsRequest, context: Context) -> Any:
        service = self._service
        if request.name:
            version = _version(request.version)
            if not service.model_status(request.name, version):
                raise NotFound(f"Could not find any versions of model {request.name}")
            names = [request.name]
        else:
            version, names = None, service.model_names()
        counts = _request_counts()
        stats = []
        for name in names:
            versions = [version] if version is not None else service.available_versions(name)
            for v in versions:
                success, fail = counts.get((name, str(v)), (0, 0))
                stats.append(
                    pb.ModelStatistics(
                        name=name,
                        version=str(v),
                        inference_count=success,
                        execution_count=success,
                        inference_stats=pb.InferStatistics(
                            success=pb.StatisticDuration(count=success),
                            fail=pb.StatisticDuration(count=fail),
                        ),
                    )
                )
        return pb.ModelStatisticsResponse(model_stats=stats)

    # --- repository ----------------------------------------------------------------------------

    async def repository_index(self, request: pb.RepositoryIndexRequest, context: Context) -> Any:
        if self._control is not None:
            entries = list(await asyncio.to_thread(self._control.repository_index))
        else:
            entries = index_from_service(self._service)
        models = [
            pb.RepositoryIndexResponse.ModelIndex(
                name=str(e.get("name", "")),
                version=str(e.get("version", "")),
                state=str(e.get("state", "")),
                reason=str(e.get("reason", "")),
            )
            for e in entries
        ]
        if request.ready:
            models = [m for m in models if m.state == "READY"]
        return pb.RepositoryIndexResponse(models=models)

    async def repository_model_load(
        self, request: pb.RepositoryModelLoadRequest, context: Context
    ) -> Any:
        control = require_control(self._control)
        _check_repository_request(request, allowed=())
        await asyncio.to_thread(control.load_model, request.model_name)
        return pb.RepositoryModelLoadResponse()

    async def repository_model_unload(
        self, request: pb.RepositoryModelUnloadRequest, context: Context
    ) -> Any:
        control = require_control(self._control)
        _check_repository_request(request, allowed=("unload_dependents",))
        await asyncio.to_thread(control.unload_model, request.model_name)
        return pb.RepositoryModelUnloadResponse()

    # --- inference -----------------------------------------------------------------------------

    async def model_infer(self, request: pb.ModelInferRequest, context: Context) -> Any:
        return await self._infer(request, deadline_of(context))

    async def model_stream_infer(
        self, requests: AsyncIterator[bytes], context: Context
    ) -> AsyncIterator[pb.ModelStreamInferResponse]:
        """Answers each request in order; a failed one gets `error_message`, the stream goes on."""
        async for data in requests:
            started = time.perf_counter()
            model = ""
            try:
                request = parse(pb.ModelInferRequest, data)
                model = request.model_name
                response = await self._infer(request, deadline_of(context))
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                code, message = error_status(exc)
                if model:
                    observe(model, None, code, started)
                yield pb.ModelStreamInferResponse(error_message=message)
            else:
                observe(model, int(response.model_version), grpc.StatusCode.OK, started)
                yield pb.ModelStreamInferResponse(infer_response=response)

    async def _infer(self, request: pb.ModelInferRequest, deadline: float | None) -> Any:
        service = self._service
        deadline = _timeout_deadline(request.parameters, deadline)
        output_names = _requested_outputs(request.outputs)
        with service.acquire(request.model_name, _version(request.model_version)) as handle:
            signature = service.signature(handle, None)
            inputs = _decode_inputs(request, service.options.max_tensor_elements)
            results = await service.run(handle, signature, inputs, output_names, deadline)
            answered = handle.id.version
        response = pb.ModelInferResponse(
            model_name=request.model_name, model_version=str(answered), id=request.id
        )
        raw = response.raw_output_contents
        for name, array in results.items():
            response.outputs.add(name=name, datatype=_datatype(name, array), shape=array.shape)
            raw.append(encode_tensor(array))
        return response


# --- request decoding ----------------------------------------------------------------------------


def _version(text: str) -> int | None:
    if not text:
        return None
    if not text.isdigit():
        raise InvalidInput(f'model version must be a non-negative integer, got "{text[:40]}"')
    return int(text)


def _parameter_value(parameter: pb.InferParameter) -> Any:
    kind = parameter.WhichOneof("parameter_choice")
    return None if kind is None else getattr(parameter, kind)


def _timeout_deadline(
    parameters: Mapping[str, pb.InferParameter], deadline: float | None
) -> float | None:
    """The earlier of the client's deadline and the V2 `timeout` parameter (microseconds)."""
    if "timeout" not in parameters:
        return deadline
    timeout_us = _parameter_value(parameters["timeout"])
    if type(timeout_us) is not int or timeout_us < 0:
        raise InvalidInput(
            f"parameter 'timeout' must be a non-negative integer (microseconds), got {timeout_us!r}"
        )
    own = time.monotonic() + timeout_us / 1e6
    return own if deadline is None else min(own, deadline)


def _requested_outputs(outputs: Iterable[Any]) -> list[str] | None:
    names: list[str] = []
    for item in outputs:
        what = f'output "{item.name}"'
        if item.name in names:
            raise InvalidInput(f"{what} is requested more than once")
        if "classification" in item.parameters:
            raise InvalidInput(f"{what}: the classification extension is not supported")
        if "shared_memory_region" in item.parameters:
            raise InvalidInput(f"{what}: shared memory is not supported")
        names.append(item.name)
    return names or None


def _decode_inputs(request: pb.ModelInferRequest, max_elements: int) -> dict[str, np.ndarray]:
    raw = request.raw_input_contents
    inputs = request.inputs
    if raw and len(raw) != len(inputs):
        raise InvalidInput(
            f"raw_input_contents has {len(raw)} entries but the request has {len(inputs)}"
            " inputs; give one entry per input, in the order of 'inputs'"
        )
    arrays: dict[str, np.ndarray] = {}
    for i, item in enumerate(inputs):
        name = item.name
        what = f'input "{name}"'
        if name in arrays:
            raise InvalidInput(f"{what} appears more than once")
        if "shared_memory_region" in item.parameters:
            raise InvalidInput(f"{what}: shared memory is not supported")
        datatype = item.datatype
        if datatype not in V2_TO_NUMPY:
            raise InvalidInput(f'{what}: unsupported datatype "{datatype[:40]}"')
        shape = _shape(item.shape, what, max_elements)
        if raw:
            if item.HasField("contents"):
                raise InvalidInput(
                    f"{what}: contents field must not be specified when using raw_input_contents"
                )
            arrays[name] = decode_tensor(datatype, shape, memoryview(raw[i]), what)
        else:
            arrays[name] = _typed_contents(item, datatype, shape, what)
    return arrays


def _shape(dims: Iterable[int], what: str, max_elements: int) -> tuple[int, ...]:
    shape = tuple(dims)
    if len(shape) > _MAX_RANK:
        raise InvalidInput(f"{what}: rank {len(shape)} exceeds the limit of {_MAX_RANK}")
    if any(d < 0 for d in shape):
        raise InvalidInput(f"{what}: shape {list(shape)} has a negative dimension")
    count = math.prod(shape)
    # the non-zero dimensions are bounded too: numpy cannot shape (0, huge, huge)
    if count > max_elements or math.prod(d for d in shape if d) > max_elements:
        raise InvalidInput(
            f"{what}: shape {list(shape)} exceeds the limit of {max_elements} elements"
        )
    return shape


def _typed_contents(item: Any, datatype: str, shape: tuple[int, ...], what: str) -> np.ndarray:
    field = _CONTENTS_FIELD.get(datatype)
    if field is None:
        raise InvalidInput(
            f"{what}: {datatype} data has no typed contents field; use raw_input_contents"
        )
    values = getattr(item.contents, field)
    count = math.prod(shape)
    if len(values) != count:
        raise InvalidInput(
            f"{what}: shape {list(shape)} needs {count} elements, contents.{field} has"
            f" {len(values)}"
        )
    if datatype == "BYTES":
        array = np.empty(count, dtype=object)
        array[:] = list(values)
        return array.reshape(shape)
    dtype = V2_TO_NUMPY[datatype]
    wide = np.array(values, dtype=np.float64 if dtype.kind == "f" else None)
    if dtype.kind in "iu" and wide.size:
        info = np.iinfo(dtype)
        if wide.min() < info.min or wide.max() > info.max:
            raise InvalidInput(f"{what}: contents.{field} has values out of range for {datatype}")
    return wide.astype(dtype, copy=False).reshape(shape)


def _check_repository_request(request: Any, allowed: tuple[str, ...]) -> None:
    if not request.model_name:
        raise InvalidInput("model_name is empty")
    if request.repository_name:
        raise InvalidInput(
            f'repository "{request.repository_name[:80]}" is unknown: this server has one'
            " repository (leave repository_name empty)"
        )
    for key in request.parameters:
        if key not in allowed:
            raise InvalidInput(
                f'parameter "{key[:80]}" is not supported (a config or files cannot be sent'
                " with a load; edit the model config instead)"
            )


# --- response encoding ---------------------------------------------------------------------------


def _datatype(name: str, array: np.ndarray) -> str:
    if array.dtype.kind in "OSU":
        return "BYTES"
    datatype = NUMPY_TO_V2.get(array.dtype)
    if datatype is None:
        raise ModelError(f'output "{name}" has dtype {array.dtype}, which V2 cannot represent')
    return datatype


def _platform(servable: Any) -> str:
    platform = getattr(servable, "platform", "") or "python"
    return _PLATFORMS.get(platform, platform)


def _tensor_metadata(spec: TensorSpec) -> pb.ModelMetadataResponse.TensorMetadata:
    return pb.ModelMetadataResponse.TensorMetadata(
        name=spec.name, datatype=spec.datatype, shape=spec.shape
    )


def _data_type(spec: TensorSpec) -> int:
    name = "TYPE_STRING" if spec.datatype == "BYTES" else f"TYPE_{spec.datatype}"
    return _DATA_TYPES.get(name, pb.TYPE_INVALID)


def _request_counts() -> dict[tuple[str, str], tuple[int, int]]:
    """(model, version) → (successful, failed) requests over both APIs, from the metrics."""
    counts: dict[tuple[str, str], list[int]] = {}
    for family in metrics.REQUESTS.collect():
        for sample in family.samples:
            if not sample.name.endswith("_total"):
                continue
            labels = sample.labels
            entry = counts.setdefault((labels["model"], labels["version"]), [0, 0])
            entry[0 if labels["code"] == "200" else 1] += int(sample.value)
    return {key: (ok, failed) for key, (ok, failed) in counts.items()}


def _package_version() -> str:
    try:
        return importlib.metadata.version("pyserving")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"
