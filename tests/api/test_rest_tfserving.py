"""TF Serving REST API (in process, through httpx's ASGI transport): formats, errors, limits."""

from __future__ import annotations

import gzip
import math
import threading

import httpx
import numpy as np
import orjson
import pytest
import pytest_asyncio

from pyserving.api.rest.app import RestOptions, create_app
from pyserving.core.ids import ServableState
from pyserving.platforms.signature import Signature, TensorSpec
from pyserving.serving.inference import InferenceOptions, InferenceService
from tests.serving.test_inference import (
    FakeManager,
    NumpyServable,
    add_sub_servable,
    kitchen_servable,
    labels,
    scale_servable,
)

pytestmark = pytest.mark.asyncio


def odd_servable() -> NumpyServable:
    """Outputs that TF's row format cannot write: a scalar, and mismatched batch sizes."""
    signature = Signature(
        "serving_default",
        (TensorSpec("x", "FP32", (-1,)),),
        (TensorSpec("total", "FP32", ()), TensorSpec("x2", "FP32", (-1,))),
    )
    return NumpyServable(
        {"serving_default": signature},
        lambda _s, x: {"total": np.float32(x["x"].sum()), "x2": np.concatenate([x["x"]] * 2)},
    )


def broken_servable() -> NumpyServable:
    def boom(_s, _x):
        raise ValueError("Got invalid dimensions for input: x")

    servable = scale_servable()
    servable._compute = boom
    return servable


@pytest.fixture
def manager() -> FakeManager:
    manager = FakeManager()
    manager.add("addsub", 1, add_sub_servable()).add("addsub", 2, add_sub_servable(10))
    manager.add("scale", 1, scale_servable())
    manager.add("kitchen", 1, kitchen_servable())
    manager.add("odd", 1, odd_servable())
    manager.add("broken", 1, broken_servable())
    return manager


@pytest_asyncio.fixture
async def client(manager):
    service = InferenceService(
        manager, InferenceOptions(executor_threads=2), labels({("addsub", "stable"): 1})
    )
    app = create_app(service, RestOptions(max_request_bytes=1 << 20, server_version="9.9"))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
        yield http
    service.close(wait=True)


async def post(client: httpx.AsyncClient, path: str, body: object) -> httpx.Response:
    content = body if isinstance(body, bytes) else orjson.dumps(body)
    return await client.post(path, content=content)


def assert_error(response: httpx.Response, status: int, *fragments: str) -> str:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    message = response.json()["error"]
    for fragment in fragments:
        assert fragment in message, message
    return message


# --- status, list, metadata -----------------------------------------------------------------------


async def test_status_lists_every_version_highest_first_in_tf_format(client):
    response = await client.get("/v1/models/addsub")
    assert response.status_code == 200
    assert response.json() == {
        "model_version_status": [
            {
                "version": "2",
                "state": "AVAILABLE",
                "status": {"error_code": "OK", "error_message": ""},
            },
            {
                "version": "1",
                "state": "AVAILABLE",
                "status": {"error_code": "OK", "error_message": ""},
            },
        ]
    }


async def test_status_of_one_version_and_of_a_label_returns_only_that_version(client):
    one = (await client.get("/v1/models/addsub/versions/1")).json()["model_version_status"]
    assert [s["version"] for s in one] == ["1"]
    labelled = (await client.get("/v1/models/addsub/labels/stable")).json()
    assert [s["version"] for s in labelled["model_version_status"]] == ["1"]


async def test_status_shows_a_failed_version_with_its_error(client, manager):
    manager.set_state("addsub", 3, ServableState.END, error="cannot parse model.onnx")
    status = (await client.get("/v1/models/addsub")).json()["model_version_status"][0]
    assert status == {
        "version": "3",
        "state": "END",
        "status": {"error_code": "UNKNOWN", "error_message": "cannot parse model.onnx"},
    }


