"""`GET /openapi.json`: the OpenAPI 3.1 document of the whole REST API (docs/rest-api.md).

Built once from the tables below: TF Serving's `/v1` routes in their three model-spec forms
(latest, `/versions/{v}`, `/labels/{l}`), KServe V2 (server, health, models, infer, config, stats,
repository), the Prometheus metrics and the status page. Every operation lists the status codes
the server answers; every error body is `{"error": "..."}`. The test suite checks the document
with an OpenAPI validator and fuzzes a live server against it (schemathesis).
"""

from __future__ import annotations

from functools import cache
from typing import Any

import orjson

from pyserving.api.rest.openapi_schemas import SCHEMAS, ref

__all__ = ["openapi_document", "openapi_json"]

_JSON = "application/json"
_STR: dict[str, Any] = {"type": "string"}
_OBJ: dict[str, Any] = {"type": "object"}
_DESCRIPTIONS = {
    200: "OK",
    400: "Bad request (TF Serving's INVALID_ARGUMENT; a V2 model that is not ready)",
    401: "Missing or wrong bearer token (--control-token-file)",
    403: "Model control is disabled (--enable-model-control) or the path is not allowed",
    404: "Unknown model, version, label or path",
    405: "Method not allowed",
    408: "The request body did not arrive in time",
    413: "The request body is larger than --max-request-bytes",
    429: "Too many requests queued for batching (RESOURCE_EXHAUSTED)",
    500: "The model failed (its message is in `error`)",
    503: "The server is draining, overloaded or the model is unavailable",
    504: "The request's deadline passed",
}
#: answers every model operation may give besides its own
_LOOKUP_ERRORS = (400, 404)
_BODY_ERRORS = (400, 404, 408, 413, 429, 500, 503, 504)


def _responses(ok: dict[str, Any], errors: tuple[int, ...]) -> dict[str, Any]:
    out: dict[str, Any] = {"200": {"description": "OK", "content": ok}}
    for code in errors:
        out[str(code)] = {
            "description": _DESCRIPTIONS[code],
            "content": {_JSON: {"schema": ref("Error")}},
        }
    return out


def _json(schema: str) -> dict[str, Any]:
    return {_JSON: {"schema": ref(schema)}}


def _param(name: str, description: str, example: str, pattern: str | None = None) -> dict:
    schema: dict[str, Any] = {"type": "string", "minLength": 1}
    if pattern:
        schema["pattern"] = pattern
    return {
        "name": name,
        "in": "path",
        "required": True,
        "description": description,
        "schema": schema,
        "example": example,
    }


_MODEL = _param("model_name", "model name", "mlp")
_VERSION = _param("version", "version number", "1", r"^[0-9]+$")
_LABEL = _param("label", "version label (e.g. stable)", "stable")


def _op(
    tag: str, summary: str, op_id: str, responses: dict[str, Any], body: str | None = None
) -> dict[str, Any]:
    op: dict[str, Any] = {
        "tags": [tag],
        "summary": summary,
        "operationId": op_id,
        "responses": responses,
    }
    if body is not None:
        # the repository calls accept an empty body
        required = not body.startswith("V2Repository")
        op["requestBody"] = {"required": required, "content": _json(body)}
        op["parameters"] = [_CONTENT_ENCODING]
        if body == "V2InferRequest":
            op["parameters"].append(_HEADER_LENGTH)
    return op


_CONTENT_ENCODING = {
    "name": "Content-Encoding",
    "in": "header",
    "required": False,
    "description": "a gzip or deflate body is decompressed (its size counts after that)",
    "schema": {"enum": ["identity", "gzip", "deflate"]},
}
_HEADER_LENGTH = {
    "name": "Inference-Header-Content-Length",
    "in": "header",
    "required": False,
    "description": "binary tensor extension: the body's JSON part is this many bytes, the"
    " tensors' raw bytes follow it",
    "schema": {"type": "integer", "minimum": 0},
}


def _v1_paths() -> dict[str, Any]:
    paths: dict[str, Any] = {
        "/v1/models": {
            "get": _op(
                "TF Serving",
                "List models (pyserving)",
                "tf_list_models",
                _responses(_json("TfModelList"), ()),
            )
        }
    }
    forms = (
        ("", "", [_MODEL]),
        ("/versions/{version}", "_version", [_MODEL, _VERSION]),
        ("/labels/{label}", "_label", [_MODEL, _LABEL]),
    )
    verbs = (
        ("predict", "Predict", "TfPredictRequest", "TfPredictResponse"),
        ("classify", "Classify tf.Examples", "TfExamplesRequest", "TfClassifyResponse"),
        ("regress", "Regress tf.Examples", "TfExamplesRequest", "TfRegressResponse"),
    )
    for suffix, key, params in forms:
        base = "/v1/models/{model_name}" + suffix
        paths[base] = {
            "parameters": params,
            "get": _op(
                "TF Serving",
                "Model version status",
                f"tf_status{key}",
                _responses(_json("TfModelStatus"), _LOOKUP_ERRORS),
            ),
        }
        paths[base + "/metadata"] = {
            "parameters": params,
            "get": _op(
                "TF Serving",
                "Signature metadata",
                f"tf_metadata{key}",
                _responses(_json("TfModelMetadata"), _LOOKUP_ERRORS),
            ),
        }
        for verb, summary, request, response in verbs:
            paths[f"{base}:{verb}"] = {
                "parameters": params,
                "post": _op(
                    "TF Serving",
                    summary,
                    f"tf_{verb}{key}",
                    _responses(_json(response), _BODY_ERRORS),
                    request,
                ),
            }
    return paths


