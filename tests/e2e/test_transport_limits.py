"""Transport limits on a real `pyserving serve` process (issue 14): REST routes on the raw path
and bounds version numbers, log lines cannot be forged, unknown model names add no metric series,
gRPC has REST's message limit plus bounded calls and idle streams, and one in-flight request
budget covers both transports. Real sockets, httpx and real gRPC channels; every case ends in a
4xx or non-OK status within the test's timeouts."""

from __future__ import annotations

import queue
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest

from pyserving.demo import make_mlp
from pyserving.proto import grpc_service_pb2 as v2
from tests.e2e.h2_raw import RawH2Connection
from tests.e2e.server import ServerProcess, free_port, running

pytestmark = pytest.mark.slow

MAX_REQUEST_BYTES = 1_000_000
BUDGET_BYTES = 1_500_000
MAX_RPCS = 4
STREAM_TIMEOUT_S = 2
INFER = "/inference.GRPCInferenceService/ModelInfer"
STREAM_INFER = "/inference.GRPCInferenceService/ModelStreamInfer"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp("limits-repo")
    make_mlp(root / "mlp" / "1" / "model.onnx", seed=1)
    with running(
        f"--model_base_path={root / 'mlp'}",
        "--model_name=mlp",
        f"--max_request_bytes={MAX_REQUEST_BYTES}",
        f"--max_inflight_request_bytes={BUDGET_BYTES}",
        f"--grpc_max_concurrent_rpcs={MAX_RPCS}",
        f"--grpc_stream_message_timeout_seconds={STREAM_TIMEOUT_S}",
        "--access_log",
        grpc=True,
    ) as proc:
        yield proc


@pytest.fixture(scope="module")
def channel(server: ServerProcess) -> Iterator[grpc.Channel]:
    options = [("grpc.max_send_message_length", 8 * MAX_REQUEST_BYTES)]
    with grpc.insecure_channel(server.grpc_address, options=options) as ch:
        yield ch


def infer_request(model: str = "mlp", rows: int = 1, extra_bytes: int = 0) -> v2.ModelInferRequest:
    request = v2.ModelInferRequest(model_name=model)
    request.inputs.add(name="input", datatype="FP32", shape=[rows, 64])
    request.raw_input_contents.append(np.ones((rows, 64), np.float32).tobytes())
    if extra_bytes:
        request.parameters["padding"].string_param = "x" * extra_bytes
    return request


def unary(channel: grpc.Channel) -> grpc.UnaryUnaryMultiCallable:
    return channel.unary_unary(
        INFER,
        request_serializer=v2.ModelInferRequest.SerializeToString,
        response_deserializer=v2.ModelInferResponse.FromString,
    )


def grpc_code(call: grpc.UnaryUnaryMultiCallable, request: v2.ModelInferRequest) -> grpc.StatusCode:
    try:
        call(request, timeout=20)
    except grpc.RpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


def metrics_page(server: ServerProcess) -> str:
    return httpx.get(server.url + "/metrics", timeout=10).text


