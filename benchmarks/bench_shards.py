"""Big tables (issue 18): `python benchmarks/bench_shards.py [--keys 10000000] [--dim 64]`.

Prints three markdown tables:

- memory: the resident set (VmRSS) of one server holding the whole table against each of
  `--shards` shard servers (`shard: {index, count}`), after their first load;
- lookups: keys/s and p50/p99 latency of `--batch`-key V2 gRPC lookups (random keys, one client
  and `--clients` clients) sent to the one server and to a router (`platform: shards`) in front
  of the shard servers;
- deltas: the load time and memory added of a version that is a `--delta-fraction` delta on the
  full table against the full table's own load (in this process, through LookupLoader).

Every server is a real `pyserving serve` process on 127.0.0.1. Never part of pytest.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import grpc
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import processes  # starting and stopping servers

from pyserving.core.ids import ServableId
from pyserving.platforms.lookup import LookupLoader
from pyserving.proto import grpc_service_pb2 as pb
from pyserving.proto.grpc_service_pb2_grpc import GRPCInferenceServiceStub


def rss_bytes(pid: int | None = None, field: str = "VmRSS") -> int:
    status = Path(f"/proc/{pid or 'self'}/status").read_text()
    line = next(line for line in status.splitlines() if line.startswith(f"{field}:"))
    return int(line.split()[1]) * 1024


def table_mapped_bytes(pid: int) -> int:
    """Bytes of table files the process maps (an uncompressed npz's values are mapped, not
    read: they live in the page cache, and in RSS only once touched)."""
    total, path = 0, ""
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        head = line.split()
        if head and "-" in head[0] and len(head) >= 5:  # a mapping's header line
            path = head[5] if len(head) > 5 else ""
        elif head and head[0] == "Size:" and path.endswith("table.npz"):
            total += int(head[1]) * 1024
    return total


def footprint(pid: int) -> tuple[int, int]:
    """(anonymous RSS, mapped table bytes): what the process needs in memory to serve its
    table at memory speed (a mapped table's pages all end up in the page cache)."""
    return rss_bytes(pid, "RssAnon"), table_mapped_bytes(pid)


class Server:
    """One `pyserving serve` process for a YAML model config."""

    def __init__(self, workdir: Path, name: str, entry: str) -> None:
        config = workdir / f"{name}.yaml"
        config.write_text(f"models:\n  - name: table\n{entry}")
        self.port, self.grpc_port = processes.free_port(), processes.free_port()
        self.log = workdir / f"{name}.log"
        self.started = time.perf_counter()
        command = processes.pyserving_command(
            self.port,
            self.grpc_port,
            f"--model_config_file={config}",
            "--file_system_poll_wait_seconds=1",
        )
        self.proc = processes.spawn(command, self.log)
        self.address = f"127.0.0.1:{self.grpc_port}"

    def wait_ready(self, timeout_s: float = 900.0) -> float:
        """Seconds from start until ready."""
        url = f"http://127.0.0.1:{self.port}/v2/models/table/ready"
        processes.wait_ready(self.proc, self.log, url, timeout_s=timeout_s)
        return time.perf_counter() - self.started

    def stop(self) -> None:
        processes.stop_session(self.proc, grace_s=60)


def write_table(directory: Path, keys: np.ndarray, dim: int, seed: int) -> None:
    directory.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    values = rng.standard_normal((len(keys), dim), dtype=np.float32)
    np.savez(directory / "table.npz", keys=keys, values=values)


def lookups(
    address: str, keys: np.ndarray, batch: int, requests: int, clients: int
) -> tuple[float, float, float]:
    """(keys/s, p50 ms, p99 ms) of `requests` lookups of `batch` random keys per client."""
    latencies: list[float] = []
    lock = threading.Lock()

    def client(seed: int) -> None:
        rng = np.random.default_rng(seed)
        with grpc.insecure_channel(address) as channel:
            stub = GRPCInferenceServiceStub(channel)
            mine = []
            for _ in range(requests):
                request = pb.ModelInferRequest(model_name="table")
                request.inputs.add(name="keys", datatype="INT64", shape=[batch])
                request.raw_input_contents.append(rng.choice(keys, batch).tobytes())
                started = time.perf_counter()
                stub.ModelInfer(request, timeout=60)
                mine.append(time.perf_counter() - started)
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    ordered = sorted(latencies)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return batch * len(ordered) / elapsed, statistics.median(ordered) * 1e3, p99 * 1e3


def delta_load(workdir: Path, keys: np.ndarray, dim: int, fraction: float) -> list[str]:
    """Full table then a delta on it, loaded in this process; rows of the delta table."""
    root = workdir / "delta"
    rng = np.random.default_rng(3)
    changed = rng.choice(keys, int(len(keys) * fraction), replace=False)
    write_table(root / "2", changed, dim, seed=4)
    (root / "2" / "delta.yaml").write_text("base: 1\n")
    os.symlink(workdir / "whole" / "1", root / "1")
    before = rss_bytes()
    started = time.perf_counter()
    full = LookupLoader(ServableId("table", 1), str(root / "1")).load()
    full_s = time.perf_counter() - started
    full_bytes = rss_bytes() - before
    before = rss_bytes()
    started = time.perf_counter()
    delta = LookupLoader(ServableId("table", 2), str(root / "2")).load()
    delta_s = time.perf_counter() - started
    delta_bytes = rss_bytes() - before
    own_bytes = (delta.memory_bytes() or 0) - (full.memory_bytes() or 0)  # its rows and index
    probe = np.concatenate([changed[:500], keys[:500]])
    out = delta.run("serving_default", {"keys": probe})
    assert out["found"].all(), "the delta lost rows"
    lines = [
        "| version | load s | RSS added MiB | rows + index MiB | vs full table |",
        "|---|---:|---:|---:|---:|",
        f"| full table ({len(keys):,} rows) | {full_s:.2f} | {full_bytes / 2**20:,.0f} |"
        f" {(full.memory_bytes() or 0) / 2**20:,.0f} | 100 % |",
        f"| {fraction:.0%} delta ({len(changed):,} rows) | {delta_s:.2f} |"
        f" {delta_bytes / 2**20:,.0f} | {own_bytes / 2**20:,.0f} | time {delta_s / full_s:.1%},"
        f" memory {own_bytes / (full.memory_bytes() or 1):.1%} |",
    ]
    del full, delta
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--keys", type=int, default=10_000_000, help="rows of the table")
    parser.add_argument("--dim", type=int, default=64, help="FP32 values per row")
    parser.add_argument("--shards", type=int, default=3)
    parser.add_argument("--batch", type=int, default=1000, help="keys per lookup")
    parser.add_argument("--requests", type=int, default=300, help="lookups per client")
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--delta-fraction", type=float, default=0.01)
    parser.add_argument(
        "--router-instances",
        type=int,
        default=8,
        help="the router's `instances:` (fan-outs at once)",
    )
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="bench-shards-"))
    keys = np.arange(args.keys, dtype=np.int64) * 7 + 3
    write_table(workdir / "whole" / "1", keys, args.dim, seed=1)
    servers: list[Server] = []
    try:
        whole = Server(workdir, "whole", f"    base_path: {workdir / 'whole'}\n")
        servers.append(whole)
        whole_s = whole.wait_ready()
        shards = [
            Server(
                workdir,
                f"shard{i}",
                f"    base_path: {workdir / 'whole'}\n"
                f"    shard: {{index: {i}, count: {args.shards}}}\n",
            )
            for i in range(args.shards)
        ]
        servers.extend(shards)
        shard_s = [shard.wait_ready() for shard in shards]
        addresses = ", ".join(f'"{s.address}"' for s in shards)
        router = Server(
            workdir,
            "router",
            f"    platform: shards\n    shards: [{addresses}]\n"
            f"    instances: {args.router_instances}\n",
        )
        servers.append(router)
        router.wait_ready()
        size = keys.nbytes * (1 + args.dim / 2) / 2**30
        print(f"\n{args.keys:,} keys x {args.dim} FP32 ({size:.2f} GiB of rows)\n")
        print("| server | ready after s | RSS anon MiB | table mapped MiB | needs MiB | vs one |")
        print("|---|---:|---:|---:|---:|---:|")
        anon, mapped = footprint(whole.proc.pid)
        whole_needs = anon + mapped
        print(
            f"| one server, whole table | {whole_s:.1f} | {anon / 2**20:,.0f} |"
            f" {mapped / 2**20:,.0f} | {whole_needs / 2**20:,.0f} | 100 % |"
        )
        for i, (shard, ready_s) in enumerate(zip(shards, shard_s, strict=True)):
            anon, mapped = footprint(shard.proc.pid)
            print(
                f"| shard {i} of {args.shards} | {ready_s:.1f} | {anon / 2**20:,.0f} |"
                f" {mapped / 2**20:,.0f} | {(anon + mapped) / 2**20:,.0f} |"
                f" {(anon + mapped) / whole_needs:.1%} |"
            )
        print(f"| router | | {rss_bytes(router.proc.pid, 'RssAnon') / 2**20:,.0f} | 0 | | |")
        print(f"\n| {args.batch}-key lookups | clients | keys/s | p50 ms | p99 ms |")
        print("|---|---:|---:|---:|---:|")
        for clients in (1, args.clients):
            for name, target in (("one server", whole), ("router + shards", router)):
                lookups(target.address, keys, args.batch, 20, clients)  # warm up
                rate, p50, p99 = lookups(target.address, keys, args.batch, args.requests, clients)
                print(f"| {name} | {clients} | {rate:,.0f} | {p50:.2f} | {p99:.2f} |")
    finally:
        for server in servers:
            server.stop()
    try:
        print()
        print("\n".join(delta_load(workdir, keys, args.dim, args.delta_fraction)))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
