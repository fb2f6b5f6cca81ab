"""Request limits of a real server: body size (413 without reading it whole), body read timeout
(408), JSON nesting depth and tensor element counts (400), readiness while draining."""

from __future__ import annotations

import gzip
import json
import select
import socket
import struct
import time

import httpx
import pytest

from pyserving.api.rest.app import RestOptions, create_app
from pyserving.demo import make_mlp
from pyserving.serving.inference import InferenceService
from tests.e2e.server import ServerProcess

LIMIT = 1 << 20  # --max_request_bytes
ROW = [0.5, -1.0, 2.0, 0.25]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("limits")
    make_mlp(root / "mlp" / "1" / "model.onnx", seed=1, dims=(4, 8, 3))
    process = ServerProcess(
        "--model_name=mlp",
        f"--model_base_path={root / 'mlp'}",
        f"--max_request_bytes={LIMIT}",
        "--body_read_timeout_seconds=1",
    )
    process.wait_ready()
    yield process
    assert process.stop() == 0, process.log()


def read_response(sock: socket.socket, timeout_s: float = 10.0) -> bytes:
    """Read until the server closes the connection or the headers and body have arrived."""
    sock.settimeout(timeout_s)
    data = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            break
        if not chunk:
            break
        data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:") and len(body) >= int(line[15:]):
                return data
    return data


def assert_still_serves(server: ServerProcess) -> None:
    response = httpx.post(
        server.url + "/v1/models/mlp:predict", json={"instances": [ROW]}, timeout=10
    )
    assert response.status_code == 200, response.text


def test_declared_oversized_body_is_413_before_any_of_it_is_sent(server):
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(
            b"POST /v1/models/mlp:predict HTTP/1.1\r\nHost: x\r\n"
            b"Content-Type: application/json\r\nContent-Length: 10737418240\r\n\r\n"
        )
        answer = read_response(sock)
    assert answer.startswith(b"HTTP/1.1 413"), answer
    assert f"exceeds the limit of {LIMIT} bytes".encode() in answer
    assert_still_serves(server)


@pytest.mark.parametrize("path", ["/v1/models/mlp:predict", "/v2/models/mlp/infer"])
def test_endless_chunked_body_is_413_after_about_the_limit(server, path):
    """The client streams up to 1 GiB; the server answers 413 once it has seen the limit, and
    the client stops as soon as that answer arrives: the server never holds the body whole."""
    chunk = b"x" * 65536
    framed = f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n"
    sent = 0
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(
            f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            "Transfer-Encoding: chunked\r\n\r\n".encode()
        )
        sock.setblocking(False)
        answered = False
        while sent < (1 << 30):
            readable, writable, _ = select.select([sock], [sock], [], 10)
            if readable:
                answered = True
                break
            if writable:
                try:
                    sent += sock.send(framed)
                except (BrokenPipeError, ConnectionResetError):
                    answered = True
                    break
        sock.setblocking(True)
        answer = read_response(sock)
    assert answered
    assert answer.startswith(b"HTTP/1.1 413"), answer
    # what the kernel's socket buffers absorb on both sides, plus the limit: far below 1 GiB
    assert sent < 64 * LIMIT, sent
    assert_still_serves(server)


def test_gzip_body_that_inflates_past_the_limit_is_413(server):
    bomb = gzip.compress(b"[" * (8 * LIMIT))
    assert len(bomb) < LIMIT
    response = httpx.post(
        server.url + "/v1/models/mlp:predict",
        content=bomb,
        headers={"content-encoding": "gzip", "content-type": "application/json"},
        timeout=10,
    )
    assert response.status_code == 413, response.text
    assert_still_serves(server)


def test_a_body_that_trickles_is_408_after_the_read_timeout(server):
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(
            b"POST /v1/models/mlp:predict HTTP/1.1\r\nHost: x\r\n"
            b'Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{"inst'
        )
        started = time.monotonic()
        answer = read_response(sock, timeout_s=30)
    assert answer.startswith(b"HTTP/1.1 408"), answer
    assert b"not received within 1 s" in answer
    assert time.monotonic() - started < 20
    assert_still_serves(server)


@pytest.mark.parametrize("depth", [40, 2000, 200_000])
def test_deeply_nested_json_is_400(server, depth):
    body = '{"instances": ' + "[" * depth + "1" + "]" * depth + "}"
    response = httpx.post(server.url + "/v1/models/mlp:predict", content=body, timeout=10)
    assert response.status_code == 400, response.text
    v2 = '{"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 4], "data": '
    response = httpx.post(
        server.url + "/v2/models/mlp/infer",
        content=v2 + "[" * depth + "1" + "]" * depth + "}]}",
        timeout=10,
    )
    assert response.status_code == 400, response.text
    assert_still_serves(server)


def test_tensor_element_count_over_the_limit_is_400_before_allocating(server):
    huge = [1 << 40, 4]
    body = {"inputs": [{"name": "input", "datatype": "FP32", "shape": huge, "data": ROW}]}
    response = httpx.post(server.url + "/v2/models/mlp/infer", json=body, timeout=10)
    assert response.status_code == 400, response.text
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "input",
                    "datatype": "FP32",
                    "shape": huge,
                    "parameters": {"binary_data_size": 16},
                }
            ]
        }
    ).encode()
    response = httpx.post(
        server.url + "/v2/models/mlp/infer",
        content=header + struct.pack("<4f", *ROW),
        headers={"inference-header-content-length": str(len(header))},
        timeout=10,
    )
    assert response.status_code == 400, response.text
    assert_still_serves(server)


@pytest.mark.asyncio
async def test_readiness_is_503_once_draining():
    draining = False

    class _NoModels:
        def available_versions(self, name: str) -> list[int]:
            return []

        def stream_names(self) -> list[str]:
            return []

    service = InferenceService(_NoModels())  # type: ignore[arg-type]
    app = create_app(service, RestOptions(ready_names=lambda: [], is_draining=lambda: draining))
    try:
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://test"
        ) as client:
            assert (await client.get("/v2/health/ready")).status_code == 200
            draining = True
            response = await client.get("/v2/health/ready")
            assert response.status_code == 503
            assert response.json() == {"error": "not ready: the server is shutting down"}
            assert (await client.get("/v2/health/live")).status_code == 200
    finally:
        service.close()