def wait_until(predicate, timeout_s: float = 20.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"{what} not met within {timeout_s}s"
        time.sleep(0.02)


# --- REST paths ----------------------------------------------------------------------------------


def test_rest_routes_on_the_raw_path_issue_14(server: ServerProcess) -> None:
    # %2F is part of the name: before, this was "mlp" version 1's metadata.
    response = httpx.get(server.url + "/v2/models/mlp%2Fversions%2F1", timeout=10)
    assert response.status_code == 404, response.text
    assert "mlp/versions/1" in response.json()["error"]
    # A percent-encoded name still names its model.
    assert httpx.get(server.url + "/v2/models/ml%70", timeout=10).status_code == 200


@pytest.mark.parametrize(
    "path",
    [
        "/v2/models/mlp/versions/%D9%A1",  # ARABIC-INDIC DIGIT ONE
        "/v2/models/mlp/versions/" + "1" * 4300,
        "/v2/models/mlp/versions/9223372036854775808",
        "/v1/models/mlp/versions/%D9%A1",
        "/v1/models/mlp/versions/" + "9" * 30,
    ],
    ids=["v2-unicode", "v2-4300-digits", "v2-2**63", "v1-unicode", "v1-30-digits"],
)
def test_rest_version_numbers_are_ascii_and_bounded_issue_14(server: ServerProcess, path) -> None:
    response = httpx.get(server.url + path, timeout=10)
    assert response.status_code in (400, 404), (response.status_code, response.text[:200])
    assert response.json()["error"]


def test_a_newline_in_a_path_cannot_forge_a_log_line_issue_14(server: ServerProcess) -> None:
    forged = "2026-01-01T00:00:00.000Z INFO pyserving.access: forged"
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        target = "/v2/models/x%0a" + forged.replace(" ", "%20") + "/ready"
        sock.sendall(f"GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        assert sock.recv(65536).startswith(b"HTTP/1.1 4")
    wait_until(lambda: "forged" in server.log(), what="the access-log line")
    assert not any(line.startswith(forged) for line in server.log().splitlines())


# --- metric labels -------------------------------------------------------------------------------


V2_BODY = (
    b'{"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": %s}]}'
    % str([0.5] * 64).encode()
)
TF_BODY = b'{"instances": [%s]}' % str([0.5] * 64).encode()


def test_unknown_model_names_add_no_metric_series_issue_14(server, channel) -> None:
    names = [f"probe-{i}-unknown" for i in range(20)]
    call = unary(channel)
    with httpx.Client(base_url=server.url, timeout=10) as client:
        for name in names:
            response = client.post(f"/v2/models/{name}/infer", content=V2_BODY)
            assert response.status_code == 404, response.text
            response = client.post(f"/v1/models/{name}:predict", content=TF_BODY)
            assert response.status_code == 404, response.text
            assert grpc_code(call, infer_request(name)) == grpc.StatusCode.NOT_FOUND
    bad_shape = infer_request()
    bad_shape.inputs[0].shape[1] = 63  # a failure on a known model keeps its name
    assert grpc_code(call, bad_shape) == grpc.StatusCode.INVALID_ARGUMENT
    page = metrics_page(server)
    assert "probe-" not in page
    assert 'api="grpc",code="404",model="",version=""' in page
    assert 'api="rest",code="404",model="",version=""' in page
    assert 'api="grpc",code="400",model="mlp",version="1"' in page


# --- gRPC limits ---------------------------------------------------------------------------------


def test_grpc_message_over_max_request_bytes_is_resource_exhausted_issue_14(channel) -> None:
    code = grpc_code(unary(channel), infer_request(extra_bytes=MAX_REQUEST_BYTES + 10))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert grpc_code(unary(channel), infer_request()) == grpc.StatusCode.OK


def test_grpc_concurrent_calls_are_bounded_issue_14(server, channel) -> None:
    """MAX_RPCS streams keep busy (each sends its next request when the last is answered);
    one more call is refused while they run, and served once they end."""
    stop = threading.Event()
    answered = [threading.Event() for _ in range(MAX_RPCS)]
    errors: list[BaseException] = []

    def ping_pong(index: int) -> None:
        replies: queue.Queue[None] = queue.Queue()

        def requests() -> Iterator[v2.ModelInferRequest]:
            while not stop.is_set():
                yield infer_request()
                replies.get(timeout=20)

        stream = channel.stream_stream(
            STREAM_INFER,
            request_serializer=v2.ModelInferRequest.SerializeToString,
            response_deserializer=v2.ModelStreamInferResponse.FromString,
        )
        try:
            for response in stream(requests(), timeout=60):
                assert not response.error_message, response.error_message
                answered[index].set()
                replies.put(None)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=ping_pong, args=(i,)) for i in range(MAX_RPCS)]
    for thread in threads:
        thread.start()
    try:
        for event in answered:
            assert event.wait(20), "a stream got no answer"
        assert grpc_code(unary(channel), infer_request()) == grpc.StatusCode.RESOURCE_EXHAUSTED
    finally:
        stop.set()
        for thread in threads:
            thread.join(30)
    assert not errors, errors
    wait_until(lambda: grpc_code(unary(channel), infer_request()) == grpc.StatusCode.OK)


def test_a_grpc_stream_that_sends_nothing_is_ended_issue_14(channel) -> None:
    never = threading.Event()

    def requests() -> Iterator[v2.ModelInferRequest]:
        never.wait(60)
        return
        yield  # a generator that sends nothing

    stream = channel.stream_stream(
        STREAM_INFER,
        request_serializer=v2.ModelInferRequest.SerializeToString,
        response_deserializer=v2.ModelStreamInferResponse.FromString,
    )
    try:
        with pytest.raises(grpc.RpcError) as caught:
            for _ in stream(requests(), timeout=30):
                pass
    finally:
        never.set()
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert "no complete request message" in caught.value.details()


# --- the in-flight budget ------------------------------------------------------------------------


