"""pyserving against the physical limit and the peers, in one run: `make bench`.

Makes two models (the small MLP [b,64]→256→256→10 and a heavy [b,512]→2048→2048→10), measures
the in-process anchors (onnxruntime batch 1 and 32, the in-process V2 JSON codec path), then
starts `pyserving serve` per model with batching off and on and drives every protocol (TF REST
predict, V2 REST JSON, V2 REST binary, V2 gRPC, TF gRPC) at each concurrency: wrk for REST,
benchmarks/grpc_load.py for gRPC, each after a warm-up. Every row first checks one answer against
in-process onnxruntime. Also: a version swap under 8-client load against steady state, the time
from a version directory appearing to AVAILABLE, and, with --peers, the peer servers (a bare
Starlette floor, MLServer, PyTriton, TorchServe) of a separate peer harness at PEERS_HOME, not
part of this repository, started the way its run_bench.py starts them. Prints one markdown report.
Never part of pytest.

    python benchmarks/bench.py [--duration 10] [--warmup 3] [--connections 1,8,64]
        [--models small,heavy] [--batching off,on] [--peers floor-starlette,mlserver,...]
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import importlib.util
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnxruntime as ort
import orjson
from processes import (
    free_port,
    machine_busy_s,
    pyserving_command,
    session_pids,
    start,
    stop_session,
)

from pyserving.demo import make_mlp

HERE = Path(__file__).resolve().parent
LUA = HERE / "wrk_post.lua"
GRPC_LOAD = HERE / "grpc_load.py"
#: the peer harness (not part of this repository); --peers needs BENCH_PEERS_HOME to name it
PEERS_HOME = Path(os.environ.get("BENCH_PEERS_HOME", "bench-peers-not-set"))
PROTOCOLS = ("TF REST predict (row)", "V2 REST JSON", "V2 REST binary", "V2 gRPC", "TF gRPC")
MODELS = {"small": ("mlp", (64, 256, 256, 10)), "heavy": ("heavy", (512, 2048, 2048, 10))}
BATCHING_PARAMETERS = """\
max_batch_size { value: 32 }
batch_timeout_micros { value: 2000 }
num_batch_threads { value: 1 }
max_enqueued_batches { value: 1000 }
pad_variable_length_inputs: false
"""
NOT_SERVED = "n/a (not served)"


# --- processes and the machine


def ensure_wrk() -> str:
    found = shutil.which("wrk")
    if found:
        return found
    subprocess.run(["apt-get", "update", "-q"], check=True, capture_output=True)
    subprocess.run(["apt-get", "install", "-y", "-q", "wrk"], check=True, capture_output=True)
    return shutil.which("wrk") or sys.exit("bench: wrk could not be installed")


def session_cpu_s(sid: int) -> float:
    return sum(t for _, t in session_pids(sid)) / os.sysconf("SC_CLK_TCK")


def session_rss_mib(sid: int) -> float:
    total = 0
    for pid, _ in session_pids(sid):
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total / 1024


def children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


# --- load generators


@dataclass
class Measured:
    """One load run: wrk/grpc_load's RESULT plus server CPU, RSS and machine noise."""

    result: dict
    server_cpu_s: float
    rss_mib: float
    noise_cores: float

    @property
    def errors(self) -> int:
        return sum(v for k, v in self.result.items() if k.startswith("err_"))

    @property
    def cpu_per_1k(self) -> float:
        return 1000 * self.server_cpu_s / max(1, self.result["requests"])


def parse_result(text: str, prefix: str = "RESULT ") -> dict:
    line = next((ln for ln in text.splitlines() if ln.startswith(prefix)), None)
    if line is None:
        raise RuntimeError(f"load generator printed no {prefix.strip()} line:\n{text[-2000:]}")
    return json.loads(line[len(prefix) :])


def run_load(command: list[str], env: dict[str, str] | None = None) -> dict:
    """Run a load generator (wrk or grpc_load) to completion; its RESULT. Raises RuntimeError
    when it fails."""
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"exit {done.returncode}: {(done.stderr or done.stdout)[-300:]}")
    return parse_result(done.stdout)


