"""A real `pyserving serve --enable_batching` process with real HTTP clients and ONNX models."""

from __future__ import annotations

import shutil
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort
import pytest

from pyserving.demo import make_mlp
from tests.e2e.server import ServerProcess
from tests.fakes import wait_until

ROWS_PER_BATCH = 8


def reference(model: Path, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    return session.run(None, {"input": x})[0]


def infer_body(x: np.ndarray) -> dict:
    return {
        "inputs": [
            {
                "name": "input",
                "shape": list(x.shape),
                "datatype": "FP32",
                "data": x.ravel().tolist(),
            }
        ]
    }


@pytest.fixture
def params_file(tmp_path: Path) -> Path:
    # A batch runs only when full (the timeout is longer than any client waits), so requests
    # answer only if the server really merges ROWS_PER_BATCH concurrent requests into one call.
    path = tmp_path / "batching.pbtxt"
    path.write_text(
        f"max_batch_size {{ value: {ROWS_PER_BATCH} }}\n"
        "batch_timeout_micros { value: 600000000 }\n"
        "num_batch_threads { value: 2 }\n"
    )
    return path


@pytest.mark.slow
def test_concurrent_requests_are_merged_and_each_gets_its_own_rows(tmp_path, params_file):
    model = make_mlp(tmp_path / "mlp" / "1" / "model.onnx", seed=1)
    server = ServerProcess(
        "--model_name=mlp",
        f"--model_base_path={tmp_path / 'mlp'}",
        "--enable_batching",
        f"--batching_parameters_file={params_file}",
    )
    try:
        server.wait_ready()
        rng = np.random.default_rng(3)
        rounds = 3
        inputs = rng.standard_normal((rounds, ROWS_PER_BATCH, 1, 64)).astype(np.float32)
        results: dict[tuple[int, int], np.ndarray] = {}
        failures: list[str] = []
        barrier = threading.Barrier(ROWS_PER_BATCH)

        def client(index: int) -> None:
            with httpx.Client(base_url=server.url, timeout=20) as http:
                for r in range(rounds):
                    barrier.wait(30)
                    response = http.post("/v2/models/mlp/infer", json=infer_body(inputs[r, index]))
                    if response.status_code != 200:
                        failures.append(f"{response.status_code} {response.text}")
                        continue
                    output = response.json()["outputs"][0]
                    results[r, index] = np.array(output["data"], np.float32).reshape(
                        output["shape"]
                    )

        threads = [threading.Thread(target=client, args=(i,)) for i in range(ROWS_PER_BATCH)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        assert failures == []
        expected = reference(model, inputs.reshape(-1, 64)).reshape(rounds, ROWS_PER_BATCH, 1, -1)
        for (r, index), got in results.items():
            np.testing.assert_allclose(got, expected[r, index], rtol=1e-5, atol=1e-5)
        assert len(results) == rounds * ROWS_PER_BATCH

        too_large = np.zeros((ROWS_PER_BATCH + 1, 64), np.float32)
        response = httpx.post(
            f"{server.url}/v1/models/mlp:predict", json={"instances": too_large.tolist()}
        )
        assert response.status_code == 400
        assert response.json() == {
            "error": f"Task size {ROWS_PER_BATCH + 1} is larger than maximum batch size"
            f" {ROWS_PER_BATCH}"
        }
    finally:
        assert server.stop() == 0, server.log()


def test_parameters_file_without_enable_batching_exits_with_the_reason(tmp_path, params_file):
    make_mlp(tmp_path / "mlp" / "1" / "model.onnx", seed=1)
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pyserving",
            "serve",
            "--rest_api_port=0",
            "--port=0",
            f"--model_base_path={tmp_path / 'mlp'}",
            f"--batching_parameters_file={params_file}",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "batching_parameters_file is set without setting" in done.stderr


@pytest.mark.slow
def test_version_swap_under_batched_load_loses_nothing(tmp_path):
    base = tmp_path / "mlp"
    models = {"1": make_mlp(base / "1" / "model.onnx", seed=1)}
    params = tmp_path / "batching.yaml"
    params.write_text("max_batch_size: 16\nbatch_timeout_micros: 2000\nnum_batch_threads: 2\n")
    server = ServerProcess(
        "--model_name=mlp",
        f"--model_base_path={base}",
        "--file_system_poll_wait_seconds=0.1",
        "--enable_batching=true",
        f"--batching_parameters_file={params}",
    )
    server.wait_ready()
    stop = threading.Event()
    failures: list[str] = []
    answers: list[tuple[str, np.ndarray, np.ndarray]] = []  # (version, input, output)

    def client(seed: int) -> None:
        rng = np.random.default_rng(seed)
        with httpx.Client(base_url=server.url, timeout=30) as http:
            while not stop.is_set():
                x = rng.standard_normal((1 + seed % 3, 64)).astype(np.float32)
                response = http.post("/v2/models/mlp/infer", json=infer_body(x))
                if response.status_code != 200:
                    failures.append(f"{response.status_code} {response.text}")
                    continue
                body = response.json()
                output = body["outputs"][0]
                y = np.array(output["data"], np.float32).reshape(output["shape"])
                answers.append((body["model_version"], x, y))

    def answered(version: str) -> int:
        return sum(1 for v, _, _ in answers if v == version)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(16)]
    try:
        for thread in threads:
            thread.start()
        wait_until(lambda: len(answers) > 50, 30, "traffic before the swap")
        staging = tmp_path / "staging"
        make_mlp(staging / "model.onnx", seed=2)
        shutil.move(staging, base / "2")  # publish atomically
        models["2"] = base / "2" / "model.onnx"
        wait_until(lambda: answered("2") > 0, 30, "version 2 answering")
        status = lambda: httpx.get(f"{server.url}/v1/models/mlp").json()  # noqa: E731
        wait_until(
            lambda: [v["state"] for v in status()["model_version_status"]] == ["AVAILABLE", "END"],
            30,
            "version 1 unloaded",
        )
        settled = answered("2")
        wait_until(lambda: answered("2") > settled + 50, 30, "traffic after the swap")
    finally:
        stop.set()
        for thread in threads:
            thread.join(30)
        assert server.stop() == 0, server.log()
    assert failures == []
    assert {v for v, _, _ in answers} == {"1", "2"}
    sessions = {
        v: ort.InferenceSession(str(p), providers=["CPUExecutionProvider"])
        for v, p in models.items()
    }
    for version, x, y in answers:
        expected = sessions[version].run(None, {"input": x})[0]
        np.testing.assert_allclose(y, expected, rtol=1e-4, atol=1e-5)
