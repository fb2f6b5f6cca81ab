"""Decoding counts what it builds in the request's in-flight budget (`decode_reserve`) before
it builds it: TF's one-value fill at its full size, BYTES elements at their real cost."""

from __future__ import annotations

import struct
import sys

import numpy as np
import pytest

from pyserving.errors import InvalidInput, Unavailable
from pyserving.platforms.signature import Signature, TensorSpec
from pyserving.proto import grpc_service_pb2 as pb
from pyserving.proto import tf_serving_apis_pb2 as apis
from pyserving.proto import tf_types_pb2
from pyserving.protocols import tfserving, v2_grpc
from pyserving.protocols.request import InferRequest, decode_reserve
from pyserving.protocols.tensors import BYTES_ELEMENT_SIZE


class _Limits:
    max_tensor_elements = 1 << 26
    max_tensor_bytes = 1 << 20


SIGNATURE = Signature(
    "serving_default",
    (TensorSpec("x", "FP32", (-1, 4)),),
    (TensorSpec("y", "FP32", (-1,)),),
)
STRINGS = Signature(
    "serving_default", (TensorSpec("s", "BYTES", (-1,)),), (TensorSpec("y", "FP32", (-1,)),)
)


def fill(rows: int) -> apis.PredictRequest:
    request = apis.PredictRequest()
    request.model_spec.name = "m"
    x = request.inputs["x"]
    x.dtype = tf_types_pb2.DT_FLOAT
    x.tensor_shape.dim.add(size=rows)
    x.tensor_shape.dim.add(size=4)
    x.float_val.append(1.5)
    return request


def build(make: object, reserved: list[int]) -> InferRequest:
    """The request `make()` builds while `decode_reserve` records what decoding reserves."""
    token = decode_reserve.set(reserved.append)
    try:
        request = make()  # type: ignore[operator]
    finally:
        decode_reserve.reset(token)
    assert isinstance(request, InferRequest) and callable(request.inputs)
    return request


def test_tf_fill_reserves_the_size_it_builds_issue_14():
    reserved: list[int] = []
    request = build(lambda: tfserving.predict_from_proto(fill(1000), None), reserved)
    # a message of a few bytes declaring 16,000 bytes: its decoding leaves the event loop
    assert request.size >= 1000 * 4 * 4 > fill(1000).ByteSize()
    assert reserved == []  # nothing before the signature accepted the declaration
    arrays = request.inputs(SIGNATURE, _Limits())  # type: ignore[operator]
    assert reserved == [1000 * 4 * 4]
    np.testing.assert_array_equal(arrays["x"], np.full((1000, 4), 1.5, np.float32))


def test_tf_fill_refused_by_the_budget_builds_nothing_issue_14():
    def refuse(size: int) -> None:
        raise Unavailable(f"{size} more would pass the budget")

    token = decode_reserve.set(refuse)
    try:
        request = tfserving.predict_from_proto(fill(1000), None)
    finally:
        decode_reserve.reset(token)
    with pytest.raises(Unavailable, match="16000 more"):
        request.inputs(SIGNATURE, _Limits())  # type: ignore[operator]


def test_tf_fill_over_the_per_request_limit_names_the_input():
    request = tfserving.predict_from_proto(fill((1 << 20) // 16 + 1), None)
    with pytest.raises(InvalidInput, match=r'input "x": FP32 .* over the limit of 1048576'):
        request.inputs(SIGNATURE, _Limits())  # type: ignore[operator]


def raw_bytes_request(count: int) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="m")
    request.inputs.add(name="s", datatype="BYTES", shape=[count])
    request.raw_input_contents.append(struct.pack("<I", 0) * count)
    return request


def test_bytes_elements_count_at_their_real_cost_issue_14():
    assert 8 + sys.getsizeof(b"") == BYTES_ELEMENT_SIZE
    reserved: list[int] = []
    request = build(lambda: v2_grpc.request_from_proto(raw_bytes_request(1000), None), reserved)
    arrays = request.inputs(STRINGS, _Limits())  # type: ignore[operator]
    assert arrays["s"].shape == (1000,)
    # each element: its reference, its bytes object; plus the bytes that arrived for them
    assert reserved == [1000 * BYTES_ELEMENT_SIZE + 4 * 1000]


def test_many_empty_bytes_elements_are_refused_at_their_decoded_size_issue_14():
    # 100 KiB on the wire, over 1 MiB once decoded: refused before any element is built.
    count = 25_600
    request = v2_grpc.request_from_proto(raw_bytes_request(count), None)
    with pytest.raises(InvalidInput, match=r'input "s": BYTES \[25600\] takes \d+ bytes, over'):
        request.inputs(STRINGS, _Limits())  # type: ignore[operator]