async def test_status_errors_use_tf_texts_and_404(client):
    assert_error(
        await client.get("/v1/models/nope"), 404, "Could not find any versions of model nope"
    )
    assert_error(
        await client.get("/v1/models/addsub/versions/7"),
        404,
        "Could not find version 7 of model addsub",
    )
    assert_error(
        await client.get("/v1/models/addsub/labels/canary"),
        404,
        "Unrecognized servable version label: canary",
    )


async def test_list_models_is_our_addition(client):
    response = await client.get("/v1/models")
    assert response.status_code == 200
    models = {m["name"]: m for m in response.json()["models"]}
    assert models["addsub"]["versions"] == ["2", "1"]
    assert models["addsub"]["model_version_status"][0]["state"] == "AVAILABLE"
    assert set(models) == {"addsub", "scale", "kitchen", "odd", "broken"}


async def test_metadata_has_the_doubled_signature_def_key_and_tf_dtypes(client):
    response = await client.get("/v1/models/scale/metadata")
    assert response.status_code == 200
    assert response.json() == {
        "model_spec": {"name": "scale", "signature_name": "", "version": "1"},
        "metadata": {
            "signature_def": {
                "signature_def": {
                    "serving_default": {
                        "inputs": {
                            "x": {
                                "dtype": "DT_FLOAT",
                                "tensor_shape": {
                                    "dim": [{"size": "-1", "name": ""}, {"size": "3", "name": ""}],
                                    "unknown_rank": False,
                                },
                                "name": "x",
                            }
                        },
                        "outputs": {
                            "y": {
                                "dtype": "DT_FLOAT",
                                "tensor_shape": {
                                    "dim": [{"size": "-1", "name": ""}, {"size": "3", "name": ""}],
                                    "unknown_rank": False,
                                },
                                "name": "y",
                            }
                        },
                        "method_name": "tensorflow/serving/predict",
                    }
                }
            }
        },
    }


async def test_metadata_of_a_version_and_a_label(client):
    meta = (await client.get("/v1/models/addsub/labels/stable/metadata")).json()
    assert meta["model_spec"]["version"] == "1"
    meta = (await client.get("/v1/models/addsub/versions/2/metadata")).json()
    assert meta["model_spec"]["version"] == "2"
    kitchen = (await client.get("/v1/models/kitchen/metadata")).json()
    signatures = kitchen["metadata"]["signature_def"]["signature_def"]
    assert signatures["strings"]["inputs"]["text"]["dtype"] == "DT_STRING"
    assert signatures["ints"]["inputs"]["n"]["dtype"] == "DT_INT32"
    assert signatures["flags"]["inputs"]["flag"]["dtype"] == "DT_BOOL"


# --- predict: formats -----------------------------------------------------------------------------


async def test_row_predict_single_input_prints_whole_floats_with_a_point(client):
    response = await post(client, "/v1/models/scale:predict", {"instances": [[1, 2, 3], [4, 5, 6]]})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    assert response.content == b'{"predictions":[[2.0,4.0,6.0],[8.0,10.0,12.0]]}'


async def test_columnar_predict_single_input_bare_and_named(client):
    bare = await post(client, "/v1/models/scale:predict", {"inputs": [[0.5, 1, 1.5]]})
    assert bare.json() == {"outputs": [[1.0, 2.0, 3.0]]}
    named = await post(client, "/v1/models/scale:predict", {"inputs": {"x": [[0.5, 1, 1.5]]}})
    assert named.json() == {"outputs": [[1.0, 2.0, 3.0]]}


async def test_row_predict_multi_input_gives_per_row_objects(client):
    instances = [{"a": [1, 2, 3, 4], "b": [1, 1, 1, 1]}, {"a": [0, 0, 0, 0], "b": [2, 2, 2, 2]}]
    response = await post(client, "/v1/models/addsub/versions/1:predict", {"instances": instances})
    assert response.status_code == 200, response.text
    assert response.json() == {
        "predictions": [
            {"sum": [2.0, 3.0, 4.0, 5.0], "diff": [0.0, 1.0, 2.0, 3.0]},
            {"sum": [2.0, 2.0, 2.0, 2.0], "diff": [-2.0, -2.0, -2.0, -2.0]},
        ]
    }


