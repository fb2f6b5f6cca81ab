"""TF Serving's Classify and Regress, protocol-neutral (REST `:classify` / `:regress`, gRPC).

API (codecs call these; both are coroutines):

    result = await classify(service, name, version, label, signature_name, examples, context,
                            deadline)                      # -> ClassifyResult
    result = await regress(...same arguments...)           # -> RegressResult

- `examples`: one `Example` per example: feature name → 1-D numpy array of its values, float32
  (float_list), int64 (int64_list) or object of `bytes` (bytes_list). `context` (or None) holds
  features added to every example (TF Serving's ExampleListWithContext); a feature may not be in
  both. `protocols.tf_examples` reads them from JSON and from a `tensorflow.serving.Input`.
- Signature choice: `signature_name` when given (it must have the classify / regress method),
  else "serving_default" when it has that method, else the model's only signature with it.
- A signature whose one input is BYTES gets serialized `tf.Example`s (TensorFlow SavedModels);
  one whose input is numeric [-1, n] gets a feature matrix: with the servable's `feature_names`
  (e.g. sklearn's `feature_names_in_`) each named feature is one column, else the one feature
  of every example must hold n values.
- Classify reads the `classes` and `scores` outputs, Regress the `outputs` output.
Raises InvalidInput (bad examples, wrong signature method), NotFound, and what
`InferenceService.run` raises.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from pyserving.errors import InvalidInput, ModelError
from pyserving.platforms.common import CLASSIFY_METHOD, REGRESS_METHOD
from pyserving.platforms.signature import DEFAULT_SIGNATURE, Signature
from pyserving.protocols.tf_examples import Example
from pyserving.serving.inference import InferenceService

__all__ = [
    "CLASSIFY_METHOD",
    "REGRESS_METHOD",
    "ClassifyResult",
    "Example",
    "RegressResult",
    "classify",
    "regress",
]


@dataclass(frozen=True, slots=True)
class ClassifyResult:
    """Per example, its (label, score) pairs; labels are b"" or scores 0 when not produced."""

    version: int
    signature_name: str
    classes: list[list[tuple[bytes, float]]]


@dataclass(frozen=True, slots=True)
class RegressResult:
    """One value per example."""

    version: int
    signature_name: str
    values: list[float]


async def classify(
    service: InferenceService,
    name: str,
    version: int | None,
    label: str | None,
    signature_name: str | None,
    examples: Sequence[Example],
    context: Example | None = None,
    deadline: float | None = None,
) -> ClassifyResult:
    """Classify `examples` with the model's classify signature (see the module docstring)."""
    with await service.acquire_loaded(name, version, label, deadline) as handle:
        signature = _choose(handle.servable.signatures, signature_name, CLASSIFY_METHOD)
        inputs = _inputs(handle.servable, signature, examples, context)
        wanted = [n for n in ("classes", "scores") if signature.output(n) is not None]
        if not wanted:
            raise InvalidInput(
                f'signature "{signature.name}" has neither a "classes" nor a "scores" output'
            )
        outputs = await service.run(handle, signature, inputs, wanted, deadline)
        answered = handle.id.version
    count = len(examples)
    classes = outputs.get("classes")
    scores = outputs.get("scores")
    produced = classes if classes is not None else scores
    assert produced is not None  # one of them was requested
    width = produced.size // count
    labels = classes.reshape(count, width) if classes is not None else np.full((count, width), b"")
    values = (
        scores.reshape(count, width).astype(np.float64)
        if scores is not None
        else np.zeros((count, width))
    )
    result = [
        [(_label(labels[i, j]), float(values[i, j])) for j in range(width)] for i in range(count)
    ]
    return ClassifyResult(answered, signature.name, result)


async def regress(
    service: InferenceService,
    name: str,
    version: int | None,
    label: str | None,
    signature_name: str | None,
    examples: Sequence[Example],
    context: Example | None = None,
    deadline: float | None = None,
) -> RegressResult:
    """Regress `examples` with the model's regress signature (see the module docstring)."""
    with await service.acquire_loaded(name, version, label, deadline) as handle:
        signature = _choose(handle.servable.signatures, signature_name, REGRESS_METHOD)
        if signature.output("outputs") is None:
            raise InvalidInput(f'signature "{signature.name}" has no "outputs" output')
        inputs = _inputs(handle.servable, signature, examples, context)
        outputs = await service.run(handle, signature, inputs, ["outputs"], deadline)
        answered = handle.id.version
    values = outputs["outputs"]
    if values.size != len(examples):
        raise ModelError(f"regression output has {values.size} values for {len(examples)} examples")
    return RegressResult(answered, signature.name, [float(v) for v in values.ravel()])


# --- helpers ---------------------------------------------------------------------------------


