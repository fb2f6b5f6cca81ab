"""Model config end to end against real `pyserving serve` processes: TF text proto vs YAML, config
file reload under load, labels and the traffic split over REST, warmup, and the V2 repository API
(tritonclient.http) with and without --enable-model-control."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from tritonclient.utils import InferenceServerException

from pyserving.demo import make_mlp
from tests.e2e.server import ServerProcess
from tests.fakes import wait_until
from tests.triton_http import triton_http_client

pytestmark = pytest.mark.slow

X = np.linspace(-1.0, 1.0, 64, dtype=np.float32).reshape(1, 64).tolist()
V2_BODY = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 64], "data": X[0]}]}


def repository(root: Path) -> Path:
    for name, versions in (("mlp", (1, 2)), ("b", (1,)), ("c", (1,))):
        for version in versions:
            make_mlp(root / name / str(version) / "model.onnx", seed=version)
    return root


def predict(url: str, path: str) -> httpx.Response:
    return httpx.post(f"{url}/v1/models/{path}:predict", json={"instances": X}, timeout=10)


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return repository(tmp_path_factory.mktemp("config-repo"))


def serve(*flags: str) -> ServerProcess:
    proc = ServerProcess(*flags)
    try:
        proc.wait_ready()
    except BaseException:
        proc.stop()
        raise
    return proc


def test_text_proto_and_yaml_configs_serve_identically(root: Path) -> None:
    (root / "models.config").write_text(
        'model_config_list { config { name: "mlp" base_path: "mlp" model_platform: "onnx"'
        " model_version_policy { latest { num_versions: 2 } }"
        ' version_labels { key: "stable" value: 1 } version_labels { key: "canary" value: 2 } } }'
    )
    (root / "models.yaml").write_text(
        "models:\n  - {name: mlp, base_path: mlp, platform: onnx, version_policy: {latest: 2},"
        " labels: {stable: 1, canary: 2}}\n"
    )
    answers = []
    for config in ("models.config", "models.yaml"):
        proc = serve(f"--model_config_file={root / config}")
        try:
            seen = {}
            for path in ("mlp", "mlp/labels/stable", "mlp/labels/canary", "mlp/versions/1"):
                response = predict(proc.url, path)
                assert response.status_code == 200, response.text
                seen[path] = response.json()
            status = httpx.get(f"{proc.url}/v1/models/mlp/labels/canary").json()
            seen["status"] = status
            seen["list"] = httpx.get(f"{proc.url}/v1/models").json()
            answers.append(seen)
        finally:
            assert proc.stop() == 0, proc.log()
    assert answers[0] == answers[1]
    assert [v["version"] for v in answers[0]["status"]["model_version_status"]] == ["2"]
    assert answers[0]["mlp/labels/stable"] == answers[0]["mlp/versions/1"]
    assert answers[0]["mlp/labels/canary"] == answers[0]["mlp"]


@pytest.fixture
def controlled(root: Path, tmp_path: Path) -> Iterator[tuple[ServerProcess, Path]]:
    config = tmp_path / "models.yaml"
    config.write_text(
        f"models:\n  - {{name: mlp, base_path: {root / 'mlp'}, version_policy: all,"
        " labels: {stable: 1, canary: 2}, traffic: {stable: 90, canary: 10}}\n"
        f"  - {{name: b, base_path: {root / 'b'}}}\n"
    )
    proc = serve(
        f"--model_config_file={config}",
        "--model_config_file_poll_wait_seconds=0.1",
        "--enable_model_control",
        "--max_num_load_retries=0",
    )
    try:
        yield proc, config
    finally:
        assert proc.stop() == 0, proc.log()


def test_config_file_edit_adds_and_removes_models_under_load(controlled, root: Path) -> None:
    proc, config = controlled
    stop = threading.Event()
    results: Counter[int] = Counter()

    def client() -> None:
        with httpx.Client(timeout=10) as http:
            while not stop.is_set():
                response = http.post(f"{proc.url}/v2/models/mlp/versions/1/infer", json=V2_BODY)
                results[response.status_code] += 1

    threads = [threading.Thread(target=client) for _ in range(3)]
    for thread in threads:
        thread.start()
    try:
        config.write_text(
            f"models:\n  - {{name: mlp, base_path: {root / 'mlp'}, version_policy: all,"
            " labels: {stable: 1, canary: 2}}\n"
            f"  - {{name: c, base_path: {root / 'c'}}}\n"
        )
        wait_until(lambda: predict(proc.url, "c").status_code == 200, 30, "model c served")
        wait_until(lambda: predict(proc.url, "b").status_code == 404, 30, "model b gone")
        config.write_text("models:\n  - {name: mlp, base_path: [broken\n")
        wait_until(lambda: "rejected" in proc.log(), 30, "the malformed edit logged")
        assert predict(proc.url, "c").status_code == 200
        assert predict(proc.url, "b").status_code == 404
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert set(results) == {200}, results
    assert "model config file" in proc.log() and "the model config in force stays" in proc.log()


def test_traffic_split_over_rest_and_label_status(controlled) -> None:
    proc, _ = controlled
    counts: Counter[str] = Counter()
    with httpx.Client(timeout=10) as http:
        for _ in range(2000):
            response = http.post(f"{proc.url}/v2/models/mlp/infer", json=V2_BODY)
            assert response.status_code == 200, response.text
            counts[response.json()["model_version"]] += 1
    assert abs(counts["2"] / 2000 - 0.10) <= 0.03, counts
    status = httpx.get(f"{proc.url}/v1/models/mlp/labels/stable").json()
    assert [v["version"] for v in status["model_version_status"]] == ["1"]
    assert httpx.get(f"{proc.url}/v1/models/mlp/labels/nope").status_code == 404


def test_repository_api_loads_and_unloads_with_model_control(controlled) -> None:
    proc, _ = controlled
    with triton_http_client(proc.address) as client:
        client.unload_model("b")
        assert not client.is_model_ready("b")
        index = {(m["name"], m.get("version", "")): m for m in client.get_model_repository_index()}
        assert index[("b", "1")]["state"] == "UNAVAILABLE"
        time.sleep(0.3)  # several config and base-path polls: an explicit unload holds
        assert not client.is_model_ready("b")
        client.load_model("b")
        assert client.is_model_ready("b")
        with pytest.raises(InferenceServerException, match="not in the model config"):
            client.load_model("nope")


def test_repository_api_is_refused_without_model_control(root: Path) -> None:
    proc = serve(f"--model_base_path={root / 'b'}", "--model_name=b")
    try:
        with triton_http_client(proc.address) as client:
            with pytest.raises(InferenceServerException, match="--enable-model-control"):
                client.unload_model("b")
            response = httpx.post(f"{proc.url}/v2/repository/models/b/load")
            assert response.status_code == 403
            assert [m["name"] for m in client.get_model_repository_index()] == ["b"]
            assert client.is_model_ready("b")
    finally:
        assert proc.stop() == 0, proc.log()


def test_warmup_runs_before_available_and_a_failing_one_keeps_the_old_version(
    tmp_path: Path,
) -> None:
    for version in (1, 2):
        make_mlp(tmp_path / "m" / str(version) / "model.onnx", seed=version)
    (tmp_path / "m" / "1" / "warmup").mkdir()
    (tmp_path / "m" / "1" / "warmup" / "ok.json").write_text(json.dumps(V2_BODY))
    (tmp_path / "m" / "2" / "warmup").mkdir()
    bad = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 3], "data": [1, 2, 3]}]}
    (tmp_path / "m" / "2" / "warmup" / "bad.json").write_text(json.dumps(bad))
    config = tmp_path / "models.yaml"
    config.write_text(
        f"models:\n  - {{name: m, base_path: {tmp_path / 'm'}, version_policy: all}}\n"
    )
    proc = serve(
        f"--model_config_file={config}",
        "--num_request_iterations_for_warmup=3",
        "--max_num_load_retries=0",
    )
    try:
        log = proc.log()
        warmed = log.index("model=m version=1 warmup: 1 request(s) x 3 iteration(s)")
        assert warmed < log.index("model=m version=1 state=AVAILABLE")
        wait_until(lambda: "warmup/bad.json" in proc.log(), 30, "version 2 failing its warmup")
        assert 'input "input": expected FP32 [-1, 64], got FP32 [1, 3]' in proc.log()
        response = httpx.post(f"{proc.url}/v2/models/m/infer", json=V2_BODY)
        assert response.status_code == 200 and response.json()["model_version"] == "1"
    finally:
        assert proc.stop() == 0, proc.log()
