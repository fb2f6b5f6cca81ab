"""Closed-loop gRPC load generator for V2 `ModelInfer` and TF Serving `Predict` (grpc.aio).

The request is built and serialized once; every call sends those bytes through a generic
`channel.unary_unary` with bytes in and bytes out, so the client spends as little CPU per call
as Python allows and needs no generated stub. Runs as its own process (the orchestrator starts
it), so it does not share a GIL with anything.

    python benchmarks/grpc_load.py --target 127.0.0.1:8500 --api v2 --model mlp --dim 64 -c 8 -d 10
    python benchmarks/grpc_load.py --target 127.0.0.1:8500 --api tf --model mlp --dim 64 --check

Prints one line: `RESULT {json}` with the same keys as wrk_post.lua (requests, rps, p50_ms,
p99_ms, err_*), or with --check one line `CHECK {json}` holding the decoded output (or the
error); exit status 0 either way. Only loopback targets are accepted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time

import grpc
import numpy as np

V2_METHOD = "/inference.GRPCInferenceService/ModelInfer"
TF_METHOD = "/tensorflow.serving.PredictionService/Predict"


def request_input(dim: int, seed: int) -> np.ndarray:
    """The one input row every protocol sends (the orchestrator builds the same array)."""
    return np.random.default_rng(seed).standard_normal((1, dim)).astype(np.float32)


def build_request(api: str, model: str, x: np.ndarray) -> bytes:
    """Serialize one V2 ModelInferRequest (typed fp32_contents) or TF PredictRequest."""
    if api == "v2":
        from pyserving.proto import grpc_service_pb2 as v2

        request = v2.ModelInferRequest(model_name=model)
        tensor = request.inputs.add(name="input", datatype="FP32", shape=list(x.shape))
        tensor.contents.fp32_contents.extend(x.ravel().tolist())
        return request.SerializeToString()
    from pyserving.proto import tf_serving_apis_pb2 as tf
    from pyserving.proto import tf_types_pb2 as types

    request = tf.PredictRequest()
    request.model_spec.name = model
    request.model_spec.signature_name = "serving_default"
    tensor = request.inputs["input"]
    tensor.dtype = types.DT_FLOAT
    for size in x.shape:
        tensor.tensor_shape.dim.add(size=size)
    tensor.tensor_content = x.tobytes()
    return request.SerializeToString()


def decode_response(api: str, raw: bytes) -> list[float]:
    """The first output of a response as a flat list of floats."""
    if api == "v2":
        from pyserving.proto import grpc_service_pb2 as v2

        response = v2.ModelInferResponse.FromString(raw)
        if response.raw_output_contents:
            return np.frombuffer(response.raw_output_contents[0], dtype="<f4").tolist()
        return list(response.outputs[0].contents.fp32_contents)
    from pyserving.proto import tf_serving_apis_pb2 as tf

    response = tf.PredictResponse.FromString(raw)
    tensor = next(iter(response.outputs.values()))
    if tensor.tensor_content:
        return np.frombuffer(tensor.tensor_content, dtype="<f4").tolist()
    return list(tensor.float_val)


async def _worker(call, body: bytes, deadline: float, latencies: list, errors: list) -> None:
    while (start := time.perf_counter()) < deadline:
        try:
            await call(body, timeout=5.0)
        except grpc.RpcError as exc:
            errors.append(exc.code().name)
        else:
            latencies.append(time.perf_counter() - start)


async def _load(
    target: str, method: str, body: bytes, conns: int, seconds: float, warmup: float, channels: int
):
    # a connection of its own per channel (no shared subchannel), so that a server whose
    # workers share the port (--workers) sees several connections
    opened = [
        grpc.aio.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)])
        for _ in range(channels)
    ]
    try:
        calls = [channel.unary_unary(method) for channel in opened]
        if warmup > 0:
            end = time.perf_counter() + warmup
            await asyncio.gather(
                *(_worker(calls[i % channels], body, end, [], []) for i in range(conns))
            )
        latencies: list[float] = []
        errors: list[str] = []
        start = time.perf_counter()
        end = start + seconds
        await asyncio.gather(
            *(_worker(calls[i % channels], body, end, latencies, errors) for i in range(conns))
        )
        return latencies, errors, time.perf_counter() - start
    finally:
        for channel in opened:
            await channel.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", required=True, help="host:port, loopback only")
    parser.add_argument("--api", choices=("v2", "tf"), default="v2")
    parser.add_argument("--model", default="mlp")
    parser.add_argument("--dim", type=int, default=64, help="input width of the model")
    parser.add_argument("--seed", type=int, default=0, help="seed of the input row")
    parser.add_argument("-c", "--connections", type=int, default=8, help="concurrent calls")
    parser.add_argument("-d", "--duration", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=0.0)
    parser.add_argument(
        "--channels", type=int, default=1, help="gRPC connections the calls are spread over"
    )
    parser.add_argument("--check", action="store_true", help="one call, print its output")
    args = parser.parse_args()
    if args.target.rsplit(":", 1)[0] not in ("127.0.0.1", "localhost", "[::1]"):
        sys.exit("grpc_load: loopback targets only")
    method = V2_METHOD if args.api == "v2" else TF_METHOD
    body = build_request(args.api, args.model, request_input(args.dim, args.seed))
    if args.check:
        with grpc.insecure_channel(args.target) as channel:
            try:
                raw = channel.unary_unary(method)(body, timeout=10)
            except grpc.RpcError as exc:
                print("CHECK " + json.dumps({"error": f"{exc.code().name}: {exc.details()}"}))
                return
        print("CHECK " + json.dumps({"data": decode_response(args.api, raw)}))
        return
    try:
        import uvloop

        run = uvloop.run
    except ImportError:
        run = asyncio.run
    latencies, errors, elapsed = run(
        _load(
            args.target,
            method,
            body,
            args.connections,
            args.duration,
            args.warmup,
            args.channels,
        )
    )
    ms = np.asarray(latencies) * 1000
    result = {
        "requests": len(latencies),
        "rps": round(len(latencies) / elapsed, 1),
        "p50_ms": round(float(np.percentile(ms, 50)), 3) if len(ms) else float("nan"),
        "p99_ms": round(float(np.percentile(ms, 99)), 3) if len(ms) else float("nan"),
        "err_connect": 0,
        "err_read": 0,
        "err_write": 0,
        "err_status": len(errors),
        "err_timeout": 0,
        "error_codes": sorted(set(errors)),
    }
    print("RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
