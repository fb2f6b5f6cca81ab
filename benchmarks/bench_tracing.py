"""What traces and request logs cost: V2 REST req/s and p99 with each setting, side by side.

Starts `pyserving serve` on the demo MLP ([b,64]→256→256→10) once per setting — tracing off,
OpenTelemetry tracing at sampling 0, 0.01 and 1.0 (spans exported over OTLP/HTTP to a receiver in
this process that reads and discards them), and request logs at 0.01 with tracing off — and drives
KServe V2 JSON `infer` (one row per request) with wrk after a warm-up. Prints one markdown table
with each setting's ratio to tracing off (goal: sampling 1.0 ≥ 85 %). Never part of pytest.

    python benchmarks/bench_tracing.py [--duration 10] [--warmup 2] [--connections 64]
        [--rounds 1]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import yaml

sys.path.insert(0, str(Path(__file__).parent))
import bench_batching as bb  # its server, wrk and parsing helpers

from pyserving.demo import make_mlp

DIMS = (64, 256, 256, 10)


class Receiver:
    """An OTLP/HTTP endpoint that accepts every export and counts the bytes."""

    def __init__(self) -> None:
        self.posts = 0
        self.bytes = 0
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                receiver.posts += 1
                receiver.bytes += len(body)
                self.send_response(200)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


def start(work: Path, name: str, env: dict[str, str], logging: dict | None):
    model: dict = {"name": "model", "base_path": str(work / "model")}
    if logging is not None:
        model["logging"] = logging
    config = work / f"{name}.yaml"
    config.write_text(yaml.safe_dump({"models": [model]}))
    port = bb.free_port()
    log = (work / f"server-{name}.log").open("wb")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pyserving",
            "serve",
            "--host=127.0.0.1",
            f"--rest_api_port={port}",
            "--port=0",
            "--log-level=warning",
            f"--model_config_file={config}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
    )
    log.close()
    url = f"http://127.0.0.1:{port}"
    bb.wait_ready(url, proc)
    deadline = time.monotonic() + 60
    while not model_ready(url):  # the server may be ready a moment before the model answers
        if time.monotonic() > deadline:
            raise SystemExit(f"model not ready in time ({name})")
        time.sleep(0.1)
    return proc, url


def model_ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/v2/models/model/ready", timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per measurement")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds of warm-up per server")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=1, help="settings measured this many times")
    args = parser.parse_args()
    wrk = shutil.which("wrk")
    if wrk is None:
        raise SystemExit("wrk is not installed (apt-get install wrk)")
    work = Path(tempfile.mkdtemp(prefix="bench-tracing-"))
    make_mlp(work / "model" / "1" / "model.onnx", seed=0, dims=DIMS)
    lua = work / "post.lua"
    lua.write_text(bb.LUA)
    x = np.random.default_rng(0).standard_normal((1, DIMS[0])).astype(np.float32)
    body = work / "body.json"
    body.write_bytes(
        json.dumps(
            {
                "inputs": [
                    {
                        "name": "input",
                        "datatype": "FP32",
                        "shape": [1, DIMS[0]],
                        "data": x.ravel().tolist(),
                    }
                ]
            }
        ).encode()
    )
    receiver = Receiver()
    base = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}

    def traced(ratio: str) -> dict[str, str]:
        return {
            **base,
            "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
            "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
            "OTEL_TRACES_SAMPLER_ARG": ratio,
        }

    settings = [
        ("tracing off", base, None),
        ("tracing, sampling 0", traced("0"), None),
        ("tracing, sampling 0.01", traced("0.01"), None),
        ("tracing, sampling 1.0", traced("1.0"), None),
        ("request logs 0.01", base, {"sampling_rate": 0.01, "path": str(work / "logs")}),
    ]
    results: dict[str, list[bb.Measured]] = {name: [] for name, _, _ in settings}
    for _ in range(args.rounds):
        for name, env, logging in settings:
            proc, url = start(work, name.replace(" ", "-").replace(",", ""), env, logging)
            try:
                target = url + "/v2/models/model/infer"
                bb.post(target, body.read_bytes())
                bb.run_wrk(wrk, target, body, lua, args.connections, args.warmup)
                results[name].append(
                    bb.run_wrk(wrk, target, body, lua, args.connections, args.duration)
                )
            finally:
                bb.stop_server(proc)
    off = max(m.rps for m in results["tracing off"])
    print(
        f"\nV2 REST JSON infer, demo MLP, c={args.connections}, {args.duration:g}s each,"
        f" best of {args.rounds}; cpus={os.cpu_count()}"
    )
    print("| setting | req/s | p50 ms | p99 ms | errors | vs off |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for name, _, _ in settings:
        best = max(results[name], key=lambda m: m.rps)
        print(
            f"| {name} | {best.rps:,.0f} | {best.p50_ms:.2f} | {best.p99_ms:.2f} |"
            f" {best.errors} | {best.rps / off:.0%} |"
        )
    print(f"\nOTLP receiver: {receiver.posts} exports, {receiver.bytes / 1e6:.1f} MB")


if __name__ == "__main__":
    main()
