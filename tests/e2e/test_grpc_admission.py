"""gRPC admission and request hygiene on a real `pyserving serve` process (issue 14): a half-sent
unary call ends after --grpc-request-timeout-seconds and frees its slot, a message declared over
--max-request-bytes ends at once, idle streams cannot take every call slot, health and readiness
answer when every slot is taken, refused large requests do not pile up in memory, and error
details escape control characters. Real gRPC channels, and raw HTTP/2 for what no gRPC client
can send."""

from __future__ import annotations

import queue
import re
import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from pyserving.demo import make_mlp
from pyserving.proto import grpc_service_pb2 as v2
from pyserving.proto import grpc_service_pb2_grpc as v2_grpc
from tests.e2e.h2_raw import RawH2Connection
from tests.e2e.server import ServerProcess, free_port

pytestmark = pytest.mark.slow

MAX_REQUEST_BYTES = 16_000_000
MAX_RPCS = 4
MAX_STREAMING_CALLS = 2
REQUEST_TIMEOUT_S = 8
INFER = "/inference.GRPCInferenceService/ModelInfer"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp("admission-repo")
    make_mlp(root / "mlp" / "1" / "model.onnx", seed=1)
    grpc_port = free_port()
    proc = ServerProcess(
        f"--model_base_path={root / 'mlp'}",
        "--model_name=mlp",
        f"--port={grpc_port}",
        f"--max_request_bytes={MAX_REQUEST_BYTES}",
        "--max_inflight_request_bytes=0",
        f"--grpc_max_concurrent_rpcs={MAX_RPCS}",
        f"--grpc_max_streaming_calls={MAX_STREAMING_CALLS}",
        f"--grpc_request_timeout_seconds={REQUEST_TIMEOUT_S}",
        "--grpc_stream_message_timeout_seconds=60",
    )
    proc.grpc_port = grpc_port  # type: ignore[attr-defined]
    try:
        proc.wait_ready()
        yield proc
    finally:
        assert proc.stop() == 0, proc.log()


@pytest.fixture(scope="module")
def channel(server: ServerProcess) -> Iterator[grpc.Channel]:
    options = [("grpc.max_send_message_length", 2 * MAX_REQUEST_BYTES)]
    with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}", options=options) as ch:  # type: ignore[attr-defined]
        yield ch


def infer_request(
    model: str = "mlp", datatype: str = "FP32", rows: int = 1
) -> v2.ModelInferRequest:
    request = v2.ModelInferRequest(model_name=model)
    request.inputs.add(name="input", datatype=datatype, shape=[rows, 64])
    request.raw_input_contents.append(np.ones((rows, 64), np.float32).tobytes())
    return request


def infer_code(
    channel: grpc.Channel, request: v2.ModelInferRequest | None = None
) -> grpc.StatusCode:
    try:
        v2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request or infer_request(), timeout=20)
    except grpc.RpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


def wait_for(predicate, what: str, timeout_s: float = 30.0) -> None:
    event = threading.Event()
    for _ in range(int(timeout_s / 0.05)):
        if predicate():
            return
        event.wait(0.05)
    raise AssertionError(f"{what}: not within {timeout_s} s")


def hold_slots(channel: grpc.Channel, conn: RawH2Connection, count: int, sent: int) -> list[int]:
    """Keep `count` half-sent ModelInfer calls open on `conn` until a unary call is refused for
    want of a slot; returns the open calls' stream ids. A half-sent call the server ends at once
    (e.g. refused while a call of an earlier test still held its slot: the likely cause of a
    flake seen under load, not proven) is replaced, so only calls that really hold slots count;
    if none ever does, this fails."""
    next_id = 1
    open_ids: list[int] = []
    for _ in range(int(30.0 / 0.05)):
        open_ids = [i for i in open_ids if not conn.ended[i].is_set()]
        while len(open_ids) < count:
            conn.half_call(next_id, INFER, declared=1_000_000, sent=sent)
            open_ids.append(next_id)
            next_id += 2
        if infer_code(channel) == grpc.StatusCode.RESOURCE_EXHAUSTED:
            return open_ids
        threading.Event().wait(0.05)
    raise AssertionError(f"{count} half-sent calls did not take every slot within 30 s")


