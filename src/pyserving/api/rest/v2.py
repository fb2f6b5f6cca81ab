"""KServe V2 REST codec: the JSON (+ binary tensor data) body ⇄ protocols.v2, nothing more.

The protocol's rules live in `pyserving.protocols.v2`, shared with the gRPC API; this module reads
the REST framing, calls the service and writes JSON. With the binary tensor data extension a body
is a JSON header of `Inference-Header-Content-Length` bytes followed by the raw tensors of the
binary inputs (outputs) in the order they are listed (`protocols.tensors` reads and writes them).
Every function returns the body of a 200 answer or raises a ServingError. Parsing, decoding and
encoding that grow with the request leave the event loop (`execution.run_sized`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping

import orjson

from pyserving.errors import InvalidInput, NotFound
from pyserving.protocols import v2, v2_errors, v2_metadata, v2_statistics
from pyserving.protocols.json_tensor import parse_json
from pyserving.serving.execution import run_sized
from pyserving.serving.inference import InferenceService

__all__ = [
    "HEADER_LENGTH",
    "check_repository_request",
    "index_from_service",
    "infer",
    "model_config",
    "model_metadata",
    "model_statistics",
    "repository_index",
    "repository_index_request",
    "server_metadata",
    "split_body",
]

#: the header naming the JSON part's length (lower case, as ASGI delivers header names)
HEADER_LENGTH = b"inference-header-content-length"


def server_metadata(server_version: str) -> bytes:
    """`GET /v2`: name, version and extensions."""
    return orjson.dumps(v2_metadata.server_metadata(server_version, v2_metadata.REST_EXTENSIONS))


def model_metadata(service: InferenceService, name: str, version: int | None) -> bytes:
    """`GET /v2/models/{m}[/versions/{v}]`: versions, platform, inputs and outputs."""
    with v2_errors.in_triton_words(), service.acquire(name, version) as handle:
        signature = service.signature(handle, None)
        servable = handle.servable
    versions = service.available_versions(name)
    return orjson.dumps(v2_metadata.model_metadata(name, versions, servable, signature))


def model_config(service: InferenceService, name: str, version: int | None) -> bytes:
    """`GET /v2/models/{m}[/versions/{v}]/config`: a Triton-style model configuration."""
    with v2_errors.in_triton_words(), service.acquire(name, version) as handle:
        signature = service.signature(handle, None)
        servable = handle.servable
    return orjson.dumps(v2_metadata.model_config(name, servable, signature))


async def model_statistics(service: InferenceService, name: str, version: int | None) -> bytes:
    """`GET /v2/models[/{m}[/versions/{v}]]/stats`: Triton's `{"model_stats": [...]}`."""
    # Off the event loop: it walks the metrics registry.
    stats = await asyncio.to_thread(v2_statistics.model_statistics, service, name, version)
    return orjson.dumps(stats)


async def infer(
    service: InferenceService,
    name: str,
    version: int | None,
    body: bytes,
    header_length: bytes | None,
    deadline: float | None,
    max_json_depth: int,
) -> tuple[bytes, int | None]:
    """`POST .../infer`: returns (response body, JSON header length when it carries binary data).

    `header_length` is the raw Inference-Header-Content-Length value, if the request had one.
    """
    json_part, binary = split_body(body, header_length)
    document = await run_sized(len(json_part), parse_json, json_part)
    request, binary_flags, binary_default = v2.request_from_json(
        name, version, document, binary, deadline, max_json_depth
    )
    request.size = len(body)
    with v2_errors.in_triton_words():
        response = await service.infer(request)
    return await run_sized(
        response.nbytes, v2.response_to_json, response, binary_flags, binary_default
    )


def split_body(body: bytes, header_length: bytes | None) -> tuple[memoryview, memoryview]:
    """Split a body into (JSON header, binary section) by the Inference-Header-Content-Length value.

    Without the header the whole body is JSON. Raises InvalidInput for a value that is not a
    number, is negative or exceeds the body, or is 0 (raw binary requests are not supported).
    """
    view = memoryview(body)
    if header_length is None:
        return view, view[len(view) :]
    text = header_length.strip()
    if not (text.isdigit() and len(text) <= 19):
        shown = repr(text.decode("latin-1")[:40])
        raise InvalidInput(
            f"Inference-Header-Content-Length must be a non-negative integer, got {shown}"
        )
    length = int(text)
    if length > len(body):
        raise InvalidInput(
            f"Inference-Header-Content-Length {length} exceeds the body length {len(body)}"
        )
    if length == 0:
        raise InvalidInput(
            "Inference-Header-Content-Length 0 (a raw binary request) is not supported: send a"
            " JSON header describing the inputs"
        )
    return view[:length], view[length:]


# --- model repository ----------------------------------------------------------------------------


def repository_index_request(body: bytes) -> bool:
    """Parse a `POST /v2/repository/index` body (may be empty); returns its `ready` flag."""
    if not body.strip():
        return False
    request = parse_json(body)
    if not isinstance(request, dict):
        raise InvalidInput("repository index request must be a JSON object")
    ready = request.get("ready", False)
    if not isinstance(ready, bool):
        raise InvalidInput("repository index request: 'ready' must be true or false")
    return ready


def repository_index(entries: Iterable[Mapping[str, str]], ready_only: bool) -> bytes:
    """The index response: a JSON array of {name, version, state, reason}."""
    return orjson.dumps(v2_metadata.repository_index(entries, ready_only))


def index_from_service(service: InferenceService) -> list[Mapping[str, str]]:
    """Index entries from the models the service knows (model control disabled)."""
    entries: list[Mapping[str, str]] = []
    on_demand = service.on_demand
    for name in service.model_names():
        if on_demand is not None and on_demand.is_on_demand(name) and not on_demand.is_loaded(name):
            # an on-demand model waiting for its first request, or evicted (INTERFACE §13)
            entries.append(
                {"name": name, "version": "", "state": "UNAVAILABLE", "reason": "not loaded"}
            )
            continue
        try:
            states = service.model_status(name)
        except NotFound:
            entries.append({"name": name, "version": "", "state": "UNAVAILABLE", "reason": ""})
            continue
        for status in sorted(states, key=lambda s: s.id.version):
            ready = status.state.name == "AVAILABLE"
            entries.append(
                {
                    "name": name,
                    "version": str(status.id.version),
                    "state": "READY" if ready else "UNAVAILABLE",
                    "reason": status.error or ("" if ready else status.state.name),
                }
            )
    return entries


def check_repository_request(name: str, body: bytes, action: str) -> None:
    """Validate a load/unload body (empty, or an object with `parameters`) by V2's rules."""
    parameters: Iterable[str] = ()
    if body.strip():
        request = parse_json(body)
        if not isinstance(request, dict):
            raise InvalidInput(f"repository {action} request must be a JSON object")
        parameters = request.get("parameters") or {}
        if not isinstance(parameters, dict):
            raise InvalidInput(f"repository {action} request: 'parameters' must be an object")
    v2_metadata.check_repository_request(action, name, "", parameters)
