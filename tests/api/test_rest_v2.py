"""KServe V2 REST API: in process for formats and errors, and over a real uvicorn socket with an
unmodified tritonclient.http (binary and JSON tensors) and httpx (TF REST forms, bad requests)."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator

import httpx
import numpy as np
import orjson
import pytest
import pytest_asyncio
import tritonclient.http as triton
import uvicorn
from tritonclient.utils import InferenceServerException

from pyserving.api.rest.app import RestOptions, create_app
from pyserving.core.ids import ServableState
from pyserving.platforms.signature import Signature, TensorSpec
from pyserving.serving.inference import InferenceOptions, InferenceService
from tests.serving.test_inference import (
    FakeManager,
    NumpyServable,
    add_sub_servable,
    kitchen_servable,
    labels,
    scale_servable,
)
from tests.triton_http import triton_http_client


def strings_servable() -> NumpyServable:
    """kitchen's "strings" signature as the only one: text BYTES [-1] → upper, length, raw_bytes."""
    kitchen = kitchen_servable()
    strings = kitchen.signatures["strings"]
    return NumpyServable({"strings": strings}, kitchen._compute)


def half_servable() -> NumpyServable:
    """x FP16 [-1] → y = 2x (FP16 travels only as binary)."""
    signature = Signature(
        "serving_default", (TensorSpec("x", "FP16", (-1,)),), (TensorSpec("y", "FP16", (-1,)),)
    )
    return NumpyServable({"serving_default": signature}, lambda _s, x: {"y": x["x"] * 2})


def slow_servable(release: threading.Event) -> NumpyServable:
    servable = scale_servable()
    servable._compute = lambda _s, x: {"y": x["x"]} if release.wait(10) else {}
    return servable


def make_manager() -> FakeManager:
    manager = FakeManager()
    manager.add("addsub", 1, add_sub_servable()).add("addsub", 2, add_sub_servable(10))
    manager.add("scale", 1, scale_servable())
    manager.add("strings", 1, strings_servable())
    manager.add("half", 1, half_servable())
    return manager


READY_NAMES = ["addsub", "scale", "strings", "half"]


def make_app(manager: FakeManager, **options: object) -> tuple[object, InferenceService]:
    service = InferenceService(
        manager, InferenceOptions(executor_threads=4), labels({("addsub", "stable"): 1})
    )
    rest = RestOptions(
        server_version="9.9",
        max_request_bytes=1 << 20,
        ready_names=lambda: READY_NAMES,
        **options,  # type: ignore[arg-type]
    )
    return create_app(service, rest), service


@pytest_asyncio.fixture
async def client():
    app, service = make_app(make_manager())
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
        yield http
    service.close(wait=True)


def tensor(name: str, array: np.ndarray, datatype: str = "FP32") -> dict[str, object]:
    return {"name": name, "shape": list(array.shape), "datatype": datatype, "data": array.tolist()}


def assert_error(response: httpx.Response, status: int, *fragments: str) -> str:
    assert response.status_code == status, response.text
    message = response.json()["error"]
    for fragment in fragments:
        assert fragment in message, message
    return message


A = np.arange(8, dtype=np.float32).reshape(2, 4)
B = np.full((2, 4), 0.5, np.float32)


# --- in process: server and model endpoints -------------------------------------------------------


@pytest.mark.asyncio
async def test_server_metadata_and_health(client):
    meta = (await client.get("/v2")).json()
    assert meta["name"] == "pyserving" and meta["version"] == "9.9"
    assert "binary_tensor_data" in meta["extensions"]
    assert "statistics" in meta["extensions"]  # issue 16: GET /v2/models[/{m}]/stats
    assert (await client.get("/v2/health/live")).status_code == 200
    assert (await client.get("/v2/health/ready")).status_code == 200


