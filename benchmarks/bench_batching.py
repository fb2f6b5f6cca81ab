"""Batching on vs off, side by side in one run, with the in-process onnxruntime anchor beside it.

For each model (the demo MLP [b,64]→256→256→10 and a heavy [b,512]→2048→2048→10) this starts
`pyserving serve` unbatched, then with `--enable_batching` once per `--batch-wait` (adaptive: a
batch runs early when waiting stops paying; timeout: TF Serving's fixed wait), checks one answer
against in-process onnxruntime, and drives KServe V2 JSON `infer` (one row per request) with wrk
at each concurrency after a warm-up. Each of --rounds rounds measures the anchor first, then the
servers (even rounds in the other order). The anchor is onnxruntime in this process, one intra-op
thread as the server's sessions have: batch-1 calls/s, and rows/s of batches of
--max-batch-size rows run by one thread and by --num-batch-threads threads at once on one
session, which is what the server's batch threads do. It prints one markdown table: req/s, p50,
p99, errors, the batched/unbatched ratio and the served rows/s over the anchor with the same
batch size and threads (the goal for the heavy model: ≥ 0.85 with batching at c=64). Never part
of pytest.

    python benchmarks/bench_batching.py [--duration 10] [--warmup 2] [--connections 64]
        [--models small,heavy] [--rounds 1] [--max-batch-size 32] [--batch-timeout-micros 1000]
        [--num-batch-threads N] [--batch-wait adaptive,timeout]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

sys.path.insert(0, str(Path(__file__).resolve().parent))
import processes  # waiting for a quiet machine, /proc counters
from bench import calls_per_second, v2_json

from pyserving.demo import make_mlp

MODELS = {"small": (64, 256, 256, 10), "heavy": (512, 2048, 2048, 10)}
LUA = """\
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local f = assert(io.open(os.getenv("BODY_FILE"), "rb"))
wrk.body = f:read("*a")
f:close()
"""


@dataclass
class Measured:
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int


def post(url: str, body: bytes, timeout_s: float = 30) -> dict:
    request = urllib.request.Request(
        url, data=body, headers={"Content-Type": "application/json"}, method="POST"
    )
    with urllib.request.urlopen(request, timeout=timeout_s) as response:
        return json.loads(response.read())


def wait_ready(url: str, proc: subprocess.Popen, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url + "/v2/health/ready", timeout=1) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.1)
    raise SystemExit("server not ready in time")


def start_server(
    work: Path, base_path: Path, batching: Path | None
) -> tuple[subprocess.Popen, str]:
    port = processes.free_port()
    flags = ["--model_name=model", f"--model_base_path={base_path}", "--port=0"]
    if batching is not None:
        flags += ["--enable_batching", f"--batching_parameters_file={batching}"]
    log = (work / f"server-{port}.log").open("wb")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pyserving",
            "serve",
            "--host=127.0.0.1",
            f"--rest_api_port={port}",
            "--log-level=warning",
            *flags,
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    log.close()
    url = f"http://127.0.0.1:{port}"
    wait_ready(url, proc)
    return proc, url


def stop_server(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def run_wrk(wrk: str, url: str, body: Path, lua: Path, conns: int, seconds: float) -> Measured:
    threads = max(1, min(conns, 2))
    out = subprocess.run(
        [
            wrk,
            f"-t{threads}",
            f"-c{conns}",
            f"-d{max(1, round(seconds))}s",
            "--latency",
            "-s",
            str(lua),
            url,
        ],
        env={**os.environ, "BODY_FILE": str(body)},
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    errors = sum(int(n) for n in re.findall(r"Non-2xx or 3xx responses:\s+(\d+)", out))
    socket_errors = re.search(r"Socket errors:.*", out)
    if socket_errors:
        errors += sum(int(n) for n in re.findall(r"\d+", socket_errors.group(0)))
    return Measured(rps, latency_ms(out, "50%"), latency_ms(out, "99%"), errors)


def latency_ms(out: str, percentile: str) -> float:
    value, unit = re.search(rf"^\s+{percentile}\s+([\d.]+)(us|ms|s)\s*$", out, re.M).groups()
    return float(value) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[unit]


@dataclass
class Anchor:
    """onnxruntime in this process: batch-1 calls/s and rows/s of batches of `batch` rows."""

    b1: float
    batch: int
    rows_one_thread: float
    threads: int
    rows_threads: float
    #: busy cores of the machine that were not this process while it measured (other tenants)
    noise_cores: float


def batch_rows_per_second(session, xb: np.ndarray, threads: int, seconds: float) -> float:
    """Rows/s of `threads` threads each running batches `xb` on `session` for `seconds`."""
    for _ in range(5):
        session.run(None, {"input": xb})
    counts = [0] * threads
    start = time.perf_counter()
    end = start + seconds

    def loop(i: int) -> None:
        while time.perf_counter() < end:
            session.run(None, {"input": xb})  # releases the GIL while it computes
            counts[i] += 1

    runners = [threading.Thread(target=loop, args=(i,), daemon=True) for i in range(threads)]
    for runner in runners:
        runner.start()
    for runner in runners:
        runner.join()
    return len(xb) * sum(counts) / (time.perf_counter() - start)


def anchors(model: Path, x: np.ndarray, seconds: float, batch: int, threads: int) -> Anchor:
    """The server's session settings (one intra-op thread), batch size and batch threads."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
    xb = np.repeat(x, batch, axis=0)
    busy0, own0, start = processes.machine_busy_s(), own_cpu_s(), time.monotonic()
    b1 = calls_per_second(lambda: session.run(None, {"input": x}), seconds)
    one = batch_rows_per_second(session, xb, 1, seconds)
    many = batch_rows_per_second(session, xb, threads, seconds) if threads > 1 else one
    busy, own = processes.machine_busy_s() - busy0, own_cpu_s() - own0
    return Anchor(b1, batch, one, threads, many, (busy - own) / (time.monotonic() - start))


