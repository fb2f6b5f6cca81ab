"""Streaming servables (issue 19, docs/streaming.md) against a real server: server-sent events
from `/generate_stream` read with a plain HTTP client, `/generate`, `tritonclient.grpc`'s
decoupled stream (in a child process: see streaming_grpc_client.py), a client that leaves or
cancels stopping the generator, a reader that stops reading pausing it, and hostile requests."""

from __future__ import annotations

import json
import socket
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e import streaming_models
from tests.e2e.child import child_result
from tests.e2e.server import ServerProcess
from tests.fakes import wait_until

CLIENT = Path(__file__).with_name("streaming_grpc_client.py")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Any:
    root = tmp_path_factory.mktemp("streaming")
    dirs = streaming_models.write(root / "models")
    entries = [
        f"  - {{name: {name}, base_path: {path.parent}, allow_python: true}}"
        for name, path in dirs.items()
    ]
    config = root / "models.yaml"
    config.write_text("models:\n" + "\n".join(entries) + "\n")
    proc = ServerProcess(f"--model_config_file={config}", grpc=True)
    try:
        proc.wait_ready()
        proc.dirs = dirs  # type: ignore[attr-defined]
        yield proc
    finally:
        proc.stop()


def body(tag: str, count: int, **extra: Any) -> dict[str, Any]:
    return {"text_input": tag, "max_tokens": count, **extra}


def events(response: httpx.Response, stop_after: int | None = None) -> list[dict[str, Any]]:
    """The `data:` events of a server-sent event stream, parsed."""
    seen = []
    for line in response.iter_lines():
        if line.startswith("data: "):
            seen.append(json.loads(line[len("data: ") :]))
            if stop_after is not None and len(seen) == stop_after:
                break
    return seen


def noted(server: Any, model: str, tag: str) -> list[str]:
    return streaming_models.events(server.dirs[model], tag)


@pytest.mark.parametrize("model", ["tokens", "async_tokens"])
def test_generate_stream_sends_every_part_in_order_then_ends_issue_19(server, model):
    url = f"{server.url}/v2/models/{model}/generate_stream"
    with httpx.stream("POST", url, json=body("sse", 5, id="r7"), timeout=30) as response:
        assert response.status_code == 200
        assert response.headers["content-type"] == "text/event-stream; charset=utf-8"
        parts = events(response)
    assert [part["index"] for part in parts] == [0, 1, 2, 3, 4]
    assert [part["text_output"] for part in parts] == [f"sse-{i};" for i in range(5)]
    assert {(p["model_name"], p["model_version"], p["id"]) for p in parts} == {(model, "1", "r7")}
    assert noted(server, model, "sse")[-1] == "finally"


def test_generate_answers_the_last_part_and_one_answer_models_stream_one_issue_19(server):
    last = httpx.post(f"{server.url}/v2/models/tokens/generate", json=body("last", 4), timeout=30)
    assert last.status_code == 200
    assert last.json() == {
        "model_name": "tokens",
        "model_version": "1",
        "text_output": "last-3;",
        "index": 3,
    }
    none = httpx.post(f"{server.url}/v2/models/tokens/generate", json=body("none", 0), timeout=30)
    assert none.json() == {"model_name": "tokens", "model_version": "1"}
    url = f"{server.url}/v2/models/one_answer/generate_stream"
    with httpx.stream("POST", url, json=body("one", 9), timeout=30) as response:
        assert [part["index"] for part in events(response)] == [9]


@pytest.mark.parametrize("model", ["slow_tokens", "async_tokens"])
def test_a_client_that_leaves_after_3_parts_stops_the_generator_issue_19(server, model):
    url = f"{server.url}/v2/models/{model}/generate_stream"
    with httpx.stream("POST", url, json=body("leave", 1000), timeout=30) as response:
        assert len(events(response, stop_after=3)) == 3
    wait_until(lambda: "finally" in noted(server, model, "leave"), what="the generator's finally")
    parts = [line for line in noted(server, model, "leave") if line.startswith("part")]
    assert len(parts) < 20  # stopped right after the client left, not after 1000 parts


def test_a_reader_that_stops_reading_pauses_the_generator_issue_19(server):
    # 256 KiB parts, 1000 of them: 250 MiB if nothing held the generator back
    request = json.dumps(body("slow-reader-big", 1000)).encode()
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        sock.sendall(
            b"POST /v2/models/tokens/generate_stream HTTP/1.1\r\nHost: x\r\n"
            b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
            % (len(request), request)
        )
        sock.recv(1024)  # the first part is sent; then this client reads nothing
        counts: list[int] = []

        def settled() -> bool:  # no new part for 0.5 s
            time.sleep(0.1)
            counts.append(len(noted(server, "tokens", "slow-reader-big")))
            return len(counts) > 5 and len(set(counts[-5:])) == 1

        wait_until(settled, what="the generator to pause")
        assert 2 < counts[-1] < 200  # the socket buffers hold some parts, not all of them
    wait_until(
        lambda: "finally" in noted(server, "tokens", "slow-reader-big"),
        what="the finally of a generator whose paused client left",
    )


