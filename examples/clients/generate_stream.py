"""Streaming results from examples/text-generator (served by examples/streaming.yaml), token by
token: server-sent events from REST `generate_stream` read with httpx, then the same over gRPC
with tritonclient's decoupled stream API (`pip install "tritonclient[grpc]"`).
Run: python examples/clients/generate_stream.py [rest host:port] [grpc host:port]"""

import json
import queue
import sys

import httpx
import numpy as np
import tritonclient.grpc as grpcclient

rest = sys.argv[1] if len(sys.argv) > 1 else "localhost:8501"
grpc_url = sys.argv[2] if len(sys.argv) > 2 else "localhost:8500"
request = {"text_input": "the server", "max_tokens": 12}

# REST: one `data: {json}` event per token; the end of the body ends the stream.
url = f"http://{rest}/v2/models/generator/generate_stream"
with httpx.stream("POST", url, json=request, timeout=30) as response:
    response.raise_for_status()
    for line in response.iter_lines():
        if line.startswith("data: "):
            event = json.loads(line[len("data: ") :])
            if "error" in event:  # a failure after the first token arrives as an event
                raise SystemExit(event["error"])
            print(event["text_output"], end="", flush=True)
print()

# gRPC: one response per token, then an empty one whose triton_final_response is true.
answers: queue.Queue = queue.Queue()
client = grpcclient.InferenceServerClient(grpc_url)
client.start_stream(callback=lambda result, error: answers.put((result, error)))
try:
    text = grpcclient.InferInput("text_input", [1], "BYTES")
    text.set_data_from_numpy(np.array([request["text_input"].encode()], dtype=object))
    tokens = grpcclient.InferInput("max_tokens", [1], "INT32")
    tokens.set_data_from_numpy(np.array([request["max_tokens"]], dtype=np.int32))
    client.async_stream_infer("generator", [text, tokens], enable_empty_final_response=True)
    while True:
        result, error = answers.get(timeout=30)
        if error is not None:
            raise SystemExit(error.message())
        if result.get_response().parameters["triton_final_response"].bool_param:
            break
        print(result.as_numpy("text_output")[0].decode(), end="", flush=True)
    print()
finally:
    client.stop_stream()
    client.close()
