"""Malformed gRPC messages against a real server: random bytes to every method and
hypothesis-built requests with hostile field values. Every call ends with a status that is not
INTERNAL or UNKNOWN, within its deadline, and a correct request still works afterwards."""

from __future__ import annotations

import random
from collections.abc import Iterator

import grpc
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pyserving.demo import make_two_io
from pyserving.proto import grpc_service_pb2 as v2
from pyserving.proto import tf_serving_apis_pb2 as tfs
from pyserving.proto import tf_types_pb2
from tests.e2e.server import ServerProcess, free_port

pytestmark = pytest.mark.slow

METHODS = (
    [
        "/inference.GRPCInferenceService/" + m
        for m in (
            "ServerLive",
            "ServerReady",
            "ModelReady",
            "ServerMetadata",
            "ModelMetadata",
            "ModelInfer",
            "ModelConfig",
            "ModelStatistics",
            "RepositoryIndex",
            "RepositoryModelLoad",
            "RepositoryModelUnload",
        )
    ]
    + [
        "/tensorflow.serving.PredictionService/" + m
        for m in ("Predict", "Classify", "Regress", "MultiInference", "GetModelMetadata")
    ]
    + [
        "/tensorflow.serving.ModelService/GetModelStatus",
        "/tensorflow.serving.ModelService/HandleReloadConfigRequest",
        "/grpc.health.v1.Health/Check",
    ]
)
BAD = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.DEADLINE_EXCEEDED}


@pytest.fixture(scope="module")
def channel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[grpc.Channel]:
    root = tmp_path_factory.mktemp("fuzz-repo")
    make_two_io(root / "twoio" / "1" / "model.onnx")
    port = free_port()
    proc = ServerProcess(
        f"--model_base_path={root / 'twoio'}", "--model_name=twoio", f"--port={port}"
    )
    try:
        proc.wait_ready()
        with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
            yield ch
    finally:
        assert proc.stop() == 0, proc.log()


def call(channel: grpc.Channel, method: str, payload: bytes) -> grpc.StatusCode:
    stub = channel.unary_unary(method)  # no serializers: bytes in, bytes out
    try:
        stub(payload, timeout=10)
    except grpc.RpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


def infer_works(channel: grpc.Channel) -> None:
    request = v2.ModelInferRequest(model_name="twoio")
    a = np.ones((1, 4), np.float32)
    for name in ("a", "b"):
        request.inputs.add(name=name, datatype="FP32", shape=[1, 4])
        request.raw_input_contents.append(a.tobytes())
    stub = channel.unary_unary(
        "/inference.GRPCInferenceService/ModelInfer",
        request_serializer=v2.ModelInferRequest.SerializeToString,
        response_deserializer=v2.ModelInferResponse.FromString,
    )
    response = stub(request, timeout=10)
    assert np.frombuffer(response.raw_output_contents[0], np.float32).tolist() == [2.0] * 4


def test_random_bytes_to_every_method(channel: grpc.Channel) -> None:
    rng = random.Random(1234)
    seen: dict[grpc.StatusCode, int] = {}
    for i in range(2000):
        method = METHODS[i % len(METHODS)]
        payload = rng.randbytes(rng.choice((1, 2, 5, 17, 64, 300)))
        code = call(channel, method, payload)
        assert code not in BAD, (method, payload.hex(), code)
        seen[code] = seen.get(code, 0) + 1
    assert seen.get(grpc.StatusCode.INVALID_ARGUMENT, 0) > 100, seen
    infer_works(channel)


DATATYPES = st.sampled_from(["FP32", "FP16", "INT64", "BYTES", "BOOL", "UINT8", "BF16", "", "x"])
SHAPES = st.lists(st.integers(min_value=-3, max_value=2**40), max_size=6)