def test_hostile_generate_requests_are_answered_cleanly_issue_19(server):
    url = f"{server.url}/v2/models/tokens/generate_stream"
    cases = {
        "bad json": (b'{"text_input": "x"', 400, "JSON Parse error"),
        "not an object": (b"[1, 2]", 400, "must be a JSON object"),
        "unknown input": (b'{"text_input": "x", "max_tokenz": 1}', 400, "unknown input"),
        "missing input": (b'{"text_input": "x"}', 400, 'input "max_tokens"'),
        "wrong type": (b'{"text_input": "x", "max_tokens": "many"}', 400, "max_tokens"),
        "bad id": (b'{"text_input": "x", "max_tokens": 1, "id": 5}', 400, "'id'"),
        "decimal for an integer": (b'{"text_input": "x", "max_tokens": 1.5}', 400, "int32"),
        "bad parameters": (
            b'{"text_input": "x", "max_tokens": 1, "parameters": []}',
            400,
            "'parameters'",
        ),
    }
    for what, (payload, status, words) in cases.items():
        answer = httpx.post(url, content=payload, timeout=30)
        assert answer.status_code == status, what
        assert words in answer.json()["error"], what
    unknown = httpx.post(f"{server.url}/v2/models/nope/generate_stream", json=body("x", 1))
    assert unknown.status_code == 404
    assert httpx.get(url).status_code == 405
    # a mid-stream failure is the last event, after the parts before it
    with httpx.stream("POST", url, json=body("boom", 5), timeout=30) as response:
        assert response.status_code == 200
        assert events(response) == [
            {"model_name": "tokens", "model_version": "1", "text_output": f"boom-{i};", "index": i}
            for i in range(2)
        ] + [{"error": "boom after 2 parts"}]
    with httpx.stream("POST", url, json=body("bad", 5), timeout=30) as response:
        assert events(response)[-1] == {"error": "servable returned list, not a dict of outputs"}
    assert noted(server, "tokens", "bad")[-1] == "finally"
    # half a body, then the client leaves: the generator never starts
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(
            b"POST /v2/models/tokens/generate_stream HTTP/1.1\r\nHost: x\r\n"
            b'Content-Length: 100\r\n\r\n{"text_input": "half", '
        )
    assert httpx.get(f"{server.url}/v2/health/ready").status_code == 200
    assert noted(server, "tokens", "half") == []


def test_one_answer_apis_refuse_a_streaming_model_naming_the_stream_endpoints_issue_19(server):
    v2 = httpx.post(
        f"{server.url}/v2/models/tokens/infer",
        json={
            "inputs": [
                {"name": "text_input", "datatype": "BYTES", "shape": [1], "data": ["x"]},
                {"name": "max_tokens", "datatype": "INT32", "shape": [1], "data": [2]},
            ]
        },
    )
    assert v2.status_code == 400
    assert "/v2/models/tokens/generate_stream" in v2.json()["error"]
    tf = httpx.post(
        f"{server.url}/v1/models/tokens:predict",
        json={"inputs": {"text_input": ["x"], "max_tokens": [2]}},
    )
    assert tf.status_code == 400
    assert "ModelStreamInfer" in tf.json()["error"]
    # `async def run` answering once serves the one-answer APIs
    coroutine = httpx.post(
        f"{server.url}/v2/models/one_answer/infer",
        json={
            "inputs": [
                {"name": "text_input", "datatype": "BYTES", "shape": [1], "data": ["c"]},
                {"name": "max_tokens", "datatype": "INT32", "shape": [1], "data": [3]},
            ]
        },
    )
    assert coroutine.status_code == 200
    assert coroutine.json()["outputs"][1]["data"] == [3]


def test_triton_grpc_decoupled_stream_issue_19(server):
    out = child_result(CLIENT, server.grpc_address, timeout_s=120)
    for model in ("tokens", "async_tokens"):
        parts = out[model]
        assert [(p["index"], p["text"], p["final"]) for p in parts] == [
            *((i, f"g-{model}-{i};", False) for i in range(4)),
            (None, None, True),  # the empty final response
        ]
        assert {(p["id"], p["version"]) for p in parts} == {(f"id-{model}", "1")}
    assert out["one_answer"] == [
        {
            "index": 4,
            "text": "g-one_answer-4;",
            "final": True,
            "id": "id-one_answer",
            "version": "1",
        }
    ]
    assert [p.get("index") for p in out["boom"]] == [0, 1, None]
    assert out["boom"][-1] == {"error": "boom after 2 parts"}
    assert "nope" in out["unknown_model"][0]["error"]
    assert len(out["cancelled"]) == 3
    for tag in ("g-cancel", "g-deadline"):
        wait_until(lambda tag=tag: "finally" in noted(server, "slow_tokens", tag), what=tag)
        assert len(noted(server, "slow_tokens", tag)) < 500  # stopped, not run to the end
    assert "error" in out["deadline"]["last"]


