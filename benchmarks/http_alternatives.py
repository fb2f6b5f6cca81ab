"""What a leaner HTTP path would buy: the same V2 JSON endpoint on three stacks, one run.

- `raw-httptools`: an asyncio Protocol on uvloop parsing with httptools directly (no ASGI),
  orjson, onnxruntime inline: the least Python an HTTP request can cost here;
- `floor-starlette`: the peer harness's floor server (Starlette + uvicorn + orjson, inline), when
  it is installed in /tmp/peers/floor, as one process and as two uvicorn workers sharing the port;
- `pyserving`: `pyserving serve` itself;
the same for V2 gRPC `ModelInfer`: a bare grpc.aio server that parses nothing and answers fixed
bytes (the least a Python gRPC call can cost) against pyserving's gRPC port;
and in-process, the cost of pyserving's executor hop (`run_in_executor` + await) against calling
the model inline. Same small MLP, same wrk load as bench.py. The choice of REST listener
(pyserving's own, uvicorn, granian; speed and failure handling) is measured by http_listeners.py.

    python benchmarks/http_alternatives.py [--duration 5] [--connections 1,8,64]
    python benchmarks/http_alternatives.py --serve PORT MODEL   (the raw server alone)
    python benchmarks/http_alternatives.py --serve-grpc PORT    (the bare gRPC server alone)
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
import orjson
from bench import (
    MODELS,
    PEERS_HOME,
    ensure_wrk,
    free_port,
    grpc_command,
    measure,
    ort_session,
    protocols,
    start_server,
    stop_session,
    wrk_command,
    wrk_env,
)

from pyserving.demo import make_mlp

PEERS = Path(os.environ.get("PEERS_DIR", "/tmp/peers"))


def serve_raw(port: int, model: Path) -> None:
    """Serve POST /v2/models/mlp/infer with a bare httptools protocol until SIGTERM."""
    import httptools
    import uvloop

    session = ort_session(model)

    class Protocol(asyncio.Protocol):
        def __init__(self) -> None:
            self.parser = httptools.HttpRequestParser(self)
            self.body: list[bytes] = []

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport = transport

        def data_received(self, data: bytes) -> None:
            try:
                self.parser.feed_data(data)
            except httptools.HttpParserError:
                self.transport.close()

        def on_body(self, body: bytes) -> None:
            self.body.append(body)

        def on_message_complete(self) -> None:
            request = orjson.loads(b"".join(self.body))
            self.body.clear()
            tensor = request["inputs"][0]
            x = np.asarray(tensor["data"], dtype=np.float32).reshape(tensor["shape"])
            (y,) = session.run(None, {"input": x})
            out = {"name": "output", "shape": list(y.shape), "datatype": "FP32", "data": y.ravel()}
            payload = orjson.dumps(
                {"model_name": "mlp", "outputs": [out]}, option=orjson.OPT_SERIALIZE_NUMPY
            )
            head = (
                b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: "
                + str(len(payload)).encode()
                + b"\r\n\r\n"
            )
            self.transport.write(head + payload)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(Protocol, "127.0.0.1", port, backlog=1024)
        async with server:
            await server.serve_forever()

    uvloop.run(main())


def serve_grpc_floor(port: int) -> None:
    """Answer V2 `ModelInfer` with one fixed response, reading nothing, until SIGTERM."""
    import grpc
    import uvloop

    from pyserving.proto import grpc_service_pb2 as pb

    response = pb.ModelInferResponse(model_name="mlp", model_version="1")
    response.outputs.add(name="output", datatype="FP32", shape=[1, 10])
    response.raw_output_contents.append(np.zeros((1, 10), np.float32).tobytes())
    answer = response.SerializeToString()

    async def infer(_request: bytes, _context: object) -> bytes:
        return answer

    async def main() -> None:
        server = grpc.aio.server()
        server.add_generic_rpc_handlers(
            (
                grpc.method_handlers_generic_handler(
                    "inference.GRPCInferenceService",
                    {"ModelInfer": grpc.unary_unary_rpc_method_handler(infer)},
                ),
            )
        )
        server.add_insecure_port(f"127.0.0.1:{port}")
        await server.start()
        await server.wait_for_termination()

    uvloop.run(main())


def executor_hop_us(model: Path, seconds: float = 2.0) -> dict[str, float]:
    """µs per call: the model inline, and the same call through a 1-thread executor + await."""
    session = ort_session(model)
    x = np.random.default_rng(0).standard_normal((1, 64)).astype(np.float32)
    feed = {"input": x}

    async def timed(inline: bool) -> float:
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            n, start = 0, time.perf_counter()
            while time.perf_counter() - start < seconds:
                if inline:
                    session.run(None, feed)
                else:
                    await asyncio.wrap_future(pool.submit(session.run, None, feed))
                n += 1
            return 1e6 * (time.perf_counter() - start) / n

    import uvloop

    return {"inline": uvloop.run(timed(True)), "executor": uvloop.run(timed(False))}


def start_floor(model: Path, port: int, workers: int) -> subprocess.Popen | None:
    uvicorn = PEERS / "floor" / "bin" / "uvicorn"
    if not uvicorn.exists():
        return None
    return subprocess.Popen(
        [
            *(str(uvicorn), "app:app", "--host=127.0.0.1", f"--port={port}", "--no-access-log"),
            *("--loop=uvloop", "--http=httptools", "--log-level=warning", f"--workers={workers}"),
        ],
        cwd=PEERS_HOME / "floor",
        env={**os.environ, "MODEL": str(model), "PYTHONDONTWRITEBYTECODE": "1"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


def wait_http(url: str, body: bytes, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        request = urllib.request.Request(url, data=body, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    stop_session(proc)
    sys.exit(f"http_alternatives: {url} did not answer")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=5)
    parser.add_argument("--connections", default="1,8,64")
    parser.add_argument("--serve", nargs=2, metavar=("PORT", "MODEL"))
    parser.add_argument("--serve-grpc", type=int, metavar="PORT")
    args = parser.parse_args()
    if args.serve:
        serve_raw(int(args.serve[0]), Path(args.serve[1]))
        return
    if args.serve_grpc:
        serve_grpc_floor(args.serve_grpc)
        return
    wrk = ensure_wrk()
    work = Path(tempfile.mkdtemp(prefix="pyserving-alt-"))
    name, dims = MODELS["small"]
    try:
        model = make_mlp(work / name / "1" / "model.onnx", seed=1, dims=dims)
        x = np.random.default_rng(0).standard_normal((1, dims[0])).astype(np.float32)
        proto = protocols(name, x)[1]
        body = work / "body.json"
        body.write_bytes(proto.body)
        env = wrk_env(body, {})
        results: list[tuple[str, int, object]] = []

        def run(label: str, url: str, proc: subprocess.Popen) -> None:
            try:
                wait_http(url, proto.body, proc)
                measure(proc.pid, wrk_command(wrk, url, body, 64, 2), env)
                for conns in (int(c) for c in args.connections.split(",")):
                    m = measure(proc.pid, wrk_command(wrk, url, body, conns, args.duration), env)
                    results.append((label, conns, m))
            finally:
                stop_session(proc)

        port = free_port()
        raw = subprocess.Popen(
            [sys.executable, __file__, "--serve", str(port), str(model)], start_new_session=True
        )
        run("raw httptools protocol (inline ORT)", f"http://127.0.0.1:{port}{proto.path}", raw)
        for workers in (1, 2):
            port = free_port()
            floor = start_floor(model, port, workers)
            if floor is not None:
                label = f"floor: Starlette + uvicorn (inline ORT), {workers} process(es)"
                run(label, f"http://127.0.0.1:{port}{proto.path}", floor)
        server = start_server(work, name, work / name, False, 1.0)
        run("pyserving serve", server.rest + proto.path, server.proc)

        def run_grpc(label: str, target: str, proc: subprocess.Popen) -> None:
            try:
                time.sleep(2)  # grpc_load retries nothing: let the server bind
                measure(proc.pid, grpc_command(target, "v2", name, dims[0], 64, 2))
                for conns in (int(c) for c in args.connections.split(",")):
                    command = grpc_command(target, "v2", name, dims[0], conns, args.duration)
                    results.append((label, conns, measure(proc.pid, command)))
            finally:
                stop_session(proc)

        port = free_port()
        bare = subprocess.Popen(
            [sys.executable, __file__, "--serve-grpc", str(port)], start_new_session=True
        )
        run_grpc("V2 gRPC: bare grpc.aio, fixed answer", f"127.0.0.1:{port}", bare)
        server = start_server(work, name, work / name, False, 1.0)
        run_grpc("V2 gRPC: pyserving serve", server.grpc, server.proc)
        hop = executor_hop_us(model)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(
        f"\nV2 REST JSON (V2 gRPC where named), small MLP, {args.duration:g} s per cell,"
        " load average "
        f"{' '.join(Path('/proc/loadavg').read_text().split()[:3])}\n"
    )
    print("| stack | conns | req/s | p50 ms | p99 ms | errors | server CPU µs / req |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for label, conns, m in results:
        r = m.result
        print(
            f"| {label} | {conns} | {r['rps']:,.0f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} "
            f"| {m.errors} | {1000 * m.cpu_per_1k:.0f} |"
        )
    print(
        f"\nIn-process, small MLP batch 1: inline {hop['inline']:.1f} µs per call; through a "
        f"1-thread executor + await {hop['executor']:.1f} µs (hop = "
        f"{hop['executor'] - hop['inline']:.1f} µs)"
    )


if __name__ == "__main__":
    main()
