"""`--workers 2` against one process, side by side, one run: what a second serving process buys.

Same small MLP ([b,64]→256→256→10) and load generators as bench.py: wrk for V2 REST JSON,
benchmarks/grpc_load.py for V2 gRPC, each at c=64 after a warm-up. Rows: pyserving with
`--workers 1` and `--workers 2`; a Starlette floor (Starlette + uvicorn + orjson, the model run
inline, nothing else) as one process and as `uvicorn --workers 2`. CPU counts the whole process
tree (supervisor and workers); RSS and PSS are summed over it after the run (PSS shares pages
between processes fairly, so the two-worker sum is the memory the second worker really adds).
Also the time from `kill -9` of a worker to its replacement serving. Never part of pytest.

`--platforms onnx,sklearn,...` measures memory instead: per platform, `--workers 2` serving one
small model built as the platform tests build theirs (tests/platforms/models.py; ONNX: the MLP),
RSS and PSS of the supervisor and of each worker once the model is AVAILABLE and again after 50
V2 REST requests, each on a new connection so that both workers answer some.

    python benchmarks/bench_workers.py [--duration 5] [--warmup 2] [--connections 64]
    python benchmarks/bench_workers.py --platforms onnx,sklearn,xgboost,lightgbm,torch,tensorflow
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))  # tests.platforms.models
import bench  # wrk, grpc_load and parsing helpers
import processes  # starting and stopping servers

from pyserving.demo import make_mlp

FLOOR_APP = """\
import os

import numpy as np
import onnxruntime as ort
import orjson
from starlette.applications import Starlette
from starlette.responses import Response
from starlette.routing import Route

options = ort.SessionOptions()
options.intra_op_num_threads = 1
options.inter_op_num_threads = 1
SESSION = ort.InferenceSession(os.environ["MODEL"], options, providers=["CPUExecutionProvider"])


async def infer(request):
    body = orjson.loads(await request.body())
    tensor = body["inputs"][0]
    x = np.asarray(tensor["data"], dtype=np.float32).reshape(tensor["shape"])
    y = SESSION.run(None, {"input": x})[0]
    out = {"model_name": "mlp", "outputs": [{"name": "output", "shape": list(y.shape),
           "datatype": "FP32", "data": y.ravel().tolist()}]}
    return Response(orjson.dumps(out), media_type="application/json")


app = Starlette(routes=[Route("/v2/models/mlp/infer", infer, methods=["POST"])])
"""


def tree_pids(root: int, stats: dict[int, list[str]] | None = None) -> list[int]:
    """`root` and every process below it (workers run in sessions of their own)."""
    parents: dict[int, list[int]] = {}
    for pid, fields in (stats or processes.proc_stats()).items():
        parents.setdefault(int(fields[1]), []).append(pid)
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(parents.get(pid, []))
    return found


def tree_cpu_s(root: int) -> float:
    stats = processes.proc_stats()
    tree = [stats[pid] for pid in tree_pids(root, stats) if pid in stats]
    jiffies = sum(int(fields[11]) + int(fields[12]) for fields in tree)
    return jiffies / os.sysconf("SC_CLK_TCK")


def memory_mib(pid: int) -> tuple[float, float]:
    """(RSS, PSS) of one process in MiB, from /proc/PID/smaps_rollup; zeros once it is gone."""
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return 0.0, 0.0
    rss = int(re.search(r"^Rss:\s+(\d+)", text, re.M).group(1))
    pss = int(re.search(r"^Pss:\s+(\d+)", text, re.M).group(1))
    return rss / 1024, pss / 1024


def tree_memory_mib(root: int) -> tuple[float, float]:
    """(RSS, PSS) of the process tree in MiB."""
    both = [memory_mib(pid) for pid in tree_pids(root)]
    return sum(rss for rss, _ in both), sum(pss for _, pss in both)


def stop(proc: subprocess.Popen) -> None:
    pids = tree_pids(proc.pid)
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        proc.wait()


def load(proc, command: Callable[[float], list[str]], env, args: argparse.Namespace) -> dict:
    """Warm up, then run `command(duration)` once, with the server tree's CPU per request."""
    if args.warmup:
        subprocess.run(command(args.warmup), env=env, capture_output=True)
    cpu0, t0 = tree_cpu_s(proc.pid), time.monotonic()
    result = bench.run_load(command(args.duration), env)
    elapsed = time.monotonic() - t0
    result["server_cpu_per_req_us"] = (
        (tree_cpu_s(proc.pid) - cpu0) / max(1, result["rps"] * elapsed) * 1e6
    )
    result["rss_mib"], result["pss_mib"] = tree_memory_mib(proc.pid)
    return result


