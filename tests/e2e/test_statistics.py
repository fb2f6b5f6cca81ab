"""V2 model statistics of a real server after a known mix of requests: exact counts, durations
that nest (a request's whole time holds its model call), the same answer over REST and gRPC."""

from __future__ import annotations

import grpc
import httpx
import numpy as np
import pytest
from google.protobuf.json_format import MessageToDict

from pyserving.proto import grpc_service_pb2 as pb
from pyserving.proto import grpc_service_pb2_grpc as pb_grpc
from tests.e2e.server import ServerProcess, plain_and_batched_config

ROW = [0.5, -1.0, 2.0, 0.25]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("statistics")
    config = plain_and_batched_config(root)
    process = ServerProcess(
        f"--model_config_file={config}", "--file_system_poll_wait_seconds=0", grpc=True
    )
    try:
        process.wait_ready()
        yield process
    finally:
        assert process.stop() == 0, process.log()


def v2_body(rows: int) -> dict[str, object]:
    return {
        "inputs": [{"name": "input", "datatype": "FP32", "shape": [rows, 4], "data": ROW * rows}]
    }


def grpc_infer(stub: pb_grpc.GRPCInferenceServiceStub, model: str, rows: int) -> None:
    data = np.array([ROW] * rows, dtype=np.float32)
    tensor = pb.ModelInferRequest.InferInputTensor(name="input", datatype="FP32", shape=[rows, 4])
    request = pb.ModelInferRequest(model_name=model, inputs=[tensor])
    request.raw_input_contents.append(data.tobytes())
    stub.ModelInfer(request, timeout=30)


def rest_stats(server: ServerProcess, model: str) -> dict:
    response = httpx.get(f"{server.url}/v2/models/{model}/versions/1/stats", timeout=10)
    assert response.status_code == 200, response.text
    (entry,) = response.json()["model_stats"]
    return entry


def grpc_stats(stub: pb_grpc.GRPCInferenceServiceStub, model: str) -> dict:
    answer = stub.ModelStatistics(pb.ModelStatisticsRequest(name=model, version="1"), timeout=10)
    (entry,) = answer.model_stats
    # uint64 fields as ints, absent zero fields as 0: the REST document's shape
    document = MessageToDict(
        entry, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )
    return _ints(document)


def _ints(value: object) -> object:
    if isinstance(value, dict):
        return {key: _ints(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_ints(item) for item in value]
    if isinstance(value, str) and value.isdigit():
        return int(value)
    return value


def assert_nested(phases: dict[str, dict[str, int]]) -> None:
    """Each request's time holds its model call: the sums keep that order."""
    for phase in ("success", "queue", "compute_infer", "compute_output"):
        assert phases[phase]["ns"] > 0, phase
    calls = sum(phases[p]["ns"] for p in ("compute_input", "compute_infer", "compute_output"))
    assert phases["success"]["ns"] >= calls


def test_unbatched_counts_and_durations_over_rest_and_grpc(server):
    with grpc.insecure_channel(server.grpc_address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        assert rest_stats(server, "mlp")["inference_stats"]["success"]["count"] == 0
        with httpx.Client(base_url=server.url, timeout=30) as client:
            for _ in range(3):
                assert client.post("/v2/models/mlp/infer", json=v2_body(2)).is_success
            assert client.post("/v1/models/mlp:predict", json={"instances": [ROW]}).is_success
            bad = {
                "inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 2], "data": [1, 2]}]
            }
            assert client.post("/v2/models/mlp/infer", json=bad).status_code == 400
            assert client.get("/v2/models/mlp").status_code == 200  # metadata: not an inference
        for _ in range(2):
            grpc_infer(stub, "mlp", 1)
        rest, over_grpc = rest_stats(server, "mlp"), grpc_stats(stub, "mlp")

    phases = rest["inference_stats"]
    assert phases["success"]["count"] == 6
    assert phases["fail"]["count"] == 1 and phases["fail"]["ns"] > 0
    for phase in ("queue", "compute_input", "compute_infer", "compute_output"):
        assert phases[phase]["count"] == 6, phase
    assert phases["compute_input"]["ns"] == 0  # unbatched: the decoded inputs go as they are
    assert_nested(phases)
    assert (rest["inference_count"], rest["execution_count"]) == (3 * 2 + 1 + 2, 6)
    assert rest["last_inference"] > 1_700_000_000_000  # ms since the epoch
    assert rest["batch_stats"] == []
    assert over_grpc.pop("version") == 1 and rest.pop("version") == "1"  # (_ints made it one)
    assert over_grpc == rest


def test_batched_counts_each_model_call_once(server):
    with httpx.Client(base_url=server.url, timeout=30) as client:
        # one at a time: each request waits out the batch timeout and runs alone
        for rows in (1, 1, 1, 2):
            assert client.post("/v2/models/batched/infer", json=v2_body(rows)).is_success
    entry = rest_stats(server, "batched")
    phases = entry["inference_stats"]
    for phase in ("success", "queue", "compute_input", "compute_infer", "compute_output"):
        assert phases[phase]["count"] == 4, phase
    assert_nested(phases)
    assert phases["compute_input"]["ns"] > 0  # merging the batch's inputs
    assert (entry["inference_count"], entry["execution_count"]) == (5, 4)
    sizes = {b["batch_size"]: b for b in entry["batch_stats"]}
    assert set(sizes) == {1, 2}
    assert sizes[1]["compute_infer"]["count"] == 3 and sizes[2]["compute_infer"]["count"] == 1
    assert sum(b["compute_infer"]["ns"] for b in sizes.values()) > 0
