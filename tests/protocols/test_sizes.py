"""What decides whether a codec's work leaves the event loop (F4): BYTES values count their real
lengths, not 8 bytes per element, in answers and in gRPC requests alike."""

from __future__ import annotations

import numpy as np

from pyserving.proto import grpc_service_pb2 as pb
from pyserving.proto import tf_serving_apis_pb2 as apis
from pyserving.protocols import tfserving, v2_grpc
from pyserving.protocols.request import InferResponse, strings_size
from pyserving.serving.off_loop import OFF_LOOP_BYTES

BIG = 1 << 20  # one value: more than OFF_LOOP_BYTES on its own


def _strings(*values: bytes) -> np.ndarray:
    array = np.empty(len(values), dtype=object)
    array[:] = list(values)
    return array


def test_an_answer_of_a_few_large_strings_counts_their_bytes():
    response = InferResponse("m", 1, "s", {"out": _strings(b"a" * BIG, b"b" * BIG)})
    assert response.nbytes == 2 * BIG > OFF_LOOP_BYTES  # encoded off the loop


def test_an_answer_of_a_few_short_strings_stays_small():
    response = InferResponse("m", 1, "s", {"out": _strings(b"ab", "é"), "n": np.zeros(4)})
    assert response.nbytes == 2 + 1 + 32 <= OFF_LOOP_BYTES


def test_many_strings_are_taken_as_large_without_being_measured():
    # walking a million elements to measure them would itself be loop work
    assert strings_size(10**6, iter(())) > OFF_LOOP_BYTES
    response = InferResponse("m", 1, "s", {"out": _strings(*[b"x"] * 65)})
    assert response.nbytes > OFF_LOOP_BYTES


def test_a_v2_grpc_request_counts_its_bytes_values():
    raw = pb.ModelInferRequest(model_name="m")
    raw.inputs.add(name="x", datatype="BYTES", shape=[2])
    raw.raw_input_contents.append(b"\x00\x00\x10\x00" + b"a" * BIG + b"\x00\x00\x00\x00")
    typed = pb.ModelInferRequest(model_name="m")
    typed.inputs.add(name="x", datatype="BYTES", shape=[2]).contents.bytes_contents.extend(
        [b"a" * BIG, b""]
    )
    for request in (raw, typed):
        assert v2_grpc.request_from_proto(request, None).size > BIG


def test_a_tf_grpc_request_counts_its_string_values():
    request = apis.PredictRequest()
    request.model_spec.name = "m"
    tensor = request.inputs["x"]
    tensor.dtype = 7  # DT_STRING
    tensor.tensor_shape.dim.add(size=2)
    tensor.string_val.extend([b"a" * BIG, b""])
    assert tfserving.predict_from_proto(request, None).size > BIG