def wrk_command(wrk: str, url: str, body_file: Path, conns: int, seconds: float) -> list[str]:
    secs = max(1, round(seconds))
    return [wrk, "-t1", f"-c{conns}", f"-d{secs}s", "--timeout", "5s", "-s", str(LUA), url]


def wrk_env(body_file: Path, headers: dict[str, str]) -> dict[str, str]:
    encoded = base64.b64encode(json.dumps(headers).encode()).decode()
    return {**os.environ, "BODY_FILE": str(body_file), "EXTRA_HEADERS": encoded}


def grpc_command(target: str, api: str, model: str, dim: int, conns: int, seconds: float):
    return [
        sys.executable,
        str(GRPC_LOAD),
        f"--target={target}",
        f"--api={api}",
        f"--model={model}",
        f"--dim={dim}",
        f"-c{conns}",
        f"-d{seconds}",
    ]


def measure(sid: int, command: list[str], env: dict[str, str] | None = None) -> Measured:
    """Run one load generator to completion, with the server session's CPU and machine noise."""
    cpu0, busy0, client0, t0 = session_cpu_s(sid), machine_busy_s(), children_cpu_s(), time.time()
    result = run_load(command, env)
    elapsed = time.time() - t0
    server = session_cpu_s(sid) - cpu0
    client = children_cpu_s() - client0
    noise = (machine_busy_s() - busy0 - server - client) / elapsed
    return Measured(result, server, session_rss_mib(sid), noise)


# --- requests, answers and anchors


@dataclass
class Protocol:
    """How one protocol sends the request row: a wrk body, or a grpc_load API."""

    name: str
    path: str = ""
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    grpc_api: str = ""


def v2_json(x: np.ndarray) -> bytes:
    """The V2 JSON infer body sending `x` as the FP32 tensor `input`."""
    tensor = {
        "name": "input",
        "shape": list(x.shape),
        "datatype": "FP32",
        "data": x.ravel().tolist(),
    }
    return orjson.dumps({"inputs": [tensor]})


def protocols(model: str, x: np.ndarray) -> list[Protocol]:
    shape = list(x.shape)
    header = orjson.dumps(
        {
            "inputs": [
                {
                    "name": "input",
                    "shape": shape,
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": x.nbytes},
                }
            ],
            "parameters": {"binary_data_output": True},
        }
    )
    return [
        Protocol(
            PROTOCOLS[0], f"/v1/models/{model}:predict", orjson.dumps({"instances": x.tolist()})
        ),
        Protocol(PROTOCOLS[1], f"/v2/models/{model}/infer", v2_json(x)),
        Protocol(
            PROTOCOLS[2],
            f"/v2/models/{model}/infer",
            header + x.tobytes(),
            {"Inference-Header-Content-Length": str(len(header))},
        ),
        Protocol(PROTOCOLS[3], grpc_api="v2"),
        Protocol(PROTOCOLS[4], grpc_api="tf"),
    ]


def post(url: str, body: bytes, headers: dict[str, str], timeout: float = 10):
    request = urllib.request.Request(
        url, data=body, headers={"Content-Type": "application/json", **headers}, method="POST"
    )
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return response.headers, response.read()


def rest_answer(base: str, proto: Protocol) -> list[float]:
    """One REST call's first output, flattened (raises on a non-2xx status)."""
    headers, body = post(base + proto.path, proto.body, proto.headers)
    if proto.name == PROTOCOLS[0]:
        return np.asarray(orjson.loads(body)["predictions"], dtype=np.float32).ravel().tolist()
    length = headers.get("Inference-Header-Content-Length")
    if length is None:
        return orjson.loads(body)["outputs"][0]["data"]
    return np.frombuffer(body[int(length) :], dtype="<f4").tolist()


