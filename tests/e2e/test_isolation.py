"""Execution isolation in a real server: a slow or hung model delays and times out only its own
requests, never the event loop (health, other models), and never holds up SIGTERM."""

from __future__ import annotations

import subprocess
import threading
import time
from pathlib import Path

import httpx
import pytest
import yaml

from tests.e2e.server import ServerProcess
from tests.fakes import wait_until

#: a python servable: y = 2x, and whether this call ran on a thread with a running event loop
#: or on the main thread (where `pyserving serve` runs its loop). x[0] == SLOW_VALUE sleeps 40 s;
#: with HANG, every call waits for the file `release` in the version directory (60 s at most).
SERVABLE = """\
import asyncio
import os
import threading
import time

import numpy as np

from pyserving.platforms import Signature, TensorSpec

SLOW_VALUE = 40.0
HANG = {hang}


class Model:
    def load(self, path):
        self.path = path
        self.signatures = {{
            "serving_default": Signature(
                "serving_default",
                (TensorSpec("x", "FP64", (-1,)),),
                (TensorSpec("y", "FP64", (-1,)), TensorSpec("on_loop", "FP64", (-1,))),
            )
        }}

    def run(self, signature, inputs):
        x = inputs["x"]
        open(os.path.join(self.path, "entered-%d" % time.monotonic_ns()), "w").close()
        if HANG:
            deadline = time.monotonic() + 60
            while not os.path.exists(os.path.join(self.path, "release")):
                if time.monotonic() > deadline:
                    raise RuntimeError("never released")
                time.sleep(0.01)
        elif x.size and x[0] == SLOW_VALUE:
            time.sleep(40)
        try:
            asyncio.get_running_loop()
            on_loop = True
        except RuntimeError:
            on_loop = threading.current_thread() is threading.main_thread()
        open(os.path.join(self.path, "returned-%d" % time.monotonic_ns()), "w").close()
        return {{"y": x * 2, "on_loop": np.full(x.shape, float(on_loop))}}
"""


def write_model(root: Path, name: str, hang: bool = False) -> Path:
    version = root / name / "1"
    version.mkdir(parents=True)
    (version / "servable.py").write_text(SERVABLE.format(hang=hang))
    return version


def write_config(root: Path, models: list[dict]) -> Path:
    for model in models:
        model.setdefault("base_path", str(root / model["name"]))
        model.setdefault("platform", "python")
        model.setdefault("allow_python", True)  # a servable.py runs code: the operator opts in
    config = root / "models.yaml"
    config.write_text(yaml.safe_dump({"models": models}))
    return config


def infer(server: ServerProcess, model: str, x: list[float], **parameters) -> httpx.Response:
    body: dict = {"inputs": [{"name": "x", "datatype": "FP64", "shape": [len(x)], "data": x}]}
    if parameters:
        body["parameters"] = parameters
    return httpx.post(f"{server.url}/v2/models/{model}/infer", json=body, timeout=60)


def entered(version: Path) -> int:
    return len(list(version.glob("entered-*")))


def returned(version: Path) -> int:
    return len(list(version.glob("returned-*")))


def assert_fast_answers(server: ServerProcess, calls: int = 10) -> None:
    for i in range(calls):
        response = infer(server, "fast", [float(i), 1.0])
        assert response.status_code == 200, response.text
        y, on_loop = response.json()["outputs"]
        assert y["data"] == [2.0 * i, 2.0]
        assert on_loop["data"] == [0.0, 0.0], "model code ran on the event loop"
    live = httpx.get(server.url + "/v2/health/live", timeout=5)
    assert live.status_code == 200 and live.json() == {"live": True}