def inflight_bytes(server: ServerProcess) -> float:
    match = re.search(r"^pyserving_inflight_request_bytes (\S+)$", metrics_page(server), re.M)
    assert match, "pyserving_inflight_request_bytes is not exported"
    return float(match.group(1))


def test_one_inflight_budget_covers_rest_and_grpc_issue_14(server, channel) -> None:
    held = 900_000  # a body declared and not sent holds its bytes in the budget
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(
            b"POST /v2/models/mlp/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n{" % held
        )
        wait_until(lambda: inflight_bytes(server) >= held, what="the held body's reservation")
        over = 700_000
        response = httpx.post(server.url + "/v2/models/mlp/infer", content=b" " * over, timeout=10)
        assert response.status_code == 503, response.text
        assert "budget" in response.json()["error"]
        code = grpc_code(unary(channel), infer_request(extra_bytes=over))
        assert code == grpc.StatusCode.UNAVAILABLE
        stream = channel.stream_stream(
            STREAM_INFER,
            request_serializer=v2.ModelInferRequest.SerializeToString,
            response_deserializer=v2.ModelStreamInferResponse.FromString,
        )
        with pytest.raises(grpc.RpcError) as caught:  # a client stream's message alike
            for _ in stream(iter([infer_request(extra_bytes=over)]), timeout=20):
                pass
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        assert grpc_code(unary(channel), infer_request()) == grpc.StatusCode.OK  # small: fits
    wait_until(lambda: inflight_bytes(server) == 0, what="the budget to empty")
    assert grpc_code(unary(channel), infer_request(extra_bytes=over)) == grpc.StatusCode.OK


def test_half_sent_grpc_calls_are_held_in_the_budget_issue_14(server) -> None:
    """A unary message still arriving after a second holds --max-request-bytes in the budget (grpc
    says nothing of its size before it is whole): of three calls that send 60 kB of a declared
    900 kB and stop, one holds the budget and the others are refused. Before, all three sat in
    grpc's buffers outside the budget until the request timeout."""
    port = int(server.grpc_address.rpartition(":")[2])
    streams = (1, 3, 5)
    with RawH2Connection("127.0.0.1", port) as conn:
        for stream_id in streams:
            conn.half_call(stream_id, INFER, declared=900_000, sent=60_000)
        wait_until(
            lambda: sum(conn.ended[s].is_set() for s in streams) == len(streams) - 1,
            what="all calls but one to be refused",
        )
        assert inflight_bytes(server) >= MAX_REQUEST_BYTES
    wait_until(lambda: inflight_bytes(server) == 0, what="the budget to empty")


def test_serve_help_lists_the_transport_limits_issue_14() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "pyserving", "serve", "--help"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    for flag in (
        "--max-request-bytes",
        "--max-inflight-request-bytes",
        "--rest-max-connections",
        "--rest-write-timeout-seconds",
        "--grpc-max-concurrent-rpcs",
        "--grpc-max-concurrent-streams",
        "--grpc-max-connection-idle-seconds",
        "--grpc-keepalive-time-seconds",
        "--grpc-stream-message-timeout-seconds",
        "--grpc-request-timeout-seconds",
        "--grpc-max-streaming-calls",
    ):
        assert flag in out, flag


def test_the_open_files_limit_is_raised_to_fit_the_connection_cap_issue_14(tmp_path) -> None:
    """A soft limit of 512 descriptors would make accept() fail (EMFILE) long before a cap of
    2,000 REST and 1,024 gRPC connections: serve raises it (the hard limit allowing)."""
    resource = pytest.importorskip("resource")
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 3280:
        pytest.skip(f"hard open-files limit {hard} is below what the test asks for")
    make_mlp(tmp_path / "mlp" / "1" / "model.onnx", seed=1)
    port = free_port()

    def low_limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (512, hard))

    proc = subprocess.Popen(
        [
            *(sys.executable, "-m", "pyserving", "serve", "--host=127.0.0.1", "--port=0"),
            *(f"--rest_api_port={port}", f"--model_base_path={tmp_path / 'mlp'}"),
            "--rest_max_connections=2000",
        ],
        preexec_fn=low_limit,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_until(lambda: _answers(f"http://127.0.0.1:{port}/v2/health/live"), what="the server")
        limits = Path(f"/proc/{proc.pid}/limits").read_text()
        (line,) = [row for row in limits.splitlines() if row.startswith("Max open files")]
        assert int(line.split()[3]) == 2000 + 1024 + 256, line  # + gRPC's cap + other files
    finally:
        proc.terminate()
        proc.wait(30)


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.TransportError:
        return False