def replacement_s(proc, log: Path) -> float:
    """kill -9 one worker; seconds until its replacement says it serves."""
    started = re.findall(r"worker \d+ started \(pid (\d+)\)", log.read_text())
    victim = int(started[0])
    os.kill(victim, signal.SIGKILL)
    killed = time.monotonic()
    while time.monotonic() - killed < 60:
        text = log.read_text()
        new = [int(p) for p in re.findall(r"worker \d+ started \(pid (\d+)\)", text)]
        fresh = [p for p in new if str(p) not in started]
        if fresh and f"serving (pid {fresh[0]})" in text:
            return time.monotonic() - killed
        time.sleep(0.02)
    return float("nan")


PLATFORMS = ("onnx", "sklearn", "xgboost", "lightgbm", "torch", "tensorflow")
V2_DATATYPES = {"float32": "FP32", "float64": "FP64", "int64": "INT64"}


def build_model(platform: str, version_dir: Path) -> dict[str, np.ndarray]:
    """Write one small model of `platform` into `version_dir`; a request's inputs for it."""
    if platform == "onnx":
        make_mlp(version_dir / "model.onnx", seed=1)
        return {"input": np.linspace(-1.0, 1.0, 64, dtype=np.float32).reshape(1, 64)}
    from tests.platforms import models

    if platform == "torch":  # TorchScript: a torch.export program would need allow_pickle
        inputs, _ = models.make_torchscript(version_dir)
    else:
        inputs, _ = models.BUILDERS[platform](version_dir)
    return inputs


def v2_body(inputs: dict[str, np.ndarray]) -> bytes:
    tensors = [
        {
            "name": name,
            "shape": list(x.shape),
            "datatype": V2_DATATYPES[x.dtype.name],
            "data": x.ravel().tolist(),
        }
        for name, x in inputs.items()
    ]
    return json.dumps({"inputs": tensors}).encode()


def platform_memory(platform: str, work: Path, requests: int = 50) -> dict:
    """`--workers 2` serving one `platform` model: memory after AVAILABLE and after requests."""
    base = work / platform
    body = v2_body(build_model(platform, base / "1"))
    size = sum(f.stat().st_size for f in base.rglob("*") if f.is_file())
    rest, log = processes.free_port(), work / f"{platform}.log"
    command = processes.pyserving_command(
        rest, 0, "--model_name=m", f"--model_base_path={base}", "--workers=2"
    )
    url = f"http://127.0.0.1:{rest}/v2/models/m"
    proc = processes.start(command, log, f"{url}/ready", timeout_s=180, stop=stop)
    try:
        workers = [int(p) for p in re.findall(r"worker \d+ started \(pid (\d+)\)", log.read_text())]

        def sample() -> dict:
            return {"supervisor": memory_mib(proc.pid), "workers": [memory_mib(w) for w in workers]}

        available = sample()
        for _ in range(requests):  # urllib opens a new connection per request
            with urllib.request.urlopen(urllib.request.Request(f"{url}/infer", body), timeout=30):
                pass
        return {"size": size, "available": available, "served": sample()}
    finally:
        stop(proc)