def test_a_grpc_reader_that_stops_reading_pauses_the_generator_issue_19(server):
    import grpc

    from pyserving.proto import grpc_service_pb2 as pb
    from pyserving.proto import grpc_service_pb2_grpc as pb_grpc

    request = pb.ModelInferRequest(model_name="tokens")
    text = request.inputs.add(name="text_input", datatype="BYTES", shape=[1])
    text.contents.bytes_contents.append(b"grpc-slow-reader-big")  # 256 KiB parts
    count = request.inputs.add(name="max_tokens", datatype="INT32", shape=[1])
    count.contents.int_contents.append(1000)
    release = threading.Event()

    def requests() -> Any:
        yield request
        release.wait(60)  # keep the call open while the test reads nothing

    with grpc.insecure_channel(server.grpc_address) as channel:
        call = pb_grpc.GRPCInferenceServiceStub(channel).ModelStreamInfer(requests())
        try:
            assert next(call).infer_response.parameters["triton_final_response"].bool_param is False
            counts: list[int] = []

            def settled() -> bool:  # no new part for 0.5 s
                time.sleep(0.1)
                counts.append(len(noted(server, "tokens", "grpc-slow-reader-big")))
                return len(counts) > 5 and len(set(counts[-5:])) == 1

            wait_until(settled, what="the generator to pause")
            assert 2 < counts[-1] < 200  # flow control holds some parts, not all of them
        finally:
            call.cancel()
            release.set()
    wait_until(
        lambda: "finally" in noted(server, "tokens", "grpc-slow-reader-big"),
        what="the finally of a generator whose paused call was cancelled",
    )


def test_a_grpc_request_refused_before_its_first_part_says_which_and_is_final_issue_19(server):
    import grpc

    from pyserving.proto import grpc_service_pb2 as pb
    from pyserving.proto import grpc_service_pb2_grpc as pb_grpc

    def tokens(request_id: str, count: int, shape: int = 1) -> Any:
        request = pb.ModelInferRequest(model_name="tokens", id=request_id)
        text = request.inputs.add(name="text_input", datatype="BYTES", shape=[1])
        text.contents.bytes_contents.append(b"g-refused")
        tokens = request.inputs.add(name="max_tokens", datatype="INT32", shape=[shape])
        tokens.contents.int_contents.append(count)
        return request

    requests = [
        pb.ModelInferRequest(model_name="nope", id="unknown"),
        tokens("huge", 1, shape=10**12),
        tokens("zero", 0),
    ]
    with grpc.insecure_channel(server.grpc_address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        answers = [
            (
                bool(r.error_message),
                r.infer_response.id,
                r.infer_response.model_name,
                r.infer_response.model_version,
                len(r.infer_response.outputs),
                r.infer_response.parameters["triton_final_response"].bool_param,
            )
            for r in stub.ModelStreamInfer(iter(requests), timeout=30)
        ]
    assert answers == [
        (True, "unknown", "nope", "", 0, True),
        (True, "huge", "tokens", "1", 0, True),
        (False, "zero", "tokens", "1", 0, True),  # no part: only the final response
    ]
    zero = {"text_input": "g-zero", "max_tokens": 0, "id": "zero"}
    url = f"{server.url}/v2/models/tokens/generate"
    with httpx.stream("POST", url + "_stream", json=zero, timeout=30) as response:
        assert response.status_code == 200
        assert events(response) == []
    last = httpx.post(url, json=zero, timeout=30)
    assert last.json() == {"model_name": "tokens", "model_version": "1", "id": "zero"}


def test_streams_count_in_the_v2_statistics_on_every_transport(server):
    import grpc

    from pyserving.proto import grpc_service_pb2 as pb
    from pyserving.proto import grpc_service_pb2_grpc as pb_grpc

    def counts() -> tuple[int, int, int]:
        answer = httpx.get(f"{server.url}/v2/models/tokens/versions/1/stats", timeout=10)
        (entry,) = answer.json()["model_stats"]
        phases = entry["inference_stats"]
        return phases["success"]["count"], phases["fail"]["count"], entry["last_inference"]

    def grpc_request(count: int, shape: int = 1) -> Any:
        request = pb.ModelInferRequest(model_name="tokens")
        text = request.inputs.add(name="text_input", datatype="BYTES", shape=[1])
        text.contents.bytes_contents.append(b"g-stats")
        tokens = request.inputs.add(name="max_tokens", datatype="INT32", shape=[shape])
        tokens.contents.int_contents.append(count)
        return request

    success, fail, _ = counts()
    url = f"{server.url}/v2/models/tokens/generate"
    with httpx.stream("POST", url + "_stream", json=body("stats-sse", 3), timeout=30) as response:
        assert len(events(response)) == 3
    assert httpx.post(url, json=body("stats-last", 3), timeout=30).status_code == 200
    # refused after its version resolved: an input of the wrong shape
    assert httpx.post(url, json=body("stats-bad", [[1, 2]]), timeout=30).status_code == 400
    with grpc.insecure_channel(server.grpc_address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        requests = [grpc_request(2), grpc_request(1, shape=10**12)]
        answers = list(stub.ModelStreamInfer(iter(requests), timeout=30))
    assert [bool(a.error_message) for a in answers] == [False, False, False, True]
    after = counts()
    assert after[:2] == (success + 3, fail + 2)
    assert after[2] > 0
