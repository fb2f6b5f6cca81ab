"""The generate extension's JSON: outputs as text the way Triton writes them, and the V2 check
of `parameters`."""

from __future__ import annotations

import numpy as np
import orjson
import pytest

from pyserving.api.rest import generate
from pyserving.errors import InvalidInput


def test_outputs_are_values_when_single_and_bytes_are_text_even_when_not_utf8() -> None:
    outputs = {
        "word": np.array([b"caf\xc3\xa9"], dtype=object),
        "broken": np.array([[b"ok", b"\xff"]], dtype=object),
        "unicode": np.array([["a", "b"]]),
        "score": np.array([[0.5]], dtype=np.float32),
        "ids": np.array([1, 2], dtype=np.int64),
        "none": np.zeros((0, 2), dtype=object),
    }
    document = orjson.loads(generate._document("m", 3, "r1", outputs))
    assert document == {
        "model_name": "m",
        "model_version": "3",
        "id": "r1",
        "word": "café",
        "broken": [["ok", "\ufffd"]],
        "unicode": [["a", "b"]],
        "score": 0.5,
        "ids": [1, 2],
        "none": [],
    }


@pytest.mark.parametrize("parameters", [b"[]", b'"x"', b"3"])
def test_parameters_that_are_not_an_object_are_refused(parameters: bytes) -> None:
    body = b'{"text_input": "x", "parameters": ' + parameters + b"}"
    with pytest.raises(InvalidInput, match="'parameters' must be an object"):
        generate.request_from_json("m", None, body, None)
