"""Every decoded input is read-only, whatever its size, encoding and transport (F3): FP32 typed
contents used to be writable below 4096 values (misaligned packed bytes, copied) and read-only
from 4096 (aligned, a view of the request), so a servable changing its input in place failed
only for large requests."""

from __future__ import annotations

import numpy as np
import orjson
import pytest

from pyserving.platforms.signature import Signature, TensorSpec
from pyserving.proto import grpc_service_pb2 as pb
from pyserving.proto import tf_serving_apis_pb2 as apis
from pyserving.protocols import tfserving, v2, v2_grpc


class _Limits:
    max_tensor_elements = 1 << 20
    max_tensor_bytes = 1 << 24


SIGNATURE = Signature("s", (TensorSpec("x", "FP32", (-1, 4)), TensorSpec("t", "BYTES", (-1,))), ())
# around the 4096 values where typed contents' length prefix reaches 3 bytes (aligned bytes)
ROWS = [1, 3, 1023, 1024, 1100]


def _decoded(request) -> dict[str, np.ndarray]:
    return request.inputs(SIGNATURE, _Limits())


def _assert_read_only(arrays: dict[str, np.ndarray]) -> None:
    assert set(arrays) == {"x", "t"}
    for name, array in arrays.items():
        assert not array.flags.writeable, name
        with pytest.raises(ValueError, match="read-only"):
            array[...] = array  # what `x += 1` in a servable runs into


def _values(rows: int) -> np.ndarray:
    return np.arange(rows * 4, dtype=np.float32).reshape(rows, 4)


@pytest.mark.parametrize("rows", ROWS)
def test_v2_grpc_typed_and_raw_inputs_are_read_only(rows):
    values = _values(rows)
    typed = pb.ModelInferRequest(model_name="m")
    typed.inputs.add(name="x", datatype="FP32", shape=values.shape).contents.fp32_contents.extend(
        values.ravel().tolist()
    )
    typed.inputs.add(name="t", datatype="BYTES", shape=[1]).contents.bytes_contents.append(b"a")
    raw = pb.ModelInferRequest(model_name="m")
    raw.inputs.add(name="x", datatype="FP32", shape=values.shape)
    raw.inputs.add(name="t", datatype="BYTES", shape=[1])
    raw.raw_input_contents.extend([values.tobytes(), b"\x01\x00\x00\x00a"])
    for request in (typed, raw):
        wire = pb.ModelInferRequest.FromString(request.SerializeToString())
        arrays = _decoded(v2_grpc.request_from_proto(wire, None))
        np.testing.assert_array_equal(arrays["x"], values)
        _assert_read_only(arrays)


@pytest.mark.parametrize("rows", ROWS)
@pytest.mark.parametrize("header_pad", [0, 1])  # binary data after a header of any length
def test_v2_rest_json_and_binary_inputs_are_read_only(rows, header_pad):
    values = _values(rows)
    as_json = {
        "id": "x" * header_pad,
        "inputs": [
            {"name": "x", "datatype": "FP32", "shape": list(values.shape), "data": values.tolist()},
            {"name": "t", "datatype": "BYTES", "shape": [1], "data": ["a"]},
        ],
    }
    binary = values.tobytes()
    as_binary = {
        "id": "x" * header_pad,
        "inputs": [
            {
                "name": "x",
                "datatype": "FP32",
                "shape": list(values.shape),
                "parameters": {"binary_data_size": len(binary)},
            },
            {"name": "t", "datatype": "BYTES", "shape": [1], "data": ["a"]},
        ],
    }
    for document, tail in ((as_json, b""), (as_binary, binary)):
        body = orjson.dumps(document) + tail
        header = len(body) - len(tail)
        request, _, _ = v2.request_from_json(
            "m", None, orjson.loads(body[:header]), memoryview(body)[header:], None, 64
        )
        arrays = _decoded(request)
        np.testing.assert_array_equal(arrays["x"], values)
        _assert_read_only(arrays)


@pytest.mark.parametrize("rows", ROWS)
def test_tf_serving_inputs_are_read_only(rows):
    values = _values(rows)
    for content in (True, False):
        request = apis.PredictRequest()
        request.model_spec.name = "m"
        x = request.inputs["x"]
        x.dtype = 1  # DT_FLOAT
        for size in values.shape:
            x.tensor_shape.dim.add(size=size)
        if content:
            x.tensor_content = values.tobytes()
        else:
            x.float_val.extend(values.ravel().tolist())
        t = request.inputs["t"]
        t.dtype = 7  # DT_STRING
        t.tensor_shape.dim.add(size=1)
        t.string_val.append(b"a")
        _assert_read_only(_decoded(tfserving.predict_from_proto(request, None)))
    for document in (
        {"inputs": {"x": values.tolist(), "t": ["a"] * rows}},
        {"instances": [{"x": row, "t": "a"} for row in values.tolist()]},
    ):
        request, _ = tfserving.predict_from_json("m", None, None, document, None, 64)
        _assert_read_only(_decoded(request))
