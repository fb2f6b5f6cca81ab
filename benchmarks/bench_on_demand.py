"""Models on demand (issue 20): `python benchmarks/bench_on_demand.py [--requests N]`.

Prints two markdown tables:

- cold-request latency (the load included) against the warm latency of the same model, for
  ONNX (1 MB and 8 MB weights), scikit-learn (joblib, a 200-tree random forest) and a lookup
  table (100k rows, `table.npz`): 8 models each, `load: on_demand`, each asked once cold then
  once warm, one request at a time (medians over the 8);
- hit rate against throughput for a Zipf(1.1) mix over 40 ONNX models (1 MB) with budgets that
  fit 5, 10 and 20 of them, from 8 clients (hit rate = 1 - loads / requests, from
  `pyserving_model_loads_total{reason="request"}`; the first loads count as misses).

Every server is a real `pyserving serve` process on 127.0.0.1. Never part of pytest.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

CLIENTS = 8
MODELS = 40


def onnx_model(version_dir: Path, value: float, width: int) -> None:
    """y = sum(x @ W), W [4, width] FP32 (width 65536: 1 MiB): x = [1, 0, 0, 0] answers value."""
    weight = np.zeros((4, width), dtype=np.float32)
    weight[0, :] = value / width
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "W"], ["h"]),
            helper.make_node("ReduceSum", ["h", "axes"], ["y"], keepdims=1),
        ],
        "sum",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 1])],
        initializer=[
            numpy_helper.from_array(weight, "W"),
            numpy_helper.from_array(np.array([1], dtype=np.int64), "axes"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    version_dir.mkdir(parents=True)
    onnx.save(model, str(version_dir / "model.onnx"))


def sklearn_model(version_dir: Path, seed: int) -> None:
    import joblib
    from sklearn.ensemble import RandomForestClassifier

    rng = np.random.default_rng(seed)
    x = rng.normal(size=(2000, 4))
    y = (x[:, 0] + x[:, 1] > 0).astype(np.int64)
    forest = RandomForestClassifier(n_estimators=200, random_state=seed).fit(x, y)
    version_dir.mkdir(parents=True)
    joblib.dump(forest, version_dir / "model.joblib")


def lookup_model(version_dir: Path, seed: int) -> None:
    rng = np.random.default_rng(seed)
    version_dir.mkdir(parents=True)
    np.savez(
        version_dir / "table.npz",
        keys=np.arange(100_000, dtype=np.int64),
        values=rng.normal(size=(100_000, 8)).astype(np.float32),
    )


ONNX_BODY = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1, 0, 0, 0]}]}
SKLEARN_BODY = {
    "inputs": [{"name": "inputs", "datatype": "FP64", "shape": [1, 4], "data": [1, 0, 0, 0]}]
}
LOOKUP_BODY = {"inputs": [{"name": "keys", "datatype": "INT64", "shape": [2], "data": [7, 99]}]}


class Server:
    """One `pyserving serve` child on a free port, stopped by PID."""

    def __init__(self, config: Path, budget: int | None) -> None:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        flags = [f"--model_config_file={config}", "--file_system_poll_wait_seconds=0"]
        if budget is not None:
            flags.append(f"--total_model_memory_limit_bytes={budget}")
        self.log = tempfile.NamedTemporaryFile(prefix="bench-on-demand-", suffix=".log")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [
                *(sys.executable, "-m", "pyserving", "serve", "--host=127.0.0.1", "--port=0"),
                f"--rest_api_port={self.port}",
                *flags,
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        self.url = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(self.url + "/v2/health/ready", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                time.sleep(0.05)
        raise RuntimeError("server did not start:\n" + Path(self.log.name).read_text())

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(30)
        self.log.close()

    def metric_sum(self, metric: str) -> float:
        text = httpx.get(self.url + "/metrics").text
        return sum(
            float(m.group(1))
            for m in re.finditer(rf"^{metric}\{{[^}}]*\}} (\S+)$", text, re.MULTILINE)
        )


def write_config(root: Path, names: list[str], extra: str = "") -> Path:
    lines = ["load: on_demand", "models:"]
    lines += [f"  - {{name: {n}, base_path: {root / n}{extra}}}" for n in names]
    path = root / "models.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


def timed(client: httpx.Client, name: str, body: object) -> float:
    started = time.perf_counter()
    reply = client.post(f"/v2/models/{name}/infer", json=body)
    elapsed = time.perf_counter() - started
    if reply.status_code != 200:
        raise RuntimeError(f"{name}: {reply.status_code} {reply.text[:300]}")
    return elapsed


def cold_latency(kind: str, make, body: object, extra: str = "", copies: int = 8) -> str:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        names = [f"{kind}_{i}" for i in range(copies)]
        for i, name in enumerate(names):
            make(root / name / "1", i)
        size = sum(f.stat().st_size for f in (root / names[0] / "1").iterdir())
        server = Server(write_config(root, names, extra), None)
        try:
            cold, warm = [], []
            with httpx.Client(base_url=server.url, timeout=120) as client:
                for name in names:
                    cold.append(timed(client, name, body))
                    warm.append(timed(client, name, body))
        finally:
            server.stop()
    c, w = statistics.median(cold) * 1000, statistics.median(warm) * 1000
    return (
        f"| {kind} | {size / 2**20:.1f} MB | {c:.1f} ms | {max(cold) * 1000:.1f} ms | {w:.2f} ms |"
    )


def zipf_run(root: Path, fits: int, size: int, requests: int) -> str:
    names = [f"z_{i}" for i in range(MODELS)]
    budget = int((fits + 0.5) * 1.2 * size)
    server = Server(root / "models.yaml", budget)
    rng = np.random.default_rng(11)
    weights = 1.0 / np.arange(1, MODELS + 1) ** 1.1
    picks = rng.choice(MODELS, size=requests, p=weights / weights.sum())
    failures = [0]
    lock = threading.Lock()

    def client_run(chunk: np.ndarray) -> None:
        with httpx.Client(base_url=server.url, timeout=120) as client:
            for i in chunk:
                reply = client.post(f"/v2/models/{names[i]}/infer", json=ONNX_BODY)
                if reply.status_code != 200:
                    with lock:
                        failures[0] += 1
                        if failures[0] <= 3:
                            print(
                                f"  failed: {reply.status_code} {reply.text[:200]}", file=sys.stderr
                            )

    try:
        started = time.perf_counter()
        threads = [
            threading.Thread(target=client_run, args=(picks[k::CLIENTS],)) for k in range(CLIENTS)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        elapsed = time.perf_counter() - started
        loads = server.metric_sum("pyserving_model_loads_total")
        evictions = server.metric_sum("pyserving_model_evictions_total")
    finally:
        server.stop()
    hit = 1 - loads / requests
    return (
        f"| {fits} ({budget / 2**20:.1f} MB) | {requests} | {hit:.1%} | {loads:.0f} |"
        f" {evictions:.0f} | {requests / elapsed:.0f} | {failures[0]} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=3000, help="requests per Zipf run")
    args = parser.parse_args()
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs\n")
    print("| model | files | cold p50 | cold max | warm p50 |")
    print("| --- | --- | --- | --- | --- |")
    print(cold_latency("onnx_1mb", lambda d, i: onnx_model(d, i + 1, 65536), ONNX_BODY))
    print(cold_latency("onnx_8mb", lambda d, i: onnx_model(d, i + 1, 8 * 65536), ONNX_BODY))
    print(cold_latency("sklearn_rf", sklearn_model, SKLEARN_BODY, ", allow_pickle: true"))
    print(cold_latency("lookup_100k", lookup_model, LOOKUP_BODY))
    print()
    print("| budget fits | requests | hit rate | loads | evictions | req/s | failures |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        names = [f"z_{i}" for i in range(MODELS)]
        for i, name in enumerate(names):
            onnx_model(root / name / "1", i + 1, 65536)
        write_config(root, names)
        size = (root / names[0] / "1" / "model.onnx").stat().st_size
        for fits in (5, 10, 20, MODELS):
            print(zipf_run(root, fits, size, args.requests))


if __name__ == "__main__":
    main()