@pytest.mark.asyncio
async def test_server_is_not_ready_until_every_configured_model_is_available_issue_15():
    manager = make_manager()
    app, service = make_app(manager)
    READY_NAMES.append("later")
    try:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
            # 503, as while draining: one status code for "not ready", and the body says why.
            assert_error(
                await http.get("/v2/health/ready"),
                503,
                "not ready: model later: no versions found under its base path",
            )
            manager.set_state("later", 2, ServableState.END, "CRC mismatch")
            manager.set_state("later", 1, ServableState.LOADING, "disk hiccup")
            assert_error(
                await http.get("/v2/health/ready"),
                503,
                "model later: version 2 failed: CRC mismatch; version 1 is loading, retrying"
                " after: disk hiccup",
            )
            manager.add("later", 1, scale_servable())
            assert (await http.get("/v2/health/ready")).status_code == 200
    finally:
        READY_NAMES.remove("later")
        service.close()


@pytest.mark.asyncio
async def test_model_metadata_lists_versions_platform_and_tensors(client):
    response = await client.get("/v2/models/addsub")
    assert response.status_code == 200
    assert response.json() == {
        "name": "addsub",
        "versions": ["2", "1"],
        "platform": "numpy",
        "inputs": [
            {"name": "a", "datatype": "FP32", "shape": [-1, 4]},
            {"name": "b", "datatype": "FP32", "shape": [-1, 4]},
        ],
        "outputs": [
            {"name": "sum", "datatype": "FP32", "shape": [-1, 4]},
            {"name": "diff", "datatype": "FP32", "shape": [-1, 4]},
        ],
    }
    assert (await client.get("/v2/models/addsub/versions/1")).status_code == 200
    assert_error(await client.get("/v2/models/nope"), 404, "'nope' is not found")
    assert_error(await client.get("/v2/models/addsub/versions/5"), 404, "'addsub' version 5 is")


@pytest.mark.asyncio
async def test_model_ready_and_config(client):
    assert (await client.get("/v2/models/addsub/ready")).status_code == 200
    assert (await client.get("/v2/models/addsub/versions/1/ready")).status_code == 200
    assert_error(await client.get("/v2/models/addsub/versions/3/ready"), 400, "not ready")
    assert_error(await client.get("/v2/models/nope/ready"), 400, '"nope"')
    config = (await client.get("/v2/models/scale/config")).json()
    assert config["input"] == [{"name": "x", "data_type": "TYPE_FP32", "dims": [-1, 3]}]


@pytest.mark.asyncio
async def test_unknown_paths_are_404_and_wrong_methods_405(client):
    for path in ("/v2/nothing", "/v2/models", "/v2/models/addsub/statistics"):
        response = await client.get(path)
        assert response.status_code == 404 and response.json() == {"error": "Not Found"}, path
    assert (await client.get("/v2/models/addsub/infer")).status_code == 405
    assert (await client.post("/v2/health/live")).status_code == 405
    response = await client.post("/v2/models/addsub", content=b"{}")
    assert response.status_code == 405 and response.headers["allow"] == "GET"


@pytest.mark.asyncio
async def test_lifespan_startup_and_shutdown_are_acknowledged():
    app, service = make_app(make_manager())
    incoming = [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}]
    sent: list[dict[str, object]] = []

    async def receive() -> dict[str, object]:
        return incoming.pop(0)

    async def send(message: dict[str, object]) -> None:
        sent.append(message)

    await app({"type": "lifespan"}, receive, send)
    assert [m["type"] for m in sent] == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
    service.close()


# --- in process: infer --------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_json_infer_flat_and_nested_data_echoes_id_and_version(client):
    flat = {"name": "a", "shape": [2, 4], "datatype": "FP32", "data": A.ravel().tolist()}
    body = {"id": "req-1", "inputs": [flat, tensor("b", B)]}
    response = await client.post("/v2/models/addsub/infer", content=orjson.dumps(body))
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    result = response.json()
    assert result["model_name"] == "addsub" and result["model_version"] == "2"
    assert result["id"] == "req-1"
    by_name = {o["name"]: o for o in result["outputs"]}
    assert by_name["sum"]["shape"] == [2, 4] and by_name["sum"]["datatype"] == "FP32"
    np.testing.assert_array_equal(np.array(by_name["sum"]["data"]).reshape(2, 4), A + B + 10)


