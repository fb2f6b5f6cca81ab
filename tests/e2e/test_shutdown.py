"""Graceful shutdown of a real server: drain in-flight requests, refuse new connections, exit 0."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import threading
from pathlib import Path

import httpx
import numpy as np
import pytest
import yaml

from tests.e2e.ops_models import GATE_ENV, install_gated_platform
from tests.e2e.server import ServerProcess, free_port
from tests.fakes import wait_until

IN_FLIGHT = 16


@pytest.fixture
def gated(tmp_path, monkeypatch) -> tuple[Path, Path]:
    """(model config file with the `gated` model "slow", gate directory); the platform is
    installed for server children started by this test."""
    plugins = install_gated_platform(tmp_path / "plugins")
    monkeypatch.setenv(
        "PYTHONPATH", os.pathsep.join(filter(None, [str(plugins), os.environ.get("PYTHONPATH")]))
    )
    gate = tmp_path / "gate"
    gate.mkdir()
    monkeypatch.setenv(GATE_ENV, str(gate))
    version = tmp_path / "slow" / "1"
    version.mkdir(parents=True)
    (version / "weights.bin").write_bytes(b"\0")
    config = tmp_path / "models.yaml"
    config.write_text(
        yaml.safe_dump(
            {"models": [{"name": "slow", "base_path": str(tmp_path / "slow"), "platform": "gated"}]}
        )
    )
    return config, gate


def pending_requests(server: ServerProcess) -> float:
    page = httpx.get(server.url + "/metrics", timeout=5).text
    match = re.search(r"^pyserving_pending_requests (\S+)$", page, re.MULTILINE)
    assert match is not None, page
    return float(match.group(1))


def refused(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return False
    except ConnectionRefusedError:
        return True


def post_in_threads(url: str, body: dict, count: int) -> tuple[list[threading.Thread], list]:
    results: list = [None] * count

    def call(i: int) -> None:
        try:
            response = httpx.post(url, json=body, timeout=60)
            results[i] = (response.status_code, response.json())
        except httpx.HTTPError as exc:
            results[i] = exc

    threads = [threading.Thread(target=call, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    return threads, results


@pytest.mark.slow
def test_sigterm_finishes_16_in_flight_requests_refuses_new_connections_and_exits_0(gated):
    config, gate = gated
    grpc_port = free_port()
    server = ServerProcess(
        f"--model_config_file={config}",
        "--file_system_poll_wait_seconds=0",
        f"--port={grpc_port}",
    )
    try:
        server.wait_ready()
        threads, results = post_in_threads(
            server.url + "/v1/models/slow:predict", {"instances": [[1.0, 2.0]]}, IN_FLIGHT
        )
        # Every request has reached the model's executor or queue (4 run, 12 wait).
        wait_until(lambda: pending_requests(server) == IN_FLIGHT, 30, "16 requests pending")
        server.proc.send_signal(signal.SIGTERM)
        wait_until(lambda: refused(server.port), 10, "the REST port refusing connections")
        wait_until(lambda: refused(grpc_port), 10, "the gRPC port refusing connections")
        assert server.proc.poll() is None, "the server exited before its requests finished"
        assert all(r is None for r in results), results
        (gate / "release").touch()
        for thread in threads:
            thread.join(60)
        assert results == [(200, {"predictions": [[2.0, 4.0]]})] * IN_FLIGHT
        assert server.proc.wait(30) == 0, server.log()
        log = server.log()
        assert "received SIGTERM: draining" in log
        assert "model=slow version=1 state=END" in log
        assert "server stopped" in log
    finally:
        (gate / "release").touch()
        server.stop()


def test_second_signal_exits_at_once_without_waiting_for_requests(gated):
    config, gate = gated
    server = ServerProcess(f"--model_config_file={config}", "--file_system_poll_wait_seconds=0")
    try:
        server.wait_ready()
        threads, results = post_in_threads(
            server.url + "/v1/models/slow:predict", {"instances": [[1.0, 2.0]]}, 1
        )
        wait_until(lambda: (gate / "entered-0").exists(), 30, "the request to run")
        server.proc.send_signal(signal.SIGINT)
        wait_until(lambda: refused(server.port), 10, "the REST port refusing connections")
        server.proc.send_signal(signal.SIGINT)
        assert server.proc.wait(10) == 1, server.log()
        threads[0].join(30)
        assert isinstance(results[0], httpx.HTTPError), results
        assert "exiting now, without draining" in server.log()
    finally:
        (gate / "release").touch()
        server.stop()


@pytest.mark.slow
def test_drain_timeout_bounds_the_wait_for_a_stuck_request(gated):
    config, gate = gated
    server = ServerProcess(
        f"--model_config_file={config}",
        "--file_system_poll_wait_seconds=0",
        "--drain_timeout_seconds=0.5",
    )
    try:
        server.wait_ready()
        threads, results = post_in_threads(
            server.url + "/v1/models/slow:predict", {"instances": [[1.0, 2.0]]}, 1
        )
        wait_until(lambda: (gate / "entered-0").exists(), 30, "the request to run")
        server.proc.send_signal(signal.SIGTERM)
        # 0.5 s of drain, then at most 10 s for the stuck version to unload, then a hard exit.
        try:
            code = server.proc.wait(30)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the server hung on a stuck request:\n{server.log()}")
        assert code == 1, server.log()
        log = server.log()
        assert "drain timed out after 0.5s: 1 request(s) cancelled" in log
        assert "models did not unload in time" in log
        threads[0].join(30)
        status, body = results[0]
        assert status == 503, results
        assert "request cancelled after the drain timeout" in body["error"]
    finally:
        (gate / "release").touch()
        server.stop()


def test_v2_timeout_parameter_answers_504_while_the_model_runs(gated):
    config, gate = gated
    server = ServerProcess(f"--model_config_file={config}", "--file_system_poll_wait_seconds=0")
    try:
        server.wait_ready()
        body = {
            "inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 2], "data": [1.0, 2.0]}],
            "parameters": {"timeout": 200_000},  # microseconds
        }
        response = httpx.post(server.url + "/v2/models/slow/infer", json=body, timeout=30)
        assert response.status_code == 504, response.text
        assert "Deadline exceeded" in response.json()["error"]
        (gate / "release").touch()
        del body["parameters"]
        response = httpx.post(server.url + "/v2/models/slow/infer", json=body, timeout=30)
        assert response.status_code == 200, response.text
        assert np.allclose(response.json()["outputs"][0]["data"], [2.0, 4.0])
        assert server.stop() == 0, server.log()
    finally:
        (gate / "release").touch()
        server.stop()


def test_drain_log_counts_what_clients_got_issue_15(gated):
    """b65bd49 logged "4 request(s) cancelled" when 20 clients got 503: it counted the calls
    still pending after the drain, not the answers."""
    config, gate = gated
    server = ServerProcess(
        f"--model_config_file={config}",
        "--file_system_poll_wait_seconds=0",
        "--drain_timeout_seconds=0.5",
    )
    try:
        server.wait_ready()
        threads, results = post_in_threads(
            server.url + "/v1/models/slow:predict", {"instances": [[1.0, 2.0]]}, 20
        )
        wait_until(lambda: pending_requests(server) == 20, 30, "20 requests in the server")
        server.proc.send_signal(signal.SIGTERM)
        try:
            server.proc.wait(30)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the server hung on stuck requests:\n{server.log()}")
        for thread in threads:
            thread.join(30)
        got_503 = sum(1 for r in results if isinstance(r, tuple) and r[0] == 503)
        assert got_503 == 20, results
        assert f"drain timed out after 0.5s: {got_503} request(s) cancelled" in server.log()
    finally:
        (gate / "release").touch()
        server.stop()


def test_a_quick_drain_does_not_claim_it_timed_out_issue_15(gated):
    config, _ = gated
    server = ServerProcess(
        f"--model_config_file={config}",
        "--file_system_poll_wait_seconds=0",
        "--drain_timeout_seconds=30",
    )
    try:
        server.wait_ready()
        server.proc.send_signal(signal.SIGTERM)
        assert server.proc.wait(30) == 0, server.log()
        log = server.log()
        assert "drain finished in" in log and "every in-flight request completed" in log
        assert "timed out" not in log
    finally:
        server.stop()
