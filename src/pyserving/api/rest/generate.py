"""Triton's generate extension over REST: `POST /v2/models/{m}[/versions/{v}]/generate` and
`/generate_stream` (server-sent events).

The request body is one JSON object: each key names an input of the model's default signature
and its value is the tensor's data (a scalar, a string, or nested lists; a value with fewer
dimensions than the input gets leading dimensions of 1), `parameters` is an optional object
(whose keys that name an input are taken as inputs, the others are left to the model), `id` an
optional request id echoed back. A response is one JSON object: `model_name`, `model_version`,
`id` when one was sent, then each output by name (one element: the value itself; BYTES as
text). `/generate_stream` sends one `data: {response}` event per part the servable yields;
`/generate` answers the last part only. A failure before the first part is a JSON error with
its status, as every route's; a failure after it is one `data: {"error": ...}` event, then the
end of the stream. A client that goes away stops the generator (`ClientGone`).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import numpy as np
import orjson

from pyserving.api.rest.disconnect import ClientGone, ClientWatch
from pyserving.errors import InvalidInput, ServingError
from pyserving.platforms.signature import Signature
from pyserving.protocols.json_tensor import bytes_to_json, parse_json, to_array
from pyserving.protocols.request import InferRequest, Limits, outputs_size
from pyserving.protocols.tensors import read_only
from pyserving.protocols.v2 import json_parameters
from pyserving.serving.inference import InferenceService, answered_version
from pyserving.serving.off_loop import run_sized
from pyserving.serving.streaming import PartStream, open_stream

__all__ = ["EVENT_STREAM", "EventStream", "answer"]

logger = logging.getLogger("pyserving.rest")

#: the content type of `/generate_stream` answers
EVENT_STREAM = b"text/event-stream; charset=utf-8"
_JSON = b"application/json"
_RESERVED = ("id", "parameters")

Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
Outputs = dict[str, np.ndarray]


async def answer(
    service: InferenceService,
    name: str,
    version: int | None,
    body: bytes,
    deadline: float | None,
    stream_events: bool,
    receive: Receive,
    max_depth: int = 32,
) -> tuple[int, bytes | EventStream, list[tuple[bytes, bytes]]]:
    """`/generate` (the last part as JSON) or `/generate_stream` (an EventStream that the app
    sends once this returns, holding the first part). Raises ServingError before the first
    part (the app answers it as JSON), ClientGone when the client left meanwhile."""
    request = await run_sized(
        len(body), request_from_json, name, version, body, deadline, max_depth
    )
    watch = ClientWatch(receive)
    stream: PartStream | None = None
    document: bytes | None
    handed_over = False  # to the EventStream, which closes both once sent
    try:
        stream = await watch.until_gone(open_stream(service, request))
        if stream is None:  # a servable that answers once: one part
            response = await watch.until_gone(service.infer(request))
            answered_version.set(response.version)  # (set in the task until_gone ran it in)
            document = await run_sized(
                response.nbytes,
                _document,
                response.model,
                response.version,
                request.id,
                response.outputs,
            )
        else:
            answered_version.set(stream.version)
            part = last = await watch.until_gone(stream.next_part())
            while not stream_events and part is not None:  # /generate answers the last one
                last = part
                part = await watch.until_gone(stream.next_part())
            if last is not None or not stream_events:  # /generate of no part: no outputs
                document = await _encode(stream, last or {})
            else:
                document = None
        if stream_events:
            handed_over = True
            return 200, EventStream(stream, document, watch), [(b"content-type", EVENT_STREAM)]
        assert document is not None
        return 200, document, [(b"content-type", _JSON)]
    finally:
        if not handed_over:
            if stream is not None:
                await stream.aclose()
            watch.stop()


class EventStream:
    """A `/generate_stream` answer being sent: the first part (already computed), then one
    event per further part, each asked for once the one before was written.

    Ownership: owns the stream and the disconnect watch; `send_to` closes both.
    Cancellation: a client that goes away (seen while a part is computed or written) closes the
    stream at once, which stops the generator.
    """

    def __init__(self, stream: PartStream | None, first: bytes | None, watch: ClientWatch) -> None:
        self._stream = stream
        self._first = first
        self._watch = watch

    async def send_to(self, send: Send, headers: list[tuple[bytes, bytes]]) -> int:
        """Send the whole answer; the status to count: 200, or 499 when the client left."""
        try:
            headers.append((b"cache-control", b"no-cache"))
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            document, self._first = self._first, None
            while document is not None:
                event = b"data: " + document + b"\n\n"
                await send({"type": "http.response.body", "body": event, "more_body": True})
                if self._watch.gone:
                    return 499
                document = await self._next_document()
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            return 200
        except ClientGone:
            return 499
        finally:
            if self._stream is not None:
                await self._stream.aclose()
            self._watch.stop()

    async def _next_document(self) -> bytes | None:
        """The next part's event data; an error's (the last one) when the stream failed."""
        stream = self._stream
        if stream is None:
            return None
        try:
            part = await self._watch.until_gone(stream.next_part())
        except ClientGone:
            raise
        except Exception as exc:
            self._stream = None  # a failed stream closed itself: this event is the last
            if isinstance(exc, ServingError):
                return orjson.dumps({"error": exc.message})
            logger.exception("streaming model %s failed", stream.model)
            return orjson.dumps({"error": f"Internal error: {type(exc).__name__}: {exc}"})
        return None if part is None else await _encode(stream, part)


def request_from_json(
    name: str, version: int | None, body: bytes, deadline: float | None, max_depth: int = 32
) -> InferRequest:
    """A generate request body → the request; its inputs are decoded against the signature by
    the V2 JSON rules (integers reject decimals and out-of-range values, BYTES takes strings).
    Raises InvalidInput for a body that is not a JSON object or a bad `id` / `parameters`."""
    document = parse_json(body)
    if not isinstance(document, dict):
        raise InvalidInput(
            f"the generate request body must be a JSON object, not {_json_type(document)}"
        )
    request_id = document.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise InvalidInput(f"'id' must be a string, not {_json_type(request_id)}")
    # the V2 request's own check (an object, or absent), as every V2 route makes it
    parameters = json_parameters(document.get("parameters"), "the generate request")
    values = {key: value for key, value in document.items() if key not in _RESERVED}

    def decode(signature: Signature, limits: Limits) -> Outputs:
        return _decode(values, parameters, signature, limits, max_depth)

    return InferRequest(name, decode, version, deadline=deadline, id=request_id, size=len(body))


def _decode(
    values: Mapping[str, Any],
    parameters: Mapping[str, Any],
    signature: Signature,
    limits: Limits,
    max_depth: int,
) -> Outputs:
    unknown = [key for key in values if signature.input(key) is None]
    if unknown:
        raise InvalidInput(
            f"unknown input {', '.join(repr(k) for k in unknown[:8])}: the model's inputs are"
            f" {', '.join(signature.input_names) or '(none)'}"
        )
    arrays: Outputs = {}
    for spec in signature.inputs:
        value = values.get(spec.name, parameters.get(spec.name))
        if value is None:
            raise InvalidInput(
                f'input "{spec.name}" ({spec.describe()}) is missing from the generate request'
            )
        array = to_array(
            value,
            spec.datatype,
            f'input "{spec.name}"',
            max_depth=max_depth,
            max_elements=limits.max_tensor_elements,
        )
        missing = len(spec.shape) - array.ndim
        if missing > 0:  # "max_tokens": 12 fills an INT32 [1] input
            array = array.reshape((1,) * missing + array.shape)
        arrays[spec.name] = array
    return read_only(arrays)  # as every decoded input


async def _encode(stream: PartStream, outputs: Outputs) -> bytes:
    """A part's response JSON; off the event loop when the part is large."""
    return await run_sized(
        outputs_size(outputs), _document, stream.model, stream.version, stream.id, outputs
    )


def _document(model: str, version: int, request_id: str | None, outputs: Outputs) -> bytes:
    document: dict[str, Any] = {"model_name": model, "model_version": str(version)}
    if request_id is not None:
        document["id"] = request_id
    for name, array in outputs.items():
        document[name] = _value(name, array)
    return orjson.dumps(document, option=orjson.OPT_SERIALIZE_NUMPY)


def _value(name: str, array: np.ndarray) -> Any:
    """An output as JSON: one element is the value itself, BYTES are text."""
    if array.dtype.kind in "OSU":
        single = array.reshape(()) if array.size == 1 else array
        return bytes_to_json(single, encoding="utf8_replace", what=f'output "{name}"')
    return array.reshape(-1)[0].item() if array.size == 1 else array.tolist()


def _json_type(value: object) -> str:
    names = {dict: "an object", list: "an array", str: "a string", bool: "a boolean"}
    if value is None:
        return "null"
    return names.get(type(value), "a number")
