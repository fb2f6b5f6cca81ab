"""TF Serving gRPC: `tensorflow.serving.PredictionService` and `ModelService`.

Wire-compatible with the `tensorflow-serving-api` stubs (tfserving.md §4). The protocol's rules
(TensorProto decoding and encoding, model specs, signature defs, examples) live in
`pyserving.protocols.tfserving` and `protocols.tf_examples`, shared with the REST API.
"""

from __future__ import annotations

import asyncio
from typing import Any

import grpc

from pyserving.api.control_auth import ControlAuth
from pyserving.api.grpc.control import ModelControl, authorize_call, require_control
from pyserving.api.grpc.rpc import Context, deadline_of, unary_handler
from pyserving.errors import InvalidInput
from pyserving.platforms.signature import Signature
from pyserving.proto import tf_serving_apis_pb2 as apis
from pyserving.protocols import tf_examples, tf_metadata, tfserving
from pyserving.serving import classify
from pyserving.serving.classify import CLASSIFY_METHOD, REGRESS_METHOD
from pyserving.serving.inference import InferenceService
from pyserving.serving.off_loop import run_sized

__all__ = ["MODEL_SERVICE", "PREDICTION_SERVICE", "ModelServicer", "PredictionServicer"]

PREDICTION_SERVICE = "tensorflow.serving.PredictionService"
MODEL_SERVICE = "tensorflow.serving.ModelService"

_SIGNATURE_DEF = "signature_def"


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
        infer_request = tfserving.predict_from_proto(request, deadline_of(context))
        response = await self._service.infer(infer_request)
        return await run_sized(response.nbytes, tfserving.predict_to_proto, response)

    async def classify(self, request: apis.ClassificationRequest, context: Context) -> Any:
        name, version, label = _model_spec(request)
        examples, shared = tf_examples.examples_from_proto(request.input)
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
            model_spec=tfserving.answer_spec(name, result.version, result.signature_name),
            result=tf_examples.classification_proto(result.classes),
        )

    async def regress(self, request: apis.RegressionRequest, context: Context) -> Any:
        name, version, label = _model_spec(request)
        examples, shared = tf_examples.examples_from_proto(request.input)
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
            model_spec=tfserving.answer_spec(name, result.version, result.signature_name),
            result=tf_examples.regression_proto(result.values),
        )

    async def multi_inference(self, request: apis.MultiInferenceRequest, context: Context) -> Any:
        """Every task (same model, distinct signatures) over the one shared input, in order."""
        tasks = _checked_tasks(request.tasks)
        examples, shared = tf_examples.examples_from_proto(request.input)
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
                model_spec=tfserving.answer_spec(name, result.version, result.signature_name)
            )
            if isinstance(result, classify.ClassifyResult):
                answer.classification_result.CopyFrom(
                    tf_examples.classification_proto(result.classes)
                )
            else:
                answer.regression_result.CopyFrom(tf_examples.regression_proto(result.values))
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
            signature_map.signature_def[key].CopyFrom(tf_metadata.signature_def_proto(signature))
        response = apis.GetModelMetadataResponse(
            model_spec=tfserving.answer_spec(name, answered, request.model_spec.signature_name)
        )
        response.metadata[_SIGNATURE_DEF].Pack(signature_map)
        return response


class ModelServicer:
    """`tensorflow.serving.ModelService`: version status and config reload (the reload needs
    `control_auth`'s token when one is set).

    Thread-safety: stateless per call. Blocking: a reload runs on a worker thread.
    """

    def __init__(
        self,
        service: InferenceService,
        model_control: ModelControl | None = None,
        control_auth: ControlAuth | None = None,
    ) -> None:
        self._service = service
        self._control = model_control
        self._auth = control_auth

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
        return apis.GetModelStatusResponse(
            model_version_status=[tf_metadata.status_proto(s) for s in states]
        )

    async def handle_reload_config_request(
        self, request: apis.ReloadConfigRequest, context: Context
    ) -> Any:
        control = require_control(self._control)
        authorize_call(self._auth, context)
        if request.config.WhichOneof("config") != "model_config_list":
            raise InvalidInput(
                "ServerCore::HandleReloadConfigRequest only supports reloading model_config_list"
            )
        await asyncio.to_thread(control.reload_config, request.config)
        return apis.ReloadConfigResponse(status=apis.StatusProto(error_code="OK"))


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


# --- model spec ----------------------------------------------------------------------------------


def _spec_name(request: Any) -> str:
    return request.model_spec.name


def _answered(response: Any) -> int | None:
    spec = response.model_spec
    return spec.version.value if spec.HasField("version") else None


def _model_spec(request: Any) -> tuple[str, int | None, str | None]:
    return tfserving.model_spec(request.model_spec)
