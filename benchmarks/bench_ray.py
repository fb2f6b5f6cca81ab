"""What Ray Serve's HTTP proxy costs: pyserving alone vs behind Ray's proxy with 1 and 2 replicas.

Same small MLP ([b,64]→256→256→10) and load generator as bench.py: wrk posting one V2 REST JSON
infer request per call at c=--connections, after a warm-up. Rows: `pyserving serve` alone, and
`pyserving.integrations.ray` on a local one-node Ray (its proxy on this machine, `proxy_location:
HeadOnly`) with num_replicas 1 and 2. Every row serves the same model config. Ray's proxy, its
controller and the replicas share this machine's cores with the load generator: read the ratio
to pyserving alone, not the absolute numbers. Never part of pytest.

    python benchmarks/bench_ray.py [--duration 5] [--warmup 2] [--connections 32]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench  # wrk and its result parsing
import processes  # starting and stopping servers

from pyserving.demo import make_mlp


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--connections", type=int, default=32)
    args = parser.parse_args()
    wrk = bench.ensure_wrk()
    work = Path(tempfile.mkdtemp(prefix="bench-ray-"))
    make_mlp(work / "mlp" / "1" / "model.onnx", seed=0)
    config = work / "models.yaml"
    config.write_text(yaml.safe_dump({"models": [{"name": "mlp", "base_path": str(work / "mlp")}]}))
    x = np.linspace(-1, 1, 64, dtype=np.float32).reshape(1, 64)
    body = work / "infer.json"
    body.write_bytes(bench.v2_json(x))

    def run_load(base: str) -> dict:
        url = base + "/v2/models/mlp/infer"
        env = bench.wrk_env(body, {})
        bench.run_load(bench.wrk_command(wrk, url, body, args.connections, args.warmup), env)
        return bench.run_load(
            bench.wrk_command(wrk, url, body, args.connections, args.duration), env
        )

    rows: list[tuple[str, dict]] = []
    port = processes.free_port()
    server = processes.start(
        processes.pyserving_command(port, 0, f"--model_config_file={config}"),
        work / "pyserving.log",
        f"http://127.0.0.1:{port}/v2/health/ready",
    )
    try:
        rows.append(("pyserving alone", run_load(f"http://127.0.0.1:{port}")))
    finally:
        processes.stop_session(server)

    import ray
    from ray import serve

    from pyserving.integrations.ray import build_app

    ray.init(include_dashboard=False, log_to_driver=False)
    try:
        port = processes.free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port}, proxy_location="HeadOnly")
        for replicas in (1, 2):
            app = build_app(
                {"model_config_file": str(config), "deployment": {"num_replicas": replicas}}
            )
            serve.run(app, name="pyserving", route_prefix="/")
            wait_replicas(serve, replicas)
            rows.append((f"Ray proxy, {replicas} replica(s)", run_load(f"http://127.0.0.1:{port}")))
    finally:
        serve.shutdown()
        ray.shutdown()

    alone = rows[0][1]["rps"]
    print(
        f"\nV2 REST JSON infer, mlp [1,64], c={args.connections}, {args.duration:g}s,"
        f" {os.cpu_count()} CPUs, loadavg {bench.loadavg()}"
    )
    print(f"{'server':<26} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7} {'vs alone':>9}")
    for name, r in rows:
        errors = sum(v for k, v in r.items() if k.startswith("err_"))
        print(
            f"{name:<26} {r['rps']:>9.0f} {r['p50_ms']:>8.2f} {r['p99_ms']:>8.2f} {errors:>7}"
            f" {r['rps'] / alone:>8.2f}x"
        )


def wait_replicas(serve, count: int, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status = serve.status().applications["pyserving"].deployments["pyserving"]
        if status.replica_states.get("RUNNING", 0) == count and len(status.replica_states) == 1:
            return
        time.sleep(0.2)
    raise RuntimeError(f"not {count} running replicas after {timeout_s}s")


if __name__ == "__main__":
    main()
