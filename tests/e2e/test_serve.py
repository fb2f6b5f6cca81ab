"""A real `pyserving serve` process, real sockets, real clients (httpx and tritonclient.http)."""

from __future__ import annotations

import shutil
import threading
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from pyserving.demo import make_mlp, write_demo_repository
from tests.e2e.server import ServerProcess
from tests.fakes import wait_until
from tests.triton_http import triton_http_client


def reference(model_path: Path, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    return write_demo_repository(tmp_path_factory.mktemp("repo"))


@pytest.fixture(scope="module")
def mlp_server(repo):
    server = ServerProcess("--model_name=mlp", f"--model_base_path={repo / 'mlp'}")
    server.wait_ready()
    yield server
    assert server.stop() == 0, server.log()


def test_tf_rest_row_and_columnar_predict_match_onnxruntime(mlp_server, repo):
    x = np.random.default_rng(1).standard_normal((3, 64)).astype(np.float32)
    (expected,) = reference(repo / "mlp" / "2" / "model.onnx", {"input": x})
    url = f"{mlp_server.url}/v1/models/mlp:predict"
    rows = httpx.post(url, json={"instances": x.tolist()})
    assert rows.status_code == 200, rows.text
    np.testing.assert_allclose(rows.json()["predictions"], expected, rtol=1e-5, atol=1e-6)
    columns = httpx.post(url, json={"inputs": {"input": x.tolist()}})
    assert columns.status_code == 200, columns.text
    np.testing.assert_allclose(columns.json()["outputs"], expected, rtol=1e-5, atol=1e-6)


def test_tf_rest_status_and_metadata(mlp_server):
    status = httpx.get(f"{mlp_server.url}/v1/models/mlp").json()
    assert status["model_version_status"][0] == {
        "version": "2",
        "state": "AVAILABLE",
        "status": {"error_code": "OK", "error_message": ""},
    }
    meta = httpx.get(f"{mlp_server.url}/v1/models/mlp/metadata").json()
    signature = meta["metadata"]["signature_def"]["signature_def"]["serving_default"]
    assert signature["inputs"]["input"]["dtype"] == "DT_FLOAT"


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_tritonclient_http_infer_matches_onnxruntime(mlp_server, repo, binary):
    x = np.random.default_rng(2).standard_normal((4, 64)).astype(np.float32)
    (expected,) = reference(repo / "mlp" / "2" / "model.onnx", {"input": x})
    with triton_http_client(mlp_server.address) as client:
        assert client.is_server_live() and client.is_server_ready()
        assert client.is_model_ready("mlp")
        inp = triton.InferInput("input", list(x.shape), "FP32")
        inp.set_data_from_numpy(x, binary_data=binary)
        out = triton.InferRequestedOutput("output", binary_data=binary)
        result = client.infer("mlp", [inp], outputs=[out])
    np.testing.assert_allclose(result.as_numpy("output"), expected, rtol=1e-5, atol=1e-6)
    assert result.get_response()["model_version"] == "2"


def test_tritonclient_unknown_model_is_404(mlp_server):
    inp = triton.InferInput("input", [1, 64], "FP32")
    inp.set_data_from_numpy(np.zeros((1, 64), np.float32))
    with (
        triton_http_client(mlp_server.address) as client,
        pytest.raises(InferenceServerException) as info,
    ):
        client.infer("nope", [inp])
    assert info.value.status() == "404"


def test_bad_requests_get_4xx_naming_the_problem_and_server_keeps_serving(mlp_server):
    url = mlp_server.url
    bad = [
        ("/v1/models/mlp:predict", b"{not json"),
        ("/v1/models/mlp:predict", b'{"instances": [[1, 2, 3]]}'),
        ("/v1/models/mlp:predict", b'{"instances": [["a", "b"]]}'),
        ("/v1/models/mlp:predict", b'{"instances": ' + b"[" * 200 + b"]" * 200 + b"}"),
        ("/v1/models/nope:predict", b'{"instances": [[1]]}'),
        ("/v1/models/mlp/versions/9:predict", b'{"instances": [[1]]}'),
        ("/v2/models/mlp/infer", b"\x00\xff garbage \x13"),
        (
            "/v2/models/mlp/infer",
            b'{"inputs": [{"name": "input", "shape": [1, 3],'
            b' "datatype": "FP32", "data": [1, 2, 3]}]}',
        ),
        (
            "/v2/models/mlp/infer",
            b'{"inputs": [{"name": "input", "shape": [1, 64],'
            b' "datatype": "INT64", "data": [' + b",".join([b"1"] * 64) + b"]}]}",
        ),
        ("/v2/models/mlp/infer", b'{"inputs": "x"}'),
    ]
    with httpx.Client(base_url=url) as client:
        for _ in range(30):
            for path, body in bad:
                response = client.post(path, content=body)
                assert 400 <= response.status_code < 500, (path, body[:60], response.text)
                assert response.json()["error"], response.text
        shape = client.post(bad[7][0], content=bad[7][1]).json()["error"]
        assert "input" in shape and "64" in shape
        dtype = client.post(bad[8][0], content=bad[8][1]).json()["error"]
        assert "FP32" in dtype and "INT64" in dtype
        good = client.post("/v1/models/mlp:predict", json={"instances": [[0.0] * 64]})
        assert good.status_code == 200


def test_demo_serves_two_models_and_stops_cleanly_on_sigterm(tmp_path):
    server = ServerProcess("--demo")
    try:
        server.wait_ready()
        a = np.ones((2, 4), np.float32)
        b = np.full((2, 4), 2.0, np.float32)
        inputs = []
        for name, value in (("a", a), ("b", b)):
            inp = triton.InferInput(name, [2, 4], "FP32")
            inp.set_data_from_numpy(value)
            inputs.append(inp)
        with triton_http_client(server.address) as client:
            result = client.infer("twoio", inputs)
            assert client.is_model_ready("mlp", "1") and client.is_model_ready("mlp", "2")
        np.testing.assert_allclose(result.as_numpy("sum"), a + b)
        assert result.as_numpy("max_index").shape == (2,)
    finally:
        assert server.stop() == 0, server.log()
    assert "REST API listening on http://127.0.0.1" in server.log()


@pytest.mark.slow
def test_new_version_swaps_in_under_load_without_a_failed_request(tmp_path):
    base = tmp_path / "mlp"
    make_mlp(base / "1" / "model.onnx", seed=1)
    server = ServerProcess(
        "--model_name=mlp", f"--model_base_path={base}", "--file_system_poll_wait_seconds=0.1"
    )
    server.wait_ready()
    stop = threading.Event()
    failures: list[str] = []
    versions: set[str] = set()
    counts = [0]
    body = {"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": [0.5] * 64}]}

    def client() -> None:
        with httpx.Client(base_url=server.url, timeout=30) as http:
            while not stop.is_set():
                response = http.post("/v2/models/mlp/infer", json=body)
                counts[0] += 1
                if response.status_code != 200:
                    failures.append(f"{response.status_code} {response.text}")
                else:
                    versions.add(response.json()["model_version"])

    threads = [threading.Thread(target=client) for _ in range(8)]
    try:
        for t in threads:
            t.start()
        wait_until(lambda: counts[0] > 50, 30, "traffic before the swap")
        staging = tmp_path / "staging"
        make_mlp(staging / "model.onnx", seed=2)
        shutil.move(staging, base / "2")  # publish atomically
        wait_until(lambda: "2" in versions, 30, "version 2 answering")
        status = lambda: httpx.get(f"{server.url}/v1/models/mlp").json()  # noqa: E731
        wait_until(
            lambda: [v["state"] for v in status()["model_version_status"]] == ["AVAILABLE", "END"],
            30,
            "version 1 unloaded",
        )
        settled = counts[0]
        wait_until(lambda: counts[0] > settled + 50, 30, "traffic after the swap")
    finally:
        stop.set()
        for t in threads:
            t.join(30)
        assert server.stop() == 0, server.log()
    assert failures == []
    assert versions == {"1", "2"}


