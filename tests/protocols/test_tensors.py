"""Raw tensors (V2 binary data, gRPC raw contents, TF tensor_content) against tritonclient's own
serialisers, their error messages, and the REST body split."""

from __future__ import annotations

import re

import numpy as np
import pytest
from tritonclient.utils import deserialize_bytes_tensor, serialize_byte_tensor

from pyserving.api.rest.v2 import split_body
from pyserving.errors import InvalidInput
from pyserving.platforms.signature import Signature, TensorSpec
from pyserving.protocols.request import parse_version
from pyserving.protocols.tensors import BYTES_ELEMENT_SIZE, check_declared, check_shape
from pyserving.protocols.tensors import encode_raw as encode_tensor
from pyserving.protocols.tensors import raw_tensor as decode_tensor


@pytest.mark.parametrize(
    ("datatype", "dtype"),
    [
        ("FP32", np.float32),
        ("FP64", np.float64),
        ("FP16", np.float16),
        ("INT8", np.int8),
        ("INT64", np.int64),
        ("UINT16", np.uint16),
        ("UINT64", np.uint64),
    ],
)
def test_fixed_size_tensors_round_trip(datatype, dtype):
    array = (np.arange(12) - 3).astype(dtype).reshape(3, 4)
    wire = encode_tensor(array)
    assert wire == array.tobytes()
    decoded = decode_tensor(datatype, (3, 4), memoryview(wire), 'input "x"')
    assert decoded.dtype == dtype
    np.testing.assert_array_equal(decoded, array)


def test_decoding_is_zero_copy_when_aligned_and_copies_when_not():
    array = np.arange(8, dtype=np.float32)
    body = array.tobytes()
    aligned = decode_tensor("FP32", (8,), memoryview(body), "x")
    assert np.shares_memory(aligned, np.frombuffer(body, np.uint8))
    assert not aligned.flags.writeable
    shifted = b"\x00" + body
    misaligned = decode_tensor("FP32", (8,), memoryview(shifted)[1:], "x")
    assert misaligned.flags.aligned
    np.testing.assert_array_equal(misaligned, array)


def test_bool_is_one_byte_per_element():
    array = np.array([True, False, True])
    assert encode_tensor(array) == b"\x01\x00\x01"
    decoded = decode_tensor("BOOL", (3,), memoryview(b"\x01\x00\x07"), "x")
    assert decoded.dtype == np.bool_ and decoded.tolist() == [True, False, True]


def test_bytes_tensors_match_tritonclient_serialisation():
    array = np.array([[b"abc", b""], [b"\x00\xff", b"text"]], dtype=object)
    wire = encode_tensor(array)
    assert wire == serialize_byte_tensor(array).item()
    decoded = decode_tensor("BYTES", (2, 2), memoryview(wire), "x")
    assert decoded.dtype == object and decoded.tolist() == array.tolist()
    theirs = deserialize_bytes_tensor(encode_tensor(np.array(["é", b"z"], dtype=object)))
    assert theirs.tolist() == ["é".encode(), b"z"]


def test_empty_tensor_has_no_bytes():
    assert decode_tensor("FP32", (0, 4), memoryview(b""), "x").shape == (0, 4)
    assert encode_tensor(np.zeros((0, 4), np.float32)) == b""


@pytest.mark.parametrize(
    ("datatype", "shape", "data", "fragment"),
    [
        ("FP32", (2, 2), b"\x00" * 12, "12 bytes of data do not match FP32 [2, 2] (16 bytes)"),
        ("INT64", (1,), b"\x00" * 9, "(8 bytes)"),
        ("BF16", (1,), b"\x00" * 2, 'unsupported datatype "BF16"'),
        ("BYTES", (3,), b"\x00" * 8, "cannot hold 3 BYTES elements"),
        ("BYTES", (1,), b"\x05\x00\x00\x00abc", "declares 5 bytes but only 3 remain"),
        ("BYTES", (1,), b"\x01\x00\x00\x00abc", "2 bytes left over after 1 BYTES elements"),
        ("BYTES", (2,), b"\x01\x00\x00\x00ab\x00\x00", "element 1 has no length prefix"),
    ],
)
def test_malformed_tensors_are_invalid_input_naming_the_tensor(datatype, shape, data, fragment):
    with pytest.raises(InvalidInput) as info:
        decode_tensor(datatype, shape, memoryview(data), 'input "x"')
    assert info.value.message.startswith('input "x"')
    assert fragment in info.value.message