def _v2_paths() -> dict[str, Any]:
    tag = "KServe V2"
    paths: dict[str, Any] = {
        "/v2": {
            "get": _op(
                tag,
                "Server metadata",
                "v2_server_metadata",
                _responses(_json("V2ServerMetadata"), ()),
            )
        },
        "/v2/health/live": {
            "get": _op(tag, "Liveness", "v2_live", _responses(_json("V2Live"), ()))
        },
        "/v2/health/ready": {
            "get": _op(
                tag,
                "Readiness: every configured model is AVAILABLE",
                "v2_ready",
                _responses(_json("V2Ready"), (400, 503)),
            )
        },
    }
    paths["/v2/models/stats"] = {
        "get": _op(
            tag,
            "Statistics of every model",
            "v2_models_stats",
            _responses(_json("V2ModelStats"), ()),
        )
    }
    for suffix, key, params in (
        ("", "", [_MODEL]),
        ("/versions/{version}", "_version", [_MODEL, _VERSION]),
    ):
        base = "/v2/models/{model_name}" + suffix
        paths[base] = {
            "parameters": params,
            "get": _op(
                tag,
                "Model metadata",
                f"v2_model_metadata{key}",
                _responses(_json("V2ModelMetadata"), _LOOKUP_ERRORS),
            ),
        }
        paths[base + "/ready"] = {
            "parameters": params,
            "get": _op(
                tag,
                "Model readiness (400 when not ready)",
                f"v2_model_ready{key}",
                _responses(_json("V2ModelReady"), _LOOKUP_ERRORS),
            ),
        }
        paths[base + "/config"] = {
            "parameters": params,
            "get": _op(
                tag,
                "Model configuration",
                f"v2_model_config{key}",
                _responses(_json("V2ModelConfig"), _LOOKUP_ERRORS),
            ),
        }
        paths[base + "/stats"] = {
            "parameters": params,
            "get": _op(
                tag,
                "Model statistics",
                f"v2_model_stats{key}",
                _responses(_json("V2ModelStats"), _LOOKUP_ERRORS),
            ),
        }
        infer = _responses(
            {
                **_json("V2InferResponse"),
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
            },
            _BODY_ERRORS,
        )
        paths[base + "/infer"] = {
            "parameters": params,
            "post": _op(
                tag,
                "Inference (JSON, or JSON + binary tensor data)",
                f"v2_infer{key}",
                infer,
                "V2InferRequest",
            ),
        }
        for route, summary, content in (
            (
                "generate",
                "Generate: the last part of a streaming model",
                _json("V2GenerateResponse"),
            ),
            (
                "generate_stream",
                "Generate, streamed: one server-sent event `data: {response}` per part",
                {"text/event-stream": {"schema": {"type": "string"}}},
            ),
        ):
            paths[f"{base}/{route}"] = {
                "parameters": params,
                "post": _op(
                    tag,
                    summary,
                    f"v2_{route}{key}",
                    _responses(content, _BODY_ERRORS),
                    "V2GenerateRequest",
                ),
            }
    paths["/v2/repository/index"] = {
        "post": _op(
            "Model repository",
            "Index of the model repository",
            "v2_repository_index",
            _responses(_json("V2RepositoryIndex"), (400, 413)),
            "V2RepositoryIndexRequest",
        )
    }
    for action in ("load", "unload"):
        paths[f"/v2/repository/models/{{model_name}}/{action}"] = {
            "parameters": [_MODEL],
            "post": _op(
                "Model repository",
                f"{action.capitalize()} a model (model control)",
                f"v2_repository_{action}",
                _responses({_JSON: {"schema": _OBJ}}, (400, 401, 403, 404, 413, 500, 503)),
                "V2RepositoryRequest",
            ),
        }
    return paths


def _service_paths() -> dict[str, Any]:
    text = {"text/plain": {"schema": _STR}}
    html = {"text/html": {"schema": _STR}}
    return {
        "/metrics": {"get": _op("Service", "Prometheus metrics", "metrics", _responses(text, ()))},
        "/monitoring/prometheus/metrics": {
            "get": _op(
                "Service",
                "Prometheus metrics (TF Serving's path)",
                "tf_metrics",
                _responses(text, ()),
            )
        },
        "/": {
            "get": _op(
                "Service", "Status page (HTML, updates itself)", "status_page", _responses(html, ())
            )
        },
        "/status": {
            "get": _op(
                "Service",
                "Status page (HTML, updates itself)",
                "status_page_alias",
                _responses(html, ()),
            )
        },
        "/status.json": {
            "get": _op(
                "Service",
                "What the status page shows, as JSON",
                "status_data",
                _responses(_json("StatusData"), ()),
            )
        },
        "/openapi.json": {
            "get": _op(
                "Service", "This document", "openapi", _responses({_JSON: {"schema": _OBJ}}, ())
            )
        },
    }


@cache
def openapi_document(server_version: str) -> dict[str, Any]:
    """The OpenAPI 3.1 document (a fresh build per server version; cached)."""
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "pyserving REST API",
            "version": server_version,
            "description": "TensorFlow Serving REST (`/v1`) and KServe V2 REST (`/v2`) on one"
            " port, with Prometheus metrics and a live status page. Errors are"
            ' `{"error": "..."}`.',
            "license": {"name": "Apache-2.0", "identifier": "Apache-2.0"},
        },
        "paths": {**_v1_paths(), **_v2_paths(), **_service_paths()},
        "components": {"schemas": SCHEMAS},
    }


@cache
def openapi_json(server_version: str) -> bytes:
    """`openapi_document` serialized once."""
    return orjson.dumps(openapi_document(server_version))
