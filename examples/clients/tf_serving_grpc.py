"""TF Serving's gRPC API with the tensorflow-serving-api stubs (`pip install
tensorflow-serving-api`, which pulls TensorFlow for `make_tensor_proto`), against `make demo`
(gRPC on localhost:8500). Run: python examples/clients/tf_serving_grpc.py [host:port]"""

import sys

import grpc
import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

target = sys.argv[1] if len(sys.argv) > 1 else "localhost:8500"
channel = grpc.insecure_channel(target)
predictions = prediction_service_pb2_grpc.PredictionServiceStub(channel)
models = model_service_pb2_grpc.ModelServiceStub(channel)

status_request = get_model_status_pb2.GetModelStatusRequest()
status_request.model_spec.name = "mlp"
for version in models.GetModelStatus(status_request, timeout=5.0).model_version_status:
    print(
        "mlp version",
        version.version,
        get_model_status_pb2.ModelVersionStatus.State.Name(version.state),
    )

metadata_request = get_model_metadata_pb2.GetModelMetadataRequest()
metadata_request.model_spec.name = "mlp"
metadata_request.metadata_field.append("signature_def")
print(
    "metadata type:",
    predictions.GetModelMetadata(metadata_request, timeout=5.0).metadata["signature_def"].type_url,
)

request = predict_pb2.PredictRequest()
request.model_spec.name = "mlp"
request.model_spec.version_label = "canary"  # or .version.value = 1; neither: the latest
request.inputs["input"].CopyFrom(tf.make_tensor_proto(np.full((2, 64), 0.1, dtype=np.float32)))
response = predictions.Predict(request, timeout=5.0)
print(
    "output:",
    tf.make_ndarray(response.outputs["output"]).shape,
    "version",
    response.model_spec.version.value,
)
channel.close()
