"""Two corrupt versions beside a healthy model, on the real ONNX platform (issue 15)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from pyserving.core.ids import ServableId, ServableState
from pyserving.demo import make_mlp
from pyserving.serving.config import ModelConfig, ModelServerConfig
from pyserving.serving.server_core import ServerCore, ServerOptions


def test_corrupt_models_fail_at_once_and_the_healthy_one_serves_issue_15(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    make_mlp(tmp_path / "healthy" / "1" / "model.onnx", seed=0)
    for name in ("bad1", "bad2"):
        (tmp_path / name / "1").mkdir(parents=True)
        (tmp_path / name / "1" / "model.onnx").write_bytes(b"\x08\x07not a protobuf" * 64)
    config = ModelServerConfig(
        tuple(
            ModelConfig(name, str(tmp_path / name), platform="onnx")
            for name in ("bad1", "bad2", "healthy")
        )
    )
    # The defaults: 5 retries from 1 s. b65bd49 retried each corrupt file on the load threads
    # for ~31 s, so the healthy model waited; a parse error is permanent now.
    core = ServerCore(
        ServerOptions(model_config=config, file_system_poll_wait_seconds=0, num_load_threads=2)
    )
    try:
        with caplog.at_level(logging.INFO, "pyserving"):
            core.start()
        assert core.manager.available_versions("healthy") == [1]
        for name in ("bad1", "bad2"):
            status = core.manager.monitor.state(ServableId(name, 1))
            assert status.state is ServableState.END and status.error
            assert f"loading {{name: {name} version: 1}} failed for good after 1 attempt(s)" in (
                caplog.text
            )
        assert "failed (attempt" not in caplog.text  # nothing was retried
        failures = [r for r in caplog.records if r.levelno == logging.ERROR]
        assert len(failures) == 2 and all("permanent" in r.getMessage() for r in failures)
    finally:
        assert core.stop(30)
