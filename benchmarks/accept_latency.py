"""How long a NEW connection waits for its first answer while established ones keep the server busy.

A liveness probe opens a fresh connection each time; if accepting starves behind keep-alive
traffic, the probe times out and the pod is restarted under load. This starts `pyserving serve`
(batching on, the demo MLP), keeps `--connections` keep-alive connections busy with V2 JSON infer
(wrk), and meanwhile opens a new connection every `--interval` seconds, sends
`GET /v2/health/live` and times the first byte of the answer (connect included). It repeats that
`--runs` times and prints p50/p99/max per run and over all runs.

    python benchmarks/accept_latency.py [--connections 1000] [--duration 10] [--runs 3]
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import orjson
from bench import ensure_wrk, start_server, stop_session, wrk_command, wrk_env

from pyserving.demo import make_mlp

PROBE = b"GET /v2/health/live HTTP/1.1\r\nHost: probe\r\nConnection: close\r\n\r\n"


def probe_once(address: tuple[str, int], timeout_s: float) -> float:
    """Seconds from connect() to the first byte of the answer (timeout_s when none came)."""
    started = time.perf_counter()
    try:
        with socket.create_connection(address, timeout=timeout_s) as sock:
            sock.sendall(PROBE)
            if not sock.recv(64).startswith(b"HTTP/1.1 200"):
                return timeout_s
    except OSError:
        return timeout_s
    return time.perf_counter() - started


KEEP_ALIVE_PROBE = b"GET /v2/health/live HTTP/1.1\r\nHost: probe\r\n\r\n"


def probe_loop(address, stop: threading.Event, interval_s: float, out: list[float]) -> None:
    while not stop.is_set():
        out.append(probe_once(address, timeout_s=30.0))
        stop.wait(interval_s)


def keep_alive_loop(address, stop: threading.Event, interval_s: float, out: list[float]) -> None:
    """The same probe on one established connection: what any request waits for the loop."""
    with socket.create_connection(address, timeout=30.0) as sock:
        while not stop.is_set():
            started = time.perf_counter()
            sock.sendall(KEEP_ALIVE_PROBE)
            answer = b""
            while not answer.endswith(b'{"live":true}'):
                chunk = sock.recv(4096)
                if not chunk:
                    return
                answer += chunk
            out.append(time.perf_counter() - started)
            stop.wait(interval_s)


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


def summary(values: list[float]) -> str:
    if not values:
        return "no samples"
    return (
        f"{len(values):4d} probes  p50 {percentile(values, 50) * 1e3:7.1f} ms"
        f"  p99 {percentile(values, 99) * 1e3:7.1f} ms  max {max(values) * 1e3:7.1f} ms"
    )


def one_run(args, wrk: str, work: Path, base_path: Path, body_file: Path) -> list[float]:
    server = start_server(work, "mlp", base_path, batching=True, poll_s=60)
    try:
        host, port = server.rest.removeprefix("http://").split(":")
        address = (host, int(port))
        load = subprocess.Popen(
            wrk_command(
                wrk,
                f"{server.rest}/v2/models/mlp/infer",
                body_file,
                args.connections,
                args.duration,
            ),
            env=wrk_env(body_file, {}),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        time.sleep(min(2.0, args.duration / 4))  # let wrk open its connections first
        samples: list[float] = []
        established: list[float] = []
        stop = threading.Event()
        probers = [
            threading.Thread(target=probe_loop, args=(address, stop, args.interval, samples)),
            threading.Thread(
                target=keep_alive_loop, args=(address, stop, args.interval, established)
            ),
        ]
        for prober in probers:
            prober.start()
        output, _ = load.communicate(timeout=args.duration + 60)
        stop.set()
        for prober in probers:
            prober.join()
        rate = next((line for line in output.splitlines() if "Requests/sec" in line), "").strip()
        print(f"  run ({rate or 'wrk printed no rate'}):", flush=True)
        print(f"    new connection:         {summary(samples)}")
        print(f"    established connection: {summary(established)}", flush=True)
        return samples
    finally:
        stop_session(server.proc)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=1000)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--interval", type=float, default=0.05)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    wrk = ensure_wrk()
    with tempfile.TemporaryDirectory(prefix="pyserving-accept-") as tmp:
        work = Path(tmp)
        base_path = work / "mlp"
        make_mlp(base_path / "1" / "model.onnx", seed=1)
        x = np.linspace(-1, 1, 64, dtype=np.float32).reshape(1, 64)
        body = {
            "inputs": [
                {"name": "input", "shape": [1, 64], "datatype": "FP32", "data": x.ravel().tolist()}
            ]
        }
        body_file = work / "body.json"
        body_file.write_bytes(orjson.dumps(body))
        print(
            f"new-connection latency (GET /v2/health/live) under {args.connections} busy"
            f" keep-alive connections, batching on, {args.duration:g} s x {args.runs} runs"
        )
        everything: list[float] = []
        for _ in range(args.runs):
            everything += one_run(args, wrk, work, base_path, body_file)
        print(f"all runs, new connection: {summary(everything)}")


if __name__ == "__main__":
    sys.exit(main())