@pytest.mark.asyncio
async def test_infer_explicit_version_and_output_filter(client):
    body = {"inputs": [tensor("a", A), tensor("b", B)], "outputs": [{"name": "diff"}]}
    response = await client.post("/v2/models/addsub/versions/1/infer", content=orjson.dumps(body))
    result = response.json()
    assert result["model_version"] == "1"
    assert [o["name"] for o in result["outputs"]] == ["diff"]
    assert result["outputs"][0]["data"] == (A - B).ravel().tolist()


@pytest.mark.asyncio
async def test_binary_request_and_binary_outputs_by_hand(client):
    header = orjson.dumps(
        {
            "inputs": [
                {
                    "name": "a",
                    "shape": [2, 4],
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": 32},
                },
                tensor("b", B),
            ],
            "outputs": [
                {"name": "sum", "parameters": {"binary_data": True}},
                {"name": "diff", "parameters": {"binary_data": False}},
            ],
        }
    )
    response = await client.post(
        "/v2/models/addsub/infer",
        content=header + A.tobytes(),
        headers={"Inference-Header-Content-Length": str(len(header))},
    )
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/octet-stream"
    json_length = int(response.headers["inference-header-content-length"])
    result = orjson.loads(response.content[:json_length])
    sum_entry, diff_entry = result["outputs"]
    assert sum_entry["parameters"] == {"binary_data_size": 32} and "data" not in sum_entry
    np.testing.assert_array_equal(
        np.frombuffer(response.content[json_length:], np.float32).reshape(2, 4), A + B + 10
    )
    assert diff_entry["data"] == (A - B).ravel().tolist()


@pytest.mark.asyncio
async def test_bytes_as_json_strings(client):
    text = {"name": "text", "shape": [2], "datatype": "BYTES", "data": ["ab", "xyz"]}
    response = await client.post(
        "/v2/models/strings/infer", content=orjson.dumps({"inputs": [text]})
    )
    outputs = {o["name"]: o for o in response.json()["outputs"]}
    assert outputs["upper"]["data"] == ["AB", "XYZ"] and outputs["upper"]["datatype"] == "BYTES"
    assert outputs["length"]["data"] == [2, 3] and outputs["length"]["datatype"] == "INT64"


@pytest.mark.asyncio
async def test_non_utf8_bytes_output_as_json_is_400_asking_for_binary(client):
    header = orjson.dumps(
        {
            "inputs": [
                {
                    "name": "text",
                    "shape": [1],
                    "datatype": "BYTES",
                    "parameters": {"binary_data_size": 6},
                }
            ],
            "outputs": [{"name": "raw_bytes"}],
        }
    )
    body = header + b"\x02\x00\x00\x00\xff\xfe"
    response = await client.post(
        "/v2/models/strings/infer",
        content=body,
        headers={"Inference-Header-Content-Length": str(len(header))},
    )
    assert_error(response, 400, 'output "raw_bytes"', "binary")


def infer_body(*inputs: dict[str, object], **extra: object) -> bytes:
    return orjson.dumps({"inputs": list(inputs), **extra})


def nested(depth: int) -> list[object]:
    value: list[object] = [1]
    for _ in range(depth - 1):
        value = [value]
    return value


GOOD_A = tensor("a", A)
GOOD_B = tensor("b", B)


def raw_a(**fields: object) -> dict[str, object]:
    """Input "a" as declared by `fields` over defaults shape [2, 4], FP32 (no data)."""
    return {"name": "a", "shape": [2, 4], "datatype": "FP32", **fields}


def sized(size: object) -> dict[str, object]:
    return {"binary_data_size": size}


