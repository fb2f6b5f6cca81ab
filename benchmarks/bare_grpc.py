"""Our V2 gRPC ModelInfer against a bare grpc.aio servicer, side by side under the same load.

The bare servicer is the floor for a Python gRPC server: one grpc.aio server on uvloop (as
`pyserving serve` runs), a unary ModelInfer handler that parses the ModelInferRequest and answers
fixed, pre-serialized response bytes; no model, no limits, no metrics. Both servers get the same
benchmarks/grpc_load.py run (the small MLP's request), alternating for `--rounds` rounds, and the
report gives req/s and server CPU µs per request (utime+stime of the server's session, from
/proc) and our/bare ratios of each round's median.

    python benchmarks/bare_grpc.py [--connections 8] [--seconds 5] [--rounds 3] [--warmup 2]
    python benchmarks/bare_grpc.py --base-src /tmp/base/src   # beside a server from another tree
    python benchmarks/bare_grpc.py --serve PORT      # the bare servicer alone
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from bench import MODELS, grpc_command, measure, start_server
from processes import free_port, pyserving_command, spawn, stop_session, wait_ready

from pyserving.demo import make_mlp

METHOD = "/inference.GRPCInferenceService/ModelInfer"


def fixed_response(outputs: int) -> bytes:
    """A ModelInferResponse with one FP32 [1, outputs] output in raw_output_contents."""
    from pyserving.proto import grpc_service_pb2 as pb

    response = pb.ModelInferResponse(model_name="mlp", model_version="1")
    response.outputs.add(name="output", datatype="FP32", shape=[1, outputs])
    response.raw_output_contents.append(np.zeros(outputs, dtype="<f4").tobytes())
    return response.SerializeToString()


async def serve_bare(port: int) -> None:
    """Serve the bare ModelInfer on 127.0.0.1:`port` until killed; prints READY once bound."""
    import grpc

    from pyserving.proto import grpc_service_pb2 as pb

    answer = fixed_response(MODELS["small"][1][-1])

    async def model_infer(request: pb.ModelInferRequest, context: object) -> bytes:
        return answer

    handler = grpc.method_handlers_generic_handler(
        "inference.GRPCInferenceService",
        {
            "ModelInfer": grpc.unary_unary_rpc_method_handler(
                model_infer, request_deserializer=pb.ModelInferRequest.FromString
            )
        },
    )
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((handler,))
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    print("READY", flush=True)
    await server.wait_for_termination()


def start_bare(work: Path) -> tuple[object, str]:
    """The bare servicer in a session of its own; (process, target) once it answers."""
    port = free_port()
    log = work / "bare.log"
    proc = spawn([sys.executable, __file__, "--serve", str(port)], log)
    deadline = time.monotonic() + 60
    while "READY" not in log.read_text():
        if proc.poll() is not None or time.monotonic() > deadline:
            stop_session(proc)
            sys.exit(f"bare_grpc: the bare servicer did not start:\n{log.read_text()[-2000:]}")
        time.sleep(0.1)
    return proc, f"127.0.0.1:{port}"


def start_tree(work: Path, name: str, src: str) -> tuple[object, str]:
    """`pyserving serve` importing the package from `src` (an A/B against another commit's
    `git archive`); (process, target) once it is ready."""
    rest, port = free_port(), free_port()
    log = work / "base.log"
    flags = (f"--model_name={name}", f"--model_base_path={work / name}", "--log-level=warning")
    proc = spawn(pyserving_command(rest, port, *flags), log, {**os.environ, "PYTHONPATH": src})
    wait_ready(proc, log, f"http://127.0.0.1:{rest}/v2/models/{name}/ready")
    return proc, f"127.0.0.1:{port}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--serve", type=int, metavar="PORT", help="run the bare servicer only")
    parser.add_argument("-c", "--connections", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--base-src", help="also measure a server importing pyserving from here")
    args = parser.parse_args()
    if args.serve:
        try:
            import uvloop

            uvloop.run(serve_bare(args.serve))
        except ImportError:
            asyncio.run(serve_bare(args.serve))
        return
    name, dims = MODELS["small"]
    with tempfile.TemporaryDirectory(prefix="pyserving-bare-grpc-") as tmp:
        work = Path(tmp)
        make_mlp(work / name / "1" / "model.onnx", seed=1, dims=dims)
        ours = start_server(work, name, work / name, False, 1.0)
        bare, bare_target = start_bare(work)
        servers = {"pyserving": (ours.proc, ours.grpc), "bare grpc.aio": (bare, bare_target)}
        try:
            if args.base_src:  # in the try: a base that does not start stops the other two
                servers["pyserving (base)"] = start_tree(work, name, args.base_src)
            runs: dict[str, list] = {label: [] for label in servers}
            for proc, target in servers.values():
                command = grpc_command(target, "v2", name, dims[0], args.connections, args.warmup)
                measure(proc.pid, command)
            for _ in range(args.rounds):
                for label, (proc, target) in servers.items():
                    command = grpc_command(
                        target, "v2", name, dims[0], args.connections, args.seconds
                    )
                    runs[label].append(measure(proc.pid, command))
        finally:
            for proc, _ in servers.values():
                stop_session(proc)  # type: ignore[arg-type]
    print(
        f"V2 gRPC ModelInfer, small MLP, c={args.connections}, {args.rounds} x {args.seconds:g} s"
    )
    print("\n| server | req/s (median) | server CPU µs/req (median) | per round µs/req | errors |")
    print("| --- | ---: | ---: | --- | ---: |")
    medians = {}
    for label, measured in runs.items():
        rps = statistics.median(m.result["rps"] for m in measured)
        cpu = statistics.median(m.cpu_per_1k * 1000 for m in measured)
        medians[label] = (rps, cpu)
        rounds = ", ".join(f"{m.cpu_per_1k * 1000:.0f}" for m in measured)
        errors = sum(m.errors for m in measured)
        print(f"| {label} | {rps:,.0f} | {cpu:.0f} | {rounds} | {errors} |")
    (our_rps, our_cpu), (bare_rps, bare_cpu) = medians["pyserving"], medians["bare grpc.aio"]
    print(
        f"\nours / bare: server CPU per request {our_cpu / bare_cpu:.2f}x,"
        f" req/s {our_rps / bare_rps:.2f}x (noise: machine cores busy outside the two processes,"
        f" median {statistics.median(m.noise_cores for ms in runs.values() for m in ms):.2f})"
    )
    if args.base_src:
        base_cpu = medians["pyserving (base)"][1]
        print(f"ours / base: server CPU per request {our_cpu / base_cpu:.3f}x (same rounds)")


if __name__ == "__main__":
    main()
