"""TF Serving REST codec: model status, metadata, predict in row and columnar form, classify
and regress.

Formats and messages follow TF Serving's `http_rest_api_handler.cc` and `util/json_tensor.cc`
(see `reference/tfserving.md` §3). Our additions: `GET /v1/models` lists models, and the
`/labels/{l}` status form returns only the labelled version. Every function returns the JSON body
of a 200 answer or raises a ServingError.
"""

from __future__ import annotations

import base64
from typing import Any

import numpy as np
import orjson

from pyserving.api.rest.json_tensor import bytes_to_json, dumps, parse_json, to_array
from pyserving.core.monitor import VersionStatus
from pyserving.errors import InvalidInput, NotFound, Unimplemented
from pyserving.platforms.signature import V2_TO_TF, Signature, TensorSpec
from pyserving.serving import classify
from pyserving.serving.inference import InferenceService

__all__ = ["classify_or_regress", "list_models", "model_metadata", "model_status", "predict"]


def list_models(service: InferenceService) -> bytes:
    """`GET /v1/models` (our addition): every model with its AVAILABLE versions and status.

    `{"models": [{"name": "mlp", "versions": ["2", "1"], "model_version_status": [...]}]}`,
    versions highest first, in the status format of `GET /v1/models/{m}`.
    """
    models = []
    for name in service.model_names():
        try:
            states = service.model_status(name)
        except NotFound:
            states = []
        models.append(
            {
                "name": name,
                "versions": [str(v) for v in service.available_versions(name)],
                "model_version_status": _status_list(states),
            }
        )
    return orjson.dumps({"models": models})


def model_status(
    service: InferenceService, name: str, version: int | None, label: str | None
) -> bytes:
    """`GET /v1/models/{m}[/versions/{v}|/labels/{l}]`: GetModelStatusResponse as JSON."""
    states = service.model_status(name, version, label)
    return orjson.dumps({"model_version_status": _status_list(states)})


def model_metadata(
    service: InferenceService, name: str, version: int | None, label: str | None
) -> bytes:
    """`GET .../metadata`: the signature_def map of the version that would answer a predict."""
    with service.acquire(name, version, label) as handle:
        signatures: dict[str, Signature] = handle.servable.signatures
        answered = handle.id.version
    return orjson.dumps(
        {
            "model_spec": {"name": name, "signature_name": "", "version": str(answered)},
            "metadata": {
                "signature_def": {
                    "signature_def": {key: _signature_def(sig) for key, sig in signatures.items()}
                }
            },
        }
    )


async def predict(
    service: InferenceService,
    name: str,
    version: int | None,
    label: str | None,
    body: bytes,
    deadline: float | None,
    max_json_depth: int,
) -> bytes:
    """`POST ...:predict`: `instances` → `{"predictions": ...}`, `inputs` → `{"outputs": ...}`."""
    request = parse_json(body)
    if not isinstance(request, dict):
        raise InvalidInput("Malformed request: the body must be a JSON object")
    signature_name = request.get("signature_name")
    if signature_name is not None and not isinstance(signature_name, str):
        raise InvalidInput("'signature_name' attribute must be a string")
    rows = "instances" in request
    if rows and "inputs" in request:
        raise InvalidInput(
            "Not formatted correctly expecting only one of 'inputs' or 'instances' keys to exist"
        )
    if not rows and "inputs" not in request:
        raise InvalidInput("Missing 'inputs' or 'instances' key")
    with service.acquire(name, version, label) as handle:
        signature = service.signature(handle, signature_name)
        limits = _Limits(max_json_depth, service.options.max_tensor_elements)
        if rows:
            inputs = _rows_to_inputs(request["instances"], signature, limits)
        else:
            inputs = _columns_to_inputs(request["inputs"], signature, limits)
        outputs = await service.run(handle, signature, inputs, None, deadline)
    return _encode_rows(outputs) if rows else _encode_columns(outputs)


