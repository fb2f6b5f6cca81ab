"""Pipelines end to end (issue 19): a real `pyserving serve` with a lookup table feeding an ONNX MLP
as the pipeline `scorer`. Over TF Serving REST and gRPC and KServe V2 REST and gRPC (httpx,
tritonclient.grpc, and TF Serving's messages on a plain grpc channel), the pipeline answers
exactly what the two models answer called one after the other; a new MLP version swapped in
under load costs no request, and every answer's step versions match its output."""

from __future__ import annotations

import json
import os
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import pytest

from pyserving.demo import make_mlp
from pyserving.proto import tf_serving_apis_pb2 as apis
from pyserving.proto import tf_types_pb2
from pyserving.proto.prediction_service_pb2_grpc import PredictionServiceStub
from tests.e2e.child import child_result
from tests.e2e.server import ServerProcess, running
from tests.fakes import wait_until

CLIENTS = Path(__file__).with_name("pipeline_clients.py")
KEYS = [3, 7, 150, 0, 42]  # 150 is not in the table


def x_servable(cls: str, run: str) -> str:
    """servable.py of a model `cls` whose signature is x FP32 [1] → x, running `run` (its body)."""
    return f"""
import os
import time

from pyserving.platforms import Signature, TensorSpec


class {cls}:
    def __init__(self):
        x = (TensorSpec("x", "FP32", (1,)),)
        self.signatures = {{"serving_default": Signature("serving_default", x, x)}}

    def load(self, path):
        pass

    def run(self, signature, inputs):
{run}"""


# Waits (30 s at most) until the test writes `release`, saying it started; passes x through.
HOLD_RUN = """
        open(os.path.join({dir!r}, "held"), "w").close()
        deadline = time.monotonic() + 30
        while not os.path.exists(os.path.join({dir!r}, "release")) and time.monotonic() < deadline:
            time.sleep(0.005)
        return inputs
"""

# Appends each x it runs on to the file `marked`: which requests reached the second step.
MARK_RUN = """
        with open({dir!r} + "/marked", "a") as marks:
            marks.write(f"{{inputs['x'][0]:g}}\\n")
        return inputs
"""


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("pipeline-repo")
    values = np.random.default_rng(0).standard_normal((100, 8)).astype(np.float32)
    (root / "features" / "1").mkdir(parents=True)
    np.savez(root / "features/1/table.npz", keys=np.arange(100, dtype=np.int64), values=values)
    make_mlp(root / "mlp" / "1" / "model.onnx", seed=1, dims=(8, 16, 4))
    for name, run in (("hold", HOLD_RUN), ("mark", MARK_RUN)):
        (root / name / "1").mkdir(parents=True)
        source = x_servable(name.title(), run.format(dir=str(root)))
        (root / name / "1" / "servable.py").write_text(source)
    (root / "models.yaml").write_text(
        "models:\n"
        "  - {name: features, base_path: features}\n"
        "  - {name: mlp, base_path: mlp}\n"
        "  - name: scorer\n"
        "    pipeline:\n"
        "      steps:\n"
        "        - {model: features, inputs: {keys: user}}\n"
        "        - {model: mlp, inputs: {input: features.values}}\n"
        "      outputs: {score: mlp.output, known: features.found}\n"
        "  - {name: hold, base_path: hold, allow_python: true}\n"
        "  - {name: mark, base_path: mark, allow_python: true}\n"
        "  - name: held\n"
        "    pipeline:\n"
        "      steps:\n"
        "        - {model: hold, inputs: {x: x}}\n"
        "        - {model: mark, inputs: {x: hold.x}}\n"
        "      outputs: {x: mark.x}\n"
    )
    return root


@pytest.fixture(scope="module")
def server(repo: Path) -> Iterator[ServerProcess]:
    with running(
        f"--model_config_file={repo / 'models.yaml'}",
        "--file_system_poll_wait_seconds=0.1",
        grpc=True,
    ) as proc:
        yield proc


def v2_infer(url: str, model: str, name: str, array: np.ndarray, datatype: str) -> dict[str, Any]:
    body = {
        "inputs": [
            {
                "name": name,
                "datatype": datatype,
                "shape": list(array.shape),
                "data": array.ravel().tolist(),
            }
        ]
    }
    response = httpx.post(f"{url}/v2/models/{model}/infer", json=body, timeout=30)
    assert response.status_code == 200, response.text
    return response.json()


