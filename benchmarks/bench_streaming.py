"""Streaming (issue 19): `python benchmarks/bench_streaming.py [--requests N] [--parts N]
[--clients N]`.

Time to the first part and the gaps between parts for a streaming python servable whose
generator sleeps 10 ms before each part (so 10 ms is the floor), read:

- in process: the generator called directly (the floor plus Python's own overhead);
- over REST `generate_stream` (server-sent events, httpx, one connection per request);
- over gRPC `ModelStreamInfer` (tritonclient's decoupled stream, one call, requests in turn);

with `--clients` concurrent REST readers too (the model's default 2 execution threads bound how
many generators run at once; the rest wait in its queue, which shows in the first part's wait).
Prints one markdown table of p50 / p99 in milliseconds. The server is a real `pyserving serve`
process on 127.0.0.1. Never part of pytest.
"""

from __future__ import annotations

import argparse
import json
import queue
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import processes  # the server's start and stop (it imports no pyserving protos)

DELAY_S = 0.010

SERVABLE = f"""
import time

import numpy as np

from pyserving.platforms import Signature, TensorSpec


class Every10ms:
    signatures = {{
        "serving_default": Signature(
            "serving_default",
            inputs=(
                TensorSpec("text_input", "BYTES", (1,)),
                TensorSpec("max_tokens", "INT32", (1,)),
            ),
            outputs=(TensorSpec("text_output", "BYTES", (1,)),),
        )
    }}

    def load(self, path):
        pass

    def run(self, signature, inputs):
        for i in range(int(inputs["max_tokens"][0])):
            time.sleep({DELAY_S})
            yield {{"text_output": np.array([b" token%d" % i], dtype=object)}}
"""


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def in_process(requests: int, parts: int) -> tuple[list[float], list[float]]:
    """The servable's loop called directly (not imported: pyserving's protos and tritonclient's
    cannot share a process)."""

    def run(count: int):  # type: ignore[no-untyped-def]
        for i in range(count):
            time.sleep(DELAY_S)
            yield {"text_output": np.array([b" token%d" % i], dtype=object)}

    firsts, gaps = [], []
    for _ in range(requests):
        started = last = time.perf_counter()
        for index, _part in enumerate(run(parts)):
            now = time.perf_counter()
            (firsts if index == 0 else gaps).append(now - (started if index == 0 else last))
            last = now
    return firsts, gaps


def sse(client: httpx.Client, url: str, parts: int, firsts: list[float], gaps: list[float]) -> None:
    body = {"text_input": "x", "max_tokens": parts}
    started = last = time.perf_counter()
    seen = 0
    with client.stream("POST", url, json=body, timeout=60) as response:
        for line in response.iter_lines():
            if not line.startswith("data: "):
                continue
            now = time.perf_counter()
            (firsts if seen == 0 else gaps).append(now - (started if seen == 0 else last))
            last = now
            seen += 1
    assert seen == parts, seen


def grpc(address: str, requests: int, parts: int) -> tuple[list[float], list[float]]:
    import tritonclient.grpc as tg

    answers: queue.Queue[tuple[float, object, object]] = queue.Queue()
    client = tg.InferenceServerClient(address)
    client.start_stream(
        callback=lambda result, error: answers.put((time.perf_counter(), result, error))
    )
    text = tg.InferInput("text_input", [1], "BYTES")
    text.set_data_from_numpy(np.array([b"x"], dtype=object))
    count = tg.InferInput("max_tokens", [1], "INT32")
    count.set_data_from_numpy(np.array([parts], dtype=np.int32))
    firsts, gaps = [], []
    try:
        for _ in range(requests):
            started = last = time.perf_counter()
            client.async_stream_infer("every10ms", [text, count], enable_empty_final_response=True)
            for index in range(parts + 1):
                at, _result, error = answers.get(timeout=60)
                assert error is None, error
                if index == parts:  # the empty final response
                    break
                (firsts if index == 0 else gaps).append(at - (started if index == 0 else last))
                last = at
    finally:
        client.stop_stream()
        client.close()
    return firsts, gaps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=30)
    parser.add_argument("--parts", type=int, default=20)
    parser.add_argument("--clients", type=int, default=4)
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="bench-streaming-"))
    (root / "every10ms" / "1").mkdir(parents=True)
    (root / "every10ms" / "1" / "servable.py").write_text(SERVABLE)
    config = root / "models.yaml"
    config.write_text(
        f"models:\n  - {{name: every10ms, base_path: {root / 'every10ms'}, allow_python: true}}\n"
    )
    rest_port, grpc_port = processes.free_port(), processes.free_port()
    base = f"http://127.0.0.1:{rest_port}"
    server = processes.start(
        processes.pyserving_command(rest_port, grpc_port, f"--model_config_file={config}"),
        root / "server.log",
        base + "/v2/health/ready",
        timeout_s=60,
    )
    rows: list[tuple[str, list[float], list[float]]] = []
    try:
        url = base + "/v2/models/every10ms/generate_stream"
        rows.append(("in process (the generator called directly)", *in_process(10, args.parts)))
        # one client for all requests: httpx's module functions build an SSL context each call
        client = httpx.Client()
        sse(client, url, args.parts, [], [])  # warm up
        firsts: list[float] = []
        gaps: list[float] = []
        for _ in range(args.requests):
            sse(client, url, args.parts, firsts, gaps)
        rows.append(("REST generate_stream (SSE), 1 client", firsts, gaps))
        rows.append(
            (
                "gRPC ModelStreamInfer, 1 client",
                *grpc(f"127.0.0.1:{grpc_port}", args.requests, args.parts),
            )
        )
        firsts, gaps = [], []

        def reader() -> None:
            with httpx.Client() as client:
                for _ in range(args.requests // args.clients or 1):
                    sse(client, url, args.parts, firsts, gaps)

        threads = [threading.Thread(target=reader, daemon=True) for _ in range(args.clients)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        rows.append(
            (f"REST generate_stream, {args.clients} clients (2 model threads)", firsts, gaps)
        )
    finally:
        processes.stop_session(server)

    print(
        f"generator sleeping {DELAY_S * 1000:.0f} ms before each of {args.parts} parts;"
        f" {args.requests} requests per row; milliseconds\n"
    )
    print("| reader | first part p50 | first part p99 | gap p50 | gap p99 |")
    print("| --- | --- | --- | --- | --- |")
    for name, first, gap in rows:
        print(
            f"| {name} | {percentile(first, 0.5) * 1e3:.2f} | {percentile(first, 0.99) * 1e3:.2f}"
            f" | {percentile(gap, 0.5) * 1e3:.2f} | {percentile(gap, 0.99) * 1e3:.2f} |"
        )
    print(
        json.dumps(
            {"median_first_ms": {n: round(statistics.median(f) * 1e3, 2) for n, f, _ in rows}}
        )
    )


if __name__ == "__main__":
    main()
