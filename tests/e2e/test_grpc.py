"""gRPC end to end: a real `pyserving serve --port` process, real `tritonclient.grpc` and
`tensorflow-serving-api` clients (run in a child process, see grpc_clients.py), and the REST API
answering the same numbers."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from pyserving.demo import make_mlp, make_two_io
from tests.e2e.child import child_result
from tests.e2e.server import ServerProcess, running

pytestmark = pytest.mark.slow

CLIENTS = Path(__file__).with_name("grpc_clients.py")
X = np.linspace(-1.0, 1.0, 2 * 64, dtype=np.float32).reshape(2, 64)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp("grpc-repo")
    make_mlp(root / "mlp" / "1" / "model.onnx", seed=1)
    make_mlp(root / "mlp" / "2" / "model.onnx", seed=2)
    make_two_io(root / "twoio" / "1" / "model.onnx")
    config = root / "models.yaml"
    config.write_text(
        "models:\n"
        f"  - {{name: mlp, base_path: {root / 'mlp'}, version_policy: {{latest: 2}},"
        " labels: {stable: 1, canary: 2}}\n"
        f"  - {{name: twoio, base_path: {root / 'twoio'}}}\n"
    )
    with running(f"--model_config_file={config}", grpc=True) as proc:
        yield proc


def run_clients(scenario: str, address: str) -> dict[str, Any]:
    result: dict[str, Any] = child_result(CLIENTS, scenario, address)
    return result


def rest_v2(server: ServerProcess, path: str) -> list[float]:
    body = {
        "inputs": [
            {"name": "input", "datatype": "FP32", "shape": [2, 64], "data": X.ravel().tolist()}
        ]
    }
    response = httpx.post(server.url + path, json=body, timeout=30)
    assert response.status_code == 200, response.text
    return response.json()["outputs"][0]["data"]


def test_tritonclient_grpc(server: ServerProcess) -> None:
    out = run_clients("triton", server.grpc_address)
    assert out["live"] is True and out["ready"] is True
    assert out["model_ready"] and out["model_ready_v1"] and not out["model_ready_v9"]
    assert out["server_metadata"]["name"] == "pyserving"
    assert "model_repository" in out["server_metadata"]["extensions"]
    metadata = out["model_metadata"]
    assert metadata["platform"] == "onnx_onnxv1" and metadata["versions"] == ["1"]
    assert [(t["name"], t["datatype"], t["shape"]) for t in metadata["inputs"]] == [
        ("a", "FP32", ["-1", "4"]),
        ("b", "FP32", ["-1", "4"]),
    ]
    assert [t["name"] for t in metadata["outputs"]] == ["sum", "max_index"]
    assert out["model_config"]["config"]["input"][0]["data_type"] == "TYPE_FP32"

    a = np.arange(8, dtype=np.float32).reshape(2, 4)
    assert out["twoio"]["sum"] == (a + 0.5).tolist()
    assert out["twoio"]["max_index"] == [3, 3]
    assert out["twoio"]["outputs"] == ["sum", "max_index"] and out["twoio"]["version"] == "1"
    assert out["twoio_filtered"] == ["max_index"]

    assert out["mlp_1"]["version"] == "1" and out["mlp_1"]["id"] == "r1"
    assert out["mlp_2"]["version"] == "2" and out["mlp_latest"]["version"] == "2"
    assert out["mlp_1"]["output"] != out["mlp_2"]["output"]
    # REST and gRPC give the same numbers for the same request
    rest = np.asarray(rest_v2(server, "/v2/models/mlp/versions/1/infer"), dtype=np.float32)
    assert np.array_equal(rest, np.asarray(out["mlp_1"]["output"], dtype=np.float32).ravel())

    errors = out["errors"]
    assert errors["unknown_model"]["status"] == "StatusCode.NOT_FOUND"
    assert errors["unknown_version"]["status"] == "StatusCode.NOT_FOUND"
    assert errors["metadata_unknown"]["status"] == "StatusCode.NOT_FOUND"
    assert errors["bad_dtype"]["status"] == "StatusCode.INVALID_ARGUMENT"
    assert 'input "a"' in errors["bad_dtype"]["message"]
    assert "INT32" in errors["bad_dtype"]["message"]
    assert errors["bad_shape"]["status"] == "StatusCode.INVALID_ARGUMENT"
    assert 'input "b"' in errors["bad_shape"]["message"]
    assert errors["load_without_control"]["status"] == "StatusCode.PERMISSION_DENIED"
    assert "--enable-model-control" in errors["load_without_control"]["message"]

    index = {(m["name"], m.get("version")): m["state"] for m in out["index"]["models"]}
    assert index == {("mlp", "2"): "READY", ("mlp", "1"): "READY", ("twoio", "1"): "READY"}
    stats = out["stats"]["model_stats"][0]
    assert stats["name"] == "twoio" and int(stats["inference_count"]) >= 2


def test_tensorflow_serving_api(server: ServerProcess) -> None:
    out = run_clients("tfserving", server.grpc_address)
    assert out["v1"]["version"] == 1 and out["stable"]["version"] == 1
    assert out["v2"]["version"] == 2 and out["canary"]["version"] == 2
    assert out["latest"]["version"] == 2
    assert out["v1"]["signature"] == "serving_default"
    assert out["stable"]["output"] == out["v1"]["output"]
    assert out["latest"]["output"] == out["v2"]["output"] != out["v1"]["output"]
    assert np.asarray(out["v1"]["output"]).shape == (2, 10)
    assert out["twoio"] == {"max_index": [3, 3]}

    # REST (TF Serving API) answers the same numbers
    response = httpx.post(
        server.url + "/v1/models/mlp/labels/stable:predict",
        json={"instances": X.tolist()},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    rest = np.asarray(response.json()["predictions"], dtype=np.float32)
    assert np.array_equal(rest, np.asarray(out["v1"]["output"], dtype=np.float32))

    assert out["metadata"]["version"] == 2
    assert out["metadata"]["inputs"] == {"input": ["float32", [-1, 64]]}
    assert out["metadata"]["outputs"] == ["output"]
    assert out["metadata"]["method_name"] == "tensorflow/serving/predict"
    assert out["status"] == [[2, "AVAILABLE"], [1, "AVAILABLE"]]

    errors = out["errors"]
    assert errors["bad_dtype"]["code"] == "INVALID_ARGUMENT"
    assert 'input "input"' in errors["bad_dtype"]["details"]
    assert errors["unknown_label"]["code"] == "NOT_FOUND"
    assert errors["unknown_model"]["code"] == "NOT_FOUND"


def test_grpc_only_server(tmp_path: Path) -> None:
    """--rest_api_port=0 with --port serves gRPC alone; health turns SERVING; SIGTERM exits 0."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    make_two_io(tmp_path / "twoio" / "1" / "model.onnx")
    proc = ServerProcess(
        f"--model_base_path={tmp_path / 'twoio'}",
        "--model_name=twoio",
        "--rest_api_port=0",
        grpc=True,
    )
    try:
        with grpc.insecure_channel(proc.grpc_address) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            request = health_pb2.HealthCheckRequest(service="inference.GRPCInferenceService")
            status = None
            deadline = time.monotonic() + 60
            while status != health_pb2.HealthCheckResponse.SERVING:
                assert time.monotonic() < deadline, proc.log()
                assert proc.proc.poll() is None, proc.log()
                try:
                    status = health.Check(request, timeout=1).status
                except grpc.RpcError:
                    time.sleep(0.05)
            with pytest.raises(grpc.RpcError) as unknown:
                health.Check(health_pb2.HealthCheckRequest(service="nope"), timeout=5)
            assert unknown.value.code() == grpc.StatusCode.NOT_FOUND
    finally:
        assert proc.stop() == 0, proc.log()
    assert f"gRPC API listening on {proc.grpc_address}" in proc.log()
    assert "REST API listening" not in proc.log()