async def classify_or_regress(
    service: InferenceService,
    name: str,
    version: int | None,
    label: str | None,
    verb: str,
    body: bytes,
    deadline: float | None,
) -> bytes:
    """`POST ...:classify|:regress`: examples (+ context) → `{"results": ...}` (tfserving.md §3.4).

    Classify answers `[[[label, score], ...] per example]`, regress `[value per example]`.
    """
    request = parse_json(body)
    if not isinstance(request, dict):
        raise InvalidInput("Malformed request: the body must be a JSON object")
    signature_name = request.get("signature_name")
    if signature_name is not None and not isinstance(signature_name, str):
        raise InvalidInput("'signature_name' attribute must be a string")
    examples_json = request.get("examples")
    if not isinstance(examples_json, list):
        raise InvalidInput("'examples' attribute must be a list of objects")
    examples = [_example(item, f"examples[{i}]") for i, item in enumerate(examples_json)]
    context = _example(request["context"], "context") if "context" in request else None
    if verb == "classify":
        classified = await classify.classify(
            service, name, version, label, signature_name, examples, context, deadline
        )
        results: Any = [
            [[_label_text(cls), score] for cls, score in row] for row in classified.classes
        ]
    else:
        regressed = await classify.regress(
            service, name, version, label, signature_name, examples, context, deadline
        )
        results = regressed.values
    return orjson.dumps({"results": results}, option=orjson.OPT_SERIALIZE_NUMPY)


def _example(value: Any, what: str) -> dict[str, np.ndarray]:
    if not isinstance(value, dict) or _is_b64(value):
        raise InvalidInput(f"{what} must be an object of feature name → value or list")
    return {key: _feature(item, f'{what} feature "{key}"') for key, item in value.items()}


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
        return np.array(
            [
                base64.b64decode(item["b64"]) if isinstance(item, dict) else item.encode()
                for item in items
            ],
            dtype=object,
        )
    if kind == "int":
        return np.array([int(item) for item in items], dtype=np.int64)
    return np.array(items, dtype=np.float32)


def _feature_kind(item: Any, what: str) -> str:
    if isinstance(item, bool | int):
        return "int"
    if isinstance(item, float):
        return "float"
    if isinstance(item, str):
        return "bytes"
    if _is_b64(item) and isinstance(item["b64"], str):
        return "bytes"
    raise InvalidInput(f'{what}: expected numbers, strings or {{"b64": ...}}, got {item!r:.40}')


def _label_text(label: bytes) -> str:
    try:
        return label.decode()
    except UnicodeDecodeError:
        return base64.b64encode(label).decode()


# --- status and metadata -------------------------------------------------------------------------


def _status_list(states: list[VersionStatus]) -> list[dict[str, Any]]:
    return [
        {
            "version": str(s.id.version),
            "state": s.state.name,
            "status": {"error_code": s.error_code, "error_message": s.error or ""},
        }
        for s in states
    ]


def _signature_def(signature: Signature) -> dict[str, Any]:
    return {
        "inputs": {spec.name: _tensor_info(spec) for spec in signature.inputs},
        "outputs": {spec.name: _tensor_info(spec) for spec in signature.outputs},
        "method_name": signature.method_name,
    }


def _tensor_info(spec: TensorSpec) -> dict[str, Any]:
    return {
        "dtype": V2_TO_TF.get(spec.datatype, "DT_INVALID"),
        "tensor_shape": {
            "dim": [{"size": str(size), "name": ""} for size in spec.shape],
            "unknown_rank": False,
        },
        "name": spec.name,
    }


# --- predict request -----------------------------------------------------------------------------


class _Limits:
    __slots__ = ("max_depth", "max_elements")

    def __init__(self, max_depth: int, max_elements: int) -> None:
        self.max_depth = max_depth
        self.max_elements = max_elements


def _is_b64(value: Any) -> bool:
    return isinstance(value, dict) and len(value) == 1 and "b64" in value


def _convert(value: Any, spec: TensorSpec, limits: _Limits) -> np.ndarray:
    if spec.datatype == "FP16":
        raise Unimplemented(
            f'input "{spec.name}": Conversion of JSON Value to type half is not supported'
        )
    return to_array(
        value,
        spec.datatype,
        f'input "{spec.name}"',
        max_depth=limits.max_depth,
        max_elements=limits.max_elements,
        allow_b64=True,
    )


