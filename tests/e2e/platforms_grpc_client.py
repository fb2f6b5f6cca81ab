"""Child process of test_platforms.py: real gRPC clients (tensorflow-serving-api's
PredictionService stub and tritonclient.grpc) call each model; prints their outputs as JSON.

`python platforms_grpc_client.py ADDRESS` reads `{model: {input: [values, dtype, shape]}}` on
stdin and prints `{model: {"tf": {output: values}, "v2": {output: values}}}`. A child process,
because these client libraries register protobuf names that `pyserving.proto` registers too.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import numpy as np


def as_json(array: np.ndarray) -> Any:
    if array.dtype == object or array.dtype.kind == "S":
        return [v.decode() if isinstance(v, bytes) else v for v in array.ravel().tolist()]
    return array.tolist()


def main() -> None:
    import grpc
    import tensorflow as tf
    import tritonclient.grpc as triton
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    address = sys.argv[1]
    requests: dict[str, dict[str, list[Any]]] = json.load(sys.stdin)
    results: dict[str, Any] = {}
    with grpc.insecure_channel(address) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        v2 = triton.InferenceServerClient(address)
        for model, inputs in requests.items():
            arrays = {
                name: np.array(
                    [v.encode() for v in values] if dtype == "object" else values,
                    dtype=object if dtype == "object" else dtype,
                ).reshape(shape)
                for name, (values, dtype, shape) in inputs.items()
            }
            request = predict_pb2.PredictRequest()
            request.model_spec.name = model
            for name, array in arrays.items():
                request.inputs[name].CopyFrom(tf.make_tensor_proto(array))
            response = stub.Predict(request, timeout=30)
            tf_outputs = {k: as_json(tf.make_ndarray(v)) for k, v in response.outputs.items()}
            v2_inputs = []
            for name, array in arrays.items():
                datatype = "BYTES" if array.dtype == object else triton_dtype(array.dtype)
                item = triton.InferInput(name, list(array.shape), datatype)
                item.set_data_from_numpy(array)
                v2_inputs.append(item)
            answer = v2.infer(model, v2_inputs)
            v2_outputs = {
                out["name"]: as_json(answer.as_numpy(out["name"]))
                for out in answer.get_response(as_json=True)["outputs"]
            }
            results[model] = {
                "tf": tf_outputs,
                "tf_version": response.model_spec.version.value,
                "v2": v2_outputs,
            }
        v2.close()
    print(json.dumps(results))


def triton_dtype(dtype: np.dtype) -> str:
    from tritonclient.utils import np_to_triton_dtype

    return str(np_to_triton_dtype(dtype))


if __name__ == "__main__":
    main()
