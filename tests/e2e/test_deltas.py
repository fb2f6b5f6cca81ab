"""Lookup deltas across a restart and a worker replacement, real processes (issue 18).

With the default version policy (latest 1) a running server loads delta 2 while version 1
serves, then unloads 1. A restart (or a worker replacing a killed one) then asks for version 2
alone: it must still serve the delta's answers, reading its base's files itself.
"""

from __future__ import annotations

import os
import re
import signal
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.e2e.server import ServerProcess
from tests.fakes import wait_until

pytestmark = pytest.mark.slow

PROBE = [1, 2, 3, 500]
# version 1: keys 1..9 → 10 * key; version 2 (a delta on 1): 1 → 11, 500 → 55, 3 deleted
DELTA_ANSWER = ([11.0, 20.0, 0.0, 55.0], [True, True, False, True])


def publish(root: Path, version: int, keys: list[int], values: list[float], **files: str) -> None:
    """A version directory, renamed into place whole (the poller never sees half of it)."""
    staging = root / f".staging-{version}"
    staging.mkdir(parents=True)
    np.savez(staging / "table.npz", keys=np.array(keys, np.int64), values=np.array(values, "f4"))
    for name, text in files.items():
        (staging / name.replace("_", ".")).write_text(text)
    os.rename(staging, root / str(version))


def lookup(url: str) -> tuple[str, list[float], list[bool]]:
    """A V2 REST lookup of PROBE on a fresh connection (either worker may take it)."""
    body = {"inputs": [{"name": "keys", "datatype": "INT64", "shape": [4], "data": PROBE}]}
    with httpx.Client(timeout=10) as client:
        answer = client.post(url + "/v2/models/tab/infer", json=body)
    answer.raise_for_status()
    outputs = {o["name"]: o["data"] for o in answer.json()["outputs"]}
    return answer.json()["model_version"], outputs["values"], outputs["found"]


def has_version(url: str, version: str) -> bool:
    try:
        status = httpx.get(url + "/v1/models/tab", timeout=5).json()
    except httpx.TransportError:
        return False
    states = {s["version"]: s["state"] for s in status.get("model_version_status", [])}
    return states.get(version) == "AVAILABLE"


def serve(root: Path, *flags: str) -> ServerProcess:
    server = ServerProcess(
        "--model_name=tab",
        f"--model_base_path={root}",
        "--file_system_poll_wait_seconds=0.2",
        *flags,
    )
    server.wait_ready()
    return server


def test_a_delta_loaded_while_running_serves_after_a_restart(tmp_path: Path) -> None:
    root = tmp_path / "tab"
    publish(root, 1, list(range(1, 10)), [10.0 * k for k in range(1, 10)])
    server = serve(root)
    try:
        publish(root, 2, [1, 500], [11.0, 55.0], delta_yaml="base: 1\n", deleted_txt="3\n")
        wait_until(lambda: not has_version(server.url, "1"), 20, "version 1 to unload")
        assert lookup(server.url) == ("2", *DELTA_ANSWER)
    finally:
        assert server.stop() == 0, server.log()
    restarted = serve(root)  # asks for version 2 alone: it reads version 1's files itself
    try:
        assert lookup(restarted.url) == ("2", *DELTA_ANSWER)
        assert httpx.get(restarted.url + "/v2/health/ready").status_code == 200
        status = httpx.get(restarted.url + "/v1/models/tab").json()["model_version_status"]
        assert [(s["version"], s["state"]) for s in status] == [("2", "AVAILABLE")]
    finally:
        assert restarted.stop() == 0, restarted.log()


def test_a_worker_replacing_a_killed_one_serves_the_delta(tmp_path: Path) -> None:
    root = tmp_path / "tab"
    publish(root, 1, list(range(1, 10)), [10.0 * k for k in range(1, 10)])
    publish(root, 2, [1, 500], [11.0, 55.0], delta_yaml="base: 1\n", deleted_txt="3\n")
    server = serve(root, "--workers=2", "--drain_timeout_seconds=5")

    def workers() -> set[int]:
        log = server.log()
        started = set(map(int, re.findall(r"worker \d+ started \(pid (\d+)\)", log)))
        return started - set(map(int, re.findall(r"\(pid (\d+)\) exited", log)))

    try:
        wait_until(lambda: len(workers()) == 2, 30, "two workers")
        before = workers()
        os.kill(min(before), signal.SIGKILL)
        wait_until(lambda: len(workers()) == 2 and workers() != before, 30, "a replacement")
        (replacement,) = workers() - before
        wait_until(lambda: f"serving (pid {replacement})" in server.log(), 30, "it to serve")
        for _ in range(12):  # fresh connections: both workers answer
            assert lookup(server.url) == ("2", *DELTA_ANSWER)
            assert httpx.get(server.url + "/v2/health/ready", timeout=5).status_code == 200
    finally:
        assert server.stop(60) == 0, server.log()
