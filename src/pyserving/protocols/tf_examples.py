"""TF Serving's Classify / Regress wire rules for both transports: examples in (REST JSON or a
`tensorflow.serving.Input`), results out (JSON, or ClassificationResult / RegressionResult).

An example is feature name → 1-D numpy array of its values: float32 (float_list), int64
(int64_list) or object of `bytes` (bytes_list); `serving.classify` runs them.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import orjson

from pyserving.errors import InvalidInput
from pyserving.proto import tf_example_pb2 as example_pb2
from pyserving.proto import tf_serving_apis_pb2 as apis
from pyserving.protocols.tfserving import is_b64

__all__ = [
    "Example",
    "classification_json",
    "classification_proto",
    "examples_from_json",
    "examples_from_proto",
    "regression_json",
    "regression_proto",
]

#: feature name → 1-D array of values (float32, int64, or object of bytes)
Example = Mapping[str, np.ndarray]
_INT64 = np.iinfo(np.int64)


def examples_from_json(document: object) -> tuple[str | None, list[Example], Example | None]:
    """A parsed `:classify` / `:regress` body → (signature name, examples, context)."""
    if not isinstance(document, dict):
        raise InvalidInput("Malformed request: the body must be a JSON object")
    signature_name = document.get("signature_name")
    if signature_name is not None and not isinstance(signature_name, str):
        raise InvalidInput("'signature_name' attribute must be a string")
    examples_json = document.get("examples")
    if not isinstance(examples_json, list):
        raise InvalidInput("'examples' attribute must be a list of objects")
    examples: list[Example] = [
        _example(item, f"examples[{i}]") for i, item in enumerate(examples_json)
    ]
    context: Example | None = None
    if "context" in document:
        context = _example(document["context"], "context")
    return signature_name, examples, context


def examples_from_proto(request_input: apis.Input) -> tuple[list[Example], Example | None]:
    """(examples, context) of a `tensorflow.serving.Input` message (example_list or
    example_list_with_context). Raises InvalidInput when it holds neither."""
    kind = request_input.WhichOneof("kind")
    if kind == "example_list":
        return [_from_example(e) for e in request_input.example_list.examples], None
    if kind == "example_list_with_context":
        listed = request_input.example_list_with_context
        return [_from_example(e) for e in listed.examples], _from_example(listed.context)
    raise InvalidInput("Input is empty")


def classification_json(classes: Sequence[Sequence[tuple[bytes, float]]]) -> bytes:
    """`{"results": [[[label, score], ...] per example]}`; labels that are not UTF-8 in base64."""
    results = [[[_label_text(label), score] for label, score in row] for row in classes]
    return orjson.dumps({"results": results})


def regression_json(values: Sequence[float]) -> bytes:
    """`{"results": [value per example]}`."""
    return orjson.dumps({"results": list(values)})


def classification_proto(
    classes: Sequence[Sequence[tuple[bytes, float]]],
) -> apis.ClassificationResult:
    """A ClassificationResult: per example, its (label, score) classes."""
    out = apis.ClassificationResult()
    for pairs in classes:
        added = out.classifications.add().classes
        for label, score in pairs:
            added.add(label=label.decode("utf-8", "replace"), score=score)
    return out


def regression_proto(values: Sequence[float]) -> apis.RegressionResult:
    """A RegressionResult: one value per example."""
    out = apis.RegressionResult()
    for value in values:
        out.regressions.add(value=value)
    return out


# --- JSON ----------------------------------------------------------------------------------------


def _example(value: object, what: str) -> dict[str, np.ndarray]:
    if not isinstance(value, dict) or is_b64(value):
        raise InvalidInput(f"{what} must be an object of feature name → value or list")
    return {key: _feature(item, f'{what} feature "{key[:80]}"') for key, item in value.items()}


def _feature(value: Any, what: str) -> np.ndarray:
    # TF Serving: decimal → float_list, integer or bool → int64_list, string or b64 → bytes_list;
    # one kind per list; null and nested lists are refused.
    items = value if isinstance(value, list) else [value]
    if not items:
        return np.zeros(0, dtype=np.float32)
    kinds = {_feature_kind(item, what) for item in items}
    if len(kinds) != 1:
        raise InvalidInput(f"{what}: all values of a feature must be of one type")
    (kind,) = kinds
    if kind == "bytes":
        out = np.empty(len(items), dtype=object)
        out[:] = [_b64(item, what) if isinstance(item, dict) else item.encode() for item in items]
        return out
    if kind == "int":
        ints = [int(item) for item in items]
        if min(ints) < _INT64.min or max(ints) > _INT64.max:
            raise InvalidInput(f"{what}: integer values must fit in int64 (int64_list)")
        return np.array(ints, dtype=np.int64)
    return np.array(items, dtype=np.float32)


def _feature_kind(item: object, what: str) -> str:
    if isinstance(item, bool | int):
        return "int"
    if isinstance(item, float):
        return "float"
    if isinstance(item, str):
        return "bytes"
    if is_b64(item) and isinstance(item["b64"], str):
        return "bytes"
    raise InvalidInput(f'{what}: expected numbers, strings or {{"b64": ...}}, got {item!r:.40}')


def _b64(item: dict[str, str], what: str) -> bytes:
    try:
        return base64.b64decode(item["b64"], validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidInput(f"{what}: not formatted correctly for base64 data: {exc}") from exc


def _label_text(label: bytes) -> str:
    try:
        return label.decode()
    except UnicodeDecodeError:
        return base64.b64encode(label).decode()


# --- protobuf ------------------------------------------------------------------------------------


def _from_example(example: example_pb2.Example) -> dict[str, np.ndarray]:
    features: dict[str, np.ndarray] = {}
    for name, feature in example.features.feature.items():
        kind = feature.WhichOneof("kind")
        if kind == "float_list":
            features[name] = np.asarray(feature.float_list.value, dtype=np.float32)
        elif kind == "int64_list":
            features[name] = np.asarray(feature.int64_list.value, dtype=np.int64)
        elif kind == "bytes_list":
            features[name] = np.array(list(feature.bytes_list.value), dtype=object)
        else:
            features[name] = np.zeros(0, dtype=np.float32)
    return features