@pytest.mark.slow
def test_corrupt_new_version_keeps_old_serving_and_status_shows_error(tmp_path):
    base = tmp_path / "mlp"
    make_mlp(base / "1" / "model.onnx", seed=1)
    server = ServerProcess(
        "--model_name=mlp",
        f"--model_base_path={base}",
        "--file_system_poll_wait_seconds=0.1",
        "--max_num_load_retries=1",
        "--load_retry_interval_micros=1000",
    )
    try:
        server.wait_ready()
        (base / "2").mkdir()
        (base / "2" / "model.onnx").write_bytes(b"this is not an onnx model")

        def version_2():
            entries = httpx.get(f"{server.url}/v1/models/mlp").json()["model_version_status"]
            return next((e for e in entries if e["version"] == "2"), None)

        wait_until(lambda: (version_2() or {}).get("state") == "END", 30, "v2 failed")
        assert version_2()["status"]["error_message"], version_2()
        assert version_2()["status"]["error_code"] != "OK"
        body = {"instances": [[0.0] * 64]}
        response = httpx.post(f"{server.url}/v1/models/mlp:predict", json=body)
        assert response.status_code == 200
        v2 = httpx.post(f"{server.url}/v1/models/mlp/versions/2:predict", json=body)
        assert v2.status_code == 404
        assert "model=mlp version=2 state=END" in server.log()
    finally:
        assert server.stop() == 0, server.log()


def test_bad_flag_or_missing_config_exits_non_zero_with_one_line(tmp_path):
    for flags in (["--model_config_file", str(tmp_path / "missing.yaml")], ["--no_such_flag=1"]):
        server = ServerProcess(*flags)
        server.proc.wait(30)
        assert server.stop() != 0
        assert server.log().strip(), "no reason given"
