"""Client side of the gRPC streaming tests, run as a child process (tritonclient registers the
same protobuf names as pyserving.proto): `python streaming_grpc_client.py ADDRESS` prints one
JSON object of what `tritonclient.grpc`'s decoupled stream API received."""

from __future__ import annotations

import json
import queue
import sys
from typing import Any

import numpy as np
import tritonclient.grpc as tg


def inputs(tag: str, count: int) -> list[Any]:
    text = tg.InferInput("text_input", [1], "BYTES")
    text.set_data_from_numpy(np.array([tag.encode()], dtype=object))
    tokens = tg.InferInput("max_tokens", [1], "INT32")
    tokens.set_data_from_numpy(np.array([count], dtype=np.int32))
    return [text, tokens]


def collect(answers: queue.Queue[Any], stop_after: int | None = None) -> list[Any]:
    """One request's responses: each part's (index, text, final flag), or the error text."""
    seen: list[Any] = []
    while True:
        result, error = answers.get(timeout=30)
        if error is not None:
            seen.append({"error": error.message()})
            return seen
        response = result.get_response()
        flag = response.parameters.get("triton_final_response")
        final = None if flag is None else flag.bool_param
        index = result.as_numpy("index")
        text = result.as_numpy("text_output")
        seen.append(
            {
                "index": None if index is None else int(index[0]),
                "text": None if text is None else text[0].decode(),
                "final": final,
                "id": response.id,
                "version": response.model_version,
            }
        )
        if final is not False or (stop_after is not None and len(seen) == stop_after):
            return seen


def main(address: str) -> dict[str, Any]:
    client = tg.InferenceServerClient(address)
    answers: queue.Queue[Any] = queue.Queue()
    client.start_stream(callback=lambda result, error: answers.put((result, error)))
    out: dict[str, Any] = {}
    # several requests on one call, answered one after the other
    for model in ("tokens", "async_tokens", "one_answer"):
        client.async_stream_infer(
            model,
            inputs(f"g-{model}", 4),
            request_id=f"id-{model}",
            enable_empty_final_response=True,
        )
        out[model] = collect(answers)
    client.async_stream_infer("tokens", inputs("g-boom", 5), enable_empty_final_response=True)
    out["boom"] = collect(answers)
    client.async_stream_infer("nope", inputs("g-nope", 5), enable_empty_final_response=True)
    out["unknown_model"] = collect(answers)
    client.async_stream_infer(
        "slow_tokens", inputs("g-cancel", 1000), enable_empty_final_response=True
    )
    out["cancelled"] = collect(answers, stop_after=3)
    client.stop_stream(cancel_requests=True)
    # the whole call's deadline passes mid-stream (a new queue: the cancelled call's error
    # may still arrive on the old one)
    answers = queue.Queue()
    client.start_stream(
        callback=lambda result, error: answers.put((result, error)), stream_timeout=1.0
    )
    client.async_stream_infer(
        "slow_tokens", inputs("g-deadline", 1000), enable_empty_final_response=True
    )
    parts = collect(answers)
    out["deadline"] = {"parts": len(parts) - 1, "last": parts[-1]}
    client.stop_stream()
    return out


if __name__ == "__main__":
    print("RESULT " + json.dumps(main(sys.argv[1])))
