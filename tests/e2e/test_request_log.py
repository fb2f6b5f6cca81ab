"""Sampled request logs of a real `pyserving serve` process (issue 22)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from pyserving.demo import make_mlp
from tests.e2e.server import ServerProcess

REPLAY = Path(__file__).parents[2] / "examples" / "replay_request_log.py"
ROWS = [[0.5, -1.0, 2.0, 0.25], [1.0, 2.0, 3.0, 4.0], [-0.5, 0.0, 0.5, 1.5]]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("request-log")
    make_mlp(root / "mlp" / "1" / "model.onnx", seed=1, dims=(4, 8, 3))
    (root / "not-a-dir").write_text("a file: no directory can be made under it, even by root")
    config = root / "models.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "models": [
                    {
                        "name": "mlp",
                        "base_path": str(root / "mlp"),
                        "logging": {"sampling_rate": 1.0, "path": "logs"},
                    },
                    {
                        "name": "unwritable",
                        "base_path": str(root / "mlp"),
                        "logging": {"sampling_rate": 1.0, "path": "not-a-dir/logs"},
                    },
                ]
            }
        )
    )
    proc = ServerProcess(f"--model_config_file={config}")
    proc.root = root
    try:
        proc.wait_ready()
        yield proc
    finally:
        assert proc.stop() == 0, proc.log()


def infer(url: str, model: str, rows: list[list[float]]) -> dict:
    body = {
        "inputs": [{"name": "input", "datatype": "FP32", "shape": [len(rows), 4], "data": rows}]
    }
    response = httpx.post(f"{url}/v2/models/{model}/infer", json=body, timeout=30)
    assert response.status_code == 200, response.text
    return response.json()


def read_lines(path: Path, count: int, timeout_s: float = 30.0) -> list[dict]:
    """The log's lines once it holds `count` of them (the writer is a background thread)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if path.exists():
            lines = path.read_text().splitlines()
            if len(lines) >= count:
                return [json.loads(line) for line in lines]
        time.sleep(0.02)
    raise AssertionError(f"{path} did not get {count} lines")


def dropped(url: str, model: str) -> float:
    text = httpx.get(url + "/monitoring/prometheus/metrics", timeout=10).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if (
                sample.name == "pyserving_request_logs_dropped_total"
                and sample.labels.get("model") == model
            ):
                return sample.value
    return 0.0


def test_every_request_is_logged_with_what_was_sent_and_answered_issue_22(server):
    answers = [infer(server.url, "mlp", [row]) for row in ROWS]
    answers.append(infer(server.url, "mlp", ROWS))
    lines = read_lines(server.root / "logs" / "mlp.jsonl", len(answers))
    assert len(lines) == len(answers)
    sent = [[row] for row in ROWS] + [ROWS]
    for line, rows, answer in zip(lines, sent, answers, strict=True):
        assert line["model"] == "mlp" and line["version"] == 1
        assert line["protocol"] == "v2-rest" and line["status"] == "OK"
        assert line["latency_s"] >= 0 and line["time"] > 0
        (logged_in,) = line["inputs"]
        assert logged_in["name"] == "input" and logged_in["datatype"] == "FP32"
        assert logged_in["shape"] == [len(rows), 4]
        assert np.array_equal(np.float32(logged_in["data"]), np.float32(rows).ravel())
        (logged_out,) = line["outputs"]
        (answered,) = answer["outputs"]
        assert logged_out["name"] == answered["name"] and logged_out["shape"] == answered["shape"]
        assert np.array_equal(np.float32(logged_out["data"]), np.float32(answered["data"]))


def test_an_unwritable_log_drops_lines_never_requests_issue_22(server):
    before = dropped(server.url, "unwritable")
    for row in ROWS:
        infer(server.url, "unwritable", [row])  # asserts 200
    deadline = time.monotonic() + 30
    while dropped(server.url, "unwritable") < before + len(ROWS):
        assert time.monotonic() < deadline, "the drop counter did not rise"
        time.sleep(0.02)


def test_the_replay_script_sends_a_log_again_and_checks_the_answers_issue_22(server):
    infer(server.url, "mlp", [ROWS[0]])
    log = server.root / "logs" / "mlp.jsonl"
    read_lines(log, 1)
    done = subprocess.run(
        [sys.executable, str(REPLAY), str(log), "--url", server.url, "--check"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "differing 0" in done.stdout and "failed 0" in done.stdout
