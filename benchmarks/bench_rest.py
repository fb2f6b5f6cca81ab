"""REST throughput and latency of pyserving next to in-process inference, in one run.

Starts `pyserving serve` on the demo MLP (float32 [b,64] → 256 → 256 → 10), drives it with wrk
(installed from apt when missing) at several concurrencies, and prints one markdown table with
req/s, p50/p99, errors, server CPU-seconds per 1,000 requests, RSS, and the ratio of each row to
the in-process anchors measured in the same run. Never part of pytest.

    python benchmarks/bench_rest.py [--duration 10] [--connections 1,8,64]
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import orjson

from pyserving.demo import make_mlp

HERE = Path(__file__).resolve().parent
LUA = HERE / "wrk_post.lua"


def ensure_wrk() -> str:
    found = shutil.which("wrk")
    if found:
        return found
    subprocess.run(["apt-get", "update", "-q"], check=True, capture_output=True)
    subprocess.run(["apt-get", "install", "-y", "-q", "wrk"], check=True, capture_output=True)
    return shutil.which("wrk") or sys.exit("wrk could not be installed")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def proc_cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def proc_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def calls_per_second(fn, seconds: float = 2.0) -> float:
    for _ in range(200):
        fn()
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        for _ in range(100):
            fn()
        n += 100
    return n / (time.perf_counter() - start)


def in_process_anchors(model: Path, x: np.ndarray, v2_body: bytes) -> dict[str, float]:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
    x32 = np.repeat(x, 32, axis=0)

    def codec_path() -> bytes:
        request = orjson.loads(v2_body)
        tensor = request["inputs"][0]
        arr = np.asarray(tensor["data"], dtype=np.float32).reshape(tensor["shape"])
        (y,) = session.run(None, {"input": arr})
        out = {
            "name": "output",
            "shape": list(y.shape),
            "datatype": "FP32",
            "data": y.ravel().tolist(),
        }
        return orjson.dumps({"model_name": "mlp", "outputs": [out]})

    return {
        "onnxruntime batch 1": calls_per_second(lambda: session.run(None, {"input": x})),
        "onnxruntime batch 32 (rows/s)": 32
        * calls_per_second(lambda: session.run(None, {"input": x32})),
        "in-process V2 JSON codec + run": calls_per_second(codec_path),
    }


def request_bodies(x: np.ndarray) -> dict[str, tuple[str, bytes, dict[str, str]]]:
    v2_json = orjson.dumps(
        {
            "inputs": [
                {"name": "input", "shape": [1, 64], "datatype": "FP32", "data": x.ravel().tolist()}
            ]
        }
    )
    header = orjson.dumps(
        {
            "inputs": [
                {
                    "name": "input",
                    "shape": [1, 64],
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": x.nbytes},
                }
            ],
            "parameters": {"binary_data_output": True},
        }
    )
    return {
        "TF REST predict (row)": (
            "/v1/models/mlp:predict",
            orjson.dumps({"instances": x.tolist()}),
            {},
        ),
        "V2 REST JSON": ("/v2/models/mlp/infer", v2_json, {}),
        "V2 REST binary": (
            "/v2/models/mlp/infer",
            header + x.tobytes(),
            {"Inference-Header-Content-Length": str(len(header))},
        ),
    }


def run_wrk(
    wrk: str, url: str, body: bytes, headers: dict[str, str], conns: int, seconds: int
) -> dict:
    with tempfile.NamedTemporaryFile(suffix=".body", delete=False) as f:
        f.write(body)
    env = {
        **os.environ,
        "BODY_FILE": f.name,
        "EXTRA_HEADERS": base64.b64encode(json.dumps(headers).encode()).decode(),
    }
    out = subprocess.run(
        [wrk, "-t1", f"-c{conns}", f"-d{seconds}s", "--timeout", "5s", "-s", str(LUA), url],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    os.unlink(f.name)
    line = next(ln for ln in out.splitlines() if ln.startswith("RESULT "))
    return json.loads(line[len("RESULT ") :])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--connections", default="1,8,64")
    args = parser.parse_args()
    wrk = ensure_wrk()
    work = Path(tempfile.mkdtemp(prefix="pyserving-bench-"))
    model = make_mlp(work / "mlp" / "1" / "model.onnx", seed=0)
    x = np.random.default_rng(0).standard_normal((1, 64)).astype(np.float32)
    bodies = request_bodies(x)
    anchors = in_process_anchors(model, x, bodies["V2 REST JSON"][1])

    port = free_port()
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pyserving",
            "serve",
            "--host=127.0.0.1",
            f"--rest_api_port={port}",
            "--port=0",
            "--model_name=mlp",
            f"--model_base_path={work / 'mlp'}",
            "--log-level=warning",
        ],
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(base)
        rows = []
        for name, (path, body, headers) in bodies.items():
            run_wrk(wrk, base + path, body, headers, 64, args.warmup)
            for conns in (int(c) for c in args.connections.split(",")):
                cpu0 = proc_cpu_seconds(server.pid)
                result = run_wrk(wrk, base + path, body, headers, conns, args.duration)
                cpu = proc_cpu_seconds(server.pid) - cpu0
                errors = sum(result[k] for k in result if k.startswith("err_"))
                rows.append(
                    (
                        name,
                        conns,
                        result,
                        errors,
                        1000 * cpu / max(1, result["requests"]),
                        proc_rss_mib(server.pid),
                    )
                )
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(30)
        shutil.rmtree(work, ignore_errors=True)
    print_table(anchors, rows)


def wait_ready(base: str, timeout_s: float = 60) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(base + "/v2/health/ready", timeout=1) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.1)
    sys.exit("server did not become ready")


def print_table(anchors: dict[str, float], rows: list) -> None:
    python = sys.version.split()[0]
    print(f"machine: {os.cpu_count()} cores, Python {python}, onnxruntime {ort.__version__}")
    print("\n| in-process anchor | calls/s |\n| --- | ---: |")
    for name, rate in anchors.items():
        print(f"| {name} | {rate:,.0f} |")
    limit = anchors["onnxruntime batch 1"]
    codec = anchors["in-process V2 JSON codec + run"]
    print(
        "\n| protocol | conns | req/s | p50 ms | p99 ms | errors | CPU-s / 1k req | RSS MiB "
        "| ÷ ORT batch 1 | ÷ in-process codec |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name, conns, r, errors, cpu_per_k, rss in rows:
        print(
            f"| {name} | {conns} | {r['rps']:,.0f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} "
            f"| {errors} | {cpu_per_k:.2f} | {rss:.0f} "
            f"| {r['rps'] / limit:.3f} | {r['rps'] / codec:.3f} |"
        )


if __name__ == "__main__":
    main()
