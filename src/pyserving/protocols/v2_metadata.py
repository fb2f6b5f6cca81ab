"""KServe V2 metadata, model configuration and model repository rules, for REST and gRPC alike.

Pure translation: each function builds the JSON form of an answer from what the caller looked up
(the gRPC API builds its protobuf from the same dict), or refuses a repository request.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from pyserving.errors import InvalidInput
from pyserving.platforms.signature import Signature, TensorSpec

__all__ = [
    "GRPC_EXTENSIONS",
    "REST_EXTENSIONS",
    "check_repository_request",
    "model_config",
    "model_metadata",
    "repository_index",
    "server_metadata",
]

_COMMON_EXTENSIONS = ("model_configuration", "model_repository", "statistics")
#: extensions `GET /v2` advertises
REST_EXTENSIONS = ("binary_tensor_data", *_COMMON_EXTENSIONS)
#: extensions ServerMetadata advertises (gRPC tensors are always raw)
GRPC_EXTENSIONS = _COMMON_EXTENSIONS

# Servable.platform → the V2 "<framework>_<format>" platform names the spec lists.
_PLATFORMS = {
    "onnx": "onnx_onnxv1",
    "tensorflow": "tensorflow_savedmodel",
    "torch": "pytorch_torchscript",
}


def server_metadata(server_version: str, extensions: Sequence[str]) -> dict[str, Any]:
    """The server metadata answer: name, version, extensions."""
    return {"name": "pyserving", "version": server_version, "extensions": list(extensions)}


def model_metadata(
    name: str, versions: Iterable[int], servable: object, signature: Signature
) -> dict[str, Any]:
    """The model metadata answer: versions (AVAILABLE ones), platform, inputs, outputs."""
    return {
        "name": name,
        "versions": [str(v) for v in versions],
        "platform": _platform(servable),
        "inputs": [_tensor_metadata(spec) for spec in signature.inputs],
        "outputs": [_tensor_metadata(spec) for spec in signature.outputs],
    }


def model_config(name: str, servable: object, signature: Signature) -> dict[str, Any]:
    """A Triton-style model configuration (data types as `TYPE_*` names; `parameters` as
    Triton's `{name: {"string_value": ...}}`, only when the version has some)."""
    config: dict[str, Any] = {
        "name": name,
        "platform": _platform(servable),
        "backend": getattr(servable, "platform", "") or "python",
        "max_batch_size": 0,
        "input": [_tensor_config(spec) for spec in signature.inputs],
        "output": [_tensor_config(spec) for spec in signature.outputs],
    }
    parameters = getattr(servable, "config_parameters", None)
    if parameters:
        config["parameters"] = {k: {"string_value": v} for k, v in parameters.items()}
    return config


def repository_index(
    entries: Iterable[Mapping[str, str]], ready_only: bool
) -> list[dict[str, str]]:
    """The index answer: {name, version, state, reason} per entry, READY ones only if asked."""
    items = [
        {
            "name": str(e.get("name", "")),
            "version": str(e.get("version", "")),
            "state": str(e.get("state", "")),
            "reason": str(e.get("reason", "")),
        }
        for e in entries
    ]
    if ready_only:
        items = [item for item in items if item["state"] == "READY"]
    return items


def check_repository_request(
    action: str, model_name: str, repository_name: str, parameters: Iterable[str]
) -> None:
    """A load / unload request: a model name, this server's one repository, and no parameters
    but `unload_dependents` for unload (a no-op: models have no dependents here)."""
    if not model_name:
        raise InvalidInput(f"repository {action} request: the model name is empty")
    if repository_name:
        raise InvalidInput(
            f'repository {action} request: repository "{repository_name[:80]}" is unknown: this'
            " server has one repository (leave the repository name empty)"
        )
    allowed = ("unload_dependents",) if action == "unload" else ()
    unsupported = sorted(k[:80] for k in parameters if k not in allowed)
    if unsupported:
        raise InvalidInput(
            f"repository {action} request: unsupported parameter(s) {', '.join(unsupported)};"
            " models load from the configured repository only (edit the model config instead)"
        )


def _platform(servable: object) -> str:
    platform = getattr(servable, "platform", "") or "python"
    return _PLATFORMS.get(platform, platform)


def _tensor_metadata(spec: TensorSpec) -> dict[str, object]:
    return {"name": spec.name, "datatype": spec.datatype, "shape": list(spec.shape)}


def _tensor_config(spec: TensorSpec) -> dict[str, object]:
    data_type = "TYPE_STRING" if spec.datatype == "BYTES" else f"TYPE_{spec.datatype}"
    return {"name": spec.name, "data_type": data_type, "dims": list(spec.shape)}
