"""The HTTP listener decision (docs/http-listener.md): pyserving's own listener against uvicorn
(httptools) and granian (hyper), each serving the same pyserving REST app over the small MLP.

Speed: req/s and p99 at 1 and 64 connections for `GET /v2/health/live` and a V2 JSON infer (wrk).
Failures (issue 14's list), each a yes/no with what happened:
- malformed chunk: a chunked body with a bad chunk size, the connection left open: answered 4xx
  within 2 s?
- bad Host: HTTP/1.1 without Host, and with two: both 400?
- slow readers: 8 clients ask for ~4 MB each and read nothing: after 15 s, are their connections
  closed (and what did they cost in server memory)?
- connection cap: 100 connections open, cap 100: is the next one answered 503 within 2 s?

    python benchmarks/http_listeners.py [--duration 3] [--listeners pyserving,uvicorn,granian]

granian is optional (`pip install granian`); a listener that is not installed is skipped.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
import orjson
from bench import (
    MODELS,
    ensure_wrk,
    free_port,
    measure,
    protocols,
    session_rss_mib,
    stop_session,
    wrk_command,
    wrk_env,
)

from pyserving.demo import make_mlp

HERE = Path(__file__).resolve().parent
GET_LUA = HERE / "wrk_get.lua"
CAP = 100  # the connection cap every listener is given (above the 64 connections of the speed runs)
WRITE_TIMEOUT_S = 3  # pyserving's write timeout for the slow-reader check (others have none)
SLOW_READERS = 8


# --- the servers ---------------------------------------------------------------------------------


def build_app(model_dir: str):
    """pyserving's REST app over `model_dir` (models loaded before it returns)."""
    from pyserving.api.rest.app import RestOptions, create_app
    from pyserving.serving.server_core import ServerCore, ServerOptions

    core = ServerCore(ServerOptions(model_name="mlp", model_base_path=model_dir, port=0))
    core.start()
    return create_app(core.service, RestOptions(ready_names=core.model_names))


def granian_app():
    """granian's factory target (its worker imports this module)."""
    return build_app(os.environ["LISTENER_MODEL_DIR"])


def serve(listener: str, port: int, model_dir: str) -> None:
    if listener == "uvicorn":
        import uvicorn

        uvicorn.run(
            build_app(model_dir),
            host="127.0.0.1",
            port=port,
            loop="uvloop",
            http="httptools",
            lifespan="off",
            log_level="warning",
            access_log=False,
            limit_concurrency=CAP,
        )
    elif listener == "granian":
        from granian import Granian

        os.environ["LISTENER_MODEL_DIR"] = model_dir
        Granian(
            "http_listeners:granian_app",
            address="127.0.0.1",
            port=port,
            interface="asgi",
            factory=True,
            workers=1,
            loop="uvloop",
            backpressure=CAP,
            log_enabled=False,
        ).serve()
    else:
        raise SystemExit(f"unknown listener {listener}")


