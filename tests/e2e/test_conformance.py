"""One table of bad requests against a real server, sent over every transport: the same status and
the same message on REST and gRPC (issue 14).

Each V2 case goes out four ways: REST with JSON `data`, REST with binary tensor data, gRPC with
typed `contents`, gRPC with `raw_input_contents`. All four answer the same status; the JSON and
typed forms say the same thing, and so do the binary and raw forms (only a data-count mismatch
is worded by form: "data has 3" for values, "12 bytes of data" for bytes). TF Serving predict
cases go out as REST columnar JSON and gRPC TensorProtos. A hypothesis fuzz sends random
declarations four ways and finds no 500, no hang, and no transport that disagrees.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pyserving.demo import make_two_io
from pyserving.errors import Code
from pyserving.proto import grpc_service_pb2 as v2pb
from pyserving.proto import tf_serving_apis_pb2 as tfs
from pyserving.proto import tf_types_pb2
from tests.e2e.server import ServerProcess, running

pytestmark = pytest.mark.slow

#: --max_request_bytes of the server: a tensor declared larger is refused before it is built
LIMIT = 1 << 20
_NUMPY = {"FP32": np.float32, "FP64": np.float64, "INT64": np.int64, "INT32": np.int32}
_CONTENTS = {
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "INT64": "int64_contents",
    "INT32": "int_contents",
    "BOOL": "bool_contents",
}
_TF_DTYPE = {"FP32": tf_types_pb2.DT_FLOAT, "INT64": tf_types_pb2.DT_INT64}


@dataclass
class Tensor:
    name: str
    datatype: str
    shape: list[int]
    values: list[Any]


def good(name: str, rows: int = 2) -> Tensor:
    return Tensor(name, "FP32", [rows, 4], [0.5] * (rows * 4))


@dataclass
class Case:
    """A V2 request, declared once, and what every transport must answer."""

    status: int
    fragment: str
    inputs: list[Tensor] = field(default_factory=lambda: [good("a"), good("b")])
    model: str = "twoio"
    version: str = ""
    outputs: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    parameters: dict[str, Any] = field(default_factory=dict)


V2_CASES = {
    "unknown-model": Case(404, "Request for unknown model: 'nope' is not found", model="nope"),
    "unknown-version": Case(
        404, "Request for unknown model: 'twoio' version 7 is not found", version="7"
    ),
    "version-4300-digits": Case(400, "at most 19 digits", version="1" * 4300),
    "version-over-int64": Case(400, "2^63 - 1", version="9" * 19),
    "unknown-datatype": Case(
        400,
        'input "a": unsupported datatype "BF16"',
        [Tensor("a", "BF16", [2, 4], [0] * 8), good("b")],
    ),
    "wrong-dtype": Case(
        400,
        'input "a": expected FP32 [-1, 4], got INT64 [2, 4]',
        [Tensor("a", "INT64", [2, 4], [1] * 8), good("b")],
    ),
    "wrong-rank": Case(
        400,
        'input "a": expected FP32 [-1, 4], got FP32 [8]',
        [Tensor("a", "FP32", [8], [0.5] * 8), good("b")],
    ),
    "wrong-fixed-dim": Case(
        400, "got FP32 [2, 3]", [Tensor("a", "FP32", [2, 3], [0.5] * 6), good("b")]
    ),
    "rank-40": Case(
        400, "rank 40 exceeds the limit of 32", [Tensor("a", "FP32", [1] * 40, [1.0]), good("b")]
    ),
    "negative-dim": Case(
        400, "has a negative dimension", [Tensor("a", "FP32", [2, -4], []), good("b")]
    ),
    "huge-shape": Case(
        400, "would exceed the limit of", [Tensor("a", "FP32", [2**40, 4], [1.0]), good("b")]
    ),
    "zero-times-huge": Case(
        400, "would exceed the limit of", [Tensor("a", "FP32", [0, 2**40, 2**40], []), good("b")]
    ),
    "zero-times-2**63": Case(
        400, "would exceed the limit of", [Tensor("a", "FP32", [0, 2**63 - 1], []), good("b")]
    ),
    "over-byte-limit": Case(
        400,
        f"over the limit of {LIMIT} bytes per tensor",
        [Tensor("a", "FP32", [LIMIT, 4], [1.0]), good("b")],
    ),
    "batch-disagrees": Case(400, '"a" has 1, "b" has 2', [good("a", 1), good("b")]),
    "missing-input": Case(400, "Missing but required: {b}", [good("a")]),
    "extra-input": Case(400, "Sent extra: {c}", [good("a"), good("b"), good("c")]),
    "duplicate-input": Case(
        400, 'input "a" appears more than once', [good("a"), good("a"), good("b")]
    ),
    "unknown-output": Case(400, 'unknown output "zzz"', outputs=[("zzz", {})]),
    "duplicate-output": Case(
        400, 'output "sum" is requested more than once', outputs=[("sum", {}), ("sum", {})]
    ),
    "classification": Case(
        400, "classification extension is not supported", outputs=[("sum", {"classification": 2})]
    ),
    "timeout-text": Case(
        400, "parameter 'timeout' must be a non-negative integer", parameters={"timeout": "soon"}
    ),
    "timeout-negative": Case(400, "got -5", parameters={"timeout": -5}),
    "binary-output-flag": Case(
        400,
        "'binary_data_output' must be true or false, got 1",
        parameters={"binary_data_output": 1},
    ),
    "signature-type": Case(
        400, "'signature_name' must be a string", parameters={"signature_name": 3}
    ),
    "unknown-signature": Case(
        400, 'Serving signature key "other" not found.', parameters={"signature_name": "other"}
    ),
    "count-mismatch": Case(400, 'input "a"', [Tensor("a", "FP32", [2, 4], [0.5] * 3), good("b")]),
}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root: Path = tmp_path_factory.mktemp("conformance-repo")
    make_two_io(root / "twoio" / "1" / "model.onnx")
    with running(
        f"--model_base_path={root / 'twoio'}",
        "--model_name=twoio",
        f"--max_request_bytes={LIMIT}",
        grpc=True,
    ) as proc:
        yield proc


@pytest.fixture(scope="module")
def clients(server: ServerProcess) -> Iterator[tuple[httpx.Client, grpc.Channel]]:
    with (
        httpx.Client(base_url=server.url, timeout=30) as http,
        grpc.insecure_channel(server.grpc_address) as channel,
    ):
        yield http, channel


# --- the four forms ------------------------------------------------------------------------------


def rest_v2(http: httpx.Client, case: Case, binary: bool) -> tuple[int, str]:
    inputs: list[dict[str, Any]] = []
    blobs: list[bytes] = []
    for tensor in case.inputs:
        entry: dict[str, Any] = {
            "name": tensor.name,
            "datatype": tensor.datatype,
            "shape": tensor.shape,
        }
        if binary:
            blob = _raw(tensor)
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            entry["data"] = tensor.values
        inputs.append(entry)
    document: dict[str, Any] = {"inputs": inputs}
    if case.outputs:
        document["outputs"] = [{"name": n, "parameters": p} for n, p in case.outputs]
    if case.parameters:
        document["parameters"] = case.parameters
    header = orjson.dumps(document)
    headers = {"Inference-Header-Content-Length": str(len(header))} if binary else {}
    path = f"/v2/models/{case.model}" + (f"/versions/{case.version}" if case.version else "")
    response = http.post(path + "/infer", content=header + b"".join(blobs), headers=headers)
    return response.status_code, response.json().get(
        "error", ""
    ) if response.status_code != 200 else ""


def grpc_v2(channel: grpc.Channel, case: Case, raw: bool) -> tuple[int, str]:
    request = v2pb.ModelInferRequest(model_name=case.model, model_version=case.version)
    for tensor in case.inputs:
        item = request.inputs.add(name=tensor.name, datatype=tensor.datatype, shape=tensor.shape)
        if raw:
            request.raw_input_contents.append(_raw(tensor))
        else:
            getattr(item.contents, _CONTENTS.get(tensor.datatype, "fp32_contents")).extend(
                tensor.values
            )
    for name, parameters in case.outputs:
        output = request.outputs.add(name=name)
        for key, value in parameters.items():
            _set_parameter(output.parameters[key], value)
    for key, value in case.parameters.items():
        _set_parameter(request.parameters[key], value)
    stub = channel.unary_unary(
        "/inference.GRPCInferenceService/ModelInfer",
        request_serializer=v2pb.ModelInferRequest.SerializeToString,
        response_deserializer=v2pb.ModelInferResponse.FromString,
    )
    return _grpc_call(stub, request)


def _raw(tensor: Tensor) -> bytes:
    return np.asarray(tensor.values, _NUMPY.get(tensor.datatype, np.float32)).tobytes()


def _set_parameter(parameter: v2pb.InferParameter, value: Any) -> None:
    if isinstance(value, bool):
        parameter.bool_param = value
    elif isinstance(value, int):
        parameter.int64_param = value
    else:
        parameter.string_param = value


def _grpc_call(stub: Any, request: Any) -> tuple[int, str]:
    try:
        stub(request, timeout=30)
    except grpc.RpcError as exc:
        return Code[exc.code().name].http_status, exc.details() or ""
    return 200, ""


def four_ways(http: httpx.Client, channel: grpc.Channel, case: Case) -> dict[str, tuple[int, str]]:
    return {
        "rest-json": rest_v2(http, case, binary=False),
        "grpc-typed": grpc_v2(channel, case, raw=False),
        "rest-binary": rest_v2(http, case, binary=True),
        "grpc-raw": grpc_v2(channel, case, raw=True),
    }


def assert_agree(answers: dict[str, tuple[int, str]]) -> None:
    statuses = {status for status, _ in answers.values()}
    assert len(statuses) == 1, answers
    assert answers["rest-json"][1] == answers["grpc-typed"][1], answers
    assert answers["rest-binary"][1] == answers["grpc-raw"][1], answers


@pytest.mark.parametrize("case", V2_CASES.values(), ids=V2_CASES)
def test_v2_bad_input_same_status_and_message_on_every_transport_issue_14(clients, case):
    http, channel = clients
    answers = four_ways(http, channel, case)
    assert_agree(answers)
    for status, message in answers.values():
        assert status == case.status, answers
        assert case.fragment in message, answers


def test_v2_good_request_agrees_too(clients):
    http, channel = clients
    answers = four_ways(http, channel, Case(200, ""))
    assert all(status == 200 for status, _ in answers.values()), answers


# --- V2 lookups: metadata, config, statistics ----------------------------------------------------

_LOOKUPS = {
    "metadata": ("", v2pb.ModelMetadataRequest, v2pb.ModelMetadataResponse, "ModelMetadata"),
    "config": ("/config", v2pb.ModelConfigRequest, v2pb.ModelConfigResponse, "ModelConfig"),
    "stats": (
        "/stats",
        v2pb.ModelStatisticsRequest,
        v2pb.ModelStatisticsResponse,
        "ModelStatistics",
    ),
}


def lookup_both_ways(
    http: httpx.Client, channel: grpc.Channel, kind: str, model: str, version: str = ""
) -> tuple[httpx.Response, tuple[int, str], Any]:
    """(REST response, gRPC (status, message), gRPC response or None) for one V2 lookup."""
    suffix, request_type, response_type, method = _LOOKUPS[kind]
    path = f"/v2/models/{model}" + (f"/versions/{version}" if version else "") + suffix
    stub = channel.unary_unary(
        f"/inference.GRPCInferenceService/{method}",
        request_serializer=request_type.SerializeToString,
        response_deserializer=response_type.FromString,
    )
    try:
        answer = stub(request_type(name=model, version=version), timeout=30)
    except grpc.RpcError as exc:
        return http.get(path), (Code[exc.code().name].http_status, exc.details() or ""), None
    return http.get(path), (200, ""), answer


@pytest.mark.parametrize("kind", _LOOKUPS)
@pytest.mark.parametrize(
    ("model", "version", "message"),
    [
        ("nope", "", "Request for unknown model: 'nope' is not found"),
        ("twoio", "7", "Request for unknown model: 'twoio' version 7 is not found"),
    ],
)
def test_v2_unknown_model_in_tritons_words_on_both_transports_issue_16(
    clients, kind, model, version, message
):
    http, channel = clients
    rest, grpc_answer, _ = lookup_both_ways(http, channel, kind, model, version)
    assert (rest.status_code, rest.json()["error"]) == grpc_answer == (404, message)


def test_v2_stream_infer_words_an_unknown_model_as_triton_issue_16(clients):
    _, channel = clients
    stream = channel.stream_stream(
        "/inference.GRPCInferenceService/ModelStreamInfer",
        request_serializer=v2pb.ModelInferRequest.SerializeToString,
        response_deserializer=v2pb.ModelStreamInferResponse.FromString,
    )
    requests = [v2pb.ModelInferRequest(model_name="nope", model_version=v) for v in ("", "3")]
    answers = [r.error_message for r in stream(iter(requests), timeout=30)]
    assert answers == [
        "Request for unknown model: 'nope' is not found",
        "Request for unknown model: 'nope' version 3 is not found",
    ]


def test_v2_statistics_are_the_same_on_rest_and_grpc_issue_16(clients):
    from google.protobuf import json_format

    http, channel = clients
    ok = rest_v2(http, Case(200, ""), binary=False)
    failed = rest_v2(http, V2_CASES["count-mismatch"], binary=False)
    assert ok[0] == 200 and failed[0] == 400
    for version in ("", "1"):
        rest, status, answer = lookup_both_ways(http, channel, "stats", "twoio", version)
        assert rest.status_code == 200 and status == (200, ""), rest.text
        # the REST JSON read as the protobuf gRPC answered: same fields, same counts
        assert json_format.ParseDict(rest.json(), v2pb.ModelStatisticsResponse()) == answer
        (entry,) = rest.json()["model_stats"]
        assert (entry["name"], entry["version"]) == ("twoio", "1")
        assert entry["inference_stats"]["success"]["count"] >= 1
        assert entry["inference_stats"]["fail"]["count"] >= 1
    every = http.get("/v2/models/stats").json()
    assert [(s["name"], s["version"]) for s in every["model_stats"]] == [("twoio", "1")]


# --- TF Serving predict --------------------------------------------------------------------------


@dataclass
class TfCase:
    status: int
    fragment: str
    inputs: dict[str, tuple[list[int], list[float]]] = field(
        default_factory=lambda: {"a": ([1, 4], [0.5] * 4), "b": ([1, 4], [0.5] * 4)}
    )
    model: str = "twoio"
    version: int | None = None
    label: str | None = None
    signature: str = ""


TF_CASES = {
    "unknown-model": TfCase(404, "Servable not found for request: Latest(nope)", model="nope"),
    "unknown-version": TfCase(404, "Servable not found for request: Specific(twoio, 7)", version=7),
    "unknown-label": TfCase(404, "Unrecognized servable version label: blue", label="blue"),
    "unknown-signature": TfCase(400, 'Serving signature key "other" not found.', signature="other"),
    "wrong-fixed-dim": TfCase(
        400,
        'input "a": expected FP32 [-1, 4], got FP32 [1, 3]',
        {"a": ([1, 3], [0.5] * 3), "b": ([1, 4], [0.5] * 4)},
    ),
    "wrong-rank": TfCase(
        400,
        'input "a": expected FP32 [-1, 4], got FP32 [4]',
        {"a": ([4], [0.5] * 4), "b": ([1, 4], [0.5] * 4)},
    ),
    "batch-disagrees": TfCase(
        400, '"a" has 2, "b" has 1', {"a": ([2, 4], [0.5] * 8), "b": ([1, 4], [0.5] * 4)}
    ),
}


def rest_tf(http: httpx.Client, case: TfCase) -> tuple[int, str]:
    path = f"/v1/models/{case.model}"
    if case.version is not None:
        path += f"/versions/{case.version}"
    if case.label is not None:
        path += f"/labels/{case.label}"
    inputs = {
        name: np.asarray(values, np.float32).reshape(shape).tolist()
        for name, (shape, values) in case.inputs.items()
    }
    document: dict[str, Any] = {"inputs": inputs}
    if case.signature:
        document["signature_name"] = case.signature
    response = http.post(path + ":predict", content=orjson.dumps(document))
    return response.status_code, response.json().get(
        "error", ""
    ) if response.status_code != 200 else ""


def grpc_tf(channel: grpc.Channel, case: TfCase) -> tuple[int, str]:
    request = tfs.PredictRequest()
    request.model_spec.name = case.model
    request.model_spec.signature_name = case.signature
    if case.version is not None:
        request.model_spec.version.value = case.version
    if case.label is not None:
        request.model_spec.version_label = case.label
    for name, (shape, values) in case.inputs.items():
        tensor = request.inputs[name]
        tensor.dtype = tf_types_pb2.DT_FLOAT
        for size in shape:
            tensor.tensor_shape.dim.add(size=size)
        tensor.float_val.extend(values)
    return _grpc_call(_predict_stub(channel), request)


def _predict_stub(channel: grpc.Channel) -> Any:
    return channel.unary_unary(
        "/tensorflow.serving.PredictionService/Predict",
        request_serializer=tfs.PredictRequest.SerializeToString,
        response_deserializer=tfs.PredictResponse.FromString,
    )


@pytest.mark.parametrize("case", TF_CASES.values(), ids=TF_CASES)
def test_tf_predict_bad_input_same_on_rest_and_grpc_issue_14(clients, case):
    http, channel = clients
    rest, grpc_answer = rest_tf(http, case), grpc_tf(channel, case)
    assert rest == grpc_answer, (rest, grpc_answer)
    assert rest[0] == case.status and case.fragment in rest[1], rest


def peak_rss_kib(server: ServerProcess) -> int:
    for line in Path(f"/proc/{server.proc.pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


def test_tf_one_value_fill_is_refused_before_allocating_issue_14(server, clients):
    """38 bytes on the wire, one float_val, a million rows declared: refused naming the input,
    and the server's peak memory does not move (TF's one-value fill is bounded by the limit)."""
    _, channel = clients
    before = peak_rss_kib(server)
    request = tfs.PredictRequest()
    request.model_spec.name = "twoio"
    for name in ("a", "b"):
        tensor = request.inputs[name]
        tensor.dtype = tf_types_pb2.DT_FLOAT
        tensor.tensor_shape.dim.add(size=1 << 20)
        tensor.tensor_shape.dim.add(size=4)
        tensor.float_val.append(1.0)
    assert len(request.SerializeToString()) < 64
    status, message = _grpc_call(_predict_stub(channel), request)
    assert status == 400 and 'input "a": FP32 [1048576, 4] takes 16777216 bytes' in message
    assert peak_rss_kib(server) - before < 8 * 1024  # KiB: nothing near the declared 16 MiB x 2
    # Within the limit, the fill still works as TF Serving's does.
    small = tfs.PredictRequest()
    small.CopyFrom(request)
    for name in ("a", "b"):
        small.inputs[name].tensor_shape.dim[0].size = 3
    assert _grpc_call(_predict_stub(channel), small) == (200, "")


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/models/twoio:classify", {"examples": [{"x": {"b64": "@@@"}}]}),
        ("/v1/models/twoio:classify", {"examples": [{"x": {"b64": "YWJ"}}]}),
        ("/v1/models/twoio:regress", {"examples": [{"x": 2**63}]}),
        ("/v1/models/twoio:predict", {"inputs": {"a": [[{"b64": "@@@"}] * 4], "b": [[1] * 4]}}),
        (f"/v1/models/twoio/versions/{'1' * 4300}:predict", {"inputs": {"a": [], "b": []}}),
        (f"/v1/models/twoio/versions/{'1' * 4300}", None),
        (f"/v2/models/twoio/versions/{'1' * 4300}", None),
    ],
    ids=[
        "b64-alphabet",
        "b64-padding",
        "int-overflow",
        "predict-b64",
        "v1-4300",
        "v1-status",
        "v2-meta",
    ],
)
def test_rest_only_bad_input_is_400_not_500_issue_14(clients, path, body):
    http, _ = clients
    response = http.get(path) if body is None else http.post(path, content=orjson.dumps(body))
    assert response.status_code == 400, response.text


# --- fuzz: random declarations, four ways --------------------------------------------------------


@st.composite
def v2_cases(draw: st.DrawFn) -> Case:
    inputs = []
    for _ in range(draw(st.integers(0, 3))):
        datatype = draw(st.sampled_from(["FP32", "FP64", "INT64", "INT32", "BF16"]))
        shape = draw(
            st.lists(
                st.one_of(st.integers(-2, 6), st.sampled_from([2**31, 2**40, 2**62])), max_size=5
            )
        )
        count = draw(st.integers(0, 12))
        if datatype.startswith("INT"):
            values: list[Any] = draw(
                st.lists(st.integers(-1000, 1000), min_size=count, max_size=count)
            )
        else:
            values = draw(st.lists(st.floats(-1e3, 1e3, width=32), min_size=count, max_size=count))
        inputs.append(Tensor(draw(st.sampled_from(["a", "b", "c"])), datatype, shape, values))
    outputs = [
        (name, {})
        for name in draw(st.lists(st.sampled_from(["sum", "max_index", "zz"]), max_size=2))
    ]
    parameters = draw(
        st.dictionaries(
            st.sampled_from(["timeout", "binary_data_output", "signature_name", "other"]),
            # timeouts of 0 (504 at once) or far away: none that races the request
            st.sampled_from([-5, 0, 10**9, 2**40, True, False, "", "x", "serving_default"]),
            max_size=2,
        )
    )
    version = draw(st.sampled_from(["", "1", "2", "0" * 25, "9" * 30]))
    model = draw(st.sampled_from(["twoio", "nope"]))
    return Case(0, "", inputs, model, version, outputs, parameters)


@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(case=v2_cases())
def test_fuzz_v2_four_ways_no_500_and_they_agree_issue_14(clients, case):
    http, channel = clients
    answers = four_ways(http, channel, case)
    for status, _ in answers.values():
        assert status < 500 or (status == 504 and case.parameters.get("timeout") == 0), answers
    assert_agree(answers)


def test_server_still_answers_after_the_fuzz(clients):
    http, channel = clients
    answers = four_ways(http, channel, Case(200, ""))
    assert all(status == 200 for status, _ in answers.values()), answers