def test_split_body_by_inference_header_content_length():
    body = b'{"inputs": []}' + b"\x01\x02"
    header, binary = split_body(body, b"14")
    assert bytes(header) == b'{"inputs": []}' and bytes(binary) == b"\x01\x02"
    header, binary = split_body(body, None)
    assert bytes(header) == body and len(binary) == 0


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        (b"abc", "must be a non-negative integer"),
        (b"-1", "must be a non-negative integer"),
        (b"99", "exceeds the body length 16"),
        (b"0", "raw binary request"),
    ],
)
def test_bad_inference_header_content_length_is_invalid_input(value, fragment):
    with pytest.raises(InvalidInput, match="Inference-Header-Content-Length") as info:
        split_body(b'{"inputs": []}' + b"\x01\x02", value)
    assert fragment in info.value.message


# --- checks before allocating (issue 14) ---------------------------------------------------------


class _Limits:
    max_tensor_elements = 1 << 20
    max_tensor_bytes = 1 << 16


SIGNATURE = Signature(
    "serving_default",
    (TensorSpec("a", "FP32", (-1, 4)), TensorSpec("s", "BYTES", (-1,))),
    (TensorSpec("y", "FP32", (-1,)),),
)


@pytest.mark.parametrize(
    ("dims", "fragment"),
    [
        ([1] * 33, "rank 33 exceeds the limit of 32"),
        ([2, -1], "shape [2, -1] has a negative dimension"),
        ([1 << 21], "would exceed the limit of 1048576 elements"),
        ([0, 2**40, 2**40], "would exceed the limit"),
        ([0, 2**63 - 1], "would exceed the limit"),
    ],
)
def test_check_shape_refuses_before_numpy_sees_it_issue_14(dims, fragment):
    with pytest.raises(InvalidInput, match=re.escape(fragment)):
        check_shape(dims, 'input "a"', _Limits())


def test_check_shape_accepts_zero_sized_and_returns_a_tuple():
    assert check_shape([0, 4], "x", _Limits()) == (0, 4)
    assert check_shape([], "x", _Limits()) == ()


@pytest.mark.parametrize(
    ("name", "datatype", "shape", "fragment"),
    [
        ("a", "INT64", (2, 4), 'input "a": expected FP32 [-1, 4], got INT64 [2, 4]'),
        ("a", "FP32", (2, 3), 'input "a": expected FP32 [-1, 4], got FP32 [2, 3]'),
        ("a", "FP32", (8,), "got FP32 [8]"),
        ("z", "FP32", (2, 4), "Sent extra: {z}"),
        ("a", "FP32", (1 << 13, 4), "takes 131072 bytes, over the limit of 65536 bytes"),
        ("s", "BYTES", (1 << 14,), f"BYTES [16384] takes {16384 * BYTES_ELEMENT_SIZE} bytes"),
    ],
)
def test_check_declared_holds_a_declaration_against_the_signature_issue_14(
    name, datatype, shape, fragment
):
    with pytest.raises(InvalidInput, match=re.escape(fragment)):
        check_declared(SIGNATURE, name, datatype, shape, _Limits())


def test_check_declared_returns_the_element_count():
    assert check_declared(SIGNATURE, "a", "FP32", (3, 4), _Limits()) == 12


@pytest.mark.parametrize("text", ["0", "1", "42", "9" * 18, str(2**63 - 1)])
def test_parse_version_accepts_ascii_int64(text):
    assert parse_version(text) == int(text)


@pytest.mark.parametrize(
    "text", ["", "-1", "1.0", "\u0661", "\u00b2", "1" * 20, "1" * 4300, str(2**63)]
)
def test_parse_version_refuses_everything_else_issue_14(text):
    with pytest.raises(InvalidInput, match="version"):
        parse_version(text)
