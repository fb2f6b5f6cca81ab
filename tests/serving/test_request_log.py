"""Request-log settings (YAML and TF's logging_config) and the writer's back-pressure (issue 22)."""

from __future__ import annotations

import json
import re
import threading

import numpy as np
import pytest

from pyserving import metrics
from pyserving.serving import request_log
from pyserving.serving.config import ConfigError
from pyserving.serving.config_proto import parse_text_proto
from pyserving.serving.config_yaml import parse_config
from pyserving.serving.request_log import LogEntry, RequestLogConfig, RequestLogs


def test_yaml_logging_key_becomes_the_models_request_log_issue_22(tmp_path):
    config = parse_config(
        {
            "models": [
                {
                    "name": "m",
                    "base_path": "/x",
                    "logging": {"sampling_rate": 0.25, "path": "logs", "max_files": 2},
                }
            ]
        },
        tmp_path,
    )
    assert request_log.configs_of(config.models) == {
        "m": RequestLogConfig(0.25, str(tmp_path / "logs"), "m", max_files=2)
    }


@pytest.mark.parametrize(
    ("logging", "message"),
    [
        ({"sampling_rate": 2, "path": "x"}, "sampling_rate must be a number from 0 to 1"),
        ({"sampling_rate": 0.5}, "logging.path (the log directory) is required"),
        ({"sampling_rate": 0.5, "path": "x", "rate": 1}, "unknown logging key 'rate'"),
        ({"sampling_rate": 0.5, "path": "x", "max_files": 0}, "max_files must be an integer"),
        ("yes", "logging must be a mapping"),
    ],
)
def test_bad_logging_settings_name_the_problem_issue_22(tmp_path, logging, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        parse_config({"models": [{"name": "m", "base_path": "/x", "logging": logging}]}, tmp_path)


def test_tf_logging_config_maps_onto_the_same_settings_issue_22(tmp_path):
    config = parse_text_proto(
        'model_config_list { config { name: "m" base_path: "/x" logging_config {'
        ' log_collector_config { filename_prefix: "logs/m-requests" }'
        " sampling_config { sampling_rate: 0.5 } } } }",
        tmp_path,
    )
    assert request_log.configs_of(config.models) == {
        "m": RequestLogConfig(0.5, str(tmp_path / "logs"), "m-requests")
    }


def entry(value: float) -> LogEntry:
    return LogEntry(
        1.0,
        "slow",
        1,
        "python",
        {"x": np.array([value], dtype=np.float32)},
        {"y": np.array([b"ok"], dtype=object)},
        "OK",
        0.001,
    )


def test_a_slow_writer_drops_lines_and_never_blocks_issue_22(tmp_path, monkeypatch):
    entered, release = threading.Event(), threading.Event()
    encode = request_log.encode

    def slow_encode(item: LogEntry) -> bytes:
        entered.set()
        release.wait(30)
        return encode(item)

    monkeypatch.setattr(request_log, "encode", slow_encode)
    monkeypatch.setattr(request_log, "_MAX_QUEUED", 1)
    logs = RequestLogs()
    logs.configure({"slow": RequestLogConfig(1.0, str(tmp_path), "slow")})
    log = logs.models["slow"]
    counter = metrics.REQUEST_LOGS_DROPPED.labels("slow")
    before = counter._value.get()
    log.offer(entry(1.0))
    assert entered.wait(30)  # the writer holds the first line
    log.offer(entry(2.0))  # queued: the queue is full now
    log.offer(entry(3.0))  # dropped at once
    assert counter._value.get() == before + 1
    release.set()
    logs.close()
    lines = [json.loads(line) for line in (tmp_path / "slow.jsonl").read_text().splitlines()]
    assert [line["inputs"][0]["data"] for line in lines] == [[1.0], [2.0]]
    assert lines[0]["outputs"] == [{"name": "y", "shape": [1], "datatype": "BYTES", "data": ["ok"]}]


def test_files_rotate_at_max_file_bytes_issue_22(tmp_path):
    logs = RequestLogs()
    logs.configure({"slow": RequestLogConfig(1.0, str(tmp_path), "slow", 4096, 2)})
    big = LogEntry(1.0, "slow", 1, "python", {"x": np.zeros(300, np.float32)}, {}, "OK", 0.0)
    for _ in range(12):
        logs.models["slow"].offer(big)
    logs.close()
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["slow.jsonl", "slow.jsonl.1", "slow.jsonl.2"]
    assert all(p.stat().st_size <= 4096 for p in tmp_path.iterdir())