async def test_columnar_predict_multi_output_gives_an_object_of_tensors(client):
    inputs = {"a": [[1, 2, 3, 4]], "b": [[1, 1, 1, 1]], "ignored": 5}
    response = await post(client, "/v1/models/addsub:predict", {"inputs": inputs})
    assert response.status_code == 200, response.text
    assert response.json() == {
        "outputs": {"sum": [[12.0, 13.0, 14.0, 15.0]], "diff": [[0, 1, 2, 3]]}
    }


async def test_predict_by_label_and_version_and_case_insensitive_path(client):
    body = {"inputs": {"a": [[0, 0, 0, 0]], "b": [[0, 0, 0, 0]]}}
    latest = await post(client, "/v1/models/addsub:predict", body)
    stable = await post(client, "/v1/models/addsub/labels/stable:predict", body)
    upper = await post(client, "/V1/Models/addsub/VERSIONS/1:PREDICT", body)
    assert latest.json()["outputs"]["sum"] == [[10.0] * 4]
    assert stable.json()["outputs"]["sum"] == [[0.0] * 4]
    assert upper.json()["outputs"]["sum"] == [[0.0] * 4]


async def test_strings_b64_in_and_bytes_alias_out(client):
    body = {
        "signature_name": "strings",
        "instances": ["abc", {"b64": "aGk="}],  # "hi"
    }
    response = await post(client, "/v1/models/kitchen:predict", body)
    assert response.status_code == 200, response.text
    assert response.json() == {
        "predictions": [
            {"upper": "ABC", "length": 3, "raw_bytes": {"b64": "YWJj"}},
            {"upper": "HI", "length": 2, "raw_bytes": {"b64": "aGk="}},
        ]
    }


async def test_ints_and_bools_are_typed_by_the_signature(client):
    ints = await post(
        client, "/v1/models/kitchen:predict", {"signature_name": "ints", "inputs": [1, 2]}
    )
    assert ints.json() == {"outputs": [2, 4]}
    flags = await post(
        client, "/v1/models/kitchen:predict", {"signature_name": "flags", "inputs": [True, False]}
    )
    assert flags.json() == {"outputs": [False, True]}


async def test_nan_and_infinity_are_accepted_and_written_literally(client):
    body = b'{"instances": [[NaN, Infinity, -Infinity]]}'
    response = await post(client, "/v1/models/scale:predict", body)
    assert response.status_code == 200, response.text
    assert response.content == b'{"predictions":[[NaN,Infinity,-Infinity]]}'


