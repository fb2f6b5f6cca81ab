"""Child process of test_platforms.py: tensorflow-serving-api's stub calls Classify, Regress
and MultiInference; prints the answers as JSON (a child process for the reason given in
platforms_grpc_client.py).

`python classify_grpc_client.py ADDRESS` reads `{"classify": [model, examples],
"regress": [model, examples]}` (examples: feature name → list of floats) on stdin.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import grpc


def fill(request_input: Any, examples: list[dict[str, list[float]]]) -> None:
    for example in examples:
        features = request_input.example_list.examples.add().features.feature
        for name, values in example.items():
            features[name].float_list.value.extend(values)


def classes(result: Any) -> list[list[list[Any]]]:
    return [[[c.label, c.score] for c in row.classes] for row in result.classifications]


def code_of(call: Any) -> str:
    try:
        call()
    except grpc.RpcError as error:
        return f"{error.code().name}: {error.details()}"
    return "OK"


def main() -> None:
    from tensorflow_serving.apis import (
        classification_pb2,
        inference_pb2,
        prediction_service_pb2_grpc,
        regression_pb2,
    )

    asked = json.load(sys.stdin)
    out: dict[str, Any] = {}
    with grpc.insecure_channel(sys.argv[1]) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        model, examples = asked["classify"]
        classify = classification_pb2.ClassificationRequest()
        classify.model_spec.name = model
        fill(classify.input, examples)
        answer = stub.Classify(classify, timeout=30)
        out["classify"] = classes(answer.result)
        out["classify_version"] = answer.model_spec.version.value

        multi = inference_pb2.MultiInferenceRequest()
        task = multi.tasks.add(method_name="tensorflow/serving/classify")
        task.model_spec.name = model
        fill(multi.input, examples)
        out["multi"] = classes(
            stub.MultiInference(multi, timeout=30).results[0].classification_result
        )
        other = multi.tasks.add(method_name="tensorflow/serving/regress")
        other.model_spec.name = "another"
        out["multi_two_models"] = code_of(lambda: stub.MultiInference(multi, timeout=30))

        model, examples = asked["regress"]
        regress = regression_pb2.RegressionRequest()
        regress.model_spec.name = model
        fill(regress.input, examples)
        out["regress"] = [r.value for r in stub.Regress(regress, timeout=30).result.regressions]
        classify.model_spec.name = model
        out["classify_a_regressor"] = code_of(lambda: stub.Classify(classify, timeout=30))
        empty = regression_pb2.RegressionRequest()
        empty.model_spec.name = model
        out["regress_nothing"] = code_of(lambda: stub.Regress(empty, timeout=30))
    print(json.dumps(out))


if __name__ == "__main__":
    main()