IHCL = "Inference-Header-Content-Length"
TWO = infer_body(GOOD_A, GOOD_B)
# (body, headers, fragments of the 400 message)
BAD_INFER = {
    "garbage": (b"\x00\xff garbage \x13", {}, ["JSON Parse error"]),
    "not-object": (b"[]", {}, ["JSON object"]),
    "inputs-not-list": (b'{"inputs": "x"}', {}, ["'inputs' must be a list"]),
    "input-not-object": (b'{"inputs": [5]}', {}, ["input 0", "'name'"]),
    "datatype": (infer_body(raw_a(datatype="FLOAT", data=[])), {}, ["unsupported datatype"]),
    "shape-type": (infer_body(raw_a(shape="2x4", data=[])), {}, ['input "a"', "'shape'"]),
    "shape-negative": (infer_body(raw_a(shape=[2, -4], data=[])), {}, ["non-negative"]),
    "no-data": (infer_body(raw_a()), {}, ["neither 'data' nor"]),
    "twice": (infer_body(GOOD_A, GOOD_A, GOOD_B), {}, ['input "a" appears more than once']),
    "dtype": (
        infer_body(tensor("a", A.astype(np.int64), "INT64"), GOOD_B),
        {},
        ['input "a": expected FP32 [-1, 4], got INT64 [2, 4]'],
    ),
    "shape": (
        infer_body(tensor("a", A[:, :3]), GOOD_B),
        {},
        ['input "a": expected FP32 [-1, 4], got FP32 [2, 3]'],
    ),
    "batch": (infer_body(tensor("a", A[:1]), GOOD_B), {}, ['"a" has 1, "b" has 2']),
    "missing": (infer_body(GOOD_A), {}, ["Missing but required: {b}"]),
    "extra": (infer_body(GOOD_A, GOOD_B, tensor("c", B)), {}, ["Sent extra: {c}"]),
    "count": (
        infer_body(raw_a(data=[1, 2, 3]), GOOD_B),
        {},
        ['input "a": shape [2, 4] needs 8 elements, data has 3'],
    ),
    "nested-shape": (
        infer_body(raw_a(data=[list(range(8))]), GOOD_B),
        {},
        ["nested data has shape [1, 8]"],
    ),
    "ragged": (
        infer_body(raw_a(data=[[1, 2, 3, 4], [5, 6, 7]]), GOOD_B),
        {},
        ["unexpected size/level"],
    ),
    "strings": (
        infer_body(raw_a(data=["a"] * 8), GOOD_B),
        {},
        ["Type: String is not of expected type: float"],
    ),
    "huge": (infer_body(raw_a(shape=[10**5] * 3, data=[1]), GOOD_B), {}, ["exceed the limit"]),
    "rank": (infer_body(raw_a(shape=[1] * 40, data=[1]), GOOD_B), {}, ["rank 40"]),
    "deep": (
        infer_body(raw_a(data=nested(40)), GOOD_B),
        {},
        ["nested deeper than 32"],
    ),
    "fp16-json": (
        infer_body({"name": "x", "shape": [1], "datatype": "FP16", "data": [1.0]}),
        {},
        ["FP16", "binary"],
    ),
    "binary-missing": (
        infer_body(raw_a(parameters=sized(32)), GOOD_B),
        {},
        ["exceeds the 0 bytes of binary data"],
    ),
    "binary-size-type": (
        infer_body(raw_a(parameters=sized("32")), GOOD_B),
        {},
        ["binary_data_size must be"],
    ),
    "data-and-binary": (
        infer_body(raw_a(data=[0] * 8, parameters=sized(32)), GOOD_B),
        {},
        ["both 'data' and"],
    ),
    "ihcl-text": (TWO + b"\x00" * 8, {IHCL: "nope"}, [f"{IHCL} must be"]),
    "ihcl-too-big": (TWO, {IHCL: "100000"}, ["exceeds the body length"]),
    "ihcl-minus": (TWO + b"\x00" * 8, {IHCL: "-"}, [IHCL]),
    "outputs-type": (infer_body(GOOD_A, GOOD_B, outputs="sum"), {}, ["'outputs' must be a list"]),
    "output-unknown": (
        infer_body(GOOD_A, GOOD_B, outputs=[{"name": "nope"}]),
        {},
        ['unknown output "nope"', "sum, diff"],
    ),
    "classification": (
        infer_body(GOOD_A, GOOD_B, outputs=[{"name": "sum", "parameters": {"classification": 2}}]),
        {},
        ["classification"],
    ),
    "timeout-type": (infer_body(GOOD_A, GOOD_B, parameters={"timeout": "soon"}), {}, ["'timeout'"]),
    "binary-output-type": (
        infer_body(GOOD_A, GOOD_B, parameters={"binary_data_output": 1}),
        {},
        ["binary_data_output"],
    ),
    "id-type": (infer_body(GOOD_A, GOOD_B, id=5), {}, ["'id' must be a string"]),
}