def grpc_answer(target: str, api: str, model: str, dim: int) -> tuple[list[float] | None, str]:
    out = subprocess.run(
        [*grpc_command(target, api, model, dim, 1, 0), "--check"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    if out.returncode != 0:
        return None, out.stderr.strip().splitlines()[-1] if out.stderr.strip() else "failed"
    check = parse_result(out.stdout, "CHECK ")
    return check.get("data"), check.get("error", "")


def ort_session(model: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])


def calls_per_second(fn, seconds: float) -> float:
    for _ in range(100):
        fn()
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        for _ in range(20):
            fn()
        n += 20
    return n / (time.perf_counter() - start)


def in_process_anchors(model: Path, x: np.ndarray, v2_body: bytes, seconds: float) -> dict:
    """onnxruntime batch 1 (calls/s), batch 32 (rows/s), and V2 JSON decode → run → encode."""
    session = ort_session(model)
    x32 = np.repeat(x, 32, axis=0)

    def codec_path() -> bytes:
        tensor = orjson.loads(v2_body)["inputs"][0]
        arr = np.asarray(tensor["data"], dtype=np.float32).reshape(tensor["shape"])
        (y,) = session.run(None, {"input": arr})
        out = {
            "name": "output",
            "shape": list(y.shape),
            "datatype": "FP32",
            "data": y.ravel().tolist(),
        }
        return orjson.dumps({"model_name": "m", "outputs": [out]})

    return {
        "ort_b1": calls_per_second(lambda: session.run(None, {"input": x}), seconds),
        "ort_b32_rows": 32 * calls_per_second(lambda: session.run(None, {"input": x32}), seconds),
        "codec": calls_per_second(codec_path, seconds),
    }


# --- pyserving


@dataclass
class Server:
    """A running `pyserving serve` child in its own session."""

    proc: subprocess.Popen
    rest: str
    grpc: str
    log: Path


def batching_supported() -> bool:
    out = subprocess.run(
        [sys.executable, "-m", "pyserving", "serve", "--help"], capture_output=True, text=True
    )
    return "--enable-batching" in out.stdout or "--enable_batching" in out.stdout


def start_server(work: Path, model: str, base_path: Path, batching: bool, poll_s: float) -> Server:
    rest_port, grpc_port = free_port(), free_port()
    args = pyserving_command(
        rest_port,
        grpc_port,
        f"--model_name={model}",
        f"--model_base_path={base_path}",
        f"--file_system_poll_wait_seconds={poll_s}",
        "--log-level=warning",
    )
    if batching:
        params = work / "batching_parameters.txt"
        params.write_text(BATCHING_PARAMETERS)
        args += ["--enable_batching", f"--batching_parameters_file={params}"]
    log = work / f"server-{model}-{'batch' if batching else 'nobatch'}.log"
    rest = f"http://127.0.0.1:{rest_port}"
    proc = start(args, log, f"{rest}/v2/models/{model}/ready")
    return Server(proc, rest, f"127.0.0.1:{grpc_port}", log)


@dataclass
class Row:
    """One table row: a measurement, or why there is none."""

    model: str
    batching: str
    protocol: str
    conns: int
    measured: Measured | None
    note: str = ""


def bench_server(
    args, wrk: str, work: Path, server: Server, model: str, dim: int, batching: str, x: np.ndarray
) -> list[Row]:
    expected = ort_session(work / model / "1" / "model.onnx").run(None, {"input": x})[0].ravel()
    rows = []
    conns_list = [int(c) for c in args.connections.split(",")]
    for proto in protocols(model, x):
        if args.protocols != "all" and proto.name not in args.protocols.split(","):
            continue
        if proto.grpc_api:
            got, problem = grpc_answer(server.grpc, proto.grpc_api, model, dim)
        else:
            try:
                got, problem = rest_answer(server.rest, proto), ""
            except urllib.error.HTTPError as exc:
                got, problem = None, f"HTTP {exc.code}: {exc.read()[:200]!r}"
        if got is None:
            served = "UNAVAILABLE" not in problem and "UNIMPLEMENTED" not in problem
            note = f"failed: {problem}" if served else NOT_SERVED
            rows += [Row(model, batching, proto.name, c, None, note) for c in conns_list]
            continue
        if not np.allclose(np.asarray(got, dtype=np.float32), expected, rtol=1e-4, atol=1e-5):
            rows += [Row(model, batching, proto.name, c, None, "WRONG OUTPUT") for c in conns_list]
            continue
        if proto.grpc_api:

            def command(conns: int, seconds: float, api: str = proto.grpc_api) -> list[str]:
                return grpc_command(server.grpc, api, model, dim, conns, seconds)

            env = None
        else:
            body_file = work / f"body-{model}-{PROTOCOLS.index(proto.name)}.bin"
            body_file.write_bytes(proto.body)
            url = server.rest + proto.path

            def command(conns: int, seconds: float, url: str = url, body: Path = body_file):
                return wrk_command(wrk, url, body, conns, seconds)

            env = wrk_env(body_file, proto.headers)
        if args.warmup > 0:
            with contextlib.suppress(RuntimeError):  # a failing load shows in the rows below
                measure(server.proc.pid, command(max(conns_list), args.warmup), env)
        for conns in conns_list:
            try:
                measured = measure(server.proc.pid, command(conns, args.duration), env)
            except RuntimeError as exc:
                rows.append(Row(model, batching, proto.name, conns, None, f"load failed: {exc}"))
                continue
            rows.append(Row(model, batching, proto.name, conns, measured))
            print(f"  {model} batching={batching} {proto.name} c={conns}: " + short(measured))
    return rows


def short(m: Measured) -> str:
    r = m.result
    return (
        f"{r['rps']:,.0f} req/s p50 {r['p50_ms']:.2f} ms p99 {r['p99_ms']:.2f} ms "
        f"err {m.errors} cpu/1k {m.cpu_per_1k:.2f}s noise {m.noise_cores:.2f} cores"
    )


# --- version swap


def version_state(base: str, model: str) -> dict[int, str]:
    with urllib.request.urlopen(f"{base}/v1/models/{model}", timeout=2) as response:
        states = orjson.loads(response.read())["model_version_status"]
    return {int(s["version"]): s["state"] for s in states}


def add_version(base: str, model: str, base_path: Path, staging: Path, version: int) -> float:
    """Rename a fully written version directory into place; seconds until it is AVAILABLE."""
    src = staging / str(version)
    make_mlp(src / "model.onnx", seed=version, dims=MODELS["small"][1])
    start = time.perf_counter()
    os.rename(src, base_path / str(version))
    deadline = start + 60
    while time.perf_counter() < deadline:
        if version_state(base, model).get(version) == "AVAILABLE":
            return time.perf_counter() - start
        time.sleep(0.005)
    raise RuntimeError(f"version {version} did not become AVAILABLE within 60 s")


def swap_benchmark(args, wrk: str, work: Path) -> dict:
    """Steady 8-client V2 JSON load vs the same load while versions swap about every second."""
    model, dims = MODELS["small"]
    base_path = work / "swap" / model
    make_mlp(base_path / "1" / "model.onnx", seed=1, dims=dims)
    staging = work / "staging"
    staging.mkdir(exist_ok=True)
    x = np.random.default_rng(0).standard_normal((1, dims[0])).astype(np.float32)
    server = start_server(work, model, base_path, False, args.poll_seconds)
    try:
        return _swap(args, wrk, work, server, model, base_path, staging, x)
    finally:
        stop_session(server.proc)


def _swap(args, wrk, work, server, model, base_path, staging, x) -> dict:
    proto = protocols(model, x)[1]
    body_file = work / "body-swap.json"
    body_file.write_bytes(proto.body)
    env = wrk_env(body_file, {})
    url = server.rest + proto.path
    idle = add_version(server.rest, model, base_path, staging, 2)
    steady = measure(server.proc.pid, wrk_command(wrk, url, body_file, 8, args.swap_seconds), env)
    swaps: list[float] = []
    cpu0, busy0, client0, t0 = (
        session_cpu_s(server.proc.pid),
        machine_busy_s(),
        children_cpu_s(),
        time.time(),
    )
    load = subprocess.Popen(
        wrk_command(wrk, url, body_file, 8, args.swap_seconds),
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    version = 3
    time.sleep(0.5)
    while time.time() - t0 < args.swap_seconds - 2:
        swaps.append(add_version(server.rest, model, base_path, staging, version))
        version += 1
        time.sleep(1.0)
    out, _ = load.communicate(timeout=args.swap_seconds + 30)
    elapsed = time.time() - t0
    server_cpu = session_cpu_s(server.proc.pid) - cpu0
    noise = (machine_busy_s() - busy0 - server_cpu - (children_cpu_s() - client0)) / elapsed
    during = Measured(parse_result(out), server_cpu, session_rss_mib(server.proc.pid), noise)
    return {"idle_to_available_s": idle, "steady": steady, "during": during, "swaps": swaps}


# --- peers


def load_run_bench():
    if not (PEERS_HOME / "run_bench.py").is_file():
        sys.exit("--peers needs BENCH_PEERS_HOME set to the peer harness's directory")
    spec = importlib.util.spec_from_file_location("run_bench", PEERS_HOME / "run_bench.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def prepare_peer_inputs(rb) -> Path:
    """Write the peer harness's model and request body where its run_bench.py (`rb`) reads
    them; the body's path."""
    os.makedirs(rb.LOGS, exist_ok=True)
    subprocess.run(
        [sys.executable, str(PEERS_HOME / "make_model.py"), rb.MODEL],
        check=True,
        capture_output=True,
    )
    subprocess.run(
        [sys.executable, str(PEERS_HOME / "load" / "make_bodies.py"), str(Path(rb.P) / "bodies")],
        check=True,
        capture_output=True,
    )
    return Path(rb.BODY)


def bench_peers(args, wrk: str, names: list[str]) -> list[Row]:
    """Start each peer as the peer harness's run_bench.py does; same loads as pyserving."""
    rb = load_run_bench()
    peers_dir = Path(rb.P)
    body_file = prepare_peer_inputs(rb)
    x = np.asarray(orjson.loads(body_file.read_bytes())["inputs"][0]["data"], dtype=np.float32)
    expected = ort_session(Path(rb.MODEL)).run(None, {"input": x.reshape(1, 64)})[0].ravel()
    conns_list = [int(c) for c in args.connections.split(",")]
    rows: list[Row] = []
    for name in names:
        spec = rb.SETTINGS.get(name)
        venv = name.split("-")[0] if not name.startswith("floor") else "floor"
        if spec is None or not (peers_dir / venv / "bin" / "python").exists():
            why = "unknown setting" if spec is None else f"not installed ({peers_dir / venv})"
            rows += [Row("peer", name, "V2 REST JSON", c, None, why) for c in conns_list]
            continue
        print(f"peer {name}: {spec['desc']}", flush=True)
        proc, log = rb.start(name, spec)
        try:
            ready_s, data = rb.wait_ready(proc, spec["url"], 180)
            if ready_s is None:
                note = f"did not become ready, see {rb.LOGS}/server-{name}.log"
                rows += [Row("peer", name, "V2 REST JSON", c, None, note) for c in conns_list]
                continue
            ok = np.allclose(
                np.asarray(orjson.loads(data)["outputs"][0]["data"], np.float32), expected, 1e-4
            )
            loads = [("V2 REST JSON", None)]
            if spec["grpc"]:
                loads.append(("V2 gRPC", spec["grpc"]))
            for proto_name, target in loads:
                if target is None:

                    def command(conns: int, seconds: float, url: str = spec["url"]) -> list[str]:
                        return wrk_command(wrk, url, body_file, conns, seconds)

                    env = wrk_env(body_file, {})
                else:

                    def command(conns: int, seconds: float, target: str = target) -> list[str]:
                        return grpc_command(target, "v2", "mlp", 64, conns, seconds)

                    env = None
                if args.warmup > 0:
                    with contextlib.suppress(RuntimeError):  # shows in the rows below
                        measure(proc.pid, command(max(conns_list), args.warmup), env)
                for conns in conns_list:
                    try:
                        measured = measure(proc.pid, command(conns, args.duration), env)
                    except RuntimeError as exc:
                        note = f"load failed: {exc}"
                        rows.append(Row("peer", name, proto_name, conns, None, note))
                        continue
                    note = "" if ok else "WRONG OUTPUT"
                    rows.append(Row("peer", name, proto_name, conns, measured, note))
                    print(f"  {name} {proto_name} c={conns}: " + short(measured), flush=True)
        finally:
            rb.stop(proc)
            log.close()
    return rows


# --- report


def fmt_rate(value: float) -> str:
    return f"{value:,.0f}"


def report(args, anchors: dict, rows: list[Row], peer_rows: list[Row], swap: dict | None, meta):
    print("\n## pyserving benchmark\n")
    print(
        f"machine: {os.cpu_count()} cores ({platform.processor() or platform.machine()}), "
        f"Python {platform.python_version()}, onnxruntime {ort.__version__} (1 intra-op thread); "
        f"load average before {meta['load_before']}, after {meta['load_after']}; "
        f"{args.duration:g} s per cell after a {args.warmup:g} s warm-up; {meta['date']}"
    )
    print(f"command: {meta['command']}")
    print("\nIn-process anchors (measured before and after the servers; the higher of the two):")
    print(
        "\n| model | ORT batch 1 calls/s | ORT batch 32 rows/s "
        "| in-process V2 JSON codec + run /s |"
    )
    print("| --- | ---: | ---: | ---: |")
    for key, a in anchors.items():
        name, dims = MODELS[key]
        shape = "→".join(str(d) for d in dims)
        print(
            f"| {name} [{shape}] | {fmt_rate(a['ort_b1'])} | {fmt_rate(a['ort_b32_rows'])} "
            f"| {fmt_rate(a['codec'])} |"
        )
    print(
        "\n| model | batching | protocol | conns | req/s | p50 ms | p99 ms | errors "
        "| CPU-s / 1k req | RSS MiB | noise cores | ÷ ORT b1 | ÷ ORT b32 rows | ÷ codec |"
    )
    print("| --- | --- | --- |" + " ---: |" * 11)
    by_name = {name: key for key, (name, _) in MODELS.items()}
    for row in rows:
        lead = f"| {row.model} | {row.batching} | {row.protocol} | {row.conns} "
        if row.measured is None:
            print(lead + f"| {row.note} | | | | | | | | | |")
            continue
        m, a = row.measured, anchors[by_name[row.model]]
        rps = m.result["rps"]
        print(
            lead + f"| {fmt_rate(rps)} | {m.result['p50_ms']:.2f} | {m.result['p99_ms']:.2f} "
            f"| {m.errors} | {m.cpu_per_1k:.2f} | {m.rss_mib:.0f} | {m.noise_cores:.2f} "
            f"| {rps / a['ort_b1']:.3f} | {rps / a['ort_b32_rows']:.3f} | {rps / a['codec']:.3f} |"
        )
    if peer_rows:
        print_peers(rows, peer_rows)
    if swap:
        print_swap(swap, args)
    print_goals(rows, peer_rows, anchors, swap)


def best(rows: list[Row], model: str, protocol: str, conns: int) -> float | None:
    rates = [
        r.measured.result["rps"]
        for r in rows
        if r.measured and r.model == model and r.protocol == protocol and r.conns == conns
    ]
    return max(rates) if rates else None


def print_peers(rows: list[Row], peer_rows: list[Row]) -> None:
    print(
        "\nPeers (same small MLP, same load generators; pyserving = its best of batching off/on "
        "for the same protocol and connections):\n"
    )
    print(
        "| peer setting | protocol | conns | req/s | p50 ms | p99 ms | errors | CPU-s / 1k req "
        "| RSS MiB | noise cores | pyserving ÷ peer |"
    )
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for row in peer_rows:
        lead = f"| {row.batching} | {row.protocol} | {row.conns} "
        if row.measured is None:
            print(lead + f"| {row.note} | | | | | | | |")
            continue
        m = row.measured
        ours = best(rows, MODELS["small"][0], row.protocol, row.conns)
        ratio = f"{ours / m.result['rps']:.2f}" if ours and m.result["rps"] else "n/a"
        print(
            lead + f"| {fmt_rate(m.result['rps'])}{' ' + row.note if row.note else ''} "
            f"| {m.result['p50_ms']:.2f} | {m.result['p99_ms']:.2f} | {m.errors} "
            f"| {m.cpu_per_1k:.2f} | {m.rss_mib:.0f} | {m.noise_cores:.2f} | {ratio} |"
        )


def print_swap(swap: dict, args) -> None:
    swaps = swap["swaps"]
    print(
        f"\nVersion swap, small MLP, V2 REST JSON, 8 connections, {args.swap_seconds:g} s each "
        f"(poll every {args.poll_seconds:g} s; {len(swaps)} swaps during the load):\n"
    )
    print("| phase | req/s | p50 ms | p99 ms | errors |\n| --- | ---: | ---: | ---: | ---: |")
    for phase in ("steady", "during"):
        m = swap[phase]
        label = "steady state" if phase == "steady" else "while versions swap"
        print(
            f"| {label} | {fmt_rate(m.result['rps'])} | {m.result['p50_ms']:.2f} "
            f"| {m.result['p99_ms']:.2f} | {m.errors} |"
        )
    loaded = f"median {np.median(swaps):.2f} s, max {max(swaps):.2f} s" if swaps else "n/a"
    print(
        f"\nTime from a version directory appearing (rename) to AVAILABLE: idle "
        f"{swap['idle_to_available_s']:.2f} s; under load {loaded} "
        f"(includes up to one poll interval of {args.poll_seconds:g} s)."
    )


def print_goals(rows: list[Row], peer_rows: list[Row], anchors: dict, swap: dict | None) -> None:
    small, heavy = MODELS["small"][0], MODELS["heavy"][0]
    lines = []

    def peer(setting: str, protocol: str) -> float | None:
        """The best c=64 rate among `setting` and its variants (mlserver, mlserver-pw0, ...)."""
        mine = [
            r for r in peer_rows if r.batching.split("-")[0] == setting or r.batching == setting
        ]
        return best(mine, "peer", protocol, 64)

    def goal(text: str, ours: float | None, theirs: float | None, target: float) -> None:
        if ours is None or not theirs:
            lines.append(f"| {text} | n/a | ≥ {target:g}x | not measured |")
            return
        ratio = ours / theirs
        lines.append(
            f"| {text} | {ratio:.2f}x | ≥ {target:g}x | {'met' if ratio >= target else 'MISSED'} |"
        )

    json64 = best(rows, small, "V2 REST JSON", 64)
    goal(
        "V2 REST JSON c=64 ÷ TorchServe batch",
        json64,
        peer("torchserve-batch", "V2 REST JSON"),
        1.5,
    )
    goal("V2 REST JSON c=64 ÷ best MLServer setting", json64, peer("mlserver", "V2 REST JSON"), 5)
    goal("V2 REST JSON c=64 ÷ bare Starlette", json64, peer("floor-starlette", "V2 REST JSON"), 1.0)
    goal(
        "V2 gRPC c=64 ÷ PyTriton batch gRPC",
        best(rows, small, "V2 gRPC", 64),
        peer("pytriton-batch", "V2 gRPC"),
        2,
    )
    heavy_rates = [
        r.measured.result["rps"]
        for r in rows
        if r.measured and r.model == heavy and r.batching == "on" and r.conns == 64
    ]
    if heavy in {n for n, _ in (MODELS[k] for k in anchors)}:
        goal(
            "heavy, batching on, c=64 ÷ in-process batch-32 rows/s",
            max(heavy_rates) if heavy_rates else None,
            anchors["heavy"]["ort_b32_rows"],
            0.85,
        )
    p50s = [
        r.measured.result["p50_ms"]
        for r in rows
        if r.measured and r.model == small and r.conns == 1 and "REST" in r.protocol
    ]
    if p50s:
        verdict = "met" if min(p50s) <= 0.6 else "MISSED"
        lines.append(
            f"| REST c=1 p50, small MLP (best) | {min(p50s):.2f} ms | ≤ 0.6 ms | {verdict} |"
        )
    if swap:
        steady, during = swap["steady"], swap["during"]
        ratio = during.result["p99_ms"] / steady.result["p99_ms"]
        ok = during.errors == 0 and ratio <= 2
        lines.append(
            f"| swap under load: errors, p99 ÷ steady | {during.errors}, {ratio:.2f}x | 0, ≤ 2x "
            f"| {'met' if ok else 'MISSED'} |"
        )
    print("\n| goal | measured | target | |\n| --- | ---: | ---: | --- |")
    print("\n".join(lines))


# --- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=10, help="seconds per cell")
    parser.add_argument("--warmup", type=float, default=3, help="seconds of warm-up per protocol")
    parser.add_argument("--connections", default="1,8,64")
    parser.add_argument("--models", default="small,heavy", help="comma list of small, heavy")
    parser.add_argument("--batching", default="off,on", help="comma list of off, on")
    parser.add_argument("--protocols", default="all", help="'all' or a comma list of names")
    parser.add_argument("--anchor-seconds", type=float, default=2)
    parser.add_argument("--swap-seconds", type=float, default=10, help="0 skips the swap bench")
    parser.add_argument("--poll-seconds", type=float, default=0.2, help="version poll interval")
    parser.add_argument(
        "--peers",
        default="",
        help="comma list of the peer harness's settings (PEERS_HOME), e.g. "
        "floor-starlette,mlserver,pytriton-batch,torchserve-batch",
    )
    args = parser.parse_args()
    wrk = ensure_wrk()
    meta = {
        "load_before": loadavg(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "command": "python benchmarks/bench.py " + " ".join(sys.argv[1:]),
    }
    work = Path(tempfile.mkdtemp(prefix="pyserving-bench-"))
    try:
        anchors, rows, swap = {}, [], None
        can_batch = batching_supported()
        for key in args.models.split(","):
            name, dims = MODELS[key]
            make_mlp(work / name / "1" / "model.onnx", seed=1, dims=dims)
            x = np.random.default_rng(0).standard_normal((1, dims[0])).astype(np.float32)
            v2_body = protocols(name, x)[1].body
            anchors[key] = in_process_anchors(
                work / name / "1" / "model.onnx", x, v2_body, args.anchor_seconds
            )
        for batching in args.batching.split(","):
            for key in args.models.split(","):
                name, dims = MODELS[key]
                x = np.random.default_rng(0).standard_normal((1, dims[0])).astype(np.float32)
                if batching == "on" and not can_batch:
                    rows += [
                        Row(name, batching, p, int(c), None, NOT_SERVED)
                        for p in PROTOCOLS
                        for c in args.connections.split(",")
                    ]
                    continue
                server = start_server(work, name, work / name, batching == "on", args.poll_seconds)
                try:
                    rows += bench_server(args, wrk, work, server, name, dims[0], batching, x)
                finally:
                    stop_session(server.proc)
        if args.swap_seconds > 0:
            try:
                swap = swap_benchmark(args, wrk, work)
            except RuntimeError as exc:
                print(f"bench: swap benchmark failed: {exc}", file=sys.stderr)
        peer_rows = bench_peers(args, wrk, args.peers.split(",")) if args.peers else []
        for key in args.models.split(","):  # again at the end; the less disturbed one counts
            name, dims = MODELS[key]
            x = np.random.default_rng(0).standard_normal((1, dims[0])).astype(np.float32)
            again = in_process_anchors(
                work / name / "1" / "model.onnx", x, protocols(name, x)[1].body, args.anchor_seconds
            )
            anchors[key] = {k: max(v, again[k]) for k, v in anchors[key].items()}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    meta["load_after"] = loadavg()
    report(args, anchors, rows, peer_rows, swap, meta)


if __name__ == "__main__":
    main()