@st.composite
def infer_requests(draw: st.DrawFn) -> bytes:
    request = v2.ModelInferRequest(
        model_name=draw(st.sampled_from(["twoio", "", "nope"])),
        model_version=draw(st.sampled_from(["", "1", "2", "-1", "x", "99999999999999999999"])),
    )
    for _ in range(draw(st.integers(0, 3))):
        item = request.inputs.add(
            name=draw(st.sampled_from(["a", "b", "c", ""])),
            datatype=draw(DATATYPES),
            shape=draw(SHAPES),
        )
        if draw(st.booleans()):
            item.contents.fp32_contents.extend(draw(st.lists(st.floats(width=32), max_size=8)))
        if draw(st.booleans()):
            item.contents.int_contents.extend(
                draw(st.lists(st.integers(-(2**31), 2**31 - 1), max_size=8))
            )
        if draw(st.booleans()):
            item.contents.bytes_contents.extend(draw(st.lists(st.binary(max_size=8), max_size=4)))
    for _ in range(draw(st.integers(0, 3))):
        request.raw_input_contents.append(draw(st.binary(max_size=64)))
    for _ in range(draw(st.integers(0, 2))):
        request.outputs.add(name=draw(st.sampled_from(["sum", "max_index", "zzz"])))
    if draw(st.booleans()):
        parameter = request.parameters["timeout"]
        kind = draw(st.sampled_from(["int64", "string", "double", "uint64", "bool"]))
        if kind == "int64":
            parameter.int64_param = draw(st.integers(-(2**63), 2**63 - 1))
        elif kind == "string":
            parameter.string_param = draw(st.text(max_size=8))
        elif kind == "double":
            parameter.double_param = draw(st.floats())
        elif kind == "uint64":
            parameter.uint64_param = draw(st.integers(0, 2**64 - 1))
        else:
            parameter.bool_param = draw(st.booleans())
    return request.SerializeToString()


@st.composite
def predict_requests(draw: st.DrawFn) -> bytes:
    request = tfs.PredictRequest()
    request.model_spec.name = draw(st.sampled_from(["twoio", "", "nope"]))
    choice = draw(st.sampled_from(["none", "version", "label"]))
    if choice == "version":
        request.model_spec.version.value = draw(st.integers(-(2**63), 2**63 - 1))
    elif choice == "label":
        request.model_spec.version_label = draw(st.text(max_size=8))
    for name in draw(st.lists(st.sampled_from(["a", "b", "c"]), max_size=3, unique=True)):
        tensor = request.inputs[name]
        tensor.dtype = draw(st.sampled_from([*tf_types_pb2.DataType.values(), 99]))
        for size in draw(SHAPES):
            tensor.tensor_shape.dim.add(size=size)
        tensor.tensor_shape.unknown_rank = draw(st.booleans())
        if draw(st.booleans()):
            tensor.tensor_content = draw(st.binary(max_size=64))
        if draw(st.booleans()):
            tensor.float_val.extend(draw(st.lists(st.floats(width=32), max_size=8)))
        if draw(st.booleans()):
            tensor.int_val.extend(draw(st.lists(st.integers(-(2**31), 2**31 - 1), max_size=8)))
        if draw(st.booleans()):
            tensor.half_val.extend(draw(st.lists(st.integers(-(2**31), 2**31 - 1), max_size=8)))
        if draw(st.booleans()):
            tensor.string_val.extend(draw(st.lists(st.binary(max_size=8), max_size=4)))
    request.output_filter.extend(
        draw(st.lists(st.sampled_from(["sum", "max_index", "q"]), max_size=3))
    )
    return request.SerializeToString()


@settings(
    max_examples=600, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(payload=infer_requests())
def test_hypothesis_model_infer(channel: grpc.Channel, payload: bytes) -> None:
    code = call(channel, "/inference.GRPCInferenceService/ModelInfer", payload)
    assert code not in BAD


@settings(
    max_examples=600, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(payload=predict_requests())
def test_hypothesis_predict(channel: grpc.Channel, payload: bytes) -> None:
    code = call(channel, "/tensorflow.serving.PredictionService/Predict", payload)
    assert code not in BAD


def test_correct_request_after_fuzzing(channel: grpc.Channel) -> None:
    infer_works(channel)