def output(document: dict[str, Any], name: str, dtype: type) -> np.ndarray:
    found = next(o for o in document["outputs"] if o["name"] == name)
    return np.array(found["data"], dtype=dtype).reshape(found["shape"])


def one_after_the_other(url: str, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray, str]:
    """The features model, then the MLP on its values: (score, found, the MLP's version)."""
    features = v2_infer(url, "features", "keys", keys, "INT64")
    values = output(features, "values", np.float32)
    mlp = v2_infer(url, "mlp", "input", values, "FP32")
    return output(mlp, "output", np.float32), output(features, "found", bool), mlp["model_version"]


def test_every_api_answers_what_the_two_models_answer_one_after_the_other(
    server: ServerProcess,
) -> None:
    keys = np.array(KEYS, dtype=np.int64)
    score, found, _ = one_after_the_other(server.url, keys)

    v2 = v2_infer(server.url, "scorer", "user", keys, "INT64")
    assert v2["model_version"] == "1"
    assert json.loads(v2["parameters"]["pipeline_step_versions"]) == {"features": 1, "mlp": 1}
    np.testing.assert_array_equal(output(v2, "score", np.float32), score)
    np.testing.assert_array_equal(output(v2, "known", bool), found)

    tf = httpx.post(
        f"{server.url}/v1/models/scorer:predict", json={"inputs": {"user": KEYS}}, timeout=30
    )
    assert tf.status_code == 200, tf.text
    np.testing.assert_array_equal(np.array(tf.json()["outputs"]["score"], np.float32), score)
    np.testing.assert_array_equal(tf.json()["outputs"]["known"], found)

    grpc = child_result(CLIENTS, server.grpc_address, json.dumps(KEYS))
    np.testing.assert_array_equal(np.array(grpc["triton"]["score"], np.float32), score)
    np.testing.assert_array_equal(grpc["triton"]["known"], found)
    assert grpc["triton"]["version"] == "1"
    assert json.loads(grpc["triton"]["steps"]) == {"features": 1, "mlp": 1}
    assert grpc["triton"]["inputs"] == [{"name": "user", "datatype": "INT64", "shape": ["-1"]}]

    tf_score, tf_known, tf_version = tf_grpc_predict(server.grpc_address, keys)
    np.testing.assert_array_equal(tf_score, score)
    np.testing.assert_array_equal(tf_known, found)
    assert tf_version == 1

    status = httpx.get(f"{server.url}/v1/models/scorer", timeout=10).json()
    assert status["model_version_status"][0]["state"] == "AVAILABLE"
    metadata = httpx.get(f"{server.url}/v2/models/scorer", timeout=10).json()
    assert [o["name"] for o in metadata["outputs"]] == ["score", "known"]
    metrics = httpx.get(f"{server.url}/metrics", timeout=10).text
    assert 'pyserving_pipeline_step_duration_seconds_count{pipeline="scorer",step="mlp"}' in metrics


