"""KServe V2 gRPC: `inference.GRPCInferenceService`, wire-compatible with `tritonclient.grpc`.

Inputs come from `raw_input_contents` (one entry per input, in order; decoded without copying)
or from typed `contents`; outputs always go out in `raw_output_contents`, one per output in
order (v2-protocol.md §5.4-5.5, §8.2). Every inference goes through InferenceService.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import time
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any

import grpc

from pyserving.api.control_auth import ControlAuth
from pyserving.api.grpc.control import ModelControl, authorize_call, require_control
from pyserving.api.grpc.rpc import (
    Context,
    deadline_of,
    error_status,
    observe,
    parse_sized,
    release_frames,
    stream_handler,
    unary_handler,
)
from pyserving.api.grpc.v2_stream import FINAL_RESPONSE, DecoupledStreams, final_response
from pyserving.api.rest.v2 import index_from_service
from pyserving.proto import grpc_service_pb2 as pb
from pyserving.protocols import v2_errors, v2_grpc, v2_metadata, v2_statistics
from pyserving.protocols.request import parse_version
from pyserving.serving.inference import InferenceService, answered_version
from pyserving.serving.off_loop import run_sized

__all__ = ["SERVICE_NAME", "V2Servicer"]

SERVICE_NAME = "inference.GRPCInferenceService"
_DATA_TYPES: dict[str, int] = dict(pb.DataType.items())


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
        control_auth: ControlAuth | None = None,
    ) -> None:
        self._service = service
        self._ready_names = ready_names or service.model_names
        self._control = model_control
        self._auth = control_auth  # None: repository load/unload need no token
        self._server_version = server_version or _package_version()

    def handler(self) -> grpc.GenericRpcHandler:
        """The generic handler to add to a grpc.aio server."""

        def model_name(request: Any) -> str:
            return request.model_name

        methods = {
            "ServerLive": unary_handler(self.server_live, pb.ServerLiveRequest),
            "ServerReady": unary_handler(self.server_ready, pb.ServerReadyRequest),
            "ModelReady": unary_handler(self.model_ready, pb.ModelReadyRequest),
            "ServerMetadata": unary_handler(self.server_metadata, pb.ServerMetadataRequest),
            "ModelMetadata": unary_handler(self.model_metadata, pb.ModelMetadataRequest),
            # counted under the version `InferenceService` answered on (`answered_version`)
            "ModelInfer": unary_handler(self.model_infer, pb.ModelInferRequest, model_name),
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
            **v2_metadata.server_metadata(self._server_version, v2_metadata.GRPC_EXTENSIONS)
        )

    async def model_metadata(self, request: pb.ModelMetadataRequest, context: Context) -> Any:
        service = self._service
        with (
            v2_errors.in_triton_words(),
            service.acquire(request.name, _version(request.version)) as handle,
        ):
            signature = service.signature(handle, None)
            servable = handle.servable
        versions = service.available_versions(request.name)
        return pb.ModelMetadataResponse(
            **v2_metadata.model_metadata(request.name, versions, servable, signature)
        )

    async def model_config(self, request: pb.ModelConfigRequest, context: Context) -> Any:
        service = self._service
        with (
            v2_errors.in_triton_words(),
            service.acquire(request.name, _version(request.version)) as handle,
        ):
            signature = service.signature(handle, None)
            servable = handle.servable
        config = v2_metadata.model_config(request.name, servable, signature)
        for tensor in (*config["input"], *config["output"]):
            tensor["data_type"] = _DATA_TYPES.get(tensor["data_type"], pb.TYPE_INVALID)
        return pb.ModelConfigResponse(config=pb.ModelConfig(**config))

    async def model_statistics(self, request: pb.ModelStatisticsRequest, context: Context) -> Any:
        version = _version(request.version) if request.name else None
        # off the event loop, the message included: both grow with the models and versions served
        return await asyncio.to_thread(_statistics_message, self._service, request.name, version)

    # --- repository ----------------------------------------------------------------------------

    async def repository_index(self, request: pb.RepositoryIndexRequest, context: Context) -> Any:
        if self._control is not None:
            entries = list(await asyncio.to_thread(self._control.repository_index))
        else:
            entries = index_from_service(self._service)
        models = v2_metadata.repository_index(entries, request.ready)
        return pb.RepositoryIndexResponse(models=models)

    async def repository_model_load(
        self, request: pb.RepositoryModelLoadRequest, context: Context
    ) -> Any:
        control = require_control(self._control)
        authorize_call(self._auth, context)
        v2_metadata.check_repository_request(
            "load", request.model_name, request.repository_name, request.parameters
        )
        await asyncio.to_thread(control.load_model, request.model_name)
        return pb.RepositoryModelLoadResponse()

    async def repository_model_unload(
        self, request: pb.RepositoryModelUnloadRequest, context: Context
    ) -> Any:
        control = require_control(self._control)
        authorize_call(self._auth, context)
        v2_metadata.check_repository_request(
            "unload", request.model_name, request.repository_name, request.parameters
        )
        await asyncio.to_thread(control.unload_model, request.model_name)
        return pb.RepositoryModelUnloadResponse()

    # --- inference -----------------------------------------------------------------------------

    async def model_infer(self, request: pb.ModelInferRequest, context: Context) -> bytes:
        """The answer's wire bytes (`v2_grpc.response_to_wire`: no response message is built)."""
        with v2_errors.in_triton_words():
            response = await self._service.infer(
                v2_grpc.request_from_proto(request, deadline_of(context))
            )
        return await run_sized(response.nbytes, v2_grpc.response_to_wire, response)

    async def model_stream_infer(
        self, requests: AsyncIterator[bytes], context: Context
    ) -> AsyncIterator[pb.ModelStreamInferResponse]:
        """Answers each request in order; a failed one gets `error_message`, the stream goes on.
        A streaming servable answers several responses per request (v2_stream)."""
        decoupled = DecoupledStreams(self._service, context)
        async for data in requests:
            started = time.perf_counter()
            model = request_id = ""
            answered_version.set(None)
            try:
                try:
                    request = await parse_sized(pb.ModelInferRequest, data)
                finally:
                    del data  # not held by an error's frames (see release_frames)
                model, request_id = request.model_name, request.id
                with v2_errors.in_triton_words():
                    streams = await decoupled.open(request, deadline_of(context))
                response = None if streams else await self._infer(request, deadline_of(context))
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                code, message = error_status(exc)
                release_frames(exc)  # the error's frames hold the request: see release_frames
            else:
                if response is None:
                    request = None  # type: ignore[assignment]  # not held while it streams
                    async for part in decoupled.responses():
                        yield part
                    continue
                observe(model, int(response.model_version), grpc.StatusCode.OK, started)
                response.parameters[FINAL_RESPONSE].bool_param = True  # its only response
                yield pb.ModelStreamInferResponse(infer_response=response)
                continue
            request = None  # type: ignore[assignment]  # not held while the client reads
            if model:
                observe(model, None, code, started)
            version = answered_version.get()
            yield pb.ModelStreamInferResponse(
                error_message=message, infer_response=final_response(model, version, request_id)
            )

    async def _infer(self, request: pb.ModelInferRequest, deadline: float | None) -> Any:
        with v2_errors.in_triton_words():
            response = await self._service.infer(v2_grpc.request_from_proto(request, deadline))
        return await run_sized(response.nbytes, v2_grpc.response_to_proto, response)


# --- helpers -------------------------------------------------------------------------------------


def _version(text: str) -> int | None:
    return parse_version(text) if text else None


def _statistics_message(
    service: InferenceService, name: str, version: int | None
) -> pb.ModelStatisticsResponse:
    return pb.ModelStatisticsResponse(**v2_statistics.model_statistics(service, name, version))


def _package_version() -> str:
    try:
        return importlib.metadata.version("pyserving")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"
