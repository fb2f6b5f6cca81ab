"""OpenTelemetry traces of a real `pyserving serve` process, received by a real OTLP/HTTP
receiver on 127.0.0.1 (issue 22)."""

from __future__ import annotations

import os
import subprocess
import sys

import grpc
import httpx
import pytest

from pyserving.proto import grpc_service_pb2 as pb
from pyserving.proto import tf_serving_apis_pb2 as tfs
from pyserving.proto import tf_types_pb2
from pyserving.serving import tracing
from tests.e2e.otlp_receiver import OtlpReceiver
from tests.e2e.server import ServerProcess, free_port, plain_and_batched_config

ROW = [0.5, -1.0, 2.0, 0.25]
V2_BODY = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 4], "data": ROW}]}
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
SERVER = 2  # opentelemetry.proto Span.SpanKind SPAN_KIND_SERVER


def traceparent(trace_id: str, parent_id: str) -> str:
    return f"00-{trace_id}-{parent_id}-01"


@pytest.fixture(scope="module")
def receiver():
    receiver = OtlpReceiver()
    yield receiver
    receiver.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory, receiver):
    config = plain_and_batched_config(tmp_path_factory.mktemp("tracing"))
    grpc_port = free_port()
    with pytest.MonkeyPatch.context() as env:
        env.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint)
        env.setenv("OTEL_BSP_SCHEDULE_DELAY", "50")  # export every 50 ms, not every 5 s
        env.delenv("OTEL_SDK_DISABLED", raising=False)
        env.delenv("OTEL_TRACES_SAMPLER", raising=False)
        proc = ServerProcess(f"--model_config_file={config}", f"--port={grpc_port}")
    proc.grpc_address = f"127.0.0.1:{grpc_port}"
    try:
        proc.wait_ready()
        yield proc
    finally:
        assert proc.stop() == 0, proc.log()


def in_trace(spans, trace_id: str) -> list:
    return [s for s in spans if s.trace_id.hex() == trace_id]


def server_span_with_children(receiver, trace_id: str, name: str):
    def complete(spans) -> bool:
        mine = in_trace(spans, trace_id)
        roots = [s for s in mine if s.name == name]
        return bool(roots) and {"queue", "execute"} <= {
            s.name for s in mine if s.parent_span_id == roots[0].span_id
        }

    spans = in_trace(receiver.wait_for(complete), trace_id)
    root = next(s for s in spans if s.name == name)
    children = {s.name: s for s in spans if s.parent_span_id == root.span_id}
    return root, children, spans


def attributes(span) -> dict:
    out = {}
    for kv in span.attributes:
        value = kv.value
        out[kv.key] = value.string_value if value.HasField("string_value") else value.int_value
    return out


