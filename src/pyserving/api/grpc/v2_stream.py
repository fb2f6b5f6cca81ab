"""ModelStreamInfer for streaming servables: several responses per request (Triton's decoupled
models).

Each part the servable yields is one `ModelStreamInferResponse` whose `triton_final_response`
parameter is false; after the last part comes an empty response (no outputs) whose parameter is
true, which is how a decoupled client (`tritonclient.grpc` with
`enable_empty_final_response=True`) learns that the request is complete. A failure mid-stream
is one `error_message` response (whose `infer_response` carries the request's id, model, version
and the final flag), as is a request refused before its first part; the call goes on with the
client's next request. A servable that does not stream is answered as before: one
response per request, no flag. The requests of one call are answered one after the other.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc

from pyserving.api.grpc.rpc import Context, error_status, observe, release_frames
from pyserving.proto import grpc_service_pb2 as pb
from pyserving.protocols import v2_grpc
from pyserving.protocols.request import InferResponse
from pyserving.serving.inference import InferenceService
from pyserving.serving.off_loop import run_sized
from pyserving.serving.streaming import PartStream, open_stream

__all__ = ["FINAL_RESPONSE", "DecoupledStreams", "final_response"]

#: the response parameter that says whether a response is a request's last (Triton's name)
FINAL_RESPONSE = "triton_final_response"


class DecoupledStreams:
    """One ModelStreamInfer call's streams, opened and answered one request at a time.

    Thread-safety: used by the call's handler task only (and its done callback, on the loop).
    Cancellation: when the call ends early (client cancelled or gone, deadline), the stream
    being answered is closed (its generator's `finally` runs), from the call's done callback as
    well as from the handler, so it does not wait for the handler to be finalized.
    """

    def __init__(self, service: InferenceService, context: Context) -> None:
        self._service = service
        self._current: PartStream | None = None
        # the stubs declare DoneCallback a class where any callable of the context does
        context.add_done_callback(self._call_done)  # type: ignore[arg-type]

    async def open(self, request: pb.ModelInferRequest, deadline: float | None) -> bool:
        """Open `request`'s stream; False (nothing opened) for a servable that does not stream."""
        stream = await open_stream(self._service, v2_grpc.request_from_proto(request, deadline))
        self._current = stream
        return stream is not None

    async def responses(self) -> AsyncIterator[pb.ModelStreamInferResponse]:
        """The open stream's responses: one per part, then the empty final one (or an error)."""
        stream = self._current
        assert stream is not None
        started = time.perf_counter()
        counted = False
        try:
            while True:
                try:
                    outputs = await stream.next_part()
                    if outputs is None:
                        break
                    answer = InferResponse(
                        stream.model, stream.version, stream.signature_name, outputs, stream.id
                    )
                    response = await run_sized(answer.nbytes, v2_grpc.response_to_proto, answer)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    code, message = error_status(exc)
                    release_frames(exc)
                    observe(stream.model, stream.version, code, started)
                    counted = True
                    yield pb.ModelStreamInferResponse(
                        error_message=message,
                        infer_response=final_response(stream.model, stream.version, stream.id),
                    )
                    return
                response.parameters[FINAL_RESPONSE].bool_param = False
                yield pb.ModelStreamInferResponse(infer_response=response)
            observe(stream.model, stream.version, grpc.StatusCode.OK, started)
            counted = True
            yield pb.ModelStreamInferResponse(
                infer_response=final_response(stream.model, stream.version, stream.id)
            )
        finally:
            if not counted:  # the call ended mid-stream: cancelled, gone or past its deadline
                observe(stream.model, stream.version, grpc.StatusCode.CANCELLED, started)
            self._current = None
            await stream.aclose()

    def _call_done(self, _context: Any) -> None:
        stream = self._current
        if stream is not None:
            stream.close_soon()


def final_response(
    model: str, version: int | None, request_id: str | None
) -> pb.ModelInferResponse:
    """A request's last response, without outputs: after its parts, or with its error (which
    carries what is known of the request, as Triton's does)."""
    response = pb.ModelInferResponse(
        model_name=model,
        model_version="" if version is None else str(version),
        id=request_id or "",
    )
    response.parameters[FINAL_RESPONSE].bool_param = True
    return response