def start(listener: str, model_dir: Path) -> tuple[subprocess.Popen, int]:
    port = free_port()
    env = {**os.environ, "PYTHONPATH": f"{HERE}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    if listener == "pyserving":
        command = [
            *(sys.executable, "-m", "pyserving", "serve", "--host=127.0.0.1", "--port=0"),
            *(f"--rest_api_port={port}", "--model_name=mlp", f"--model_base_path={model_dir}"),
            *(f"--rest_max_connections={CAP}", f"--rest_write_timeout_seconds={WRITE_TIMEOUT_S}"),
            "--log_level=warning",
        ]
    else:
        command = [sys.executable, __file__, "--serve", listener, str(port), str(model_dir)]
    proc = subprocess.Popen(
        command,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            url = f"http://127.0.0.1:{port}/v2/models/mlp/ready"
            with urllib.request.urlopen(url, timeout=1) as response:
                if response.status == 200:
                    return proc, port
        except OSError:
            time.sleep(0.2)
    stop_session(proc)
    raise SystemExit(f"http_listeners: {listener} did not become ready")


# --- the failure checks --------------------------------------------------------------------------


def answer_within(port: int, data: bytes, seconds: float) -> tuple[bytes, float]:
    """What the server writes back within `seconds` (the connection stays open), and when."""
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=seconds) as sock:
        sock.sendall(data)
        try:
            return sock.recv(4096), time.monotonic() - started
        except TimeoutError:
            return b"", time.monotonic() - started


def status_of(answer: bytes) -> str:
    return answer.split(b"\r\n", 1)[0].decode("latin-1") if answer else "no answer"


def check_malformed_chunk(port: int) -> tuple[bool, str]:
    answer, took = answer_within(
        port,
        b"POST /v2/models/mlp/infer HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"zz\r\nabc\r\n",
        2.0,
    )
    ok = answer.startswith(b"HTTP/1.1 4")
    return ok, f"{status_of(answer)} after {took:.2f} s"


def check_bad_host(port: int) -> tuple[bool, str]:
    seen = []
    for head in (b"", b"Host: a\r\nHost: b\r\n"):
        answer, _ = answer_within(port, b"GET /v2/health/live HTTP/1.1\r\n" + head + b"\r\n", 2.0)
        seen.append(status_of(answer))
    return all(s.startswith("HTTP/1.1 400") for s in seen), f"none: {seen[0]}; two: {seen[1]}"


def established(port: int) -> int:
    out = subprocess.run(
        ["ss", "-Htn", "state", "established", f"( sport = :{port} )"],
        capture_output=True,
        text=True,
    ).stdout
    return len(out.splitlines())


def check_slow_reader(port: int, pid: int, big_body: bytes) -> tuple[bool, str]:
    """8 clients ask for ~4 MB each and read nothing for 15 s: does the server let go of them
    (connections closed, memory back)?"""
    before = session_rss_mib(pid)  # the server's processes (granian's worker too)
    socks = []
    request = (
        b"POST /v2/models/mlp/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n" % len(big_body) + big_body
    )
    try:
        for _ in range(SLOW_READERS):
            sock = socket.create_connection(("127.0.0.1", port), timeout=60)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.sendall(request)
            socks.append(sock)
        time.sleep(15)  # reading nothing
        held = established(port)
        grown = session_rss_mib(pid) - before
    finally:
        for sock in socks:
            sock.close()
    detail = f"{held} of {SLOW_READERS} still open after 15 s, server RSS +{grown:.0f} MiB"
    return held == 0, detail


def check_connection_cap(port: int) -> tuple[bool, str]:
    """Hold CAP served connections (one answered request each), then open one more."""
    held: list[socket.socket] = []
    try:
        for _ in range(3 * CAP):  # connections of the last test may still be closing
            if len(held) == CAP:
                break
            sock = socket.create_connection(("127.0.0.1", port), timeout=5)
            sock.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n")
            if sock.recv(4096).startswith(b"HTTP/1.1 200"):
                held.append(sock)
            else:
                sock.close()
                time.sleep(0.05)
        answer, took = answer_within(port, b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n", 2)
        ok = answer.startswith(b"HTTP/1.1 503") and took < 2.0
        return ok, f"connection {len(held) + 1}: {status_of(answer)} after {took:.2f} s"
    finally:
        for sock in held:
            sock.close()


# --- main ----------------------------------------------------------------------------------------


def installed(listener: str) -> bool:
    if listener == "pyserving":
        return True
    try:
        __import__(listener)
    except ImportError:
        return False
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=3)
    parser.add_argument("--listeners", default="pyserving,uvicorn,granian")
    parser.add_argument("--serve", nargs=3, metavar=("LISTENER", "PORT", "MODEL_DIR"))
    args = parser.parse_args()
    if args.serve:
        serve(args.serve[0], int(args.serve[1]), args.serve[2])
        return
    wrk = ensure_wrk()
    work = Path(tempfile.mkdtemp(prefix="pyserving-listeners-"))
    name, dims = MODELS["small"]
    speed: list[tuple[str, str, int, dict, int, float]] = []
    failures: dict[str, list[tuple[str, bool, str]]] = {}
    try:
        make_mlp(work / name / "1" / "model.onnx", seed=1, dims=dims)
        x = np.random.default_rng(0).standard_normal((1, dims[0])).astype(np.float32)
        infer = protocols(name, x)[1]
        body = work / "body.json"
        body.write_bytes(infer.body)
        rows = np.zeros((40_000, dims[0]), np.float32)
        big = orjson.dumps(
            {
                "inputs": [
                    {
                        "name": "input",
                        "shape": list(rows.shape),
                        "datatype": "FP32",
                        "data": rows.ravel().tolist(),
                    }
                ]
            }
        )
        for listener in args.listeners.split(","):
            if not installed(listener):
                print(f"{listener}: not installed, skipped", flush=True)
                continue
            proc, port = start(listener, work / name)
            base = f"http://127.0.0.1:{port}"
            try:
                for what, url, lua in (
                    ("GET /v2/health/live", base + "/v2/health/live", GET_LUA),
                    ("V2 JSON infer", base + infer.path, None),
                ):
                    for conns in (1, 64):
                        command = wrk_command(wrk, url, body, conns, args.duration)
                        if lua is not None:
                            command[command.index("-s") + 1] = str(lua)
                        m = measure(proc.pid, command, wrk_env(body, {}))
                        speed.append((listener, what, conns, m.result, m.errors, m.cpu_per_1k))
                # The cap first: after the slow readers the server is busy for a while, and
                # held connections could reach their keep-alive timeout before the check.
                cap = check_connection_cap(port)
                failures[listener] = [
                    ("malformed chunk → 4xx at once", *check_malformed_chunk(port)),
                    ("missing / duplicate Host → 400", *check_bad_host(port)),
                    ("slow readers let go", *check_slow_reader(port, proc.pid, big)),
                    (f"connection cap ({CAP}) answers at once", *cap),
                ]
                print(f"{listener}: measured", flush=True)
            finally:
                stop_session(proc)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    print(f"\nspeed ({args.duration:g} s per cell, small MLP, load average {load})\n")
    print("| listener | request | conns | req/s | p50 ms | p99 ms | errors | server CPU µs/req |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for listener, what, conns, r, errors, cpu_per_1k in speed:
        print(
            f"| {listener} | {what} | {conns} | {r['rps']:,.0f} | {r['p50_ms']:.2f} "
            f"| {r['p99_ms']:.2f} | {errors} | {1000 * cpu_per_1k:.0f} |"
        )
    print("\nfailure list\n")
    print("| check | " + " | ".join(failures) + " |")
    print("| --- |" + " --- |" * len(failures))
    checks = next(iter(failures.values()), [])
    for i, (check, *_rest) in enumerate(checks):
        cells = []
        for results in failures.values():
            _, ok, detail = results[i]
            cells.append(f"{'yes' if ok else '**no**'}: {detail}")
        print(f"| {check} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    sys.exit(main())