# --- predict: errors ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "body", "status", "fragments"),
    [
        ("/v1/models/scale:predict", b"{not json", 400, ["JSON Parse error"]),
        ("/v1/models/scale:predict", b"\x00\xff\xfe garbage", 400, ["JSON Parse error"]),
        ("/v1/models/scale:predict", b"[1, 2]", 400, ["JSON object"]),
        ("/v1/models/scale:predict", b"{}", 400, ["Missing 'inputs' or 'instances' key"]),
        (
            "/v1/models/scale:predict",
            b'{"inputs": [1], "instances": [1]}',
            400,
            ["expecting only one of 'inputs' or 'instances' keys to exist"],
        ),
        ("/v1/models/scale:predict", b'{"instances": []}', 400, ["non-empty list"]),
        ("/v1/models/scale:predict", b'{"instances": 5}', 400, ["non-empty list"]),
        ("/v1/models/scale:predict", b'{"signature_name": 3, "inputs": [1]}', 400, ["string"]),
        (
            "/v1/models/scale:predict",
            b'{"signature_name": "nope", "inputs": [1]}',
            400,
            ['Serving signature key "nope" not found.'],
        ),
        (
            "/v1/models/scale:predict",
            b'{"instances": [["a", "b", "c"]]}',
            400,
            ['input "x"', 'JSON Value: "a" Type: String is not of expected type: float'],
        ),
        (
            "/v1/models/scale:predict",
            b'{"instances": [[true, false, true]]}',
            400,
            ["Type: True is not of expected type: float"],
        ),
        (
            "/v1/models/scale:predict",
            b'{"instances": [[1, null, 3]]}',
            400,
            ["Type: Null is not of expected type: float"],
        ),
        (
            "/v1/models/scale:predict",
            b'{"instances": [[1, 2, 3], [4, 5]]}',
            400,
            ['input "x"', "unexpected size/level"],
        ),
        (
            "/v1/models/scale:predict",
            b'{"instances": [[1, 2]]}',
            400,
            ['input "x": expected FP32 [-1, 3], got FP32 [1, 2]'],
        ),
        (
            "/v1/models/scale:predict",
            b'{"instances": ' + b"[" * 40 + b"1" + b"]" * 40 + b"}",
            400,
            ["nested deeper than 32"],
        ),
        (
            "/v1/models/kitchen:predict",
            b'{"signature_name": "ints", "inputs": [1, 2.5]}',
            400,
            ["JSON Value: 2.5 Type: Number is not of expected type: int32"],
        ),
        (
            "/v1/models/kitchen:predict",
            b'{"signature_name": "ints", "inputs": [1, 3000000000]}',
            400,
            ["out of range for type: int32"],
        ),
        (
            "/v1/models/kitchen:predict",
            b'{"signature_name": "flags", "inputs": [1, 0]}',
            400,
            ["is not of expected type: bool"],
        ),
        (
            "/v1/models/kitchen:predict",
            b'{"signature_name": "strings", "inputs": ["a", 1]}',
            400,
            ["JSON Value: 1 Type: Number is not of expected type: string"],
        ),
        (
            "/v1/models/kitchen:predict",
            b'{"signature_name": "strings", "inputs": [{"b64": "@@@"}]}',
            400,
            ["not formatted correctly for base64 data"],
        ),
        (
            "/v1/models/addsub:predict",
            b'{"inputs": {"a": [[1, 2, 3, 4]]}}',
            400,
            ["Missing named input: b in 'inputs' object."],
        ),
        (
            "/v1/models/addsub:predict",
            b'{"instances": [{"a": [1, 2, 3, 4]}]}',
            400,
            ["Failed to process element: 0 of 'instances' list", "missing: b"],
        ),
        (
            "/v1/models/addsub:predict",
            b'{"instances": [[1, 2, 3, 4]]}',
            400,
            ["objects keyed by input name", "2 inputs"],
        ),
        ("/v1/models/nope:predict", b'{"instances": [1]}', 404, ["Latest(nope)"]),
        (
            "/v1/models/addsub/versions/9:predict",
            b'{"instances": [1]}',
            404,
            ["Specific(addsub, 9)"],
        ),
        (
            "/v1/models/addsub/labels/canary:predict",
            b'{"instances": [1]}',
            404,
            ["Unrecognized servable version label: canary"],
        ),
        ("/v1/models/odd:predict", b'{"instances": [1, 2]}', 400, ["has no shape information"]),
        ("/v1/models/broken:predict", b'{"instances": [[1, 2, 3]]}', 500, ["invalid dimensions"]),
        (
            "/v1/models/scale:classify",
            b'{"examples": [{"x": 1.0}]}',
            400,
            ["Expected classification signature method_name to be tensorflow/serving/classify"],
        ),
        ("/v1/models/scale:regress", b'{"examples": {}}', 400, ["'examples' attribute must"]),
        ("/v1/models/nope:regress", b'{"examples": []}', 404, ["Latest(nope)"]),
    ],
)
async def test_predict_errors_name_the_problem(client, path, body, status, fragments):
    assert_error(await post(client, path, body), status, *fragments)


