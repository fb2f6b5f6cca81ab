"""Thousands of malformed REST bodies (JSON and V2 binary) against a real server: each gets a
4xx (never a 500 or a hang), and a correct request still works afterwards."""

from __future__ import annotations

import json

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pyserving.demo import make_mlp, make_two_io
from tests.e2e.server import ServerProcess

ROW = [0.5, -1.0, 2.0, 0.25]
PATHS = [
    "/v1/models/mlp:predict",
    "/v1/models/mlp/versions/1:predict",
    "/v1/models/twoio:predict",
    "/v2/models/mlp/infer",
    "/v2/models/twoio/versions/1/infer",
]
KEYS = [
    "instances",
    "inputs",
    "outputs",
    "signature_name",
    "name",
    "datatype",
    "shape",
    "data",
    "parameters",
    "binary_data",
    "binary_data_size",
    "binary_data_output",
    "timeout",
    "input",
    "a",
    "b",
    "b64",
    "id",
]
DATATYPES = ["FP32", "FP64", "INT64", "INT8", "UINT8", "BOOL", "BYTES", "FP16", "BF16", "X"]
SETTINGS = settings(
    max_examples=700,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False),
    st.text(max_size=8),
    st.sampled_from(DATATYPES),
)
json_values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=5),
        st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=4), inner, max_size=5),
    ),
    max_leaves=30,
)
tensors = st.fixed_dictionaries(
    {
        "name": st.sampled_from(["input", "a", "b", "x"]),
        "datatype": st.sampled_from(DATATYPES),
        "shape": st.lists(st.integers(min_value=-2, max_value=2**40), max_size=4),
    },
    optional={
        "data": json_values,
        "parameters": st.dictionaries(st.sampled_from(KEYS), json_values, max_size=3),
    },
)
v2_requests = st.fixed_dictionaries(
    {"inputs": st.lists(tensors, max_size=3)},
    optional={
        "outputs": st.lists(st.dictionaries(st.sampled_from(KEYS), json_values), max_size=2),
        "parameters": st.dictionaries(st.sampled_from(KEYS), json_values, max_size=3),
        "id": json_values,
    },
)
tf_requests = st.dictionaries(st.sampled_from(KEYS), json_values, max_size=4)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz")
    make_mlp(root / "mlp" / "1" / "model.onnx", seed=1, dims=(4, 8, 3))
    make_two_io(root / "twoio" / "1" / "model.onnx")
    config = root / "models.config"
    config.write_text(
        "model_config_list {\n"
        f'  config {{ name: "mlp" base_path: "{root / "mlp"}" model_platform: "onnx" }}\n'
        f'  config {{ name: "twoio" base_path: "{root / "twoio"}" model_platform: "onnx" }}\n'
        "}\n"
    )
    process = ServerProcess(f"--model_config_file={config}", "--file_system_poll_wait_seconds=0")
    process.wait_ready()
    with httpx.Client(base_url=process.url, timeout=10) as client:
        yield client
    assert process.stop() == 0, process.log()


def check(response: httpx.Response) -> None:
    # A body that happens to be valid gets 200; anything else must be the client's fault.
    assert response.status_code == 200 or 400 <= response.status_code < 500, (
        response.status_code,
        response.text,
    )
    if response.status_code != 200:
        assert response.json()["error"]


@pytest.mark.slow
@SETTINGS
@given(path=st.sampled_from(PATHS), body=st.binary(max_size=256))
def test_random_bytes_get_4xx(server, path, body):
    check(server.post(path, content=body))


@pytest.mark.slow
@SETTINGS
@given(path=st.sampled_from(PATHS), body=st.one_of(v2_requests, tf_requests, json_values))
def test_structured_json_gets_4xx_or_a_correct_answer(server, path, body):
    check(server.post(path, content=json.dumps(body)))


@pytest.mark.slow
@SETTINGS
@given(
    path=st.sampled_from(PATHS[3:]),
    header=v2_requests,
    tail=st.binary(max_size=64),
    skew=st.integers(min_value=-8, max_value=8),
    raw_header=st.one_of(
        st.none(), st.text(st.characters(min_codepoint=33, max_codepoint=126), max_size=12)
    ),
)
def test_v2_binary_bodies_get_4xx(server, path, header, tail, skew, raw_header):
    head = json.dumps(header).encode()
    length = raw_header if raw_header is not None else str(len(head) + skew)
    response = server.post(
        path,
        content=head + tail,
        headers={"inference-header-content-length": length},
    )
    check(response)


def test_correct_requests_work_after_the_fuzzing(server):
    response = server.post("/v1/models/mlp:predict", json={"instances": [ROW]})
    assert response.status_code == 200
    assert len(response.json()["predictions"][0]) == 3
    body = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 4], "data": ROW}]}
    response = server.post("/v2/models/mlp/infer", json=body)
    assert response.status_code == 200
    assert response.json()["outputs"][0]["shape"] == [1, 3]
