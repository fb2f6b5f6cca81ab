"""Pipeline overhead: a lookup -> MLP pipeline request against the same two models called one
after the other, in one process (ServerCore's request path, no network), and against calling
the two servables directly (no serving at all).

    .venv/bin/python benchmarks/bench_pipeline.py [--requests N] [--concurrency 1 8] [--rounds R]

Prints one table per concurrency: per-request latency (p50 / p99 / mean, µs) and requests per
second for each way, and the pipeline's overhead over the two calls. The ways take turns in short
rounds, so a busy machine slows them alike. Rows: `direct` (servable.run twice on this
thread), `two calls` (InferenceService.infer on `features`, then on `mlp`), `pipeline`
(InferenceService.infer on `scorer`).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import numpy as np

from pyserving import ServerCore, ServerOptions
from pyserving.demo import make_mlp
from pyserving.protocols.request import InferRequest

BATCH = 4
CONFIG = """models:
  - {name: features, base_path: features}
  - {name: mlp, base_path: mlp}
  - name: scorer
    pipeline:
      steps:
        - {model: features, inputs: {keys: user}}
        - {model: mlp, inputs: {input: features.values}}
      outputs: {score: mlp.output}
"""


def write_repository(root: Path) -> Path:
    values = np.random.default_rng(0).standard_normal((10_000, 64)).astype(np.float32)
    (root / "features" / "1").mkdir(parents=True)
    np.savez(root / "features/1/table.npz", keys=np.arange(10_000, dtype=np.int64), values=values)
    make_mlp(root / "mlp" / "1" / "model.onnx", seed=1, dims=(64, 256, 256, 10))
    (root / "models.yaml").write_text(CONFIG)
    return root / "models.yaml"


async def measure(
    call: Callable[[np.ndarray], Awaitable[object]], requests: int, concurrency: int
) -> tuple[list[float], float]:
    """Latencies (s) of `requests` calls made by `concurrency` concurrent clients, and the wall
    time they took together."""
    rng = np.random.default_rng(1)
    latencies: list[float] = []

    async def client(count: int) -> None:
        for _ in range(count):
            keys = rng.integers(0, 12_000, BATCH).astype(np.int64)  # some keys are missing
            started = time.perf_counter()
            await call(keys)
            latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(client(max(1, requests // concurrency)) for _ in range(concurrency)))
    return latencies, time.perf_counter() - started


def row(name: str, latencies: list[float], wall_s: float) -> str:
    ordered = sorted(latencies)
    p50 = ordered[len(ordered) // 2] * 1e6
    p99 = ordered[int(len(ordered) * 0.99)] * 1e6
    mean = statistics.fmean(ordered) * 1e6
    return f"| {name} | {p50:.0f} | {p99:.0f} | {mean:.0f} | {len(ordered) / wall_s:.0f} |"


async def run(core: ServerCore, requests: int, concurrency: int, rounds: int) -> None:
    service = core.service
    with service.acquire("features") as features, service.acquire("mlp") as mlp:
        lookup, model = features.servable, mlp.servable

        async def direct(keys: np.ndarray) -> object:
            values = lookup.run("serving_default", {"keys": keys})["values"]
            return model.run("serving_default", {"input": values})

        async def two_calls(keys: np.ndarray) -> object:
            found = await service.infer(InferRequest("features", {"keys": keys}))
            values = found.outputs["values"]
            return await service.infer(InferRequest("mlp", {"input": values}))

        async def pipeline(keys: np.ndarray) -> object:
            return await service.infer(InferRequest("scorer", {"user": keys}))

        ways = {"direct": direct, "two calls": two_calls, "pipeline": pipeline}
        for call in ways.values():  # warm the threads and caches
            await measure(call, 50, 1)
        # Interleaved rounds: a noisy neighbour slows every way alike, not the one that ran then.
        latencies: dict[str, list[float]] = {name: [] for name in ways}
        walls = dict.fromkeys(ways, 0.0)
        overheads = []
        for _ in range(rounds):
            medians = {}
            for name, call in ways.items():
                found, wall_s = await measure(call, requests // rounds, concurrency)
                latencies[name] += found
                walls[name] += wall_s
                medians[name] = statistics.median(found)
            overheads.append(medians["pipeline"] - medians["two calls"])
        print(f"\nconcurrency {concurrency}, {requests} requests of {BATCH} keys each per way")
        print("| way | p50 µs | p99 µs | mean µs | req/s |")
        print("| --- | --- | --- | --- | --- |")
        for name in ways:
            print(row(name, latencies[name], walls[name]))
        print(
            f"pipeline overhead over the two calls: {statistics.median(overheads) * 1e6:+.0f} µs"
            f" per request (median over {rounds} rounds of the p50 difference)"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=4000)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as root:
        config = write_repository(Path(root))
        core = ServerCore(
            ServerOptions(model_config_file=str(config), file_system_poll_wait_seconds=0)
        )
        core.start()
        try:
            for concurrency in args.concurrency:
                asyncio.run(run(core, args.requests, concurrency, args.rounds))
        finally:
            core.stop()


if __name__ == "__main__":
    main()
