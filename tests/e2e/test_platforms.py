"""A real server on a mixed repository (every platform but TensorFlow, see test_tensorflow.py):
TF REST and V2 REST answers against each framework's own output, classify/regress, a lookup
table's version swap, pickles with and without `allow_pickle`, and a missing extra."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from pyserving.platforms.signature import v2_datatype
from tests.e2e.server import ServerProcess, free_port
from tests.fakes import wait_until
from tests.platforms import models

PLATFORMS = ["sklearn", "xgboost", "lightgbm", "torch", "lookup", "python"]
FEATURES = ["age", "height", "weight", "score"]


def make_named_classifier(version_dir: Path) -> tuple[Any, np.ndarray]:
    """A classifier fitted on a DataFrame, so it has `feature_names_in_`."""
    import pandas as pd
    import skops.io as sio
    from sklearn.linear_model import LogisticRegression

    x = models.features(3, 60)
    model = LogisticRegression().fit(pd.DataFrame(x, columns=FEATURES), (x[:, 1] > 0).astype(int))
    version_dir.mkdir(parents=True)
    sio.dump(model, version_dir / "model.skops")
    return model, x[:3]


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("platforms")
    cases = {name: models.BUILDERS[name](root / name / "1", 0) for name in PLATFORMS}
    named, named_x = make_named_classifier(root / "named" / "1")
    cases["pickled"] = models.make_sklearn_regressor(root / "pickled" / "1", pickle="model.pkl")
    models.make_sklearn_regressor(root / "unpickled" / "1", pickle="model.joblib")
    entries = [f"  - {{name: {name}, base_path: {root / name}}}" for name in [*PLATFORMS, "named"]]
    # a servable.py runs code: the operator opts in per model (docs/operations.md)
    entries[PLATFORMS.index("python")] = (
        f"  - {{name: python, base_path: {root / 'python'}, allow_python: true}}"
    )
    # torch.export.load unpickles: a model.pt2 needs the pickle opt-in too
    entries[PLATFORMS.index("torch")] = (
        f"  - {{name: torch, base_path: {root / 'torch'}, allow_pickle: true}}"
    )
    entries.append(f"  - {{name: pickled, base_path: {root / 'pickled'}, allow_pickle: true}}")
    entries.append(f"  - {{name: unpickled, base_path: {root / 'unpickled'}}}")
    config = root / "models.yaml"
    config.write_text("models:\n" + "\n".join(entries) + "\n")
    return {"root": root, "config": config, "cases": cases, "named": (named, named_x)}


@pytest.fixture(scope="module")
def server(repo: dict[str, Any]):
    grpc_port = free_port()
    process = ServerProcess(
        f"--model_config_file={repo['config']}",
        "--file_system_poll_wait_seconds=1",
        f"--port={grpc_port}",
    )
    process.grpc_address = f"127.0.0.1:{grpc_port}"
    process.wait_ready(path="/v2/health/live")
    for name in [*PLATFORMS, "named", "pickled"]:
        wait_until(
            lambda name=name: httpx.get(f"{process.url}/v2/models/{name}/ready").status_code == 200,
            timeout_s=90,
            what=f"{name} ready:\n{process.log()}",
        )
    yield process
    assert process.stop() == 0, process.log()


def assert_close(got: Any, want: np.ndarray, what: str) -> None:
    if want.dtype == object:
        assert [g.encode() if isinstance(g, str) else g for g in np.ravel(got)] == list(
            want.ravel()
        ), what
    else:
        np.testing.assert_allclose(
            np.asarray(got, dtype=np.float64).reshape(want.shape),
            want.astype(np.float64),
            rtol=1e-5,
            atol=1e-6,
            err_msg=what,
        )


def json_value(array: np.ndarray) -> Any:
    if array.dtype == object:
        return [v.decode() for v in array.ravel()]
    return array.tolist()


@pytest.mark.slow
@pytest.mark.parametrize("name", [*PLATFORMS, "pickled"])
def test_tf_rest_and_v2_rest_match_the_framework(server: ServerProcess, repo, name: str) -> None:
    inputs, expected = repo["cases"][name]
    body = {"inputs": {key: json_value(value) for key, value in inputs.items()}}
    tf_answer = httpx.post(f"{server.url}/v1/models/{name}:predict", json=body, timeout=30)
    assert tf_answer.status_code == 200, tf_answer.text
    outputs = tf_answer.json()["outputs"]
    for key, want in expected.items():
        got = outputs[key] if isinstance(outputs, dict) else outputs
        assert_close(got, want, f"{name} TF REST {key}")

    v2_inputs = [
        {
            "name": key,
            "datatype": v2_datatype(value.dtype),
            "shape": list(value.shape),
            "data": json_value(value),
        }
        for key, value in inputs.items()
    ]
    v2_answer = httpx.post(
        f"{server.url}/v2/models/{name}/infer", json={"inputs": v2_inputs}, timeout=30
    )
    assert v2_answer.status_code == 200, v2_answer.text
    document = v2_answer.json()
    assert document["model_version"] == "1"
    by_name = {out["name"]: out for out in document["outputs"]}
    for key, want in expected.items():
        assert by_name[key]["shape"] == list(want.shape), key
        assert_close(by_name[key]["data"], want, f"{name} V2 {key}")


@pytest.mark.slow
def test_grpc_tf_and_v2_clients_match_the_framework(server: ServerProcess, repo) -> None:
    names = [*PLATFORMS, "pickled"]
    requests = {
        name: {
            key: [
                json_value(value),
                "object" if value.dtype == object else value.dtype.name,
                list(value.shape),
            ]
            for key, value in repo["cases"][name][0].items()
        }
        for name in names
    }
    client = Path(__file__).with_name("platforms_grpc_client.py")
    result = subprocess.run(
        [sys.executable, str(client), server.grpc_address],
        input=json.dumps(requests),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    answers = json.loads(result.stdout.strip().splitlines()[-1])
    for name in names:
        expected = repo["cases"][name][1]
        assert answers[name]["tf_version"] == 1
        for key, want in expected.items():
            assert_close(answers[name]["tf"][key], want, f"{name} gRPC TF {key}")
            assert_close(answers[name]["v2"][key], want, f"{name} gRPC V2 {key}")


@pytest.mark.slow
def test_metadata_names_each_platform(server: ServerProcess) -> None:
    platforms = {
        name: httpx.get(f"{server.url}/v2/models/{name}").json()["platform"]
        for name in [*PLATFORMS, "named"]
    }
    assert platforms["torch"] == "pytorch_torchscript"
    assert platforms["sklearn"] == platforms["named"] == "sklearn"
    assert platforms["lookup"] == "lookup"
    meta = httpx.get(f"{server.url}/v1/models/named/metadata").json()
    signatures = meta["metadata"]["signature_def"]["signature_def"]
    assert signatures["classification"]["method_name"] == "tensorflow/serving/classify"
    assert signatures["serving_default"]["inputs"]["inputs"]["tensor_shape"]["dim"][1] == {
        "size": "4",
        "name": "",
    }


@pytest.mark.slow
def test_classify_maps_feature_names_and_matches_predict_proba(server: ServerProcess, repo):
    model, x = repo["named"]
    import pandas as pd

    examples = [dict(zip(FEATURES, map(float, row), strict=True)) for row in x]
    answer = httpx.post(
        f"{server.url}/v1/models/named:classify", json={"examples": examples}, timeout=30
    )
    assert answer.status_code == 200, answer.text
    results = answer.json()["results"]
    probabilities = model.predict_proba(pd.DataFrame(x, columns=FEATURES))
    assert [[label for label, _ in row] for row in results] == [["0", "1"]] * len(x)
    np.testing.assert_allclose(
        [[score for _, score in row] for row in results], probabilities, rtol=1e-5
    )
    # context features are added to every example
    context = {"age": examples[0]["age"]}
    rest = [{k: v for k, v in e.items() if k != "age"} for e in examples[:1]]
    with_context = httpx.post(
        f"{server.url}/v1/models/named:classify",
        json={"context": context, "examples": rest},
        timeout=30,
    )
    assert with_context.json()["results"] == results[:1]


@pytest.mark.slow
def test_classify_errors_name_the_problem(server: ServerProcess) -> None:
    url = f"{server.url}/v1/models/named:classify"
    missing = httpx.post(url, json={"examples": [{"age": 1.0}]}, timeout=30)
    assert missing.status_code == 400
    assert "missing feature(s) height, weight, score" in missing.json()["error"]
    mixed = httpx.post(url, json={"examples": [{"age": [1, 2.5]}]}, timeout=30)
    assert mixed.status_code == 400
    assert "one type" in mixed.json()["error"]
    regress = httpx.post(
        f"{server.url}/v1/models/named:regress", json={"examples": [{"age": 1.0}]}, timeout=30
    )
    assert regress.status_code == 400
    assert "Expected regression signature method_name" in regress.json()["error"]
    onnx_less = httpx.post(
        f"{server.url}/v1/models/python:classify", json={"examples": [{"x": 1.0}]}, timeout=30
    )
    assert onnx_less.status_code == 400, onnx_less.text


@pytest.mark.slow
def test_regress_on_a_pickled_regressor(server: ServerProcess, repo) -> None:
    inputs, expected = repo["cases"]["pickled"]
    examples = [{"x": row.tolist()} for row in inputs["inputs"]]
    answer = httpx.post(
        f"{server.url}/v1/models/pickled:regress", json={"examples": examples}, timeout=30
    )
    assert answer.status_code == 200, answer.text
    np.testing.assert_allclose(answer.json()["results"], expected["predictions"], rtol=1e-5)


@pytest.mark.slow
def test_grpc_classify_regress_and_multi_inference_match_rest(server: ServerProcess, repo):
    _, x = repo["named"]
    named = [{name: [float(v)] for name, v in zip(FEATURES, row, strict=True)} for row in x]
    inputs, expected = repo["cases"]["pickled"]
    pickled = [{"x": row.tolist()} for row in inputs["inputs"]]
    rest = httpx.post(
        f"{server.url}/v1/models/named:classify",
        json={"examples": [{k: v[0] for k, v in e.items()} for e in named]},
        timeout=30,
    ).json()["results"]
    client = Path(__file__).with_name("classify_grpc_client.py")
    result = subprocess.run(
        [sys.executable, str(client), server.grpc_address],
        input=json.dumps({"classify": ["named", named], "regress": ["pickled", pickled]}),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    answers = json.loads(result.stdout.strip().splitlines()[-1])
    for got in (answers["classify"], answers["multi"]):
        assert [[label for label, _ in row] for row in got] == [
            [label for label, _ in row] for row in rest
        ]
        np.testing.assert_allclose(
            [[score for _, score in row] for row in got],
            [[score for _, score in row] for row in rest],
            rtol=1e-6,
        )
    assert answers["classify_version"] == 1
    np.testing.assert_allclose(answers["regress"], expected["predictions"], rtol=1e-5)
    assert answers["multi_two_models"].startswith("INVALID_ARGUMENT: All tasks")
    assert answers["classify_a_regressor"].startswith("INVALID_ARGUMENT: Expected classification")
    assert answers["regress_nothing"] == "INVALID_ARGUMENT: Input is empty"


@pytest.mark.slow
def test_pickle_without_allow_pickle_is_refused_with_a_message(server: ServerProcess) -> None:
    def failed() -> bool:
        status = httpx.get(f"{server.url}/v1/models/unpickled").json()
        entry = status.get("model_version_status", [{}])[0]
        return entry.get("state") == "END" and entry["status"]["error_code"] != "OK"

    wait_until(failed, timeout_s=60, what="the pickle's load to fail")
    message = httpx.get(f"{server.url}/v1/models/unpickled").json()["model_version_status"][0]
    assert "allow_pickle: true" in message["status"]["error_message"]


@pytest.mark.slow
def test_lookup_table_version_swap_changes_the_answers(server: ServerProcess, repo) -> None:
    root: Path = repo["root"]
    staging = root / "staging"
    _, expected = models.make_lookup(staging, seed=7)
    shutil.move(staging, root / "lookup" / "2")  # appears whole to the poller
    url = f"{server.url}/v1/models/lookup:predict"
    body = {"inputs": {"keys": ["b", "c", "a"]}}

    def swapped() -> bool:
        answer = httpx.post(url, json=body, timeout=30)
        assert answer.status_code == 200, answer.text
        return np.allclose(answer.json()["outputs"]["values"], expected["values"])

    wait_until(swapped, timeout_s=60, what=f"lookup version 2 answering:\n{server.log()}")


@pytest.mark.slow
def test_model_whose_extra_is_missing_fails_naming_it_and_others_serve(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    blocker = tmp_path / "blocker" / "lightgbm"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text("raise ImportError('lightgbm is blocked for this test')\n")
    monkeypatch.setenv("PYTHONPATH", str(blocker.parent))
    _, expected = models.make_lookup(tmp_path / "table" / "1")
    models.make_lightgbm(tmp_path / "lgb" / "1")
    config = tmp_path / "models.yaml"
    config.write_text(
        f"models:\n  - {{name: table, base_path: {tmp_path / 'table'}}}\n"
        f"  - {{name: lgb, base_path: {tmp_path / 'lgb'}}}\n"
    )
    server = ServerProcess(f"--model_config_file={config}")
    try:
        server.wait_ready(path="/v2/models/table/ready")
        answer = httpx.post(
            f"{server.url}/v1/models/table:predict",
            json={"inputs": {"keys": ["b", "c", "a"]}},
            timeout=30,
        )
        assert answer.status_code == 200, answer.text
        np.testing.assert_allclose(answer.json()["outputs"]["values"], expected["values"])

        def lgb_failed() -> bool:
            status = httpx.get(f"{server.url}/v1/models/lgb")
            return "pyserving[lightgbm]" in status.text

        wait_until(lgb_failed, timeout_s=30, what=f"lgb to fail:\n{server.log()}")
        assert httpx.get(f"{server.url}/v2/models/lgb/ready").status_code != 200
    finally:
        assert server.stop() == 0, server.log()


@pytest.mark.slow
def test_tensorflow_savedmodel_serves_over_rest(tmp_path: Path) -> None:
    # built in a child so the test process never pays for importing TensorFlow
    build = "import sys, pathlib; from tests.platforms.models import make_tensorflow as m;"
    build += " m(pathlib.Path(sys.argv[1]))"
    subprocess.run([sys.executable, "-c", build, str(tmp_path / "hp2" / "1")], check=True)
    x = np.array([1.0, 2.0, 5.0], dtype=np.float32)
    server = ServerProcess("--model_name=hp2", f"--model_base_path={tmp_path / 'hp2'}")
    try:
        server.wait_ready(path="/v2/health/live")

        def settled() -> bool:
            states = httpx.get(f"{server.url}/v1/models/hp2").json().get("model_version_status")
            return bool(states) and states[0]["state"] in ("AVAILABLE", "END")

        wait_until(settled, timeout_s=90, what="hp2 to load or fail")
        answer = httpx.post(
            f"{server.url}/v1/models/hp2:predict",
            json={"instances": x.tolist()},
            timeout=30,
        )
        assert answer.status_code == 200, answer.text
        np.testing.assert_allclose(answer.json()["predictions"], x * 0.5 + 2.0, rtol=1e-6)
    finally:
        assert server.stop() == 0, server.log()
