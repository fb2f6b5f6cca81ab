"""merge: concatenating tasks' rows, padding (rows and variable lengths), splitting outputs."""

from __future__ import annotations

import numpy as np
import pytest

from pyserving.batching.merge import (
    concatenate_parts,
    merge_inputs,
    split_outputs,
    task_size,
)
from pyserving.errors import InvalidInput, ModelError


def test_task_size_is_dimension_zero_and_inputs_must_agree():
    assert task_size({"a": np.zeros((3, 2)), "b": np.zeros((3,))}) == 3
    with pytest.raises(InvalidInput, match='"a" has 3, "b" has 2'):
        task_size({"a": np.zeros((3, 2)), "b": np.zeros((2,))})
    with pytest.raises(InvalidInput, match='input "s" is a scalar'):
        task_size({"s": np.float32(1.0) * np.ones(())})


def test_one_whole_task_passes_through_without_a_copy():
    x = np.ones((4, 2), np.float32)
    merged = merge_inputs([({"x": x}, 0, 4)], 4, False)
    assert merged["x"] is x


def test_rows_concatenate_in_order_and_pad_by_repeating_the_first_row():
    a = np.array([[1.0, 1.0]], np.float32)
    b = np.array([[2.0, 2.0], [3.0, 3.0], [4.0, 4.0]], np.float32)
    merged = merge_inputs([({"x": a}, 0, 1), ({"x": b}, 1, 3)], 5, False)
    np.testing.assert_array_equal(merged["x"], [[1, 1], [3, 3], [4, 4], [1, 1], [1, 1]])


def test_variable_length_inputs_pad_with_each_tensors_first_element():
    a = np.array([[7, 1]], np.int64)
    b = np.array([[5, 6, 8], [9, 9, 9]], np.int64)
    merged = merge_inputs([({"t": a}, 0, 1), ({"t": b}, 0, 2)], 3, True)
    np.testing.assert_array_equal(merged["t"], [[7, 1, 7], [5, 6, 8], [9, 9, 9]])


def test_different_shapes_without_padding_are_refused_with_tf_servings_message():
    a = {"t": np.zeros((1, 2))}
    b = {"t": np.zeros((1, 3))}
    with pytest.raises(InvalidInput, match="different shapes and padding is turned off"):
        merge_inputs([(a, 0, 1), (b, 0, 1)], 2, False)


def test_split_outputs_row_for_row_and_drops_padding():
    outputs = {"y": np.arange(6)[:, None]}
    first, second = split_outputs(outputs, [1, 3], 6)
    np.testing.assert_array_equal(first["y"], [[0]])
    np.testing.assert_array_equal(second["y"], [[1], [2], [3]])


def test_split_outputs_refuses_an_output_without_the_batch_rows():
    with pytest.raises(ModelError, match='output "y" has shape \\[3\\]; batching needs'):
        split_outputs({"y": np.zeros(3)}, [2, 2], 4)
    with pytest.raises(ModelError, match="not a dict of outputs"):
        split_outputs([np.zeros(4)], [4], 4)  # type: ignore[arg-type]


def test_concatenate_parts_in_order():
    parts = [{"y": np.array([[0], [1]])}, {"y": np.array([[2]])}]
    np.testing.assert_array_equal(concatenate_parts(parts)["y"], [[0], [1], [2]])


def test_merged_inputs_are_read_only_as_each_requests_inputs_are():
    a = np.zeros((1, 3), np.float32)
    b = np.ones((2, 3), np.float32)
    merged = merge_inputs([({"x": a}, 0, 1), ({"x": b}, 0, 2)], 3, False)
    assert not merged["x"].flags.writeable
