"""REST edge cases of a real server from issue 14's second red-team run: version text in paths
read as gRPC reads `model_version`, Host values that name no host, the access-log status of a
body the listener refused, NaN in V2 JSON answers."""

from __future__ import annotations

import socket

import grpc
import httpx
import numpy as np
import orjson
import pytest

from pyserving.demo import make_mlp
from pyserving.proto import grpc_service_pb2 as v2pb
from pyserving.proto import grpc_service_pb2_grpc as v2grpc
from tests.e2e.server import ServerProcess, free_port

ROW = [0.5, -1.0, 2.0, 0.25]
BODY = orjson.dumps(
    {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 4], "data": ROW}]}
)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("edges")
    make_mlp(root / "mlp" / "1" / "model.onnx", seed=1, dims=(4, 8, 3))
    grpc_port = free_port()
    process = ServerProcess(
        "--model_name=mlp",
        f"--model_base_path={root / 'mlp'}",
        "--access-log",
        f"--port={grpc_port}",
    )
    process.grpc_port = grpc_port  # type: ignore[attr-defined]
    process.wait_ready()
    yield process
    assert process.stop() == 0, process.log()


def raw(server: ServerProcess, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(data)
        out = b""
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                return out
            out += chunk


@pytest.mark.parametrize("segment", ["%D9%A1", "+1", "%201", "1x", "01234567890123456789"])
def test_version_text_is_a_400_with_the_grpc_message_on_both_rest_apis_issue_14(server, segment):
    v2 = httpx.post(f"{server.url}/v2/models/mlp/versions/{segment}/infer", content=BODY)
    assert v2.status_code == 400, v2.text
    tf = httpx.post(
        f"{server.url}/v1/models/mlp/versions/{segment}:predict", json={"instances": [ROW]}
    )
    assert tf.status_code == 400, tf.text
    with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
        stub = v2grpc.GRPCInferenceServiceStub(channel)
        text = httpx.URL(f"/{segment}").path[1:]  # the segment's text, percent-decoded
        request = v2pb.ModelInferRequest(model_name="mlp", model_version=text)
        with pytest.raises(grpc.RpcError) as info:
            stub.ModelInfer(request, timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert v2.json()["error"] == info.value.details() == tf.json()["error"]
    assert "model version must be a non-negative integer" in v2.json()["error"]


@pytest.mark.parametrize("host", [b"Host: \r\n", b"Host: a b\r\n", b"Host: a/b\r\n"])
def test_a_host_value_that_names_no_host_is_400_issue_14(server, host):
    answer = raw(server, b"GET /v2/health/live HTTP/1.1\r\n" + host + b"\r\n")
    assert answer.startswith(b"HTTP/1.1 400 "), answer
    assert b"invalid Host header" in answer


def test_a_refused_body_is_logged_with_the_status_sent_issue_14(server):
    path = b"/v2/models/mlp/infer?edge=chunk"
    answer = raw(
        server,
        b"POST "
        + path
        + b" HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"
        + BODY
        + b"\r\n0\r\n\r\n",
    )
    assert answer.startswith(b"HTTP/1.1 400 "), answer
    # the access line is written once the app has seen the body end
    httpx.get(f"{server.url}/v2/health/ready")
    lines = [line for line in server.log().splitlines() if '"POST /v2/models/mlp/infer' in line]
    assert lines and '" 400 ' in lines[-1] and '" 499 ' not in lines[-1], lines


def test_non_finite_floats_in_v2_json_answers_are_null_issue_14(server):
    # A huge input drives the MLP's outputs to ±inf / nan.
    data = [3e38, -3e38, 3e38, -3e38]
    body = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 4], "data": data}]}
    answer = httpx.post(f"{server.url}/v2/models/mlp/infer", json=body)
    assert answer.status_code == 200, answer.text
    values = orjson.loads(answer.content)["outputs"][0]["data"]  # strict JSON parses it
    assert len(values) == 3
    assert None in values and all(v is None or np.isfinite(v) for v in values)
