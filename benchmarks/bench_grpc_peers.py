"""V2 gRPC at c=64: pyserving `--workers 2` (batching off and on) against PyTriton with its
dynamic batcher, side by side in one run, in alternating rounds.

All three serve the same ONNX file (the peer harness's small MLP [b,64]→256→256→10, one
onnxruntime intra-op thread) and take the same load: benchmarks/grpc_load.py, closed loop, c=64
calls spread over --channels HTTP/2 connections (one connection would reach one worker only), a
warm-up first. Each round starts every setting afresh, checks one answer against in-process
onnxruntime, measures, and stops it; even rounds run the settings in reverse order. PyTriton
(max batch 32, queue delay 2 ms, one instance) is started the way the peer harness's run_bench.py
starts it; set BENCH_PEERS_HOME to that harness's directory (not part of this repository) and
install its `base` and `pytriton` venvs under /tmp/peers (PEERS_DIR) first. pyserving batches
with bench.py's parameters (32, 2 ms, one batch thread per worker).

Server CPU counts the server's whole process tree and session (pyserving's workers run in
sessions of their own; Triton's python stubs stay in the leader's session). The load generator
shares the 2 cores: its CPU is in the table ("load gen cores"). `--clients python,h2load` adds
h2load (nghttp2-client, C) sending the same pre-framed ModelInfer message as HTTP/2 POSTs with
gRPC's headers, --channels connections with c/channels streams each: a fraction of the Python
client's CPU. h2load does not read gRPC trailers, so a call counts as failed unless its answer
had the full length of the server's answer to the check call. "noise cores" is the machine's busy
CPU that was neither server nor load generator. PyTriton's server CPU per request over ours is
what the req/s ratio would be if both were bound by the same cores (noise moves it less than
req/s); PyTriton at c=64 is not (it left cores idle on this machine). Never part of pytest.

    BENCH_PEERS_HOME=... python benchmarks/bench_grpc_peers.py [--duration 5] [--warmup 2]
        [--rounds 3] [--connections 64] [--channels 8] [--clients python,h2load]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench  # grpc_load command, peer harness loader, machine counters
import bench_workers  # process trees
import grpc_load  # the request row it sends
import processes  # starting and stopping servers

PEER = "PyTriton batch (max 32, 2 ms)"
TRITON_PORTS = (8000, 8001, 8002)


@dataclass
class Started:
    """A running server: its root process, gRPC target and how to stop it."""

    proc: subprocess.Popen
    target: str
    stop: Callable[[], None]


def server_cpu_s(root: int) -> float:
    """CPU seconds of `root`'s process tree and of its session, each process counted once."""
    stats = processes.proc_stats()
    pids = set(bench_workers.tree_pids(root, stats))
    pids |= {pid for pid, fields in stats.items() if int(fields[3]) == root}
    jiffies = sum(int(stats[p][11]) + int(stats[p][12]) for p in pids if p in stats)
    return jiffies / os.sysconf("SC_CLK_TCK")


def start_pyserving(work: Path, batching: bool) -> Started:
    rest, grpc_port = processes.free_port(), processes.free_port()
    flags = [
        "--model_name=mlp",
        f"--model_base_path={work / 'mlp'}",
        "--workers=2",
        "--log-level=warning",
    ]
    if batching:
        params = work / "batching.pbtxt"
        params.write_text(bench.BATCHING_PARAMETERS)
        flags += ["--enable_batching", f"--batching_parameters_file={params}"]
    log = work / f"pyserving-{'batch' if batching else 'nobatch'}.log"
    command = processes.pyserving_command(rest, grpc_port, *flags)
    ready = f"http://127.0.0.1:{rest}/v2/models/mlp/ready"
    proc = processes.start(command, log, ready, stop=bench_workers.stop)
    return Started(proc, f"127.0.0.1:{grpc_port}", lambda: bench_workers.stop(proc))


def start_pytriton(rb) -> Started:
    for port in TRITON_PORTS:  # the harness's PyTriton listens on fixed ports
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                sys.exit(f"bench: port {port} is taken; PyTriton needs {TRITON_PORTS}")
    spec = rb.SETTINGS["pytriton-batch"]
    proc, log = rb.start("pytriton-batch", spec)
    ready_s, _ = rb.wait_ready(proc, spec["url"], 180)
    if ready_s is None:
        rb.stop(proc)
        log.close()
        sys.exit(f"bench: PyTriton did not become ready, see {rb.LOGS}/server-pytriton-batch.log")

    def stop() -> None:
        rb.stop(proc)
        log.close()

    return Started(proc, spec["grpc"], stop)


