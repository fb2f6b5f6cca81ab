"""V2 messages that must read the same on REST and gRPC (issue 14's second red-team run)."""

from __future__ import annotations

import pytest

from pyserving.errors import InvalidInput
from pyserving.platforms.signature import Signature, TensorSpec
from pyserving.proto import grpc_service_pb2 as pb
from pyserving.protocols import v2, v2_grpc
from pyserving.protocols.json_tensor import to_array


class _Limits:
    max_tensor_elements = 1 << 20
    max_tensor_bytes = 1 << 20


SIGNATURE = Signature(
    "serving_default", (TensorSpec("x", "FP32", (-1, 4)),), (TensorSpec("y", "FP32", (-1,)),)
)


def test_data_in_another_types_contents_field_is_named_issue_14():
    request = pb.ModelInferRequest(model_name="m")
    tensor = request.inputs.add(name="x", datatype="FP32", shape=[1, 4])
    tensor.contents.int_contents.extend([1, 2, 3, 4])
    infer = v2_grpc.request_from_proto(request, None)
    with pytest.raises(InvalidInput) as info:
        infer.inputs(SIGNATURE, _Limits())  # type: ignore[operator]
    message = info.value.message
    assert message.startswith('input "x": FP32 data goes in contents.fp32_contents')
    assert "4 values in contents.int_contents" in message


@pytest.mark.parametrize("value", [2.0**70, 2**63])
def test_a_timeout_past_int64_is_refused_with_an_integer_message_issue_14(value):
    # orjson reads an integer past 64 bits as a float; the message shows the integer sent
    document = {"inputs": [], "parameters": {"timeout": value}}
    with pytest.raises(InvalidInput) as info:
        v2.request_from_json("m", None, document, memoryview(b""), None, 8)
    assert f"got {int(value)}" in info.value.message
    assert "e+" not in info.value.message and "." not in info.value.message.rsplit(" ", 1)[1]


@pytest.mark.parametrize(
    ("data", "shown"), [([1.5, True, 2.0, 3.0], "true"), ([[1, 2], [False, 3]], "false")]
)
@pytest.mark.parametrize("datatype", ["FP32", "INT32"])
def test_booleans_among_numbers_are_refused_naming_the_input_issue_14(data, shown, datatype):
    with pytest.raises(InvalidInput, match=f'^input "x": JSON Value: {shown} Type: '):
        to_array(data, datatype, 'input "x"', max_depth=8, max_elements=100)
