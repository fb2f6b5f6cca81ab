"""Execution isolation and the price of never running model code on the event loop: `python
benchmarks/bench_isolation.py [--base-src DIR]`.

Serves two ONNX models from one `pyserving serve`: the small MLP ([b,64]→256→256→10, as in
bench.py) and `sum` ([b,n] FP32 → row sums, for `[1, 4M]` requests). Prints one markdown table:

- V2 JSON c=64 small-MLP req/s, this tree against `--base-src` (a checkout of the commit to
  compare with, e.g. `git worktree add /tmp/base b65bd49` → `/tmp/base/src`), in alternating
  rounds so machine noise hits both alike (the best run of each, and the median);
- small-request (V2 JSON, MLP) p99 at c=8 alone, and while 2 clients keep sending `[1, 4M]` FP32
  requests (V2 binary extension, then JSON), with its ratio to the p99 alone (goal ≤ 3x);
- liveness p99 (a probe on `/v2/health/live` every 20 ms during each run) and the event-loop lag
  p99 from `pyserving_event_loop_lag_seconds` (bucket upper bound; goal ≤ 5 ms; this tree only).
  The p99 runs are repeated (`--tail-rounds`); the one with the lowest small-request p99 counts.

wrk drives the load (apt-get installs it when missing). Never part of pytest.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import onnx
import orjson
from onnx import TensorProto, helper

from pyserving.demo import make_mlp

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
LUA = HERE / "wrk_post.lua"
BIG = 4 * 1024 * 1024  # elements of one big request: [1, 4M] FP32 = 16 MiB


def ensure_wrk() -> str:
    found = shutil.which("wrk")
    if found:
        return found
    subprocess.run(["apt-get", "install", "-y", "-q", "wrk"], check=True, capture_output=True)
    return shutil.which("wrk") or sys.exit("bench_isolation: wrk could not be installed")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def make_sum(version_dir: Path) -> None:
    """x FP32 [b, n] → y FP32 [b, 1] = the row sums (the model for `[1, 4M]` requests)."""
    version_dir.mkdir(parents=True, exist_ok=True)
    axes = helper.make_tensor("axes", TensorProto.INT64, [1], [1])
    graph = helper.make_graph(
        [helper.make_node("ReduceSum", ["x", "axes"], ["y"], keepdims=1)],
        "sum",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", "n"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", 1])],
        initializer=[axes],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(version_dir / "model.onnx"))


class Server:
    """One `pyserving serve` child with `src` first on its PYTHONPATH."""

    def __init__(self, src: Path, config: Path, work: Path, label: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = work / f"server-{label}.log"
        env = {**os.environ, "PYTHONPATH": str(src)}
        with open(self.log, "w") as log:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "pyserving",
                    "serve",
                    "--host=127.0.0.1",
                    f"--rest_api_port={self.port}",
                    "--port=0",
                    f"--model_config_file={config}",
                    "--file_system_poll_wait_seconds=0",
                    "--log-level=warning",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                sys.exit(f"server {label} exited:\n{self.log.read_text()[-3000:]}")
            try:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=1)
                conn.request("GET", "/v2/health/ready")
                if conn.getresponse().status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.1)
        self.stop()
        sys.exit(f"server {label} not ready:\n{self.log.read_text()[-3000:]}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()

    def cpu_s(self) -> float:
        """The server process's CPU seconds so far (every thread, user + system)."""
        stat = Path(f"/proc/{self.proc.pid}/stat").read_text()
        fields = stat[stat.rindex(")") + 2 :].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def lag_buckets(self) -> dict[float, float] | None:
        """Cumulative bucket counts of pyserving_event_loop_lag_seconds (None: not exported)."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        conn.request("GET", "/metrics")
        page = conn.getresponse().read().decode()
        found = re.findall(
            r'^pyserving_event_loop_lag_seconds_bucket\{le="([^"]+)"\} (\S+)$', page, re.M
        )
        return {float(le): float(count) for le, count in found} or None


def wrk_run(
    wrk: str, url: str, body: Path, conns: int, seconds: int, headers: dict | None = None
) -> dict:
    env = {
        **os.environ,
        "BODY_FILE": str(body),
        "EXTRA_HEADERS": base64.b64encode(json.dumps(headers or {}).encode()).decode(),
    }
    command = [wrk, "-t1", f"-c{conns}", f"-d{seconds}s", "--timeout", "10s", "-s", str(LUA), url]
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
    line = next(ln for ln in done.stdout.splitlines() if ln.startswith("RESULT "))
    return json.loads(line[len("RESULT ") :])


class LivenessProbe:
    """GET /v2/health/live every 20 ms on one keep-alive connection; records latencies."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.latencies: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> LivenessProbe:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        while not self._stop.wait(0.02):
            started = time.perf_counter()
            conn.request("GET", "/v2/health/live")
            conn.getresponse().read()
            self.latencies.append(time.perf_counter() - started)

    def p99_ms(self) -> float:
        return float(np.percentile(self.latencies, 99) * 1000) if self.latencies else float("nan")