async def test_inconsistent_output_batch_sizes_are_refused_in_row_form_only(client):
    manager_servable = odd_servable()
    manager_servable._compute = lambda _s, x: {
        "total": np.zeros(1, np.float32),
        "x2": np.concatenate([x["x"]] * 2),
    }
    manager = FakeManager().add("odd", 1, manager_servable)
    service = InferenceService(manager)
    transport = httpx.ASGITransport(app=create_app(service))
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
        rows = await post(http, "/v1/models/odd:predict", {"instances": [1, 2]})
        assert_error(rows, 400, "Tensor name: x2 has inconsistent batch size: 4 expecting: 1")
        columns = await post(http, "/v1/models/odd:predict", {"inputs": [1, 2]})
        assert columns.json() == {"outputs": {"total": [0.0], "x2": [1.0, 2.0, 1.0, 2.0]}}
    service.close()


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/v1/models/scale:predict"),
        ("POST", "/v1/models/scale"),
        ("POST", "/v1/models/scale/metadata"),
        ("GET", "/v1/models/scale/versions/1/labels/stable"),
        ("POST", "/v1/models/scale/versions/1/labels/stable:predict"),
        ("GET", "/v1/models/scale:explain"),
        ("GET", "/v1/other"),
    ],
)
async def test_bad_paths_and_methods_under_v1_are_malformed_requests(client, method, path):
    response = await client.request(method, path, content=b"{}")
    assert_error(response, 400, f"Malformed request: {method} {path}")


async def test_a_version_that_is_no_number_is_400_as_on_grpc_issue_14(client):
    response = await client.get("/v1/models/scale/versions/x")
    assert_error(
        response, 400, 'model version must be a non-negative integer of at most 19 digits, got "x"'
    )


async def test_paths_outside_the_apis_are_404_not_found(client):
    response = await client.get("/v1")
    assert response.status_code == 404 and response.json() == {"error": "Not Found"}
    response = await client.get("/nothing/here")
    assert response.status_code == 404 and response.json() == {"error": "Not Found"}


async def test_oversized_body_is_413_from_content_length(client):
    big = b'{"instances": [' + b"1," * (1 << 20) + b"1]}"
    response = await post(client, "/v1/models/scale:predict", big)
    assert_error(response, 413, "exceeds the limit of 1048576 bytes")


async def test_gzip_body_is_decompressed_and_a_gzip_bomb_is_413(client):
    body = gzip.compress(orjson.dumps({"instances": [[1, 2, 3]]}))
    response = await client.post(
        "/v1/models/scale:predict", content=body, headers={"content-encoding": "gzip"}
    )
    assert response.json() == {"predictions": [[2.0, 4.0, 6.0]]}
    bomb = gzip.compress(b" " * (4 << 20))
    response = await client.post(
        "/v1/models/scale:predict", content=bomb, headers={"content-encoding": "gzip"}
    )
    assert_error(response, 413)
    broken = await client.post(
        "/v1/models/scale:predict", content=b"not gzip", headers={"content-encoding": "gzip"}
    )
    assert_error(broken, 400, "decompress")


async def test_rest_timeout_is_a_504_deadline(manager):
    release = threading.Event()

    def slow(_s, x):
        release.wait(10)
        return {"y": x["x"]}

    manager.servable("scale", 1)._compute = slow
    service = InferenceService(manager)
    app = create_app(service, RestOptions(rest_api_timeout_in_ms=100))
    transport = httpx.ASGITransport(app=app)
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
            response = await post(http, "/v1/models/scale:predict", {"instances": [[1, 2, 3]]})
            assert_error(response, 504, "Deadline exceeded")
    finally:
        release.set()
        service.close(wait=True)


async def test_many_floats_round_trip_exactly(client):
    x = np.random.default_rng(0).standard_normal((64, 3)).astype(np.float32)
    response = await post(client, "/v1/models/scale:predict", {"instances": x.tolist()})
    got = np.array(response.json()["predictions"], np.float32)
    np.testing.assert_array_equal(got, x * 2)
    assert math.isfinite(got.sum())
