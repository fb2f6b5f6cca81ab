"""What decoding builds counts in a real server's in-flight budget, and one hung model does not
take the server out of its load balancer (issue 14's second red-team run).

A TF Serving PredictRequest of a few dozen bytes may fill a large shape with its one value: the
server counts what it builds, not what arrived, so held requests of that kind are bounded by
`--max-inflight-request-bytes` like large ones.
"""

from __future__ import annotations

import threading
from pathlib import Path

import grpc
import httpx
import yaml

from pyserving.proto import grpc_service_pb2 as v2pb
from pyserving.proto import grpc_service_pb2_grpc as v2grpc
from pyserving.proto import prediction_service_pb2_grpc as tf_grpc
from pyserving.proto import tf_serving_apis_pb2 as tfs
from pyserving.proto import tf_types_pb2
from tests.e2e.server import ServerProcess, free_port
from tests.fakes import wait_until

#: a python servable: y = 2x, every call waiting for the file `release` in its version directory
SERVABLE = """\
import os
import time

from pyserving.platforms import Signature, TensorSpec


class Model:
    def load(self, path):
        self.path = path
        spec = (TensorSpec("x", "FP64", (-1,)),)
        self.signatures = {"serving_default": Signature("serving_default", spec, spec)}

    def run(self, signature, inputs):
        open(os.path.join(self.path, "entered-%d" % time.monotonic_ns()), "w").close()
        deadline = time.monotonic() + 60
        while not os.path.exists(os.path.join(self.path, "release")):
            if time.monotonic() > deadline:
                raise RuntimeError("never released")
            time.sleep(0.01)
        return {"x": inputs["x"] * 2}
"""
#: elements of one fill: 8 MiB of FP64 from a message of a few dozen bytes
FILL = 1 << 20
FILL_BYTES = FILL * 8


def write_gated(root: Path, name: str, instances: int) -> tuple[Path, Path]:
    """A gated python model under `root`; returns (its version directory, the config file)."""
    version = root / name / "1"
    version.mkdir(parents=True)
    (version / "servable.py").write_text(SERVABLE)
    model = {
        "name": name,
        "base_path": str(root / name),
        "platform": "python",
        "allow_python": True,
        "instances": instances,
    }
    config = root / "models.yaml"
    config.write_text(yaml.safe_dump({"models": [model]}))
    return version, config


def fill_request(model: str, rows: int) -> tfs.PredictRequest:
    request = tfs.PredictRequest()
    request.model_spec.name = model
    tensor = request.inputs["x"]
    tensor.dtype = tf_types_pb2.DT_DOUBLE
    tensor.tensor_shape.dim.add(size=rows)
    tensor.double_val.append(1.5)
    return request


def entered(version: Path) -> int:
    return len(list(version.glob("entered-*")))


def test_tf_one_value_fills_count_what_they_build_in_the_inflight_budget_issue_14(tmp_path):
    version, config = write_gated(tmp_path, "gated", instances=4)
    grpc_port = free_port()
    # Two fills fit (16 MiB and their tiny messages); a third would pass the budget.
    server = ServerProcess(
        f"--model_config_file={config}",
        "--file_system_poll_wait_seconds=0",
        f"--port={grpc_port}",
        f"--max_inflight_request_bytes={FILL_BYTES * 2 + 4096}",
        f"--max_request_bytes={FILL_BYTES}",
    )
    channel = grpc.insecure_channel(
        f"127.0.0.1:{grpc_port}", options=[("grpc.max_receive_message_length", -1)]
    )
    try:
        server.wait_ready()
        stub = tf_grpc.PredictionServiceStub(channel)
        assert len(fill_request("gated", FILL).SerializeToString()) < 64
        answers: list = [None, None]

        def predict(i: int) -> None:
            answers[i] = stub.Predict(fill_request("gated", FILL), timeout=60)

        callers = [threading.Thread(target=predict, args=(i,)) for i in range(2)]
        for caller in callers:
            caller.start()
        wait_until(lambda: entered(version) == 2, 30, "two fills held by the gated model")
        # The third is refused at once: what the two held requests built is in the budget.
        try:
            stub.Predict(fill_request("gated", FILL), timeout=20)
            raise AssertionError("a third fill was admitted past the in-flight budget")
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.UNAVAILABLE, exc.details()
            assert "--max-inflight-request-bytes" in exc.details()
        assert entered(version) == 2
        # Over the per-request limit: refused naming the input, before anything is built.
        try:
            stub.Predict(fill_request("gated", FILL + 1), timeout=20)
            raise AssertionError("a fill over --max_request_bytes was admitted")
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.INVALID_ARGUMENT, exc.details()
            assert 'input "x"' in exc.details() and str(FILL_BYTES) in exc.details()
        (version / "release").touch()
        for caller in callers:
            caller.join(30)
        assert all(answer is not None for answer in answers)
        assert answers[0].outputs["x"].tensor_shape.dim[0].size == FILL
        # Answered: the budget is free again.
        response = stub.Predict(fill_request("gated", FILL), timeout=30)
        assert response.outputs["x"].tensor_shape.dim[0].size == FILL
        assert server.stop() == 0, server.log()
    finally:
        (version / "release").touch()
        channel.close()
        server.stop()


