"""TF Serving's rules in protocols: TensorProtos decoded only after the signature and the limits
accepted their declaration (the one-value fill included), and examples read without 500s."""

from __future__ import annotations

import numpy as np
import pytest

from pyserving.errors import InvalidInput
from pyserving.platforms.signature import Signature, TensorSpec
from pyserving.proto import tf_serving_apis_pb2 as apis
from pyserving.proto import tf_types_pb2
from pyserving.protocols import tf_examples, tfserving


class _Limits:
    max_tensor_elements = 1 << 26
    max_tensor_bytes = 1 << 16


SIGNATURE = Signature(
    "serving_default",
    (TensorSpec("x", "FP32", (-1, 4)), TensorSpec("s", "BYTES", (-1,))),
    (TensorSpec("y", "FP32", (-1,)),),
)


def predict(x_rows: int, **x_fields: object) -> apis.PredictRequest:
    request = apis.PredictRequest()
    request.model_spec.name = "m"
    x = request.inputs["x"]
    x.dtype = tf_types_pb2.DT_FLOAT
    x.tensor_shape.dim.add(size=x_rows)
    x.tensor_shape.dim.add(size=4)
    for key, value in x_fields.items():
        field = getattr(x, key)
        if isinstance(value, bytes):
            setattr(x, key, value)
        else:
            field.extend(value)
    s = request.inputs["s"]
    s.dtype = tf_types_pb2.DT_STRING
    s.tensor_shape.dim.add(size=x_rows)
    s.string_val.append(b"same")
    return request


def decode(request: apis.PredictRequest) -> dict[str, np.ndarray]:
    infer = tfserving.predict_from_proto(request, None)
    assert callable(infer.inputs)
    return infer.inputs(SIGNATURE, _Limits())


def test_one_value_fills_the_shape_within_the_limit():
    arrays = decode(predict(3, float_val=[2.5]))
    np.testing.assert_array_equal(arrays["x"], np.full((3, 4), 2.5, np.float32))
    assert arrays["s"].tolist() == [b"same"] * 3


def test_one_value_fill_past_the_byte_limit_is_refused_before_allocating_issue_14():
    with pytest.raises(InvalidInput, match=r'input "x": FP32 \[1048576, 4\] takes 16777216 bytes'):
        decode(predict(1 << 20, float_val=[1.0]))


def test_tensor_content_must_match_the_declared_bytes():
    content = np.arange(8, dtype="<f4").tobytes()
    arrays = decode(predict(2, tensor_content=content))
    assert arrays["x"].shape == (2, 4) and not arrays["x"].flags.writeable  # zero copy
    with pytest.raises(InvalidInput, match=r"28 bytes of data do not match FP32 \[2, 4\]"):
        decode(predict(2, tensor_content=content[:28]))


def test_values_must_number_the_shape_or_one():
    with pytest.raises(InvalidInput, match=r"needs 8 values, float_val has 3"):
        decode(predict(2, float_val=[1.0, 2.0, 3.0]))


def test_wrong_dtype_and_names_are_refused_before_decoding():
    request = predict(2, float_val=[1.0])
    request.inputs["x"].dtype = tf_types_pb2.DT_INT32
    with pytest.raises(InvalidInput, match=r"expected FP32 \[-1, 4\], got INT32 \[2, 4\]"):
        decode(request)
    extra = predict(2, float_val=[1.0])
    extra.inputs["z"].dtype = tf_types_pb2.DT_FLOAT
    with pytest.raises(InvalidInput, match=r"Sent extra: \{z\}"):
        decode(extra)


@pytest.mark.parametrize(
    ("example", "fragment"),
    [
        ({"f": {"b64": "@@@"}}, "not formatted correctly for base64"),
        ({"f": [{"b64": "YWJ"}]}, "not formatted correctly for base64"),
        ({"f": 2**63}, "must fit in int64"),
        ({"f": [1, 1.5]}, "one type"),
    ],
)
def test_bad_examples_are_invalid_input_not_500_issue_14(example, fragment):
    with pytest.raises(InvalidInput, match=fragment):
        tf_examples.examples_from_json({"examples": [example]})


def test_examples_decode_b64_and_ints():
    _, examples, context = tf_examples.examples_from_json(
        {"examples": [{"f": {"b64": "YWJj"}, "n": [1, True]}], "context": {"c": 0.5}}
    )
    assert examples[0]["f"].tolist() == [b"abc"] and examples[0]["n"].tolist() == [1, 1]
    assert context is not None and context["c"].dtype == np.float32