def h2load_result(text: str, log: Path, answer_len: int) -> dict:
    """h2load's summary and per-request log as grpc_load's RESULT keys. An answer shorter than
    `answer_len` bytes (a gRPC error carries no message) counts as an error."""
    done = int(re.search(r"requests: \d+ total, \d+ started, (\d+) done", text).group(1))
    failed = sum(int(n) for n in re.findall(r"(\d+) (?:failed|errored|timeout)", text))
    data = int(re.search(r"\((\d+)\) data", text).group(1))
    rps = float(re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", text).group(1))
    lines = [line.split("\t") for line in log.read_text().splitlines()]
    ms = np.asarray([int(cols[2]) for cols in lines]) / 1000
    not_ok = sum(cols[1] != "200" for cols in lines)
    short = max(0, done - data // answer_len)
    return {
        "requests": done,
        "rps": rps,
        "p50_ms": float(np.percentile(ms, 50)) if len(ms) else float("nan"),
        "p99_ms": float(np.percentile(ms, 99)) if len(ms) else float("nan"),
        "err_status": max(failed + not_ok, short),
    }


def load_runner(client: str, server: Started, args, work: Path) -> Callable[[float], dict]:
    """`run(seconds)`: one closed-loop run of `client` at c=args.connections; its RESULT."""
    if client == "python":

        def run_python(seconds: float) -> dict:
            command = bench.grpc_command(server.target, "v2", "mlp", 64, args.connections, seconds)
            return bench.run_load([*command, f"--channels={args.channels}"])

        return run_python
    message = grpc_load.build_request("v2", "mlp", grpc_load.request_input(64, 0))
    body = work / "modelinfer.grpc"
    body.write_bytes(b"\0" + struct.pack(">I", len(message)) + message)  # gRPC's length prefix
    with grpc.insecure_channel(server.target) as channel:
        answer_len = 5 + len(channel.unary_unary(grpc_load.V2_METHOD)(message, timeout=10))
    log = work / "h2load.tsv"

    def run_h2load(seconds: float) -> dict:
        command = [
            "h2load",
            f"--clients={args.channels}",
            f"--max-concurrent-streams={args.connections // args.channels}",
            f"--duration={max(1, round(seconds * 1000))}ms",
            f"--data={body}",
            "--header=content-type: application/grpc",
            "--header=te: trailers",
            f"--log-file={log}",
            f"http://{server.target}{grpc_load.V2_METHOD}",
        ]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"h2load exit {done.returncode}: {done.stderr[-300:]}")
        return h2load_result(done.stdout, log, answer_len)

    return run_h2load


def measure(run: Callable[[float], dict], server: Started, args: argparse.Namespace) -> dict:
    """Warm up, then one run with the server's CPU, the load generator's and noise beside it."""
    if args.warmup > 0:
        run(args.warmup)
    load = bench.loadavg()
    cpu0, busy0, client0 = (
        server_cpu_s(server.proc.pid),
        processes.machine_busy_s(),
        bench.children_cpu_s(),
    )
    t0 = time.monotonic()
    result = run(args.duration)
    elapsed = time.monotonic() - t0
    server_s = server_cpu_s(server.proc.pid) - cpu0
    client_s = bench.children_cpu_s() - client0
    requests = max(1, result["requests"])
    return {
        **result,
        "errors": sum(v for k, v in result.items() if k.startswith("err_")),
        "server_us": server_s / requests * 1e6,
        "client_us": client_s / requests * 1e6,
        "server_cores": server_s / elapsed,
        "client_cores": client_s / elapsed,
        "noise_cores": (processes.machine_busy_s() - busy0 - server_s - client_s) / elapsed,
        "load": load,
    }


def check_answer(server: Started, expected: np.ndarray) -> None:
    got, problem = bench.grpc_answer(server.target, "v2", "mlp", 64)
    if got is None or not np.allclose(np.asarray(got, np.float32), expected, 1e-4, 1e-5):
        raise RuntimeError(f"wrong or no answer from {server.target}: {problem or got}")


def report(args, names: list[str], runs: dict[tuple[str, str], list[dict]], meta: dict) -> None:
    print(
        f"\n## V2 gRPC, small MLP, c={args.connections} over {args.channels} connections,"
        f" {args.duration:g} s per cell after {args.warmup:g} s warm-up, {args.rounds} rounds\n"
    )
    print(f"{os.cpu_count()} cores; {meta['date']}; load average before {meta['before']},")
    print(f"after {meta['after']}; command: {meta['command']}\n")
    print(
        "| round | load gen | setting | req/s | p50 ms | p99 ms | errors | server CPU µs/req"
        " | server cores | load gen cores | load gen µs/req | noise cores | load avg |"
    )
    print("|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for i in range(args.rounds):
        for client in args.clients:
            for name in names:
                r = runs[client, name][i]
                print(
                    f"| {i + 1} | {client} | {name} | {r['rps']:,.0f} | {r['p50_ms']:.2f}"
                    f" | {r['p99_ms']:.2f} | {r['errors']} | {r['server_us']:.0f}"
                    f" | {r['server_cores']:.2f} | {r['client_cores']:.2f}"
                    f" | {r['client_us']:.0f} | {r['noise_cores']:.2f} | {r['load']} |"
                )
    print(
        "\n| load gen | setting | req/s median (min-max) | p50 ms | p99 ms | server CPU µs/req"
        " | load gen cores | ÷ PyTriton, per round | ÷ PyTriton, median"
        " | PyTriton's CPU/req ÷ this, median |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---|---:|---:|")
    goals = []
    for client in args.clients:
        ratios: dict[str, float] = {}
        for name in names:
            rs = runs[client, name]
            rps = [r["rps"] for r in rs]
            peer = runs[client, PEER]
            per_round = [r["rps"] / p["rps"] for r, p in zip(rs, peer, strict=True)]
            ratios[name] = statistics.median(per_round)
            cpu_ratio = statistics.median(
                p["server_us"] / r["server_us"] for r, p in zip(rs, peer, strict=True)
            )
            print(
                f"| {client} | {name}"
                f" | {statistics.median(rps):,.0f} ({min(rps):,.0f}-{max(rps):,.0f})"
                f" | {statistics.median(r['p50_ms'] for r in rs):.2f}"
                f" | {statistics.median(r['p99_ms'] for r in rs):.2f}"
                f" | {statistics.median(r['server_us'] for r in rs):.0f}"
                f" | {statistics.median(r['client_cores'] for r in rs):.2f}"
                f" | {', '.join(f'{x:.2f}' for x in per_round)} | {ratios[name]:.2f}x"
                f" | {cpu_ratio:.2f}x |"
            )
        best = max((n for n in names if n != PEER), key=ratios.__getitem__)
        verdict = "met" if ratios[best] >= 1.2 else "MISSED"
        goals.append(f"- {client} load generator: {ratios[best]:.2f}x ({best}), {verdict}")
    print(
        f"\nGoal: V2 gRPC c={args.connections} with 2 workers ≥ 1.2x PyTriton-with-batching"
        " (median of the per-round ratios; the CPU/req ratio is what the req/s ratio would be"
        " if both were bound by the same cores):"
    )
    print("\n".join(goals))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per cell")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds of warm-up per cell")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=64, help="concurrent calls")
    parser.add_argument("--channels", type=int, default=8, help="HTTP/2 connections")
    parser.add_argument("--clients", default="python", help="comma list of python, h2load")
    args = parser.parse_args()
    args.clients = args.clients.split(",")
    if set(args.clients) - {"python", "h2load"}:
        sys.exit(f"bench: --clients takes python and h2load, not {args.clients}")
    if "h2load" in args.clients and shutil.which("h2load") is None:
        sys.exit("bench: h2load is not installed (apt-get install nghttp2-client)")
    if args.connections % args.channels:
        sys.exit("bench: --connections must be a multiple of --channels (h2load's streams)")
    rb = bench.load_run_bench()
    if not (Path(rb.P) / "pytriton" / "bin" / "python").exists():
        sys.exit(f"bench: PyTriton is not installed under {rb.P} (the harness's install.sh)")
    bench.prepare_peer_inputs(rb)
    work = Path(tempfile.mkdtemp(prefix="bench-grpc-peers-"))
    meta = {
        "before": bench.loadavg(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "command": "python benchmarks/bench_grpc_peers.py " + " ".join(sys.argv[1:]),
    }
    try:
        model = work / "mlp" / "1" / "model.onnx"
        model.parent.mkdir(parents=True)
        shutil.copy(rb.MODEL, model)
        x = grpc_load.request_input(64, 0)
        expected = bench.ort_session(model).run(None, {"input": x})[0].ravel()
        starters: dict[str, Callable[[], Started]] = {
            "pyserving --workers 2": lambda: start_pyserving(work, batching=False),
            "pyserving --workers 2, batching (32, 2 ms)": lambda: start_pyserving(work, True),
            PEER: lambda: start_pytriton(rb),
        }
        names = list(starters)
        runs: dict[tuple[str, str], list[dict]] = {(c, n): [] for c in args.clients for n in names}
        for i in range(args.rounds):
            for name in names if i % 2 == 0 else reversed(names):
                processes.wait_quiet()  # other tenants of the 2 cores: a bounded wait
                server = starters[name]()
                try:
                    check_answer(server, expected)
                    for client in args.clients:
                        run = load_runner(client, server, args, work)
                        r = measure(run, server, args)
                        runs[client, name].append(r)
                        print(
                            f"  round {i + 1} {client} {name}: {r['rps']:,.0f} req/s p99"
                            f" {r['p99_ms']:.1f} ms, server {r['server_us']:.0f} µs/req, load gen"
                            f" {r['client_cores']:.2f} cores, noise {r['noise_cores']:.2f}",
                            flush=True,
                        )
                finally:
                    server.stop()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    meta["after"] = bench.loadavg()
    report(args, names, runs, meta)


if __name__ == "__main__":
    main()