@pytest.mark.asyncio
@pytest.mark.parametrize(("body", "headers", "fragments"), BAD_INFER.values(), ids=BAD_INFER)
async def test_bad_infer_requests_are_400_naming_the_problem(client, body, headers, fragments):
    response = await client.post("/v2/models/addsub/infer", content=body, headers=headers)
    assert_error(response, 400, *fragments)


@pytest.mark.asyncio
async def test_leftover_binary_bytes_are_refused(client):
    header = infer_body(GOOD_A, GOOD_B)
    response = await client.post(
        "/v2/models/addsub/infer",
        content=header + b"\x00" * 8,
        headers={"Inference-Header-Content-Length": str(len(header))},
    )
    assert_error(response, 400, "8 bytes after the last binary input")


@pytest.mark.asyncio
async def test_v2_timeout_parameter_is_a_deadline():
    release = threading.Event()
    manager = make_manager().add("slow", 1, slow_servable(release))
    app, service = make_app(manager)
    try:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
            x = tensor("x", np.zeros((1, 3), np.float32))
            body = infer_body(x, parameters={"timeout": 50_000})
            response = await http.post("/v2/models/slow/infer", content=body)
            assert_error(response, 504, "Deadline exceeded")
    finally:
        release.set()
        service.close(wait=True)


@pytest.mark.asyncio
async def test_unknown_model_or_version_is_404_in_tritons_words_issue_16(client):
    body = infer_body(GOOD_A, GOOD_B)
    unknown = "Request for unknown model: 'nope' is not found"
    assert_error(await client.post("/v2/models/nope/infer", content=body), 404, unknown)
    assert_error(await client.get("/v2/models/nope"), 404, unknown)
    assert_error(await client.get("/v2/models/nope/config"), 404, unknown)
    assert_error(await client.get("/v2/models/nope/stats"), 404, unknown)
    for generate in ("generate", "generate_stream"):
        response = await client.post(f"/v2/models/nope/{generate}", content=b'{"x": [1]}')
        assert_error(response, 404, unknown)
    version = "Request for unknown model: 'addsub' version 9 is not found"
    response = await client.post("/v2/models/addsub/versions/9/infer", content=body)
    assert assert_error(response, 404) == version
    assert assert_error(await client.get("/v2/models/addsub/versions/9"), 404) == version
    assert assert_error(await client.get("/v2/models/addsub/versions/9/stats"), 404) == version
    # the TF Serving API keeps TF's words for the same miss
    response = await client.post("/v1/models/nope:predict", content=b'{"instances": [1]}')
    assert_error(response, 404, "Servable not found for request: Latest(nope)")


def stats_counts(document: dict[str, object]) -> dict[tuple[str, str], tuple[int, int]]:
    """(model, version) → (success count, fail count) of a statistics answer."""
    entries = document["model_stats"]
    assert isinstance(entries, list)
    return {
        (e["name"], e["version"]): (
            e["inference_stats"]["success"]["count"],
            e["inference_stats"]["fail"]["count"],
        )
        for e in entries
    }


