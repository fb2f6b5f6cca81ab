"""Where a request's time goes: py-spy on a `pyserving serve` child under load.

Starts the server on the small MLP, drives one protocol (wrk for REST, grpc_load.py for gRPC,
as bench.py does), samples the server with
`py-spy record --format raw` (needs py-spy: `pip install -e '.[bench]'`, and ptrace rights),
and prints server CPU µs per request plus the functions with the most inclusive and self time,
each as µs per request (share of samples times CPU per request).

    python benchmarks/profile_server.py [--protocol "V2 REST JSON"] [--connections 8] [--seconds 8]
"""

from __future__ import annotations

import argparse
import collections
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from bench import (
    MODELS,
    ensure_wrk,
    grpc_command,
    measure,
    protocols,
    start_server,
    stop_session,
    wrk_command,
    wrk_env,
)

from pyserving.demo import make_mlp


def frame_name(frame: str) -> str:
    """`func (path/to/file.py:123)` → `func (file.py)`: one entry per function, not per line."""
    func, _, where = frame.partition(" (")
    return f"{func} ({Path(where.rsplit(':', 1)[0]).name})" if where else func


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--protocol", default="V2 REST JSON")
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--seconds", type=int, default=8)
    parser.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument("--native", action="store_true", help="include C frames (slower)")
    args = parser.parse_args()
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    wrk = ensure_wrk()
    work = Path(tempfile.mkdtemp(prefix="pyserving-profile-"))
    name, dims = MODELS["small"]
    try:
        make_mlp(work / name / "1" / "model.onnx", seed=1, dims=dims)
        x = np.random.default_rng(0).standard_normal((1, dims[0])).astype(np.float32)
        proto = next(p for p in protocols(name, x) if p.name == args.protocol)
        body = work / "body.bin"
        body.write_bytes(proto.body)
        server = start_server(work, name, work / name, False, 1.0)
        try:
            if proto.grpc_api:
                env = None

                def command(seconds: float) -> list[str]:
                    return grpc_command(
                        server.grpc, proto.grpc_api, name, dims[0], args.connections, seconds
                    )
            else:
                env = wrk_env(body, proto.headers)

                def command(seconds: float) -> list[str]:
                    return wrk_command(
                        wrk, server.rest + proto.path, body, args.connections, seconds
                    )

            measure(server.proc.pid, command(2), env)
            raw = work / "profile.txt"
            spy = subprocess.Popen(
                [py_spy, "record", "--gil", "--format", "raw", "--rate", str(args.rate)]
                + ["-o", str(raw)]
                + (["--native"] if args.native else [])
                + ["--duration", str(args.seconds - 1), "--pid", str(server.proc.pid)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            time.sleep(0.5)
            load = measure(server.proc.pid, command(args.seconds), env)
            spy.wait(60)
        finally:
            stop_session(server.proc)
        report(raw, load.cpu_per_1k * 1000, load.result, args.top)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def report(raw: Path, us_per_request: float, result: dict, top: int) -> None:
    inclusive: collections.Counter[str] = collections.Counter()
    own: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        n = int(count)
        frames = [frame_name(f) for f in stack.split(";")]
        total += n
        own[frames[-1]] += n
        for frame in set(frames):
            inclusive[frame] += n
    print(
        f"{result['rps']:,.0f} req/s, server CPU {us_per_request:.0f} µs per request, "
        f"{total} samples (busy threads only; idle waits are not sampled)"
    )
    for title, counter in (("inclusive", inclusive), ("self", own)):
        print(f"\n| {title} µs/req | share | function |\n| ---: | ---: | --- |")
        for frame, n in counter.most_common(top):
            print(f"| {us_per_request * n / total:.1f} | {n / total:.1%} | {frame} |")


if __name__ == "__main__":
    main()
