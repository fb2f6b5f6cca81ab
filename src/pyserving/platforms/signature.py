"""Signatures: the named inputs and outputs a servable computes, with dtypes and shapes."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

DEFAULT_SIGNATURE = "serving_default"

# V2 datatype name → numpy dtype. BYTES tensors are numpy object arrays of `bytes`.
V2_TO_NUMPY: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
    "BYTES": np.dtype(np.object_),
}
NUMPY_TO_V2: dict[np.dtype, str] = {v: k for k, v in V2_TO_NUMPY.items()}

# V2 datatype → TF DataType enum name (for TF Serving metadata).
V2_TO_TF: dict[str, str] = {
    "BOOL": "DT_BOOL",
    "UINT8": "DT_UINT8",
    "UINT16": "DT_UINT16",
    "UINT32": "DT_UINT32",
    "UINT64": "DT_UINT64",
    "INT8": "DT_INT8",
    "INT16": "DT_INT16",
    "INT32": "DT_INT32",
    "INT64": "DT_INT64",
    "FP16": "DT_HALF",
    "FP32": "DT_FLOAT",
    "FP64": "DT_DOUBLE",
    "BYTES": "DT_STRING",
}


def v2_datatype(dtype: np.dtype) -> str:
    """The V2 datatype name of a numpy dtype; `S`/`U`/object arrays are BYTES."""
    if dtype.kind in "SUO":
        return "BYTES"
    return NUMPY_TO_V2[np.dtype(dtype)]


@dataclass(frozen=True, slots=True)
class TensorSpec:
    """One named tensor: V2 datatype name and shape, where -1 means any size."""

    name: str
    datatype: str
    shape: tuple[int, ...]

    @property
    def numpy_dtype(self) -> np.dtype:
        return V2_TO_NUMPY[self.datatype]

    def shape_matches(self, shape: tuple[int, ...]) -> bool:
        """True when `shape` has this spec's rank and agrees on every fixed dimension."""
        if len(shape) != len(self.shape):
            return False
        return all(want in (-1, got) for want, got in zip(self.shape, shape, strict=True))

    def describe(self) -> str:
        return f"{self.datatype} {list(self.shape)}"


@dataclass(frozen=True, slots=True)
class Signature:
    """A servable's callable interface: ordered input and output specs."""

    name: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    method_name: str = "tensorflow/serving/predict"
    _inputs_by_name: dict[str, TensorSpec] = field(init=False, repr=False, compare=False)
    _outputs_by_name: dict[str, TensorSpec] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_inputs_by_name", {t.name: t for t in self.inputs})
        object.__setattr__(self, "_outputs_by_name", {t.name: t for t in self.outputs})

    def input(self, name: str) -> TensorSpec | None:
        return self._inputs_by_name.get(name)

    def output(self, name: str) -> TensorSpec | None:
        return self._outputs_by_name.get(name)

    @property
    def input_names(self) -> tuple[str, ...]:
        return tuple(self._inputs_by_name)

    @property
    def output_names(self) -> tuple[str, ...]:
        return tuple(self._outputs_by_name)