def lag_p99_ms(before: dict[float, float] | None, after: dict[float, float] | None) -> str:
    if before is None or after is None:
        return "n/a (not exported)"
    bounds = sorted(after)
    deltas = [after[b] - before.get(b, 0.0) for b in bounds]
    total = deltas[-1]
    if total <= 0:
        return "n/a (no samples)"
    for bound, count in zip(bounds, deltas, strict=True):
        if count >= 0.99 * total:
            return f"≤ {bound * 1000:g} ms ({int(total)} samples)"
    return "> 5 s"


def bodies(work: Path) -> dict[str, tuple[Path, dict]]:
    x = np.random.default_rng(0).standard_normal((1, 64)).astype(np.float32)
    small = {
        "inputs": [
            {"name": "input", "datatype": "FP32", "shape": [1, 64], "data": x.ravel().tolist()}
        ]
    }
    header = orjson.dumps(
        {
            "inputs": [
                {
                    "name": "x",
                    "datatype": "FP32",
                    "shape": [1, BIG],
                    "parameters": {"binary_data_size": BIG * 4},
                }
            ],
            "outputs": [{"name": "y", "parameters": {"binary_data": False}}],
        }
    )
    big = np.full(BIG, 0.5, np.float32)
    big_json = {
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [1, BIG], "data": big.tolist()}]
    }
    out = {
        "small": (work / "small.json", {}),
        "big-binary": (
            work / "big.bin",
            {
                "Content-Type": "application/octet-stream",
                "Inference-Header-Content-Length": str(len(header)),
            },
        ),
        "big-json": (work / "big.json", {}),
    }
    out["small"][0].write_bytes(orjson.dumps(small))
    out["big-binary"][0].write_bytes(header + big.tobytes())
    out["big-json"][0].write_bytes(orjson.dumps(big_json))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--src", type=Path, default=ROOT / "src", help="src/ of the tree to test")
    parser.add_argument("--base-src", type=Path, help="src/ of the commit to compare with")
    parser.add_argument("--seconds", type=int, default=5, help="length of each load run")
    parser.add_argument("--rounds", type=int, default=5, help="alternating throughput rounds")
    parser.add_argument(
        "--tail-rounds", type=int, default=3, help="rounds of the p99 runs (the best one counts)"
    )
    args = parser.parse_args()
    wrk = ensure_wrk()
    work = Path(tempfile.mkdtemp(prefix="bench-isolation-"))
    (work / "models" / "mlp" / "1").mkdir(parents=True)
    make_mlp(work / "models" / "mlp" / "1" / "model.onnx", 0, (64, 256, 256, 10))
    make_sum(work / "models" / "sum" / "1")
    config = work / "models.yaml"
    config.write_text(
        "models:\n"
        f"  - {{name: mlp, base_path: {work / 'models' / 'mlp'}}}\n"
        f"  - {{name: sum, base_path: {work / 'models' / 'sum'}}}\n"
    )
    files = bodies(work)
    trees = {"this tree": args.src.resolve()}
    if args.base_src is not None:
        trees["base"] = args.base_src.resolve()
    secs = args.seconds

    # Throughput: V2 JSON c=64, alternating rounds.
    rps: dict[str, list[float]] = {label: [] for label in trees}
    cpu_us: dict[str, list[float]] = {label: [] for label in trees}
    for _ in range(args.rounds):
        for label, src in trees.items():
            server = Server(src, config, work, label.replace(" ", "-"))
            try:
                url = server.url + "/v2/models/mlp/infer"
                wrk_run(wrk, url, files["small"][0], 64, 2)  # warm-up
                cpu = server.cpu_s()
                result = wrk_run(wrk, url, files["small"][0], 64, secs)
                cpu = server.cpu_s() - cpu
                assert result["err_status"] == 0, result
                rps[label].append(result["rps"])
                cpu_us[label].append(1e6 * cpu / max(1, result["requests"]))
            finally:
                server.stop()

    # Small-request p99 alone and beside 2 big-request clients; liveness and loop lag.
    tail: dict[str, dict[str, tuple[float, float, str, int]]] = {}
    for label, src in trees.items():
        server = Server(src, config, work, label.replace(" ", "-") + "-tail")
        tail[label] = {}
        try:
            small_url = server.url + "/v2/models/mlp/infer"
            wrk_run(wrk, small_url, files["small"][0], 8, 2)  # warm-up
            for _ in range(args.tail_rounds):
                for load in ("alone", "big-binary", "big-json"):
                    before = server.lag_buckets()
                    big_runs: list[dict] = []
                    big = None
                    if load != "alone":
                        path, headers = files[load]

                        def drive(
                            path: Path = path,
                            headers: dict = headers,
                            server: Server = server,
                            big_runs: list[dict] = big_runs,
                        ) -> None:
                            big_runs.append(
                                wrk_run(
                                    wrk,
                                    server.url + "/v2/models/sum/infer",
                                    path,
                                    2,
                                    secs + 2,
                                    headers,
                                )
                            )

                        big = threading.Thread(target=drive)
                        big.start()
                        time.sleep(1)  # the big clients are sending
                    with LivenessProbe(server.port) as probe:
                        small = wrk_run(wrk, small_url, files["small"][0], 8, secs)
                    if big is not None:
                        big.join()
                    after = server.lag_buckets()
                    big_count = big_runs[0]["requests"] if big_runs else 0
                    # The least disturbed of the rounds (the lowest small-request p99) counts.
                    kept = tail[label].get(load)
                    if kept is None or small["p99_ms"] < kept[0]:
                        tail[label][load] = (
                            small["p99_ms"],
                            probe.p99_ms(),
                            lag_p99_ms(before, after),
                            big_count,
                        )
        finally:
            server.stop()

    print(
        f"\n## Execution isolation (wrk, {secs} s runs, {os.cpu_count()} CPUs,"
        f" load {os.getloadavg()[0]:.1f})\n"
    )
    print("| measure | " + " | ".join(trees) + " | goal |")
    print("|---|" + "---|" * len(trees) + "---|")
    # Other processes can only slow a run down: the best run is the least disturbed estimate.
    best = {label: max(values) for label, values in rps.items()}
    med = {label: statistics.median(values) for label, values in rps.items()}
    cells = [
        f"{best[label]:,.0f} (median {med[label]:,.0f}; runs"
        f" {', '.join(f'{v:,.0f}' for v in rps[label])})"
        for label in trees
    ]
    goal = ""
    if "base" in best:
        goal = (
            f"≥ 95 % of base: best {100 * best['this tree'] / best['base']:.1f} %,"
            f" median {100 * med['this tree'] / med['base']:.1f} %"
        )
    print(f"| V2 JSON c=64 small MLP, req/s: best | {' | '.join(cells)} | {goal} |")
    cpu_min = {label: min(values) for label, values in cpu_us.items()}
    cells = [f"{cpu_min[label]:.0f} µs" for label in trees]
    goal = ""
    if "base" in cpu_min:
        goal = f"this tree / base: {100 * cpu_min['this tree'] / cpu_min['base']:.1f} %"
    print(f"| same runs: server CPU per request, least | {' | '.join(cells)} | {goal} |")
    for load, title in (
        ("alone", "small p99 at c=8, alone"),
        ("big-binary", "small p99 at c=8 + 2 clients of [1, 4M] FP32 (binary)"),
        ("big-json", "small p99 at c=8 + 2 clients of [1, 4M] FP32 (JSON)"),
    ):
        row = []
        for label in trees:
            p99, _, _, big_count = tail[label][load]
            ratio = p99 / tail[label]["alone"][0]
            extra = "" if load == "alone" else f" ({ratio:.2f}x, {big_count} big answered)"
            row.append(f"{p99:.2f} ms{extra}")
        print(f"| {title} | {' | '.join(row)} | {'≤ 3x alone' if load != 'alone' else ''} |")
    for load in ("alone", "big-binary", "big-json"):
        row = [f"{tail[label][load][1]:.2f} ms" for label in trees]
        print(f"| liveness p99 ({load}) | {' | '.join(row)} | |")
    for load in ("alone", "big-binary", "big-json"):
        row = [tail[label][load][2] for label in trees]
        print(f"| event-loop lag p99 ({load}) | {' | '.join(row)} | ≤ 5 ms |")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
