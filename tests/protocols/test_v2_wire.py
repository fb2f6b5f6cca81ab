"""The V2 gRPC hot path's hand-written wire bytes read as the protobuf messages they stand for
(issue 17: the answer is written without building a ModelInferResponse; FP32 / FP64 typed
contents are read as their packed bytes)."""

from __future__ import annotations

import numpy as np
import pytest

from pyserving.errors import InvalidInput
from pyserving.platforms.signature import Signature, TensorSpec
from pyserving.proto import grpc_service_pb2 as pb
from pyserving.protocols import v2_grpc
from pyserving.protocols.request import InferResponse
from pyserving.protocols.v2_wire import packed_values


class _Limits:
    max_tensor_elements = 1 << 20
    max_tensor_bytes = 1 << 24


RESPONSES = [
    InferResponse("mlp", 1, "s", {"output": np.arange(10, dtype=np.float32).reshape(1, 10)}),
    InferResponse(
        "modèle",
        2**62,
        "s",
        {
            "empty": np.zeros((0, 3), np.int64),
            "text": np.array([b"x", b"", "é".encode()], dtype=object),
            "scalar": np.array(3.5),
            "big": np.ones((300, 2, 1), np.float64),
            "flags": np.array([True, False]),
            "wide": np.zeros((1, 200), np.uint16),
        },
        "request-ü",
    ),
    InferResponse("pipe", 3, "s", {"o": np.ones(3, np.int8)}, "id", {"step": "a:1"}),
    InferResponse("large", 7, "s", {"o": np.arange(1 << 18, dtype=np.float32)}),
    # empty strings are left out, as proto3 leaves them out (F6)
    InferResponse("", 0, "s", {"": np.ones(2, np.float32), "named": np.zeros(0, np.int32)}),
]


@pytest.mark.parametrize("response", RESPONSES, ids=lambda r: r.model or "empty-names")
def test_the_written_answer_is_the_message_protobuf_writes_issue_17(response):
    written = v2_grpc.response_to_wire(response)
    message = v2_grpc.response_to_proto(response)
    assert pb.ModelInferResponse.FromString(written) == message
    assert written == message.SerializeToString()  # byte for byte, not only equal once read


def _request(datatype: str, values: list, **other: list) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="m")
    tensor = request.inputs.add(name="x", datatype=datatype, shape=[1, len(values)])
    field = {"FP32": "fp32_contents", "FP64": "fp64_contents"}[datatype]
    getattr(tensor.contents, field).extend(values)
    for name, extra in other.items():
        getattr(tensor.contents, name).extend(extra)
    return pb.ModelInferRequest.FromString(request.SerializeToString())


@pytest.mark.parametrize("datatype", ["FP32", "FP64"])
@pytest.mark.parametrize("count", [1, 3, 64, 40_000])
def test_float_contents_decode_to_the_values_sent_issue_17(datatype, count):
    values = np.random.default_rng(count).standard_normal(count).astype(datatype.lower()[:1])
    values = values.astype(np.float32 if datatype == "FP32" else np.float64)
    signature = Signature("s", (TensorSpec("x", datatype, (1, count)),), ())
    request = _request(datatype, values.tolist())
    contents = request.inputs[0].contents
    field = "fp32_contents" if datatype == "FP32" else "fp64_contents"
    assert packed_values(contents, field, values.nbytes) is not None  # the packed path ran
    decoded = v2_grpc.request_from_proto(request, None).inputs(signature, _Limits())["x"]  # type: ignore[operator]
    assert decoded.dtype == values.dtype and decoded.shape == (1, count)
    np.testing.assert_array_equal(decoded.ravel(), values)


def test_float_contents_keep_nan_and_infinities_issue_17():
    values = [float("nan"), float("inf"), -float("inf"), -0.0]
    signature = Signature("s", (TensorSpec("x", "FP32", (1, 4)),), ())
    decoded = v2_grpc.request_from_proto(_request("FP32", values), None).inputs(
        signature, _Limits()
    )  # type: ignore[operator]
    np.testing.assert_array_equal(decoded["x"].ravel(), np.array(values, np.float32))
    assert np.signbit(decoded["x"].ravel()[3])


def test_contents_with_another_field_set_are_read_value_by_value_issue_17():
    # the packed bytes would be followed by the other field's: the slow path reads them instead
    request = _request("FP32", [1.0, 2.0, 3.0, 4.0], bytes_contents=[b"junk"])
    contents = request.inputs[0].contents
    assert packed_values(contents, "fp32_contents", 16) is None
    signature = Signature("s", (TensorSpec("x", "FP32", (1, 4)),), ())
    decoded = v2_grpc.request_from_proto(request, None).inputs(signature, _Limits())  # type: ignore[operator]
    np.testing.assert_array_equal(decoded["x"].ravel(), [1.0, 2.0, 3.0, 4.0])


def test_a_value_count_that_does_not_match_the_shape_is_refused_as_before_issue_17():
    request = _request("FP32", [1.0, 2.0, 3.0])
    request.inputs[0].shape[:] = [1, 4]
    signature = Signature("s", (TensorSpec("x", "FP32", (1, 4)),), ())
    with pytest.raises(
        InvalidInput, match=r'input "x": shape \[1, 4\] needs 4 elements, data has 3'
    ):
        v2_grpc.request_from_proto(request, None).inputs(signature, _Limits())  # type: ignore[operator]


def test_integer_contents_are_not_read_as_packed_bytes_issue_17():
    contents = pb.InferTensorContents(int_contents=[1, 2, 3])
    assert packed_values(contents, "int_contents", 12) is None