def test_v2_rest_request_is_a_server_span_in_the_callers_trace_issue_22(server, receiver):
    parent = "00f067aa0ba902b7"
    response = httpx.post(
        server.url + "/v2/models/mlp/infer",
        json=V2_BODY,
        headers={"traceparent": traceparent(TRACE_ID, parent)},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    root, children, _ = server_span_with_children(receiver, TRACE_ID, "v2-rest mlp")
    assert root.parent_span_id.hex() == parent and root.kind == SERVER
    attrs = attributes(root)
    assert attrs["pyserving.model"] == "mlp" and attrs["pyserving.version"] == 1
    assert attrs["http.request.method"] == "POST" and attrs["pyserving.status"] == "OK"
    queue, execute = children["queue"], children["execute"]
    assert root.start_time_unix_nano <= queue.start_time_unix_nano
    assert queue.end_time_unix_nano <= execute.start_time_unix_nano + 1
    assert execute.end_time_unix_nano <= root.end_time_unix_nano


def test_v2_grpc_request_takes_its_parent_from_the_metadata_issue_22(server, receiver):
    trace_id, parent = "0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331"
    request = pb.ModelInferRequest(model_name="mlp")
    tensor = request.inputs.add(name="input", datatype="FP32", shape=[1, 4])
    tensor.contents.fp32_contents.extend(ROW)
    with grpc.insecure_channel(server.grpc_address) as channel:
        infer = channel.unary_unary(
            "/inference.GRPCInferenceService/ModelInfer",
            request_serializer=pb.ModelInferRequest.SerializeToString,
            response_deserializer=pb.ModelInferResponse.FromString,
        )
        answer = infer(
            request, metadata=[("traceparent", traceparent(trace_id, parent))], timeout=30
        )
    assert answer.model_name == "mlp"
    root, children, _ = server_span_with_children(receiver, trace_id, "v2-grpc mlp")
    assert root.parent_span_id.hex() == parent and root.kind == SERVER
    assert attributes(root)["rpc.system"] == "grpc"
    assert {"queue", "execute"} <= set(children)


def test_batched_requests_link_to_their_batch_span_issue_22(server, receiver):
    trace_id = "1af7651916cd43dd8448eb211c80319d"
    response = httpx.post(
        server.url + "/v1/models/batched:predict",
        json={"instances": [ROW, ROW]},
        headers={"traceparent": traceparent(trace_id, "c7ad6b7169203332")},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    root, children, spans = server_span_with_children(receiver, trace_id, "tfserving-rest batched")
    batch = next(s for s in spans if s.name == "batch batched")
    assert attributes(batch)["pyserving.batch_size"] >= 2
    assert root.span_id in {link.span_id for link in batch.links}
    assert [link.span_id for link in children["execute"].links] == [batch.span_id]


def test_without_an_endpoint_nothing_is_exported_issue_22(tmp_path, receiver):
    config = plain_and_batched_config(tmp_path)
    with pytest.MonkeyPatch.context() as env:
        for name in list(os.environ):
            if name.startswith("OTEL_"):
                env.delenv(name)
        proc = ServerProcess(f"--model_config_file={config}")
    posts = receiver.posts
    try:
        proc.wait_ready()
        response = httpx.post(
            proc.url + "/v2/models/mlp/infer",
            json=V2_BODY,
            headers={"traceparent": traceparent(TRACE_ID, "00f067aa0ba902b8")},
            timeout=30,
        )
        assert response.status_code == 200
    finally:
        # a graceful stop flushes whatever a tracer would have queued
        assert proc.stop() == 0, proc.log()
    assert receiver.posts == posts


def test_the_server_imports_no_opentelemetry_when_off_issue_22():
    assert tracing.configure({}) is False
    assert tracing.configure({"OTEL_EXPORTER_OTLP_ENDPOINT": "x", "OTEL_SDK_DISABLED": "true"}) is (
        False
    )
    code = (
        "import sys; import pyserving.cli, pyserving.serving.server_core;"
        " print(sorted(m for m in sys.modules if m.startswith('opentelemetry')))"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True
    )
    assert done.stdout.strip() == "[]"


def test_tf_grpc_predict_is_traced_too_issue_22(server, receiver):
    trace_id, parent = "2af7651916cd43dd8448eb211c80319e", "d7ad6b7169203333"
    request = tfs.PredictRequest()
    request.model_spec.name = "mlp"
    tensor = request.inputs["input"]
    tensor.dtype = tf_types_pb2.DT_FLOAT
    tensor.tensor_shape.dim.add(size=1)
    tensor.tensor_shape.dim.add(size=4)
    tensor.float_val.extend(ROW)
    with grpc.insecure_channel(server.grpc_address) as channel:
        predict = channel.unary_unary(
            "/tensorflow.serving.PredictionService/Predict",
            request_serializer=tfs.PredictRequest.SerializeToString,
            response_deserializer=tfs.PredictResponse.FromString,
        )
        answer = predict(
            request, metadata=[("traceparent", traceparent(trace_id, parent))], timeout=30
        )
    assert answer.model_spec.name == "mlp"
    root, children, _ = server_span_with_children(receiver, trace_id, "tfserving-grpc mlp")
    assert root.parent_span_id.hex() == parent and attributes(root)["rpc.system"] == "grpc"
    assert children["execute"].start_time_unix_nano >= root.start_time_unix_nano