class IdleStreams:
    """`count` ModelStreamInfer streams that each answer one request, then stay open and idle."""

    def __init__(self, channel: grpc.Channel, count: int) -> None:
        self._stop = threading.Event()
        self.answered: list[queue.Queue[object]] = [queue.Queue() for _ in range(count)]
        stub = v2_grpc.GRPCInferenceServiceStub(channel)
        self._threads = [
            threading.Thread(target=self._run, args=(stub, i), daemon=True) for i in range(count)
        ]
        for thread in self._threads:
            thread.start()

    def _run(self, stub: v2_grpc.GRPCInferenceServiceStub, index: int) -> None:
        def requests() -> Iterator[v2.ModelInferRequest]:
            yield infer_request()
            self._stop.wait(60)

        try:
            for response in stub.ModelStreamInfer(requests(), timeout=60):
                self.answered[index].put(response.error_message or "ok")
        except grpc.RpcError as exc:
            self.answered[index].put(exc.code())

    def first_answers(self) -> list[object]:
        return [answers.get(timeout=20) for answers in self.answered]

    def close(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(30)


def test_a_half_sent_grpc_call_ends_and_frees_its_slot_issue_14(server, channel) -> None:
    """Calls that send 60 kB of a declared 1 MB message and then nothing used to hold their
    slots (and buffers) for ever; each now ends after the request timeout."""
    with RawH2Connection("127.0.0.1", server.grpc_port) as conn:
        streams = hold_slots(channel, conn, MAX_RPCS, sent=60_000)  # in the window
        for stream_id in streams:
            assert conn.ended[stream_id].wait(REQUEST_TIMEOUT_S + 30), f"stream {stream_id}"
    wait_for(lambda: infer_code(channel) == grpc.StatusCode.OK, "a slot to be free again")


def test_a_message_declared_over_the_cap_ends_before_it_is_sent(server) -> None:
    with RawH2Connection("127.0.0.1", server.grpc_port) as conn:
        conn.half_call(1, INFER, declared=MAX_REQUEST_BYTES + 1, sent=100)
        # well before the request timeout: nothing of it is buffered
        assert conn.ended[1].wait(REQUEST_TIMEOUT_S / 2)


def test_idle_streams_cannot_take_every_call_slot_issue_14(channel) -> None:
    streams = IdleStreams(channel, MAX_STREAMING_CALLS)
    try:
        assert streams.first_answers() == ["ok"] * MAX_STREAMING_CALLS
        extra = IdleStreams(channel, 1)
        try:
            assert extra.first_answers() == [grpc.StatusCode.RESOURCE_EXHAUSTED]
        finally:
            extra.close()
        assert infer_code(channel) == grpc.StatusCode.OK  # unary calls still have slots
    finally:
        streams.close()


def test_health_answers_when_every_call_slot_is_taken_issue_14(server, channel) -> None:
    streams = IdleStreams(channel, MAX_STREAMING_CALLS)
    try:
        assert streams.first_answers() == ["ok"] * MAX_STREAMING_CALLS
        with RawH2Connection("127.0.0.1", server.grpc_port) as conn:
            hold_slots(channel, conn, MAX_RPCS - MAX_STREAMING_CALLS, sent=100)
            stub = v2_grpc.GRPCInferenceServiceStub(channel)
            assert stub.ServerLive(v2.ServerLiveRequest(), timeout=10).live
            assert stub.ServerReady(v2.ServerReadyRequest(), timeout=10).ready
            assert stub.ModelReady(v2.ModelReadyRequest(name="mlp"), timeout=10).ready
            health = health_pb2_grpc.HealthStub(channel)
            check = health.Check(health_pb2.HealthCheckRequest(), timeout=10)
            assert check.status == health_pb2.HealthCheckResponse.SERVING
    finally:
        streams.close()


def _rss_bytes(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"^VmRSS:\s+(\d+) kB", status, re.M).group(1)) * 1024  # type: ignore[union-attr]


def test_refused_large_requests_do_not_pile_up_in_memory_issue_14(server, channel) -> None:
    """A refused ModelInfer's bytes were kept alive by a reference cycle through the error's
    frames until a full garbage collection: 40 refused 8 MB requests grew the server by their
    whole size. Now they are freed as they are answered."""
    rows = 8_000_000 // (64 * 4)
    refused = infer_request(datatype="INT32", rows=rows)  # the model takes FP32
    refused.raw_input_contents[0] = bytes(rows * 64 * 4)
    stub = v2_grpc.GRPCInferenceServiceStub(channel)
    for _ in range(5):  # warm up: the codec threads' allocator arenas
        assert infer_code(channel, refused) == grpc.StatusCode.INVALID_ARGUMENT
    before = _rss_bytes(server.proc.pid)
    for _ in range(30):
        assert infer_code(channel, refused) == grpc.StatusCode.INVALID_ARGUMENT
    answers = list(stub.ModelStreamInfer(iter([refused] * 10), timeout=60))
    assert all(answer.error_message for answer in answers)
    grown = _rss_bytes(server.proc.pid) - before
    assert grown < 120_000_000, f"RSS grew {grown / 1e6:.0f} MB after 40 refused 8 MB requests"


def test_grpc_error_details_escape_control_characters_issue_14(channel) -> None:
    try:
        v2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(
            infer_request(model="no\nsuch\x1bmodel"), timeout=10
        )
    except grpc.RpcError as exc:
        assert exc.code() == grpc.StatusCode.NOT_FOUND
        details = exc.details()
    else:
        raise AssertionError("an unknown model answered")
    assert "no\\nsuch\\x1bmodel" in details, details
    assert "\n" not in details and "\x1b" not in details


def test_a_refused_grpc_call_counts_against_its_version_issue_14(server, channel) -> None:
    assert infer_code(channel, infer_request(datatype="INT32")) == grpc.StatusCode.INVALID_ARGUMENT
    page = httpx.get(server.url + "/metrics", timeout=10).text
    assert 'api="grpc",code="400",model="mlp",version="1"' in page
    assert 'api="grpc",code="400",model="mlp",version=""' not in page
