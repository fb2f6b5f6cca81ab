"""The schemas of `openapi.py`'s document: request and response bodies of every REST route."""

from __future__ import annotations

from typing import Any

__all__ = ["SCHEMAS", "ref"]

_REF = "#/components/schemas/"
_STR: dict[str, Any] = {"type": "string"}
_STR_LIST: dict[str, Any] = {"type": "array", "items": _STR}
_SHAPE: dict[str, Any] = {"type": "array", "items": {"type": "integer"}}
_OBJ: dict[str, Any] = {"type": "object"}


def ref(name: str) -> dict[str, Any]:
    return {"$ref": _REF + name}


def _obj(required: tuple[str, ...] = (), **properties: Any) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "object", "properties": properties}
    if required:
        schema["required"] = list(required)
    return schema


_VERSION_STATUS = _obj(
    ("version", "state", "status"),
    version=_STR,
    state={"enum": ["UNKNOWN", "START", "LOADING", "AVAILABLE", "UNLOADING", "END"]},
    status=_obj(("error_code", "error_message"), error_code=_STR, error_message=_STR),
)
_TENSOR_METADATA = _obj(("name", "datatype", "shape"), name=_STR, datatype=_STR, shape=_SHAPE)
_TENSOR_CONFIG = _obj(("name", "data_type", "dims"), name=_STR, data_type=_STR, dims=_SHAPE)
_PARAMETERS: dict[str, Any] = {"type": "object"}

SCHEMAS: dict[str, Any] = {
    "Error": _obj(("error",), error=_STR),
    "TfModelStatus": _obj(
        ("model_version_status",),
        model_version_status={"type": "array", "items": _VERSION_STATUS},
    ),
    "TfModelList": _obj(
        ("models",),
        models={
            "type": "array",
            "items": _obj(
                ("name", "versions", "model_version_status"),
                name=_STR,
                versions=_STR_LIST,
                model_version_status={"type": "array", "items": _VERSION_STATUS},
            ),
        },
    ),
    "TfModelMetadata": _obj(
        ("model_spec", "metadata"),
        model_spec=_obj(("name",), name=_STR, signature_name=_STR, version=_STR),
        metadata=_obj(
            ("signature_def",), signature_def=_obj(("signature_def",), signature_def=_OBJ)
        ),
    ),
    "TfPredictRequest": {
        "type": "object",
        "description": "Row form (`instances`) or columnar form (`inputs`), as TF Serving.",
        "properties": {"signature_name": _STR, "instances": {}, "inputs": {}},
        "example": {"instances": [[0.0] * 4]},
    },
    "TfPredictResponse": {
        "type": "object",
        "description": "`predictions` answers the row form, `outputs` the columnar form.",
        "properties": {"predictions": {}, "outputs": {}},
        "minProperties": 1,
    },
    "TfExamplesRequest": {
        "type": "object",
        "description": "tf.Example features as JSON objects, with an optional common `context`.",
        "properties": {
            "signature_name": _STR,
            "context": _OBJ,
            "examples": {"type": "array", "items": _OBJ},
        },
        "required": ["examples"],
    },
    "TfClassifyResponse": _obj(
        ("result",),
        result={"type": "array", "items": {"type": "array", "items": {"type": "array"}}},
    ),
    "TfRegressResponse": _obj(("result",), result={"type": "array", "items": {"type": "number"}}),
    "V2ServerMetadata": _obj(
        ("name", "version", "extensions"), name=_STR, version=_STR, extensions=_STR_LIST
    ),
    "V2Live": _obj(("live",), live={"type": "boolean"}),
    "V2Ready": _obj(("ready",), ready={"type": "boolean"}),
    "V2ModelReady": _obj(("name", "ready"), name=_STR, ready={"type": "boolean"}),
    "V2ModelMetadata": _obj(
        ("name", "platform", "inputs", "outputs"),
        name=_STR,
        versions=_STR_LIST,
        platform=_STR,
        inputs={"type": "array", "items": _TENSOR_METADATA},
        outputs={"type": "array", "items": _TENSOR_METADATA},
    ),
    "V2ModelConfig": _obj(
        ("name",),
        name=_STR,
        platform=_STR,
        backend=_STR,
        max_batch_size={"type": "integer"},
        input={"type": "array", "items": _TENSOR_CONFIG},
        output={"type": "array", "items": _TENSOR_CONFIG},
    ),
    "V2ModelStats": _obj(
        ("model_stats",),
        model_stats={
            "type": "array",
            "items": _obj(
                ("name", "version", "inference_count", "execution_count", "inference_stats"),
                name=_STR,
                version=_STR,
                last_inference={"type": "integer"},
                inference_count={"type": "integer"},
                execution_count={"type": "integer"},
                inference_stats={
                    "type": "object",
                    "additionalProperties": _obj(
                        ("count", "ns"), count={"type": "integer"}, ns={"type": "integer"}
                    ),
                },
            ),
        },
    ),
    "V2InferRequest": {
        **_obj(
            ("inputs",),
            id=_STR,
            parameters=_PARAMETERS,
            inputs={
                "type": "array",
                "items": _obj(
                    ("name", "shape", "datatype"),
                    name=_STR,
                    shape=_SHAPE,
                    datatype=_STR,
                    parameters=_PARAMETERS,
                    data={},
                ),
            },
            outputs={"type": "array", "items": _obj(("name",), name=_STR, parameters=_PARAMETERS)},
        ),
        "example": {
            "inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "data": [0] * 4}]
        },
    },
    "V2InferResponse": _obj(
        ("model_name", "outputs"),
        model_name=_STR,
        model_version=_STR,
        id=_STR,
        parameters=_PARAMETERS,
        outputs={
            "type": "array",
            "items": _obj(
                ("name", "shape", "datatype"),
                name=_STR,
                shape=_SHAPE,
                datatype=_STR,
                parameters=_PARAMETERS,
                data={},
            ),
        },
    ),
    "V2GenerateRequest": {
        **_obj(id=_STR, parameters=_PARAMETERS),
        "description": "each other key names an input of the model's default signature; its"
        " value is the input's data (a string, number, boolean or nested lists)",
        "additionalProperties": True,
        "example": {"text_input": "the server", "max_tokens": 12},
    },
    "V2GenerateResponse": {
        **_obj(("model_name", "model_version"), model_name=_STR, model_version=_STR, id=_STR),
        "description": "each other key is an output by name: one element as the value itself,"
        " BYTES as text, larger outputs as nested lists",
        "additionalProperties": True,
    },
    "V2RepositoryIndexRequest": _obj(ready={"type": "boolean"}),
    "V2RepositoryIndex": {
        "type": "array",
        "items": _obj(("name",), name=_STR, version=_STR, state=_STR, reason=_STR),
    },
    "V2RepositoryRequest": _obj(parameters=_PARAMETERS),
    "StatusData": _obj(
        ("server", "models"),
        server=_obj(("name", "version", "time"), name=_STR, version=_STR, time={"type": "number"}),
        models={
            "type": "array",
            "items": _obj(
                ("name", "versions", "labels", "requests", "batches"),
                name=_STR,
                versions={
                    "type": "array",
                    "items": _obj(("version", "state"), version=_STR, state=_STR, error=_STR),
                },
                labels={"type": "object", "additionalProperties": _STR},
                requests=_obj(
                    ("total", "errors"),
                    total={"type": "integer"},
                    errors={"type": "integer"},
                    by_code={"type": "object", "additionalProperties": {"type": "integer"}},
                ),
                batches=_obj(("count", "rows"), count={"type": "integer"}, rows={"type": "number"}),
            ),
        },
    ),
}