def _choose(signatures: Mapping[str, Signature], name: str | None, method: str) -> Signature:
    verb = "classification" if method == CLASSIFY_METHOD else "regression"
    if name:
        found = signatures.get(name)
        if found is None:
            raise InvalidInput(f'Serving signature key "{name}" not found.')
    else:
        found = signatures.get(DEFAULT_SIGNATURE)
        if found is None or found.method_name != method:
            matching = [s for s in signatures.values() if s.method_name == method]
            if len(matching) == 1:
                return matching[0]
            if found is None:
                raise InvalidInput(f'Serving signature key "{DEFAULT_SIGNATURE}" not found.')
    if found.method_name != method:
        raise InvalidInput(
            f"Expected {verb} signature method_name to be {method}. Was: {found.method_name}"
        )
    return found


def _inputs(
    servable: object, signature: Signature, examples: Sequence[Example], context: Example | None
) -> dict[str, np.ndarray]:
    if not examples:
        raise InvalidInput("Input is empty")
    if len(signature.inputs) != 1:
        raise InvalidInput(
            f'signature "{signature.name}" must have exactly one input to take examples; it has'
            f" {len(signature.inputs)}"
        )
    spec = signature.inputs[0]
    merged = [_merge(example, context) for example in examples]
    if spec.datatype == "BYTES":
        serialized = [_serialize(example) for example in merged]
        return {spec.name: np.array(serialized, dtype=object)}
    if len(spec.shape) != 2:
        raise InvalidInput(
            f'signature "{signature.name}" input "{spec.name}" must be [-1, n] to take examples'
        )
    names = getattr(servable, "feature_names", None)
    width = spec.shape[1]
    rows = [_row(i, example, names, width) for i, example in enumerate(merged)]
    return {spec.name: np.asarray(rows, dtype=spec.numpy_dtype)}


def _merge(example: Example, context: Example | None) -> Example:
    if not context:
        return example
    both = sorted(set(example) & set(context))
    if both:
        raise InvalidInput(f"Context features must not repeat example features: {', '.join(both)}")
    return {**context, **example}


def _row(index: int, example: Example, names: Sequence[str] | None, width: int) -> np.ndarray:
    if names is not None:
        missing = [n for n in names if n not in example]
        if missing:
            raise InvalidInput(f"example {index}: missing feature(s) {', '.join(missing)}")
        values = []
        for name in names:
            value = np.asarray(example[name]).ravel()
            if value.size != 1 or value.dtype == object:
                raise InvalidInput(
                    f'example {index}: feature "{name}" must hold one number, got {value.size}'
                    f" value(s) of {'bytes' if value.dtype == object else value.dtype}"
                )
            values.append(value[0])
        return np.asarray(values)
    if len(example) != 1:
        raise InvalidInput(
            f"example {index}: this model has no feature names, so each example must hold one"
            f" feature with its {'n' if width < 0 else width} values; got {len(example)} features"
        )
    (feature_name, feature) = next(iter(example.items()))
    value = np.asarray(feature).ravel()
    if value.dtype == object or (width >= 0 and value.size != width):
        raise InvalidInput(
            f'example {index}: feature "{feature_name}" must hold {width} numbers, got'
            f" {value.size} value(s)"
        )
    return value


def _serialize(example: Example) -> bytes:
    """`example` as a serialized `tf.Example` (written by hand: importing generated `tensorflow.*`
    messages would collide with TensorFlow's own in the protobuf registry)."""
    entries = []
    for name, values in sorted(example.items()):
        array = np.asarray(values).ravel()
        if array.dtype == object or array.dtype.kind in "SU":
            items = [v.encode() if isinstance(v, str) else bytes(v) for v in array.tolist()]
            values_list = b"".join(_length_delimited(1, item) for item in items)
            feature = _length_delimited(1, values_list)  # Feature.bytes_list
        elif array.dtype.kind in "iub":
            packed = b"".join(_varint(int(v) & 0xFFFFFFFFFFFFFFFF) for v in array.tolist())
            feature = _length_delimited(3, _length_delimited(1, packed))  # Feature.int64_list
        else:
            packed = array.astype("<f4").tobytes()
            feature = _length_delimited(2, _length_delimited(1, packed))  # Feature.float_list
        entry = _length_delimited(1, name.encode()) + _length_delimited(2, feature)
        entries.append(_length_delimited(1, entry))  # Features.feature map entry
    return _length_delimited(1, b"".join(entries))  # Example.features


def _length_delimited(field: int, payload: bytes) -> bytes:
    return _varint(field << 3 | 2) + _varint(len(payload)) + payload


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _label(value: object) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode()
    return str(value.item() if isinstance(value, np.generic) else value).encode()