@pytest.mark.asyncio
async def test_statistics_per_model_version_and_server_in_tritons_shape_issue_16(client):
    before = stats_counts((await client.get("/v2/models/addsub/stats")).json())
    assert set(before) == {("addsub", "2"), ("addsub", "1")}
    ok = await client.post("/v2/models/addsub/versions/1/infer", content=TWO)
    assert ok.status_code == 200, ok.text
    bad = await client.post("/v2/models/addsub/versions/1/infer", content=infer_body(GOOD_A))
    assert bad.status_code == 400
    after = stats_counts((await client.get("/v2/models/addsub/stats")).json())
    ok_before, failed_before = before[("addsub", "1")]
    assert after[("addsub", "1")] == (ok_before + 1, failed_before + 1)
    assert after[("addsub", "2")] == before[("addsub", "2")]

    ok_now, failed_now = after[("addsub", "1")]
    (entry,) = (await client.get("/v2/models/addsub/versions/1/stats")).json()["model_stats"]
    assert (entry["name"], entry["version"]) == ("addsub", "1")
    assert entry["last_inference"] > 0
    # one model call per successful request, each with one or more batch items (dimension 0)
    assert entry["inference_count"] >= entry["execution_count"] == ok_now
    phases = entry["inference_stats"]
    assert set(phases) == {
        "success",
        "fail",
        "queue",
        "compute_input",
        "compute_infer",
        "compute_output",
        "cache_hit",
        "cache_miss",
    }
    assert phases["success"]["count"] == ok_now and phases["fail"]["count"] == failed_now
    assert phases["success"]["ns"] >= phases["compute_infer"]["ns"] > 0
    assert phases["fail"]["ns"] > 0
    for phase in ("queue", "compute_input", "compute_infer", "compute_output"):
        assert phases[phase]["count"] == ok_now  # each successful model call
    assert phases["cache_hit"] == phases["cache_miss"] == {"count": 0, "ns": 0}
    assert (entry["response_stats"], entry["batch_stats"], entry["memory_usage"]) == ({}, [], [])

    every = stats_counts((await client.get("/v2/models/stats")).json())
    assert {name for name, _ in every} == {"addsub", "scale", "strings", "half"}
    assert every[("addsub", "1")] == after[("addsub", "1")]
    assert (await client.post("/v2/models/stats")).status_code == 405
    assert (await client.post("/v2/models/addsub/stats")).status_code == 405


