"""The metrics page of a real server after a known mix of requests: exact counts."""

from __future__ import annotations

import collections

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from pyserving.demo import make_mlp
from tests.e2e.ops_models import make_gather
from tests.e2e.server import ServerProcess

ROW = [0.5, -1.0, 2.0, 0.25]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("metrics")
    make_mlp(root / "mlp" / "1" / "model.onnx", seed=1, dims=(4, 8, 3))
    make_mlp(root / "batched" / "1" / "model.onnx", seed=2, dims=(4, 8, 3))
    make_gather(root / "gather" / "1")
    config = root / "models.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "models": [
                    {"name": "mlp", "base_path": str(root / "mlp")},
                    {"name": "gather", "base_path": str(root / "gather")},
                    {
                        "name": "batched",
                        "base_path": str(root / "batched"),
                        "batching": {"max_batch_size": 8, "batch_timeout_micros": 1000},
                    },
                ]
            }
        )
    )
    process = ServerProcess(f"--model_config_file={config}", "--file_system_poll_wait_seconds=0")
    process.wait_ready()
    yield process
    assert process.stop() == 0, process.log()


def samples(server: ServerProcess) -> dict[str, list]:
    response = httpx.get(server.url + "/monitoring/prometheus/metrics", timeout=10)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=")
    out: dict[str, list] = collections.defaultdict(list)
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            out[sample.name].append(sample)
    return out


def test_counters_match_a_known_mix_of_requests_exactly(server):
    url = server.url
    with httpx.Client(base_url=url, timeout=30) as client:
        for _ in range(3):
            assert client.post("/v1/models/mlp:predict", json={"instances": [ROW]}).is_success
        v2_body = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 4], "data": ROW}]}
        for _ in range(2):
            assert client.post("/v2/models/mlp/infer", json=v2_body).is_success
        for _ in range(2):  # wrong shape: rejected by the version that would run it
            response = client.post("/v1/models/mlp:predict", json={"instances": [[1.0, 2.0]]})
            assert response.status_code == 400
        response = client.post("/v1/models/mlp:predict", json={"rows": []})  # before any version
        assert response.status_code == 400
        assert (
            client.post("/v1/models/mlp/versions/7:predict", json={"instances": [ROW]}).status_code
            == 404
        )
        assert client.get("/v1/models/mlp").status_code == 200
        for _ in range(2):  # onnxruntime raises inside run: 500 with its message
            response = client.post("/v1/models/gather:predict", json={"instances": [9]})
            assert response.status_code == 500
            assert "out of bounds" in response.json()["error"] or "idx" in response.json()["error"]
        response = client.post("/v1/models/gather:predict", json={"instances": [2, -1]})
        assert response.json() == {"predictions": [30.0, 40.0]}
        assert client.post("/v1/models/ghost:predict", json={"instances": [ROW]}).status_code == 404
        assert client.post("/v2/models/ghost2/infer", json=v2_body).status_code == 404
        for _ in range(4):
            assert client.post("/v1/models/batched:predict", json={"instances": [ROW]}).is_success
        assert client.post("/v1/models/batched:predict", json={"instances": [ROW] * 3}).is_success
        # not counted: health, server metadata, the metrics page itself
        assert client.get("/v2/health/ready").status_code == 200
        assert client.get("/v2").status_code == 200

    found = samples(server)
    counts = {
        (s.labels["model"], s.labels["version"], s.labels["api"], s.labels["code"]): s.value
        for s in found["pyserving_requests_total"]
    }
    assert counts == {
        ("mlp", "1", "rest", "200"): 5,
        ("mlp", "1", "rest", "400"): 2,
        ("mlp", "", "rest", "400"): 1,
        ("mlp", "", "rest", "404"): 1,
        ("mlp", "", "rest", "200"): 1,
        ("gather", "1", "rest", "500"): 2,
        ("gather", "1", "rest", "200"): 1,
        ("", "", "rest", "404"): 2,
        ("batched", "1", "rest", "200"): 5,
    }
    durations = {
        s.labels["model"]: s.value for s in found["pyserving_request_duration_seconds_count"]
    }
    assert durations == {"mlp": 10, "gather": 3, "": 2, "batched": 5}
    # every batch that ran: 4 of one row, 1 of three rows (sequential requests never merge)
    batches = {s.labels["model"]: s.value for s in found["pyserving_batch_size_count"]}
    rows = {s.labels["model"]: s.value for s in found["pyserving_batch_size_sum"]}
    assert batches == {"batched": 5}
    assert rows == {"batched": 7}
    queued = {s.labels["model"]: s.value for s in found["pyserving_queue_duration_seconds_count"]}
    assert queued == {"batched": 5}


def test_model_state_gauge_and_load_durations_come_from_the_lifecycle(server):
    found = samples(server)
    states = {
        (s.labels["model"], s.labels["state"]): s.value for s in found["pyserving_model_versions"]
    }
    for model in ("mlp", "gather", "batched"):
        assert states[(model, "AVAILABLE")] == 1
        assert states[(model, "LOADING")] == 0
        assert states[(model, "END")] == 0
    loads = {s.labels["model"]: s.value for s in found["pyserving_load_duration_seconds_count"]}
    assert loads == {"mlp": 1, "gather": 1, "batched": 1}
    assert [s.value for s in found["pyserving_pending_requests"]] == [0]
    assert not [name for name in found if name.endswith("_created")]


def test_metrics_routes_answer_get_only(server):
    assert httpx.get(server.url + "/metrics", timeout=10).text.startswith("# HELP")
    response = httpx.post(server.url + "/metrics", timeout=10)
    assert response.status_code == 405
    assert response.headers["allow"] == "GET"
