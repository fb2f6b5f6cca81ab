"""A table sharded over three real shard servers behind a real router process (issue 18)."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest

from pyserving.proto import grpc_service_pb2 as pb
from pyserving.proto.grpc_service_pb2_grpc import GRPCInferenceServiceStub
from tests.e2e.server import ServerProcess, free_port

KEYS = np.arange(-30, 270, dtype=np.int64)
PROBE = np.concatenate([KEYS, [-1000, 999, 5000]]).astype(np.int64)


def publish(base: Path, version: int, keys: np.ndarray, values: np.ndarray, **files: str) -> None:
    """Write a version directory atomically (the poller never sees half of it)."""
    staging = base / f".staging-{version}"
    staging.mkdir(parents=True)
    np.savez(staging / "table.npz", keys=keys, values=values)
    for name, text in files.items():
        (staging / name.replace("_", ".")).write_text(text)
    os.rename(staging, base / str(version))


def table(offset: float) -> np.ndarray:
    return np.stack([KEYS * 1.0 + offset, -KEYS * 1.0], axis=1).astype(np.float32)


def config(path: Path, entry: str) -> Path:
    path.write_text(f"models:\n  - name: table\n{entry}")
    return path


def infer(address: str, keys: np.ndarray, version: str = "") -> pb.ModelInferResponse:
    with grpc.insecure_channel(address) as channel:
        request = pb.ModelInferRequest(model_name="table", model_version=version)
        request.inputs.add(name="keys", datatype="INT64", shape=[len(keys)])
        request.raw_input_contents.append(keys.astype("<i8").tobytes())
        return GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=10)


def answer(response: pb.ModelInferResponse) -> tuple[str, np.ndarray, np.ndarray]:
    outputs = dict(
        zip((o.name for o in response.outputs), response.raw_output_contents, strict=True)
    )
    values = np.frombuffer(outputs["values"], "<f4").reshape(-1, 2)
    found = np.frombuffer(outputs["found"], np.uint8) != 0
    return response.model_version, values, found


def wait_until(predicate: Callable[[], bool], what: str, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting until {what}")


def has_version(address: str, version: str) -> bool:
    with grpc.insecure_channel(address) as channel:
        stub = GRPCInferenceServiceStub(channel)
        try:
            return version in stub.ModelMetadata(pb.ModelMetadataRequest(name="table")).versions
        except grpc.RpcError:
            return False


def start(root: Path, name: str, entry: str, port: int) -> ServerProcess:
    file = config(root / f"{name}.yaml", entry)
    return ServerProcess(
        f"--model_config_file={file}", f"--port={port}", "--file_system_poll_wait_seconds=1"
    )


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[dict[str, object]]:
    started: list[ServerProcess] = []
    shard_ports = [free_port() for _ in range(3)]
    shard_entries = [
        f"    base_path: {tmp_path / f'shard{i}'}\n    shard: {{index: {i}, count: 3}}\n"
        "    version_policy: {all: {}}\n"
        for i in range(3)
    ]
    for base in [*(f"shard{i}" for i in range(3)), "whole"]:
        publish(tmp_path / base, 1, KEYS, table(0.0))
    try:
        for i, port in enumerate(shard_ports):
            started.append(start(tmp_path, f"shard{i}", shard_entries[i], port))
        whole_port = free_port()
        whole_entry = f"    base_path: {tmp_path / 'whole'}\n    version_policy: {{all: {{}}}}\n"
        started.append(start(tmp_path, "whole", whole_entry, whole_port))
        # the router starts with them: it is ready once every shard serves a version
        addresses = ", ".join(f'"127.0.0.1:{p}"' for p in shard_ports)
        router_port = free_port()
        router_entry = f"    platform: shards\n    shards: [{addresses}]\n"
        router = start(tmp_path, "router", router_entry, router_port)
        started.append(router)
        for server in started:
            server.wait_ready()
        yield {
            "root": tmp_path,
            "shards": started,
            "shard_addresses": [f"127.0.0.1:{p}" for p in shard_ports],
            "shard_entries": shard_entries,
            "whole": f"127.0.0.1:{whole_port}",
            "router": router,
            "router_address": f"127.0.0.1:{router_port}",
        }
    finally:
        for server in started:
            server.stop()


@pytest.mark.slow
def test_router_answers_as_one_server_moves_versions_together_and_deltas_answer_as_rewritten(
    servers: dict[str, object],
) -> None:
    root, router, whole = servers["root"], servers["router_address"], servers["whole"]
    shard_addresses = servers["shard_addresses"]
    assert isinstance(root, Path) and isinstance(router, str) and isinstance(whole, str)
    assert isinstance(shard_addresses, list)

    # every key (and some missing ones) through the router, exactly as the whole table
    version, values, found = answer(infer(router, PROBE))
    _, whole_values, whole_found = answer(infer(whole, PROBE))
    assert version == "1"
    np.testing.assert_array_equal(found, whole_found)
    np.testing.assert_array_equal(values, whole_values)
    assert found.sum() == len(KEYS)
    publish_deltas(root)  # the whole server loads them while the router is tested

    # a shard answers its foreign keys as missing
    _, _, shard_found = answer(infer(shard_addresses[1], PROBE))
    np.testing.assert_array_equal(shard_found, whole_found & (PROBE % 3 == 1))

    # version 2 on two shards of three: the router stays on version 1, never a mix
    for i in (0, 1):
        publish(root / f"shard{i}", 2, KEYS, table(1000.0))
    wait_until(lambda: all(has_version(shard_addresses[i], "2") for i in (0, 1)), "v2 on 2 shards")
    for _ in range(15):  # past the router's poll of the shards' versions
        version, values, _ = answer(infer(router, KEYS))
        assert version == "1"
        np.testing.assert_array_equal(values, table(0.0))
        time.sleep(0.15)
    with pytest.raises(grpc.RpcError) as refused:
        infer(router, KEYS, version="2")
    assert refused.value.code() == grpc.StatusCode.NOT_FOUND

    publish(root / "shard2", 2, KEYS, table(1000.0))
    wait_until(lambda: answer(infer(router, KEYS))[0] == "2", "the router serves version 2")
    version, values, found = answer(infer(router, KEYS))
    np.testing.assert_array_equal(values, table(1000.0))
    assert found.all()
    assert answer(infer(router, KEYS, version="1"))[1].tolist() == table(0.0).tolist()

    # one shard stops: 503 / UNAVAILABLE naming it, on both transports; back once it returns
    shards = servers["shards"]
    assert isinstance(shards, list)
    shards[2].proc.kill()
    shards[2].stop()
    with pytest.raises(grpc.RpcError) as down:
        infer(router, KEYS)
    assert down.value.code() == grpc.StatusCode.UNAVAILABLE
    assert f"shard 2 ({shard_addresses[2]})" in (down.value.details() or "")
    rest = servers["router"]
    assert isinstance(rest, ServerProcess)
    reply = httpx.post(
        f"{rest.url}/v2/models/table/infer",
        json={"inputs": [{"name": "keys", "datatype": "INT64", "shape": [2], "data": [1, 2]}]},
        timeout=10,
    )
    assert reply.status_code == 503 and "shard 2" in reply.text
    port = int(shard_addresses[2].rpartition(":")[2])
    entries = servers["shard_entries"]
    assert isinstance(entries, list)
    shards.append(start(root, "shard2-again", entries[2], port))  # the fixture stops it
    shards[-1].wait_ready()

    def answers_again() -> bool:
        try:
            return answer(infer(router, KEYS))[1].tolist() == table(1000.0).tolist()
        except grpc.RpcError:
            return False

    wait_until(answers_again, "the router answers again after the shard returned")
    check_deltas(whole)


def publish_deltas(root: Path) -> None:
    """Versions 2 (a delta on 1) and 3 (a delta on 2) of the whole server's table."""
    changed = np.array([3, 4, 500], dtype=np.int64)
    publish(
        root / "whole",
        2,
        changed,
        np.array([[1, 1], [2, 2], [3, 3]], np.float32),
        delta_yaml="base: 1\n",
        deleted_txt="5\n6\n",
    )
    publish(
        root / "whole",
        3,
        np.array([5], np.int64),
        np.array([[9, 9]], np.float32),
        delta_yaml="base: 2\n",
        deleted_txt="3\n",
    )