def print_platform_memory(platforms: list[str]) -> None:
    work = Path(tempfile.mkdtemp(prefix="bench-workers-memory-"))
    rows = [(platform, platform_memory(platform, work)) for platform in platforms]

    def pair(rss_pss: tuple[float, float]) -> str:
        return f"{rss_pss[0]:.0f} / {rss_pss[1]:.0f}"

    print(f"\n## --workers 2, one model, MiB (RSS / PSS), load {bench.loadavg()}\n")
    print(
        "| platform | model on disk | each worker, AVAILABLE | each worker, after 50 requests"
        " | supervisor |"
    )
    print("|---|---:|---:|---:|---:|")
    for platform, r in rows:
        each = [", ".join(pair(w) for w in r[when]["workers"]) for when in ("available", "served")]
        print(
            f"| {platform} | {r['size'] / 1024:.1f} KiB | {each[0]} | {each[1]} |"
            f" {pair(r['served']['supervisor'])} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument(
        "--platforms",
        type=lambda text: text.split(","),
        help=f"measure memory per platform instead (any of {','.join(PLATFORMS)})",
    )
    args = parser.parse_args()
    if args.platforms:
        unknown = set(args.platforms) - set(PLATFORMS)
        if unknown:
            parser.error(f"unknown platforms {sorted(unknown)}: choose from {PLATFORMS}")
        print_platform_memory(args.platforms)
        return
    wrk = bench.ensure_wrk()
    work = Path(tempfile.mkdtemp(prefix="bench-workers-"))
    model = make_mlp(work / "mlp" / "1" / "model.onnx", seed=1)
    x = np.linspace(-1.0, 1.0, 64, dtype=np.float32).reshape(1, 64)
    body = work / "v2.json"
    body.write_bytes(bench.v2_json(x))
    (work / "floor_app.py").write_text(FLOOR_APP)
    env = bench.wrk_env(body, {})
    c, d = args.connections, args.duration
    rows: list[tuple[str, str, dict]] = []
    replaced: float | None = None
    for workers in (1, 2):
        rest, grpc_port = processes.free_port(), processes.free_port()
        log = work / f"pyserving-{workers}.log"
        command = processes.pyserving_command(
            rest,
            grpc_port,
            "--model_name=mlp",
            f"--model_base_path={work / 'mlp'}",
            f"--workers={workers}",
        )
        proc = processes.start(command, log, f"http://127.0.0.1:{rest}/v2/health/ready", stop=stop)
        try:
            url = f"http://127.0.0.1:{rest}/v2/models/mlp/infer"
            rest_load = functools.partial(bench.wrk_command, wrk, url, body, c)
            rows.append(
                (f"pyserving --workers {workers}", "V2 REST JSON", load(proc, rest_load, env, args))
            )
            target = f"127.0.0.1:{grpc_port}"

            def grpc_load(seconds: float, target: str = target) -> list[str]:
                # 8 connections: one HTTP/2 connection would reach one worker only
                return [*bench.grpc_command(target, "v2", "mlp", 64, c, seconds), "--channels=8"]

            rows.append(
                (f"pyserving --workers {workers}", "V2 gRPC", load(proc, grpc_load, None, args))
            )
            if workers == 2:
                replaced = replacement_s(proc, log)
        finally:
            stop(proc)
    for workers in (1, 2):
        port = processes.free_port()
        command = [
            sys.executable,
            "-m",
            "uvicorn",
            "floor_app:app",
            "--host=127.0.0.1",
            f"--port={port}",
            "--no-access-log",
            "--log-level=warning",
            f"--workers={workers}",
            "--app-dir",
            str(work),
        ]
        floor_env = {**os.environ, "MODEL": str(model)}
        url = f"http://127.0.0.1:{port}/v2/models/mlp/infer"
        # ready once it answers an inference: uvicorn has no health route of its own
        proc = processes.start(
            command,
            work / f"floor-{workers}.log",
            url,
            body=body.read_bytes(),
            env=floor_env,
            timeout_s=60,
            stop=stop,
        )
        try:
            rest_load = functools.partial(bench.wrk_command, wrk, url, body, c)
            rows.append(
                (
                    f"Starlette floor, uvicorn --workers {workers}",
                    "V2 REST JSON",
                    load(proc, rest_load, env, args),
                )
            )
        finally:
            stop(proc)
    print(f"\n## --workers, c={c}, {d:g} s per row, load {bench.loadavg()} (2 shared cores)\n")
    print(
        "| server | protocol | req/s | p50 ms | p99 ms | errors | server CPU µs/req"
        " | RSS MiB | PSS MiB |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, proto, r in rows:
        errors = sum(v for k, v in r.items() if k.startswith("err") and isinstance(v, int))
        print(
            f"| {name} | {proto} | {r['rps']:.0f} | {r.get('p50_ms', float('nan')):.2f} |"
            f" {r.get('p99_ms', float('nan')):.2f} | {errors} | {r['server_cpu_per_req_us']:.0f} |"
            f" {r['rss_mib']:.0f} | {r['pss_mib']:.0f} |"
        )
    rate = {(n, p): r["rps"] for n, p, r in rows}
    json1 = rate[("pyserving --workers 1", "V2 REST JSON")]
    json2 = rate[("pyserving --workers 2", "V2 REST JSON")]
    floor2 = rate[("Starlette floor, uvicorn --workers 2", "V2 REST JSON")]
    grpc1 = rate[("pyserving --workers 1", "V2 gRPC")]
    grpc2 = rate[("pyserving --workers 2", "V2 gRPC")]
    print(
        f"\nV2 REST JSON: 2 workers ÷ 1 = {json2 / json1:.2f}x (goal ≥ 1.6x);"
        f" ÷ uvicorn --workers 2 floor = {json2 / floor2:.2f}x (goal ≥ 1.0x)"
    )
    print(f"V2 gRPC: 2 workers ÷ 1 = {grpc2 / grpc1:.2f}x")
    print(f"kill -9 of a worker → its replacement serving: {replaced:.2f} s")


if __name__ == "__main__":
    main()