@pytest.mark.slow
def test_a_40s_call_gets_504_at_its_deadline_while_the_fast_model_and_liveness_answer_issue_14(
    tmp_path,
):
    slow = write_model(tmp_path, "slow")
    write_model(tmp_path, "fast")
    config = write_config(tmp_path, [{"name": "slow"}, {"name": "fast"}])
    server = ServerProcess(
        f"--model_config_file={config}",
        "--file_system_poll_wait_seconds=0",
        "--rest_api_timeout_in_ms=1500",
        "--drain_timeout_seconds=2",
    )
    try:
        server.wait_ready()
        result: list = []

        def call_slow() -> None:
            started = time.monotonic()
            response = infer(server, "slow", [40.0])
            result.append((response, time.monotonic() - started))

        caller = threading.Thread(target=call_slow)
        caller.start()
        wait_until(lambda: entered(slow) == 1, 30, "the slow call to start")
        assert_fast_answers(server)
        assert returned(slow) == 0  # the fast answers came while the 40 s call ran
        caller.join(30)
        response, elapsed = result[0]
        assert response.status_code == 504, response.text
        assert "Deadline exceeded" in response.json()["error"]
        # 1.5 s deadline, and the call takes 40 s: the bound only tells the two apart.
        assert elapsed < 30, f"504 came after {elapsed:.1f}s, not at the 1.5 s deadline"
        assert_fast_answers(server)
        assert returned(slow) == 0  # the slow call still runs on its thread
        # SIGTERM: the drain has nothing to wait for; the stuck call holds its version, and
        # the exit waits only for what is left of the 2 s drain, not for the 40 s call.
        server.proc.terminate()
        try:
            code = server.proc.wait(15)
        except subprocess.TimeoutExpired:
            pytest.fail(f"SIGTERM waited for the stuck model call:\n{server.log()}")
        assert code == 1, server.log()
        log = server.log()
        assert "models did not unload in time (a model call is stuck)" in log
        assert "drain timed out" not in log  # the 504'd request was not in the drain
    finally:
        server.stop()


def test_hung_calls_on_one_model_leave_another_answering_and_mark_it_not_ready_issue_14(
    tmp_path,
):
    hung = write_model(tmp_path, "hung", hang=True)
    write_model(tmp_path, "fast")
    config = write_config(tmp_path, [{"name": "hung", "instances": 2}, {"name": "fast"}])
    server = ServerProcess(f"--model_config_file={config}", "--file_system_poll_wait_seconds=0")
    try:
        server.wait_ready()
        answers: list = [None] * 12

        def call_hung(i: int, timeout_us: int) -> None:
            answers[i] = infer(server, "hung", [1.0], timeout=timeout_us)

        # Two calls take its two threads (a deadline long enough to start under any load) ...
        callers = [threading.Thread(target=call_hung, args=(i, 3_000_000)) for i in range(2)]
        for caller in callers:
            caller.start()
        wait_until(lambda: entered(hung) == 2, 30, "two calls running on the hung model")
        # ... and ten more queue behind them: every request gets 504 at its deadline.
        callers += [threading.Thread(target=call_hung, args=(i, 300_000)) for i in range(2, 12)]
        for caller in callers[2:]:
            caller.start()
        for caller in callers:
            caller.join(30)
        assert [a.status_code for a in answers] == [504] * 12, [a.text for a in answers]
        assert entered(hung) == 2  # the queued ones never ran
        assert_fast_answers(server, 20)
        ready = httpx.get(server.url + "/v2/models/hung/ready", timeout=5)
        assert ready.status_code == 400, ready.text
        message = ready.json()["error"]
        assert "all 2 execution thread(s) are busy with calls past their deadline" in message
        assert httpx.get(server.url + "/v2/models/fast/ready", timeout=5).status_code == 200
        # the server stays ready: the other models answer (issue 14's second red-team run)
        assert httpx.get(server.url + "/v2/health/ready", timeout=5).status_code == 200
        (hung / "release").touch()
        wait_until(
            lambda: httpx.get(server.url + "/v2/models/hung/ready", timeout=5).status_code == 200,
            30,
            "the hung model to be ready again once its calls returned",
        )
        response = infer(server, "hung", [3.0])
        assert response.status_code == 200 and response.json()["outputs"][0]["data"] == [6.0]
        assert server.stop() == 0, server.log()
    finally:
        (hung / "release").touch()
        server.stop()
