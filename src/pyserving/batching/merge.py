"""Merging tasks into one model call and splitting its outputs back, row for row.

Dimension 0 of every tensor is the batch dimension. Inputs are concatenated on it (a batch that
is one whole task passes its arrays through untouched), padded up to an allowed batch size by
repeating the first row, and, with `pad_variable_length_inputs`, padded in the other dimensions
to the batch's largest shape with each tensor's first element (TF Serving's BatchingSession).
Outputs are cut back into each task's rows; padded rows are dropped.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from pyserving.errors import InvalidInput, ModelError

__all__ = [
    "Tensors",
    "concatenate_parts",
    "merge_inputs",
    "shape_key",
    "split_outputs",
    "task_size",
]

Tensors = Mapping[str, np.ndarray]
#: (a task's inputs, first row, end row) — the rows of one task that a batch carries
InputSlice = tuple[Tensors, int, int]


def task_size(inputs: Tensors) -> int:
    """The batch size of one task: dimension 0, which every input must have and agree on.

    Raises InvalidInput naming the input without a dimension 0 or the two that disagree.
    """
    size: int | None = None
    first = ""
    for name, array in inputs.items():
        if array.ndim == 0:
            raise InvalidInput(
                f'input "{name}" is a scalar; batching needs dimension 0 (the batch size) on'
                " every input"
            )
        if size is None:
            size, first = array.shape[0], name
        elif array.shape[0] != size:
            raise InvalidInput(
                f'inputs disagree on dimension 0 (the batch size): "{first}" has {size},'
                f' "{name}" has {array.shape[0]}'
            )
    if size is None:
        raise InvalidInput("batching needs at least one input tensor")
    return size


def shape_key(inputs: Tensors) -> tuple[tuple[str, tuple[int, ...]], ...]:
    """What must match for tasks to share a batch without padding: each input's row shape."""
    return tuple(sorted((name, array.shape[1:]) for name, array in inputs.items()))


def merge_inputs(
    slices: Sequence[InputSlice], padded_size: int, pad_variable_length_inputs: bool
) -> dict[str, np.ndarray]:
    """One batch's inputs: the slices' rows in order, then padding rows up to `padded_size`;
    read-only, as the requests' own inputs are.

    Raises InvalidInput when same-named inputs differ in shape beyond dimension 0 and padding
    is off (TF Serving's message), or differ in rank or dtype.
    """
    first_inputs, first_start, first_stop = slices[0]
    rows = sum(stop - start for _, start, stop in slices)
    if len(slices) == 1 and rows == padded_size:
        if first_start == 0 and first_stop == task_size(first_inputs):
            return dict(first_inputs)
        return {name: array[first_start:first_stop] for name, array in first_inputs.items()}
    merged: dict[str, np.ndarray] = {}
    for name in first_inputs:
        parts = [inputs[name][start:stop] for inputs, start, stop in slices]
        parts = _uniform_parts(name, parts, pad_variable_length_inputs)
        if padded_size > rows:
            # TF Serving pads by repeating the batch's first row.
            row = next(part[:1] for part in parts if part.shape[0])
            parts.append(np.repeat(row, padded_size - rows, axis=0))
        merged[name] = array = np.concatenate(parts, axis=0)
        array.flags.writeable = False  # as every decoded input is, batched or not
    return merged


def split_outputs(outputs: Tensors, sizes: Sequence[int], batch_size: int) -> list[Tensors]:
    """Cut a batch's outputs into consecutive pieces of `sizes` rows; padded rows are dropped.

    Raises ModelError when an output does not have `batch_size` rows (the model did not keep
    dimension 0 as the batch dimension).
    """
    if not isinstance(outputs, Mapping):
        raise ModelError(f"servable returned {type(outputs).__name__}, not a dict of outputs")
    arrays: dict[str, np.ndarray] = {}
    for name, value in outputs.items():
        array = value if isinstance(value, np.ndarray) else np.asarray(value)
        if array.ndim == 0 or array.shape[0] != batch_size:
            raise ModelError(
                f'output "{name}" has shape {list(array.shape)}; batching needs dimension 0 to'
                f" be the batch size {batch_size}"
            )
        arrays[name] = array
    if len(sizes) == 1 and sizes[0] == batch_size:
        return [arrays]
    pieces: list[Tensors] = []
    offset = 0
    for size in sizes:
        end = offset + size
        pieces.append({name: array[offset:end] for name, array in arrays.items()})
        offset = end
    return pieces


def concatenate_parts(parts: Sequence[Tensors]) -> dict[str, np.ndarray]:
    """Reassemble a split task's outputs from its parts, given in row order."""
    if len(parts) == 1:
        return dict(parts[0])
    return {name: np.concatenate([part[name] for part in parts], axis=0) for name in parts[0]}


def _uniform_parts(
    name: str, parts: list[np.ndarray], pad_variable_length_inputs: bool
) -> list[np.ndarray]:
    """`parts` with equal shapes beyond dimension 0, padding them when that is allowed."""
    first = parts[0]
    if all(part.shape[1:] == first.shape[1:] for part in parts):
        return parts
    if any(part.ndim != first.ndim or part.dtype != first.dtype for part in parts):
        raise InvalidInput(f'input "{name}": tasks in one batch differ in rank or dtype')
    if not pad_variable_length_inputs:
        raise InvalidInput(
            f'Tensors with name "{name}" from different tasks have different shapes and padding'
            " is turned off. Set pad_variable_length_inputs to true, or ensure that all tensors"
            " with the same name have equal dimensions starting with the first dim."
        )
    target = tuple(max(dims) for dims in zip(*(part.shape[1:] for part in parts), strict=True))
    padded: list[np.ndarray] = []
    for part in parts:
        if part.shape[1:] == target or part.shape[0] == 0:
            padded.append(part if part.shape[0] else np.empty((0, *target), part.dtype))
            continue
        # TF Serving pads with the tensor's first element.
        out = np.full((part.shape[0], *target), part.flat[0], dtype=part.dtype)
        out[tuple(slice(0, d) for d in part.shape)] = part
        padded.append(out)
    return padded