def _rows_to_inputs(instances: Any, signature: Signature, limits: _Limits) -> dict[str, np.ndarray]:
    if not isinstance(instances, list) or not instances:
        raise InvalidInput("'instances' must be a non-empty list, one element per example")
    specs = signature.inputs
    first = instances[0]
    if not isinstance(first, dict) or _is_b64(first):
        if len(specs) != 1:
            raise InvalidInput(
                f"'instances' elements must be objects keyed by input name: signature"
                f' "{signature.name}" has {len(specs)} inputs ({_names(signature.input_names)})'
            )
        return {specs[0].name: _convert(instances, specs[0], limits)}
    wanted = set(signature.input_names)
    columns: dict[str, list[Any]] = {spec.name: [] for spec in specs}
    for i, item in enumerate(instances):
        if not isinstance(item, dict) or _is_b64(item):
            raise InvalidInput(
                f"Failed to process element: {i} of 'instances' list: expected an object keyed"
                f" by input name ({_names(signature.input_names)})"
            )
        if item.keys() != wanted:
            missing = sorted(wanted - item.keys())
            extra = sorted(item.keys() - wanted)
            raise InvalidInput(
                f"Failed to process element: {i} of 'instances' list: its keys must be the"
                f" signature's inputs ({_names(sorted(wanted))}); missing: {_names(missing)};"
                f" extra: {_names(extra)}"
            )
        for key, column in columns.items():
            column.append(item[key])
    return {spec.name: _convert(columns[spec.name], spec, limits) for spec in specs}


def _columns_to_inputs(value: Any, signature: Signature, limits: _Limits) -> dict[str, np.ndarray]:
    specs = signature.inputs
    if isinstance(value, dict) and not _is_b64(value):
        inputs = {}
        for spec in specs:
            if spec.name not in value:
                raise InvalidInput(f"Missing named input: {spec.name} in 'inputs' object.")
            inputs[spec.name] = _convert(value[spec.name], spec, limits)
        return inputs  # extra names are ignored, as TF Serving does
    if len(specs) != 1:
        raise InvalidInput(
            f"'inputs' must be an object keyed by input name: signature \"{signature.name}\""
            f" has {len(specs)} inputs ({_names(signature.input_names)})"
        )
    return {specs[0].name: _convert(value, specs[0], limits)}


def _names(names: Any) -> str:
    return ", ".join(names) or "none"


# --- predict response ----------------------------------------------------------------------------


def _output_value(name: str, array: np.ndarray) -> Any:
    if array.dtype.kind in "OSU":
        # TF Serving writes {"b64": ...} only for outputs whose alias ends in "_bytes".
        encoding = "b64" if name.endswith("_bytes") else "utf8_or_b64"
        return bytes_to_json(array, encoding=encoding, what=f'output "{name}"')
    return array


def _encode_rows(outputs: dict[str, np.ndarray]) -> bytes:
    batch = -1
    first = ""
    for name, array in outputs.items():
        if array.ndim == 0:
            raise InvalidInput(f"Tensor name: {name} has no shape information ")
        if batch < 0:
            batch, first = array.shape[0], name
        elif array.shape[0] != batch:
            raise InvalidInput(
                f"Tensor name: {name} has inconsistent batch size: {array.shape[0]}"
                f" expecting: {batch} (the batch size of {first})"
            )
    values = {name: _output_value(name, array) for name, array in outputs.items()}
    if len(values) == 1:
        (predictions,) = values.values()
    else:
        predictions = [{name: value[i] for name, value in values.items()} for i in range(batch)]
    return dumps({"predictions": predictions}, outputs.values())


def _encode_columns(outputs: dict[str, np.ndarray]) -> bytes:
    values = {name: _output_value(name, array) for name, array in outputs.items()}
    if len(values) == 1:
        (document,) = values.values()
    else:
        document = values
    return dumps({"outputs": document}, outputs.values())
