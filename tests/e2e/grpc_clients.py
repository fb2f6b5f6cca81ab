"""Client side of the gRPC end-to-end tests, run as a child process: `python grpc_clients.py
SCENARIO ADDRESS` prints one JSON object of results.

A child process, because `tritonclient.grpc` and `tensorflow-serving-api` register the same
protobuf names (`inference.*`, `tensorflow.serving.*`) as `pyserving.proto`, which the test
process imports elsewhere: one process must not hold both. Only real client libraries here.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import numpy as np

A = np.arange(8, dtype=np.float32).reshape(2, 4)
B = np.full((2, 4), 0.5, dtype=np.float32)
X = np.linspace(-1.0, 1.0, 2 * 64, dtype=np.float32).reshape(2, 64)


def triton(address: str) -> dict[str, Any]:
    import tritonclient.grpc as tg

    client = tg.InferenceServerClient(address)
    out: dict[str, Any] = {
        "live": client.is_server_live(),
        "ready": client.is_server_ready(),
        "model_ready": client.is_model_ready("mlp"),
        "model_ready_v1": client.is_model_ready("mlp", "1"),
        "model_ready_v9": client.is_model_ready("mlp", "9"),
        "server_metadata": client.get_server_metadata(as_json=True),
        "model_metadata": client.get_model_metadata("twoio", as_json=True),
        "model_config": client.get_model_config("twoio", as_json=True),
    }

    def inputs(a: np.ndarray, b: np.ndarray) -> list[Any]:
        items = []
        for name, array in (("a", a), ("b", b)):
            item = tg.InferInput(name, list(array.shape), tg.np_to_triton_dtype(array.dtype))
            item.set_data_from_numpy(array)
            items.append(item)
        return items

    result = client.infer("twoio", inputs(A, B))
    out["twoio"] = {
        "sum": result.as_numpy("sum").tolist(),
        "max_index": result.as_numpy("max_index").tolist(),
        "version": result.get_response().model_version,
        "outputs": [o.name for o in result.get_response().outputs],
    }
    only = client.infer("twoio", inputs(A, B), outputs=[tg.InferRequestedOutput("max_index")])
    out["twoio_filtered"] = [o.name for o in only.get_response().outputs]
    x = tg.InferInput("input", list(X.shape), "FP32")
    x.set_data_from_numpy(X)
    for version in ("1", "2", ""):
        result = client.infer("mlp", [x], model_version=version, request_id=f"r{version}")
        out[f"mlp_{version or 'latest'}"] = {
            "output": result.as_numpy("output").tolist(),
            "version": result.get_response().model_version,
            "id": result.get_response().id,
        }
    errors: dict[str, Any] = {}
    cases = {
        "unknown_model": lambda: client.infer("nope", [x]),
        "unknown_version": lambda: client.infer("mlp", [x], model_version="9"),
        "bad_dtype": lambda: client.infer("twoio", inputs(A.astype(np.int32), B)),
        "bad_shape": lambda: client.infer("twoio", inputs(A, B.reshape(4, 2))),
        "metadata_unknown": lambda: client.get_model_metadata("nope"),
        "load_without_control": lambda: client.load_model("mlp"),
    }
    for key, call in cases.items():
        try:
            call()
            errors[key] = None
        except tg.InferenceServerException as exc:
            errors[key] = {"status": exc.status(), "message": exc.message()}
    out["errors"] = errors
    out["index"] = client.get_model_repository_index(as_json=True)
    out["stats"] = client.get_inference_statistics("twoio", as_json=True)
    client.close()
    return out


def tfserving(address: str) -> dict[str, Any]:
    import grpc
    import tensorflow as tf
    from tensorflow_serving.apis import (
        get_model_metadata_pb2,
        get_model_status_pb2,
        model_service_pb2_grpc,
        predict_pb2,
        prediction_service_pb2_grpc,
    )

    out: dict[str, Any] = {}
    with grpc.insecure_channel(address) as channel:
        predict = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        models = model_service_pb2_grpc.ModelServiceStub(channel)
        for key, version, label in (
            ("v1", 1, None),
            ("v2", 2, None),
            ("stable", None, "stable"),
            ("canary", None, "canary"),
            ("latest", None, None),
        ):
            request = predict_pb2.PredictRequest()
            request.model_spec.name = "mlp"
            if version is not None:
                request.model_spec.version.value = version
            if label is not None:
                request.model_spec.version_label = label
            request.inputs["input"].CopyFrom(tf.make_tensor_proto(X))
            response = predict.Predict(request, timeout=30)
            out[key] = {
                "output": tf.make_ndarray(response.outputs["output"]).tolist(),
                "version": response.model_spec.version.value,
                "signature": response.model_spec.signature_name,
            }
        request = predict_pb2.PredictRequest()
        request.model_spec.name = "twoio"
        request.inputs["a"].CopyFrom(tf.make_tensor_proto(A))
        request.inputs["b"].float_val.append(0.5)  # one typed value fills the shape, as in TF
        request.inputs["b"].dtype = tf.float32.as_datatype_enum
        for size in (2, 4):
            request.inputs["b"].tensor_shape.dim.add(size=size)
        request.output_filter.append("max_index")
        response = predict.Predict(request, timeout=30)
        out["twoio"] = {
            key: tf.make_ndarray(value).tolist() for key, value in response.outputs.items()
        }
        metadata_request = get_model_metadata_pb2.GetModelMetadataRequest(
            metadata_field=["signature_def"]
        )
        metadata_request.model_spec.name = "mlp"
        metadata = predict.GetModelMetadata(metadata_request, timeout=30)
        signatures = get_model_metadata_pb2.SignatureDefMap()
        metadata.metadata["signature_def"].Unpack(signatures)
        signature = signatures.signature_def["serving_default"]
        out["metadata"] = {
            "version": metadata.model_spec.version.value,
            "inputs": {
                k: [tf.dtypes.as_dtype(v.dtype).name, [d.size for d in v.tensor_shape.dim]]
                for k, v in signature.inputs.items()
            },
            "outputs": sorted(signature.outputs),
            "method_name": signature.method_name,
        }
        status_request = get_model_status_pb2.GetModelStatusRequest()
        status_request.model_spec.name = "mlp"
        status = models.GetModelStatus(status_request, timeout=30)
        out["status"] = [
            [s.version, get_model_status_pb2.ModelVersionStatus.State.Name(s.state)]
            for s in status.model_version_status
        ]
        errors: dict[str, Any] = {}
        bad = predict_pb2.PredictRequest()
        bad.model_spec.name = "mlp"
        bad.inputs["input"].CopyFrom(tf.make_tensor_proto(X.astype(np.float64)))
        unknown = predict_pb2.PredictRequest()
        unknown.model_spec.name = "mlp"
        unknown.model_spec.version_label = "nope"
        missing = predict_pb2.PredictRequest()
        missing.model_spec.name = "nope"
        for key, call in (
            ("bad_dtype", lambda: predict.Predict(bad, timeout=30)),
            ("unknown_label", lambda: predict.Predict(unknown, timeout=30)),
            ("unknown_model", lambda: predict.Predict(missing, timeout=30)),
        ):
            try:
                call()
                errors[key] = None
            except grpc.RpcError as exc:
                errors[key] = {"code": exc.code().name, "details": exc.details()}
        out["errors"] = errors
    return out


if __name__ == "__main__":
    scenario, address = sys.argv[1], sys.argv[2]
    result = {"triton": triton, "tfserving": tfserving}[scenario](address)
    print("RESULT " + json.dumps(result))