def test_stream_messages_count_what_decoding_them_builds_issue_14(tmp_path):
    version, config = write_gated(tmp_path, "gated", instances=4)
    grpc_port = free_port()
    # A held fill (8 MiB) and a 4 MiB stream message fit; what decoding the message builds
    # (4 MiB more) does not.
    server = ServerProcess(
        f"--model_config_file={config}",
        "--file_system_poll_wait_seconds=0",
        f"--port={grpc_port}",
        f"--max_inflight_request_bytes={FILL_BYTES + (6 << 20)}",
        f"--max_request_bytes={FILL_BYTES}",
    )
    channel = grpc.insecure_channel(
        f"127.0.0.1:{grpc_port}", options=[("grpc.max_receive_message_length", -1)]
    )
    try:
        server.wait_ready()
        held: list = [None]

        def predict() -> None:
            held[0] = tf_grpc.PredictionServiceStub(channel).Predict(
                fill_request("gated", FILL), timeout=60
            )

        caller = threading.Thread(target=predict)
        caller.start()
        wait_until(lambda: entered(version) == 1, 30, "a fill held by the gated model")
        message = v2pb.ModelInferRequest(model_name="gated")
        tensor = message.inputs.add(name="x", datatype="FP64", shape=[FILL // 2])
        tensor.contents.fp64_contents.extend([1.0] * (FILL // 2))
        stream = v2grpc.GRPCInferenceServiceStub(channel).ModelStreamInfer(
            iter([message]), timeout=20
        )
        answers = list(stream)
        assert len(answers) == 1 and "--max-inflight-request-bytes" in answers[0].error_message
        assert entered(version) == 1
        (version / "release").touch()
        caller.join(30)
        assert held[0] is not None
        assert server.stop() == 0, server.log()
    finally:
        (version / "release").touch()
        channel.close()
        server.stop()


def test_a_model_with_every_thread_stuck_is_not_ready_but_the_server_is_issue_14(tmp_path):
    version, config = write_gated(tmp_path, "hung", instances=1)
    grpc_port = free_port()
    server = ServerProcess(
        f"--model_config_file={config}", "--file_system_poll_wait_seconds=0", f"--port={grpc_port}"
    )
    try:
        server.wait_ready()
        body = {"inputs": [{"name": "x", "datatype": "FP64", "shape": [1], "data": [1.0]}]}
        body["parameters"] = {"timeout": 200_000}
        answer = httpx.post(f"{server.url}/v2/models/hung/infer", json=body, timeout=30)
        assert answer.status_code == 504, answer.text
        wait_until(lambda: entered(version) == 1, 30, "the call to run on the hung model")
        # Its only thread is stuck: the model says so, the server stays in the load balancer.
        ready = httpx.get(f"{server.url}/v2/models/hung/ready", timeout=5)
        assert ready.status_code == 400, ready.text
        assert "execution thread(s) are busy with calls past their deadline" in ready.text
        server_ready = httpx.get(f"{server.url}/v2/health/ready", timeout=5)
        assert server_ready.status_code == 200, server_ready.text
        assert "all 1 execution thread(s) are busy" in server.log()
        (version / "release").touch()
        wait_until(
            lambda: httpx.get(f"{server.url}/v2/models/hung/ready", timeout=5).status_code == 200,
            30,
            "the model to be ready again once its call returned",
        )
        assert server.stop() == 0, server.log()
    finally:
        (version / "release").touch()
        server.stop()