def check_deltas(whole: str) -> None:
    """The deltas answer like the fully rewritten tables."""
    wait_until(lambda: has_version(whole, "3"), "the delta on a delta is AVAILABLE")
    expected = {int(k): [float(k), float(-k)] for k in KEYS}
    expected.update({3: [1.0, 1.0], 4: [2.0, 2.0], 500: [3.0, 3.0]})
    del expected[5], expected[6]
    v2 = dict(expected)
    expected[5] = [9.0, 9.0]
    del expected[3]
    probe = np.array([*range(-31, 271), 500], dtype=np.int64)
    for version, rows in (("2", v2), ("3", expected)):
        got_version, values, found = answer(infer(whole, probe, version=version))
        assert got_version == version
        assert found.tolist() == [int(k) in rows for k in probe]
        assert values[found].tolist() == [rows[int(k)] for k in probe if int(k) in rows]


def test_a_router_refuses_shards_out_of_place_and_names_a_stopped_shard_at_the_deadline(
    tmp_path: Path,
) -> None:
    ports = [free_port(), free_port()]
    started = []
    try:
        for i, port in enumerate(ports):
            publish(tmp_path / f"shard{i}", 1, KEYS, table(0.0))
            entry = (
                f"    base_path: {tmp_path / f'shard{i}'}\n    shard: {{index: {i}, count: 2}}\n"
            )
            started.append(start(tmp_path, f"shard{i}", entry, port))
        addresses = [f"127.0.0.1:{p}" for p in ports]
        ok = start(tmp_path, "ok", f"    platform: shards\n    shards: {addresses}\n", free_port())
        swapped_file = config(
            tmp_path / "swapped.yaml", f"    platform: shards\n    shards: {addresses[::-1]}\n"
        )
        swapped = ServerProcess(
            f"--model_config_file={swapped_file}",
            "--file_system_poll_wait_seconds=1",
            "--model_config_file_poll_wait_seconds=1",
        )
        started += [ok, swapped]
        for server in started[:3]:
            server.wait_ready()
        shard_config = httpx.get(f"{started[1].url}/v2/models/table/config", timeout=10).json()
        assert shard_config["parameters"] == {
            "shard_index": {"string_value": "1"},
            "shard_count": {"string_value": "2"},
        }

        def refused() -> bool:
            status = httpx.get(f"{swapped.url}/v1/models/table", timeout=10).text
            return f"shard 0 ({addresses[1]}) serves shard 1 of 2" in status

        wait_until(refused, "the swapped router names the shard out of place")
        # the addresses put in order by a config reload: the failed version loads
        config(swapped_file, f"    platform: shards\n    shards: {addresses}\n")

        def serves() -> bool:
            body = {"inputs": [{"name": "keys", "datatype": "INT64", "shape": [1], "data": [1]}]}
            reply = httpx.post(f"{swapped.url}/v2/models/table/infer", json=body, timeout=10)
            return reply.status_code == 200 and reply.json()["outputs"][1]["data"] == [True]

        wait_until(serves, "the reordered router serves")

        os.kill(started[1].proc.pid, signal.SIGSTOP)  # shard 1 takes the call and never answers
        try:
            body = {
                "inputs": [{"name": "keys", "datatype": "INT64", "shape": [2], "data": [0, 1]}],
                "parameters": {"timeout": 1_000_000},  # µs
            }
            reply = httpx.post(f"{ok.url}/v2/models/table/infer", json=body, timeout=10)
        finally:
            os.kill(started[1].proc.pid, signal.SIGCONT)
        assert reply.status_code == 504, reply.text
        assert f"shard 1 ({addresses[1]}) did not answer within the deadline" in reply.text
    finally:
        for server in started:
            server.stop()