# --- a real socket: uvicorn (uvloop, httptools), tritonclient.http, httpx -------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    app, service = make_app(make_manager())
    port = free_port()
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        loop="uvloop",
        http="httptools",
        lifespan="on",
        log_level="warning",
    )
    uvicorn_server = uvicorn.Server(config)
    thread = threading.Thread(target=uvicorn_server.run, name="uvicorn-test", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not uvicorn_server.started:
        assert thread.is_alive(), "uvicorn exited during startup"
        assert time.monotonic() < deadline, "uvicorn did not start in 30s"
        time.sleep(0.01)
    yield f"127.0.0.1:{port}"
    uvicorn_server.should_exit = True
    thread.join(30)
    assert not thread.is_alive(), "uvicorn did not stop"
    service.close(wait=True)


@pytest.fixture
def triton_client(server) -> Iterator[triton.InferenceServerClient]:
    with triton_http_client(server) as client:
        yield client


def triton_input(name: str, array: np.ndarray, datatype: str, binary: bool) -> triton.InferInput:
    inp = triton.InferInput(name, list(array.shape), datatype)
    inp.set_data_from_numpy(array, binary_data=binary)
    return inp


def test_tritonclient_health_and_metadata(triton_client):
    assert triton_client.is_server_live() and triton_client.is_server_ready()
    assert triton_client.is_model_ready("addsub") and triton_client.is_model_ready("addsub", "1")
    assert not triton_client.is_model_ready("addsub", "9")
    assert triton_client.get_server_metadata()["name"] == "pyserving"
    meta = triton_client.get_model_metadata("addsub")
    assert meta["versions"] == ["2", "1"] and [i["name"] for i in meta["inputs"]] == ["a", "b"]
    assert triton_client.get_model_config("scale")["input"][0]["dims"] == [-1, 3]


@pytest.mark.parametrize(
    ("binary_in", "binary_out"),
    [(True, True), (False, False), (True, False), (False, True)],
    ids=["bin-bin", "json-json", "bin-json", "json-bin"],
)
def test_tritonclient_multi_input_multi_output(triton_client, binary_in, binary_out):
    inputs = [triton_input("a", A, "FP32", binary_in), triton_input("b", B, "FP32", binary_in)]
    outputs = [
        triton.InferRequestedOutput("sum", binary_data=binary_out),
        triton.InferRequestedOutput("diff", binary_data=binary_out),
    ]
    result = triton_client.infer("addsub", inputs, outputs=outputs, request_id="r7")
    np.testing.assert_array_equal(result.as_numpy("sum"), A + B + 10)
    np.testing.assert_array_equal(result.as_numpy("diff"), A - B)
    response = result.get_response()
    assert response["model_version"] == "2" and response["id"] == "r7"


def test_tritonclient_mixed_inputs_default_outputs_and_explicit_version(triton_client):
    inputs = [triton_input("a", A, "FP32", True), triton_input("b", B, "FP32", False)]
    result = triton_client.infer("addsub", inputs, model_version="1")
    np.testing.assert_array_equal(result.as_numpy("sum"), A + B)
    assert result.get_response()["model_version"] == "1"


def test_tritonclient_bytes_and_fp16(triton_client):
    text = np.array([b"abc", "é".encode(), b"\x00z"], dtype=object)
    result = triton_client.infer("strings", [triton_input("text", text, "BYTES", True)])
    assert result.as_numpy("upper").tolist() == [b"ABC", "é".encode(), b"\x00Z"]
    assert result.as_numpy("length").tolist() == [3, 2, 2]
    result = triton_client.infer(
        "strings",
        [triton_input("text", np.array([b"hi"], dtype=object), "BYTES", False)],
        outputs=[triton.InferRequestedOutput("upper", binary_data=False)],
    )
    assert result.as_numpy("upper").tolist() == ["HI"]  # tritonclient decodes JSON strings
    half = np.array([1.5, -2.0, 0.25], np.float16)
    result = triton_client.infer("half", [triton_input("x", half, "FP16", True)])
    assert result.as_numpy("y").dtype == np.float16
    np.testing.assert_array_equal(result.as_numpy("y"), half * 2)


def test_tritonclient_unknown_model_and_bad_input_raise_with_status(triton_client):
    with pytest.raises(InferenceServerException) as info:
        triton_client.infer("nope", [triton_input("a", A, "FP32", True)])
    assert info.value.status() == "404"
    assert info.value.message() == "Request for unknown model: 'nope' is not found"
    with pytest.raises(InferenceServerException) as info:
        triton_client.infer("addsub", [triton_input("a", A.astype(np.int32), "INT32", True)])
    assert info.value.status() == "400"
    assert 'input "a"' in info.value.message() or "Missing but required" in info.value.message()


def test_tritonclient_reads_the_statistics_issue_16(triton_client):
    stats = triton_client.get_inference_statistics("scale", "1")
    assert [(s["name"], s["version"]) for s in stats["model_stats"]] == [("scale", "1")]
    every = triton_client.get_inference_statistics()
    assert ("addsub", "2") in {(s["name"], s["version"]) for s in every["model_stats"]}


def test_tf_rest_forms_and_errors_over_a_real_socket(server):
    with httpx.Client(base_url=f"http://{server}") as http:
        rows = http.post("/v1/models/scale:predict", json={"instances": [[1, 2, 3]]})
        assert rows.status_code == 200 and rows.json() == {"predictions": [[2.0, 4.0, 6.0]]}
        columns = http.post(
            "/v1/models/addsub/labels/stable:predict",
            json={"inputs": {"a": A.tolist(), "b": B.tolist()}},
        )
        assert columns.status_code == 200, columns.text
        np.testing.assert_array_equal(columns.json()["outputs"]["sum"], A + B)
        status = http.get("/v1/models/addsub").json()["model_version_status"]
        assert [s["version"] for s in status] == ["2", "1"]
        assert_error(
            http.post("/v1/models/nope:predict", json={"instances": [1]}), 404, "Latest(nope)"
        )
        assert_error(http.get("/v1/models/scale:predict"), 400, "Malformed request: GET")


def test_oversized_bodies_are_413_declared_or_streamed(server):
    with httpx.Client(base_url=f"http://{server}") as http:
        declared = http.post("/v2/models/scale/infer", content=b" " * (2 << 20))
        assert_error(declared, 413, "exceeds the limit")

        def chunks() -> Iterator[bytes]:
            for _ in range(64):
                yield b" " * 65536

        streamed = http.post("/v2/models/scale/infer", content=chunks())
        assert_error(streamed, 413, "exceeds the limit")
        # the server still answers on a fresh connection
        assert http.get("/v2/health/live").status_code == 200


def test_hundreds_of_bad_requests_then_a_good_one(server, triton_client):
    bad = [
        ("/v1/models/scale:predict", b"{not json"),
        ("/v1/models/scale:predict", b'{"instances": [[1, 2]]}'),
        ("/v1/models/scale:predict", b'{"instances": [["a", "b", "c"]]}'),
        ("/v1/models/scale:predict", b'{"instances": ' + b"[" * 200 + b"]" * 200 + b"}"),
        ("/v1/models/scale:predict", b'{"instances": ' + b"[" * 2000 + b"]" * 2000 + b"}"),
        ("/v1/models/nope:predict", b'{"instances": [[1]]}'),
        ("/v2/models/scale/infer", b"\x00\xff garbage \x13"),
        ("/v2/models/scale/infer", b'{"inputs": "x"}'),
        (
            "/v2/models/scale/infer",
            b'{"inputs": [{"name": "x", "shape": [1, 3], "datatype": "INT64", "data": [1, 2, 3]}]}',
        ),
        (
            "/v2/models/scale/infer",
            b'{"inputs": [{"name": "x", "shape": [99999999999], "datatype": "FP32", "data": [1]}]}',
        ),
        (
            "/v2/models/scale/infer",
            b'{"inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP32",'
            b' "parameters": {"binary_data_size": 99}}]}',
        ),
    ]
    with httpx.Client(base_url=f"http://{server}") as http:
        for _ in range(25):
            for path, body in bad:
                response = http.post(path, content=body)
                assert 400 <= response.status_code < 500, (path, body[:60], response.text)
                assert response.json()["error"]
            response = http.post(
                "/v2/models/scale/infer",
                content=b'{"inputs": []}\x00\x01',
                headers={"Inference-Header-Content-Length": "1000"},
            )
            assert response.status_code == 400
        good = http.post("/v1/models/scale:predict", json={"instances": [[1, 1, 1]]})
        assert good.json() == {"predictions": [[2.0, 2.0, 2.0]]}
    result = triton_client.infer(
        "scale", [triton_input("x", np.ones((1, 3), np.float32), "FP32", True)]
    )
    np.testing.assert_array_equal(result.as_numpy("y"), [[2.0, 2.0, 2.0]])


def test_concurrent_clients_all_get_their_own_answers(server):
    async def one(http: httpx.AsyncClient, i: int) -> None:
        x = np.full((1, 3), i, np.float32)
        body = {"inputs": [tensor("x", x)]}
        response = await http.post("/v2/models/scale/infer", content=orjson.dumps(body))
        assert response.json()["outputs"][0]["data"] == [2.0 * i] * 3

    async def main() -> None:
        async with httpx.AsyncClient(base_url=f"http://{server}") as http:
            await asyncio.gather(*(one(http, i) for i in range(200)))

    asyncio.run(main())
