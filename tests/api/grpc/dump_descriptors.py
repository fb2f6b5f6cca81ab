"""Child-process helper for test_proto_compat: prints the fields of protobuf messages as JSON.

`ours` imports pyserving.proto; `real` imports tritonclient's and tensorflow-serving-api's
generated modules. They register the same names, so each runs in its own process. Our copies
of TensorFlow's own messages live in package pyserving.tf; they are reported under TF's names.
"""

from __future__ import annotations

import importlib
import json
import sys
from typing import Any

from google.protobuf import descriptor_pool

OURS = [
    "grpc_service_pb2",
    "tf_serving_apis_pb2",
    "model_server_config_pb2",
    "file_system_storage_path_source_pb2",
    "logging_config_pb2",
    "session_bundle_config_pb2",
    "tf_types_pb2",
    "tf_example_pb2",
    "tf_meta_graph_pb2",
]
REAL = [
    "tritonclient.grpc.service_pb2",
    "tritonclient.grpc.model_config_pb2",
    "tensorflow_serving.apis.predict_pb2",
    "tensorflow_serving.apis.classification_pb2",
    "tensorflow_serving.apis.regression_pb2",
    "tensorflow_serving.apis.inference_pb2",
    "tensorflow_serving.apis.get_model_metadata_pb2",
    "tensorflow_serving.apis.get_model_status_pb2",
    "tensorflow_serving.apis.model_management_pb2",
    "tensorflow_serving.config.model_server_config_pb2",
]


def tensorflow_name(full_name: str) -> str:
    return (
        "tensorflow." + full_name[len("pyserving.tf.") :]
        if full_name.startswith("pyserving.tf.")
        else full_name
    )


def fields(message: Any) -> dict[str, Any]:
    return {
        f.name: [
            f.number,
            f.type,
            f.is_repeated,
            tensorflow_name(f.message_type.full_name) if f.message_type else None,
        ]
        for f in message.fields
    }


def walk(message: Any, out: dict[str, Any]) -> None:
    out[tensorflow_name(message.full_name)] = fields(message)
    for nested in message.nested_types:
        if not nested.GetOptions().map_entry:
            walk(nested, out)


def main() -> None:
    out: dict[str, Any] = {}
    if sys.argv[1] == "ours":
        for name in OURS:
            module = importlib.import_module(f"pyserving.proto.{name}")
            for message in module.DESCRIPTOR.message_types_by_name.values():
                walk(message, out)
    else:
        for name in REAL:
            try:
                importlib.import_module(name)
            except ImportError:
                continue
        pool = descriptor_pool.Default()
        for full_name in json.loads(sys.stdin.read()):
            try:
                out[full_name] = fields(pool.FindMessageTypeByName(full_name))
            except KeyError:
                out[full_name] = None
    print("RESULT " + json.dumps(out))


if __name__ == "__main__":
    main()