def own_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def process_cpu_s(pid: int) -> float:
    fields = processes.proc_stats()[pid]
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measured_wrk(proc: subprocess.Popen, *wrk_args) -> tuple[Measured, float, float]:
    """run_wrk(*wrk_args), with the server's CPU µs per request and the noise cores: the
    machine's busy CPU that was neither the server nor wrk (other tenants)."""
    cpu0, busy0, client0 = (
        process_cpu_s(proc.pid),
        processes.machine_busy_s(),
        resource.getrusage(resource.RUSAGE_CHILDREN),
    )
    start = time.monotonic()
    measured = run_wrk(*wrk_args)
    elapsed = time.monotonic() - start
    server = process_cpu_s(proc.pid) - cpu0
    client1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    client = client1.ru_utime + client1.ru_stime - client0.ru_utime - client0.ru_stime
    noise = (processes.machine_busy_s() - busy0 - server - client) / elapsed
    return measured, server / max(1.0, measured.rps * elapsed) * 1e6, noise


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per measurement")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds of warm-up per server")
    parser.add_argument("--connections", default="64", help="comma-separated concurrencies")
    parser.add_argument("--models", default="small,heavy", help=f"from {', '.join(MODELS)}")
    parser.add_argument("--rounds", type=int, default=1, help="anchor + both servers, each round")
    parser.add_argument("--max-batch-size", type=int, default=32)
    parser.add_argument("--batch-timeout-micros", type=int, default=1000)
    parser.add_argument("--num-batch-threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--batch-wait", default="adaptive,timeout", help="batched settings to run")
    parser.add_argument(
        "--noise-max",
        type=float,
        default=0.35,
        help="a round counts as clean when its anchor and batched cell saw less noise (cores)",
    )
    args = parser.parse_args()
    wrk = shutil.which("wrk")
    if wrk is None:
        raise SystemExit("wrk is not installed (apt-get install wrk)")
    connections = [int(c) for c in args.connections.split(",")]
    work = Path(tempfile.mkdtemp(prefix="bench-batching-"))
    lua = work / "post.lua"
    lua.write_text(LUA)
    settings: dict[str, Path | None] = {"off": None}
    for wait in args.batch_wait.split(","):
        settings[wait] = work / f"batching-{wait}.yaml"  # batch_wait is YAML only
        settings[wait].write_text(
            f"max_batch_size: {args.max_batch_size}\n"
            f"batch_timeout_micros: {args.batch_timeout_micros}\n"
            f"num_batch_threads: {args.num_batch_threads}\n"
            "max_enqueued_batches: 1000\n"
            f"batch_wait: {wait}\n"
        )
    batch, threads = args.max_batch_size, args.num_batch_threads
    load_before = " ".join(f"{v:.2f}" for v in os.getloadavg())
    rows: list[str] = []
    goal: dict[str, list[tuple[float, float, bool]]] = {}
    try:
        for round_ in range(1, args.rounds + 1):
            for name in args.models.split(","):
                dims = MODELS[name]
                base = work / name
                model = make_mlp(base / "1" / "model.onnx", seed=1, dims=dims)
                x = np.random.default_rng(0).standard_normal((1, dims[0])).astype(np.float32)
                body = work / f"{name}.json"
                body.write_bytes(v2_json(x))
                processes.wait_quiet()  # other tenants of the machine: a bounded wait
                anchor = anchors(model, x, min(args.duration, 3.0), batch, threads)
                expected = ort.InferenceSession(str(model)).run(None, {"input": x})[0]
                results: dict[tuple[str, int], tuple[Measured, float, float]] = {}
                order = list(settings) if round_ % 2 else list(reversed(settings))
                for setting in order:
                    processes.wait_quiet()
                    proc, url = start_server(work, base, settings[setting])
                    try:
                        infer = f"{url}/v2/models/model/infer"
                        answer = post(infer, body.read_bytes())["outputs"][0]["data"]
                        np.testing.assert_allclose(answer, expected.ravel(), rtol=1e-4, atol=1e-5)
                        run_wrk(wrk, infer, body, lua, max(connections), args.warmup)
                        for conns in connections:
                            results[setting, conns] = measured_wrk(
                                proc, wrk, infer, body, lua, conns, args.duration
                            )
                    finally:
                        stop_server(proc)
                load = " ".join(f"{v:.2f}" for v in os.getloadavg())
                for conns in connections:
                    off = results["off", conns][0]
                    for label in settings:
                        m, cpu_us, noise = results[label, conns]
                        ratio = ""
                        if label != "off":
                            clean = max(noise, anchor.noise_cores) < args.noise_max
                            goal.setdefault(f"{name} c={conns} {label}", []).append(
                                (m.rps / anchor.rows_threads, m.rps / anchor.rows_one_thread, clean)
                            )
                            ratio = f"{m.rps / off.rps:.2f}x / {m.p50_ms / off.p50_ms:.2f}x"
                        rows.append(
                            f"| {round_} | {name} {dims[0]}→…→{dims[-1]} | {conns} | {label}"
                            f" | {m.rps:,.0f} | {m.p50_ms:.2f} | {m.p99_ms:.2f} | {m.errors}"
                            f" | {cpu_us:.0f} | {noise:.2f}"
                            f" | {ratio} | {anchor.b1:,.0f} | {anchor.rows_one_thread:,.0f}"
                            f" | {anchor.rows_threads:,.0f} | {m.rps / anchor.b1:.2f}"
                            f" | {m.rps / anchor.rows_one_thread:.2f}"
                            f" | {m.rps / anchor.rows_threads:.2f} | {anchor.noise_cores:.2f}"
                            f" | {load} |"
                        )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(
        f"\nBatching on vs off — V2 REST JSON infer, 1 row per request, {args.duration:g} s per"
        f" cell, {args.rounds} round(s); max_batch_size {batch}, batch_timeout_micros"
        f" {args.batch_timeout_micros}, num_batch_threads {threads}; {os.cpu_count()} cores,"
        f" load average before {load_before}\n"
    )
    print(
        "| round | model | conns | batching | req/s | p50 ms | p99 ms | errors"
        f" | server CPU µs/req | noise cores | req/s ÷ off / p50 ÷ off"
        f" | ORT b1 calls/s | ORT b{batch} rows/s, 1 thread | ORT b{batch} rows/s, {threads}"
        f" threads | ÷ ORT b1 | ÷ b{batch} 1 thread | ÷ b{batch} {threads} threads"
        " | anchor noise cores | load avg |"
    )
    print("|---:|---|---:|---|" + "---:|" * 14 + "---|")
    print("\n".join(rows))
    print(
        f"\nBatched rows/s ÷ in-process b{batch} rows/s on {threads} threads (same batch size and"
        " threads as the server; goal for the heavy model at c=64: ≥ 0.85), and ÷ the same on"
        f" one thread; median over the clean rounds (noise < {args.noise_max:g} cores in the"
        " anchor and the batched cell), all rounds when none is clean:"
    )
    for key, per_round in goal.items():
        clean = [r for r in per_round if r[2]]
        chosen, which = (clean, f"{len(clean)} clean") if clean else (per_round, "all (none clean)")
        print(
            f"- {key}: {statistics.median(r[0] for r in chosen):.2f}"
            f" ({statistics.median(r[1] for r in chosen):.2f} on one thread) over {which}"
            f" round(s); every round: "
            + ", ".join(f"{r[0]:.2f}{'' if r[2] else ' (noisy)'}" for r in per_round)
        )


if __name__ == "__main__":
    main()
