"""Request planning: finding a servable's signature and checking a request against it.

A `SignaturePlan` is computed once per signature (`SignaturePlans` caches them): validating a
request's inputs, checking the output names it asks for and collecting the servable's outputs
are then lookups in precomputed tables.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from pyserving.errors import FailedPrecondition, InvalidInput, ModelError
from pyserving.platforms.signature import DEFAULT_SIGNATURE, NUMPY_TO_V2, Signature, TensorSpec
from pyserving.protocols.tensors import mismatch_message

__all__ = ["SignaturePlan", "SignaturePlans", "describe_array", "find_signature", "fits"]

#: the most plans cached across every model version before the cache starts again
_MAX_PLANS = 4096


def find_signature(signatures: Mapping[str, Signature], name: str | None) -> Signature:
    """The named signature; None or "" means "serving_default", or the only one there is.

    Raises FailedPrecondition with TF Serving's text (its code and words) when there is no
    such signature.
    """
    if name:
        found = signatures.get(name)
    else:
        name = DEFAULT_SIGNATURE
        found = signatures.get(name)
        if found is None and len(signatures) == 1:
            found = next(iter(signatures.values()))
    if found is None:
        raise FailedPrecondition(f'Serving signature key "{name}" not found.')
    return found


class SignaturePlans:
    """Each signature's plan, computed on first use.

    Thread-safety: `get` may be called from any thread; the cache is only ever replaced or
    extended with whole-entry assignments (GIL-atomic), so a race computes a plan twice at worst.
    """

    def __init__(self) -> None:
        # id(signature) → its precomputed plan; the plan holds the signature, so the id is not
        # reused while the entry exists.
        self._plans: dict[int, SignaturePlan] = {}

    def get(self, signature: Signature) -> SignaturePlan:
        """How requests of `signature` are validated and their outputs collected."""
        plan = self._plans.get(id(signature))
        if plan is None or plan.signature is not signature:
            if len(self._plans) >= _MAX_PLANS:  # bound the cache across many model versions
                self._plans = {}
            plan = SignaturePlan(signature)
            self._plans[id(signature)] = plan
        return plan


class SignaturePlan:
    """What validating a request against one signature needs, computed once per signature."""

    __slots__ = ("batchable", "batched", "inputs", "output_set", "outputs", "signature")

    def __init__(self, signature: Signature) -> None:
        self.signature = signature
        # name → (numpy dtype or None for BYTES, spec)
        self.inputs = {
            spec.name: (None if spec.datatype == "BYTES" else spec.numpy_dtype, spec)
            for spec in signature.inputs
        }
        # inputs whose dimension 0 is variable must agree on it (the batch size)
        self.batched = frozenset(
            spec.name for spec in signature.inputs if spec.shape and spec.shape[0] == -1
        )
        # the Batcher may merge requests: every input has a variable dimension 0
        self.batchable = bool(self.inputs) and len(self.batched) == len(self.inputs)
        self.outputs = tuple(spec.name for spec in signature.outputs)
        self.output_set = frozenset(self.outputs)

    def validate(self, inputs: Mapping[str, np.ndarray], max_elements: int) -> int:
        """Raise InvalidInput naming the first bad input; return the batch size (1 if none)."""
        specs = self.inputs
        if inputs.keys() != specs.keys():  # the same names: compared as sets, in C
            raise InvalidInput(mismatch_message(inputs, specs))
        batch_name: str | None = None
        batch = 0
        for name, array in inputs.items():
            dtype, spec = specs[name]
            if not isinstance(array, np.ndarray):
                raise InvalidInput(f'input "{name}": expected an array, got {type(array).__name__}')
            dtype_ok = array.dtype.kind in "OSU" if dtype is None else array.dtype == dtype
            if not dtype_ok or not spec.shape_matches(array.shape):
                raise InvalidInput(
                    f'input "{name}": expected {spec.describe()}, got {describe_array(array)}'
                )
            if array.size > max_elements:
                raise InvalidInput(
                    f'input "{name}": {array.size} elements exceed the limit of {max_elements}'
                )
            if name in self.batched:
                if batch_name is None:
                    batch_name, batch = name, array.shape[0]
                elif array.shape[0] != batch:
                    raise InvalidInput(
                        f'inputs disagree on dimension 0 (the batch size): "{batch_name}" has'
                        f' {batch}, "{name}" has {array.shape[0]}'
                    )
        return batch if batch_name is not None else 1

    def check_outputs(self, names: Sequence[str]) -> tuple[str, ...]:
        """`names` as a tuple; raises InvalidInput naming one the signature does not have."""
        for name in names:
            if name not in self.output_set:
                raise InvalidInput(
                    f'unknown output "{name}": signature "{self.signature.name}" has outputs'
                    f" {', '.join(self.outputs) or '(none)'}"
                )
        return tuple(names)

    def collect(self, results: object, wanted: tuple[str, ...]) -> dict[str, np.ndarray]:
        """The `wanted` outputs of a servable's `results`, as arrays; raises ModelError when
        the servable returned something else or left one out."""
        # a dict first: isinstance against the Mapping ABC goes through Python-level hooks
        if type(results) is not dict and not isinstance(results, Mapping):
            raise ModelError(f"servable returned {type(results).__name__}, not a dict of outputs")
        out: dict[str, np.ndarray] = {}
        for name in wanted:
            value = results.get(name)
            if value is None:
                raise ModelError(f'servable returned no output "{name}"')
            out[name] = value if isinstance(value, np.ndarray) else np.asarray(value)
        return out


def fits(array: np.ndarray, spec: TensorSpec) -> bool:
    """Whether `array` has `spec`'s datatype (any text or object array for BYTES) and shape:
    the check `SignaturePlan.validate` makes of each input, for a model's outputs."""
    if spec.datatype == "BYTES":
        return array.dtype.kind in "OSU" and spec.shape_matches(array.shape)
    return array.dtype == spec.numpy_dtype and spec.shape_matches(array.shape)


def describe_array(array: np.ndarray) -> str:
    """`array`'s V2 datatype (or numpy dtype) and shape, as errors name it: `FP32 [2, 4]`."""
    datatype = "BYTES" if array.dtype.kind in "OSU" else NUMPY_TO_V2.get(array.dtype)
    return f"{datatype or array.dtype} {list(array.shape)}"
