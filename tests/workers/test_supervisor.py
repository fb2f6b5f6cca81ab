"""`pyserving serve --workers 2`, end to end: real processes, both ports, kill -9 included.

One server for the whole module (starting one costs seconds): the tests run in file order and
each leaves it serving; the last one drains it with SIGTERM.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest

from pyserving.demo import make_mlp
from pyserving.proto import grpc_service_pb2 as pb
from pyserving.proto import grpc_service_pb2_grpc as pb_grpc
from pyserving.proto import model_server_config_pb2 as config_pb2
from pyserving.proto import model_service_pb2_grpc
from pyserving.proto import tf_serving_apis_pb2 as apis
from tests.e2e.server import ServerProcess, serve_to_exit
from tests.fakes import wait_until

pytestmark = pytest.mark.slow

X = np.linspace(-1.0, 1.0, 64, dtype=np.float32).reshape(1, 64)
BODY = {
    "inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": X.ravel().tolist()}]
}


class Workers(ServerProcess):
    """A `--workers 2` server on free ports, its log in a file, stopped by PID."""

    def __init__(self, base_path: Path) -> None:
        super().__init__(
            "--workers=2",
            "--model_name=mlp",
            f"--model_base_path={base_path}",
            "--file_system_poll_wait_seconds=0.2",
            "--enable_model_control",
            f"--model_control_roots={base_path.parent}",
            "--drain_timeout_seconds=5",
            grpc=True,
        )

    def worker_pids(self) -> set[int]:
        return set(map(int, re.findall(r"worker \d+ started \(pid (\d+)\)", self.log()))) - set(
            map(int, re.findall(r"\(pid (\d+)\) exited", self.log()))
        )

    def stop(self, timeout_s: float = 60.0) -> int:
        return super().stop(timeout_s)


def fresh_get(url: str) -> httpx.Response:
    """A GET on a new connection (so the kernel may give it to either worker)."""
    with httpx.Client(timeout=10) as client:
        return client.get(url)


def infer_total(server: Workers) -> float:
    """Successful inference answers counted in /metrics (one fresh connection)."""
    page = fresh_get(server.url + "/metrics").text
    return sum(
        float(value)
        for labels, value in re.findall(r"^pyserving_requests_total\{(.*)\} (\S+)$", page, re.M)
        if 'model="mlp"' in labels and 'code="200"' in labels and 'version=""' not in labels
    )


def rest_infer(client: httpx.Client, url: str) -> str:
    answer = client.post(url + "/v2/models/mlp/infer", json=BODY)
    answer.raise_for_status()
    return str(answer.json()["model_version"])


def grpc_infer(stub: pb_grpc.GRPCInferenceServiceStub) -> str:
    request = pb.ModelInferRequest(model_name="mlp")
    tensor = request.inputs.add(name="input", datatype="FP32", shape=[1, 64])
    del tensor
    request.raw_input_contents.append(X.tobytes())
    return str(stub.ModelInfer(request, timeout=10).model_version)


class Load:
    """Client threads sending mixed REST and gRPC requests until stopped; every answer is
    recorded with the time its request was sent."""

    def __init__(self, server: Workers, clients: int) -> None:
        self.answers: list[tuple[float, str]] = []  # (sent at, version)
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._run, args=(server, i), daemon=True)
            for i in range(clients)
        ]

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(30)

    def _run(self, server: Workers, index: int) -> None:
        while not self._stop.is_set():
            # new connections now and then, so that both workers get this client's requests
            with (
                httpx.Client(timeout=10) as client,
                grpc.insecure_channel(server.grpc_address) as channel,
            ):
                stub = pb_grpc.GRPCInferenceServiceStub(channel)
                for n in range(20):
                    if self._stop.is_set():
                        return
                    sent = time.monotonic()
                    try:
                        if (n + index) % 2:
                            version = rest_infer(client, server.url)
                        else:
                            version = grpc_infer(stub)
                    except Exception as exc:  # recorded: the test counts them
                        self.failures.append(f"{type(exc).__name__}: {exc}")
                        break  # a new connection
                    self.answers.append((sent, version))


@pytest.fixture(scope="module")
def repository() -> Iterator[Path]:
    root = Path(tempfile.mkdtemp(prefix="pyserving-workers-repo-"))
    make_mlp(root / "mlp" / "1" / "model.onnx", seed=1)
    make_mlp(root / "other" / "1" / "model.onnx", seed=3)
    try:
        yield root / "mlp"
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def server(repository: Path) -> Iterator[Workers]:
    process = Workers(repository)
    try:
        process.wait_ready()
        yield process
    finally:
        process.stop()


def test_metrics_count_every_workers_requests_whichever_answers(server: Workers) -> None:
    before = infer_total(server)
    clients = [httpx.Client(timeout=10) for _ in range(10)]
    channels = [grpc.insecure_channel(server.grpc_address) for _ in range(10)]
    try:
        for client, channel in zip(clients, channels, strict=True):
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            for _ in range(50):
                assert rest_infer(client, server.url) == "1"
                assert grpc_infer(stub) == "1"
    finally:
        for client in clients:
            client.close()
        for channel in channels:
            channel.close()
    # a REST answer is counted just after its bytes are written: wait out that instant
    wait_until(lambda: infer_total(server) - before >= 1000, 10, "the last answers counted")
    totals = {infer_total(server) - before for _ in range(12)}
    assert totals == {1000.0}


def test_model_control_applies_in_every_worker_before_it_answers(server: Workers) -> None:
    with httpx.Client(timeout=60) as client:
        client.post(server.url + "/v2/repository/models/mlp/unload").raise_for_status()
    assert {fresh_get(server.url + "/v2/models/mlp/ready").status_code for _ in range(10)} == {400}
    with httpx.Client(timeout=60) as client:
        client.post(server.url + "/v2/repository/models/mlp/load").raise_for_status()
    assert {fresh_get(server.url + "/v2/models/mlp/ready").status_code for _ in range(10)} == {200}


def test_config_reload_applies_in_every_worker_before_it_answers(
    server: Workers, repository: Path
) -> None:
    def reload(*names: str) -> None:
        config = config_pb2.ModelServerConfig()
        for name in names:
            config.model_config_list.config.add(name=name, base_path=str(repository.parent / name))
        with grpc.insecure_channel(server.grpc_address) as channel:
            answer = model_service_pb2_grpc.ModelServiceStub(channel).HandleReloadConfigRequest(
                apis.ReloadConfigRequest(config=config), timeout=60
            )
        assert answer.status.error_code == 0, answer.status.error_message

    reload("mlp", "other")
    assert {fresh_get(server.url + "/v2/models/other/ready").status_code for _ in range(10)} == {
        200
    }
    reload("mlp")  # "other" unloads in every worker before the answer: none says ready
    assert {fresh_get(server.url + "/v2/models/other/ready").status_code for _ in range(10)} == {
        400
    }


def test_a_reload_too_large_for_the_workers_is_refused_and_touches_no_worker(
    server: Workers, repository: Path
) -> None:
    """Red team 4 F1: a ReloadConfig gRPC accepts (under 64 MiB) but too large for the workers
    channel killed the worker that took it, 29 s later; now the caller is refused at once."""
    pids = server.worker_pids()
    config = config_pb2.ModelServerConfig()
    config.model_config_list.config.add(name="mlp", base_path=str(repository) + "/" * (40 << 20))
    options = [("grpc.max_send_message_length", 100 << 20)]
    with grpc.insecure_channel(server.grpc_address, options=options) as channel:
        stub = model_service_pb2_grpc.ModelServiceStub(channel)
        with pytest.raises(grpc.RpcError) as refused:
            stub.HandleReloadConfigRequest(apis.ReloadConfigRequest(config=config), timeout=60)
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert re.search(r"\d+ bytes .* over the \d+-byte limit", refused.value.details())
    assert "the supervisor is gone" not in server.log()
    assert server.worker_pids() == pids
    with httpx.Client(timeout=60) as client:  # model control still goes through every worker
        client.post(server.url + "/v2/repository/models/mlp/load").raise_for_status()


def test_version_swap_under_load_fails_nothing_and_status_leads_answers(
    server: Workers, repository: Path
) -> None:
    staging = repository.parent / "staging-2"
    make_mlp(staging / "model.onnx", seed=2)
    with Load(server, clients=8) as load:
        wait_until(lambda: len(load.answers) > 50, 30, "answers before the swap")
        staging.rename(repository / "2")
        wait_until(
            lambda: _status(server).get("2") == "AVAILABLE", 60, "version 2 AVAILABLE in status"
        )
        available_at = time.monotonic()
        wait_until(lambda: _status(server)["1"] == "END", 60, "version 1 to unload")
        wait_until(
            lambda: sum(s > available_at for s, _ in load.answers) > 200, 30, "answers after"
        )
    assert load.failures == []
    after = {version for sent, version in load.answers if sent > available_at}
    assert after == {"2"}
    assert {version for _, version in load.answers} == {"1", "2"}


def _status(server: Workers) -> dict[str, str]:
    status = fresh_get(server.url + "/v1/models/mlp").json()
    return {s["version"]: s["state"] for s in status["model_version_status"]}


def test_kill_9_of_a_worker_fails_only_its_requests_and_is_replaced(server: Workers) -> None:
    totals: list[float] = []
    stop = threading.Event()

    def scrape() -> None:
        while not stop.is_set():
            with contextlib.suppress(httpx.TransportError):  # it met the killed worker
                totals.append(infer_total(server))
            stop.wait(0.05)

    scraper = threading.Thread(target=scrape, daemon=True)
    scraper.start()
    try:
        with Load(server, clients=4) as load:
            wait_until(lambda: len(load.answers) > 50, 30, "answers before the kill")
            before = server.worker_pids()
            victim = min(before)
            os.kill(victim, signal.SIGKILL)
            killed_at = time.monotonic()
            wait_until(
                lambda: len(server.worker_pids()) == 2 and victim not in server.worker_pids(),
                30,
                f"a replacement; log:\n{server.log()}",
            )
            (replacement,) = server.worker_pids() - before
            wait_until(lambda: f"serving (pid {replacement})" in server.log(), 30, "it to serve")
            replaced_s = time.monotonic() - killed_at
            answered = len(load.answers)
            wait_until(lambda: len(load.answers) > answered + 100, 30, "answers after")
    finally:
        stop.set()
        scraper.join(10)
    print(f"replacement serving {replaced_s:.2f}s after kill -9")
    # each of the 4 clients had at most one request in flight when the worker died
    assert len(load.failures) <= 4, load.failures
    assert totals == sorted(totals)
    assert server.proc.poll() is None


def test_a_second_workers_server_on_the_same_ports_exits_2(server: Workers) -> None:
    result = serve_to_exit(
        f"--rest_api_port={server.port}",
        f"--port={server.grpc_port}",
        "--workers=2",
        "--model_name=mlp",
        "--model_base_path=/nonexistent",
    )
    assert result.returncode == 2, result.stderr
    assert f"cannot listen for REST on 127.0.0.1:{server.port}" in result.stderr
    assert fresh_get(server.url + "/v2/health/ready").status_code == 200


def test_sigterm_drains_every_worker_and_exits_0(server: Workers) -> None:
    pids = server.worker_pids()
    assert server.stop() == 0
    for pid in pids:
        assert not Path(f"/proc/{pid}").exists() or _is_zombie(pid)


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"
    except OSError:
        return True
