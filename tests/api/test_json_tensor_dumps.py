"""json_tensor.dumps: orjson for finite tensors, TF Serving's literals for NaN and ±Infinity."""

from __future__ import annotations

import numpy as np

from pyserving.protocols.json_tensor import dumps


def test_finite_tensors_serialise_with_orjson() -> None:
    y = np.array([[0.5, -1.0, 2.25]], dtype=np.float32)
    assert dumps({"data": y.ravel()}, [y]) == b'{"data":[0.5,-1.0,2.25]}'


def test_non_finite_values_are_written_as_literals() -> None:
    y = np.array([np.nan, np.inf, -np.inf, 1.5], dtype=np.float32)
    assert dumps({"data": y}, [y]) == b'{"data":[NaN,Infinity,-Infinity,1.5]}'


def test_a_null_elsewhere_keeps_the_fast_path_output() -> None:
    y = np.array([1.0, 2.0], dtype=np.float64)
    assert dumps({"p": None, "data": y}, [y]) == b'{"p":null,"data":[1.0,2.0]}'


def test_a_non_finite_tensor_not_listed_is_not_checked() -> None:
    y = np.array([np.nan], dtype=np.float64)
    assert dumps({"data": y}) == b'{"data":[null]}'