def test_a_new_mlp_version_under_load_fails_no_request_and_never_mixes_versions(
    server: ServerProcess, repo: Path
) -> None:
    keys = np.array(KEYS, dtype=np.int64)
    expected = {"1": one_after_the_other(server.url, keys)[0]}
    answers: list[tuple[int, dict[str, Any] | str]] = []
    stop = threading.Event()

    def client() -> None:
        with httpx.Client(base_url=server.url, timeout=30) as http:
            body = {"inputs": [{"name": "user", "datatype": "INT64", "shape": [5], "data": KEYS}]}
            while not stop.is_set():
                response = http.post("/v2/models/scorer/infer", json=body)
                ok = response.status_code == 200
                answers.append((response.status_code, response.json() if ok else response.text))

    threads = [threading.Thread(target=client, daemon=True) for _ in range(4)]
    try:
        for thread in threads:
            thread.start()
        wait_until(lambda: len(answers) >= 20, 30, "answers before the swap")
        staging = repo / "staging"
        make_mlp(staging / "model.onnx", seed=2, dims=(8, 16, 4))
        os.rename(staging, repo / "mlp" / "2")  # the version appears whole
        wait_until(lambda: _mlp_versions(server.url) == [2], 60, "MLP 2 alone")
        seen = len(answers)
        wait_until(lambda: len(answers) >= seen + 20, 30, "answers after the swap")
    finally:
        stop.set()
        for thread in threads:
            thread.join(30)
    expected["2"] = one_after_the_other(server.url, keys)[0]
    failures = [a for a in answers if a[0] != 200]
    assert not failures, failures[:3]
    per_version = {"1": 0, "2": 0}
    for _, document in answers:
        assert isinstance(document, dict)
        assert document["model_version"] == "1"
        steps = json.loads(document["parameters"]["pipeline_step_versions"])
        assert steps["features"] == 1
        mlp = str(steps["mlp"])
        per_version[mlp] += 1
        np.testing.assert_array_equal(output(document, "score", np.float32), expected[mlp])
    assert per_version["1"] > 0 and per_version["2"] > 0, per_version


def tf_grpc_predict(address: str, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """TF Serving gRPC Predict on `scorer` over a plain grpc channel, with the TF Serving API's
    messages (pyserving's copies of them: tensorflow-serving-api would cost this test the
    ~15 s import of tensorflow; tests/e2e/test_grpc.py runs that client)."""
    request = apis.PredictRequest()
    request.model_spec.name = "scorer"
    user = request.inputs["user"]
    user.dtype = tf_types_pb2.DT_INT64
    user.tensor_shape.dim.add(size=len(keys))
    user.int64_val.extend(keys.tolist())
    with grpc.insecure_channel(address) as channel:
        response = PredictionServiceStub(channel).Predict(request, timeout=30)
    score, known = response.outputs["score"], response.outputs["known"]
    return (
        _tf_array(score, np.float32, score.float_val),
        _tf_array(known, np.bool_, known.bool_val),
        response.model_spec.version.value,
    )


def _tf_array(tensor: Any, dtype: type, values: Any) -> np.ndarray:
    shape = [d.size for d in tensor.tensor_shape.dim]
    if tensor.tensor_content:
        return np.frombuffer(tensor.tensor_content, dtype).reshape(shape)
    return np.array(list(values), dtype).reshape(shape)


def _mlp_versions(url: str) -> list[int]:
    states = httpx.get(f"{url}/v1/models/mlp", timeout=10).json()["model_version_status"]
    return [int(s["version"]) for s in states if s["state"] == "AVAILABLE"]


@pytest.mark.parametrize(
    ("path", "body"),
    [
        (
            "/v2/models/held/infer",
            b'{"inputs":[{"name":"x","datatype":"FP32","shape":[1],"data":[1]}]}',
        ),
        ("/v1/models/held:predict", b'{"inputs":{"x":[1]}}'),
    ],
)
def test_a_rest_client_that_leaves_cancels_the_steps_not_yet_run(
    server: ServerProcess, repo: Path, path: str, body: bytes
) -> None:
    for name in ("held", "release", "marked"):
        (repo / name).unlink(missing_ok=True)
    closed = _closed_count(server.url)
    try:
        with socket.create_connection(("127.0.0.1", server.port)) as client:
            client.sendall(
                f"POST {path} HTTP/1.1\r\nhost: x\r\ncontent-length: {len(body)}\r\n\r\n".encode()
                + body
            )
            wait_until(lambda: (repo / "held").exists(), 10, "the hold step to start")
        # counted as closed once the request's steps were cancelled (none can start after that)
        wait_until(lambda: _closed_count(server.url) > closed, 10, "the server to notice")
    finally:
        (repo / "release").touch()
    answer = v2_infer(server.url, "held", "x", np.array([2], dtype=np.float32), "FP32")
    assert output(answer, "x", np.float32).tolist() == [2]
    assert (repo / "marked").read_text().split() == ["2"]


def _closed_count(url: str) -> float:
    """Requests to `held` counted as closed by their client (499)."""
    text = httpx.get(url + "/metrics", timeout=5).text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("pyserving_requests_total{")
        and 'model="held"' in line
        and 'code="499"' in line
    )
