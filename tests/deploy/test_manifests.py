"""deploy/kubernetes/base and deploy/kserve: every rendered manifest validates offline against the
Kubernetes schemas (strict: unknown fields fail) and KServe's required fields, the pieces refer
to each other correctly, and the server really has the ports, probe paths and flags they use
(it is started with them)."""

from __future__ import annotations

import re
import shutil
import socket
from pathlib import Path
from typing import Any

import httpx
import kubernetes_validate
import pytest
import yaml

from pyserving.demo import make_mlp
from pyserving.serving.config_file import parse_config_text
from tests.deploy.manifests import (
    DEPLOY,
    flag,
    free_ports,
    localized,
    one,
    render,
    render_without_kubectl,
    serving,
)
from tests.fakes import wait_until

#: the oldest Kubernetes the manifests are for, and the newest the schemas know
K8S_VERSIONS = ("1.29", kubernetes_validate.latest_version())
#: KServe's protocol names and model format names (serving.kserve.io/v1alpha1)
KSERVE_PROTOCOLS = {"v1", "v2", "grpc-v1", "grpc-v2"}
KSERVE_FORMATS = {"onnx", "sklearn", "xgboost", "lightgbm", "pytorch", "tensorflow"}
#: storage the KServe storage initializer can copy to /mnt/models
KSERVE_STORAGE = re.compile(r"^(s3|gs|pvc|hdfs|webhdfs|oci|https?)://[^/]+")
DNS_LABEL = re.compile(r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$")


@pytest.fixture(scope="module")
def base() -> list[dict[str, Any]]:
    return render(DEPLOY / "kubernetes" / "base")


@pytest.fixture(scope="module")
def runtime() -> dict[str, Any]:
    return one(render(DEPLOY / "kserve"), "ClusterServingRuntime")


@pytest.fixture(scope="module")
def inference_service() -> dict[str, Any]:
    return yaml.safe_load((DEPLOY / "kserve" / "inferenceservice.yaml").read_text())


def container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    return one(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_every_kubernetes_manifest_validates_against_the_schemas(base, version):
    assert {doc["kind"] for doc in base} == {
        "ConfigMap",
        "Deployment",
        "Service",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
    }
    for doc in base:
        kubernetes_validate.validate(doc, version, strict=True)


def test_our_renderer_matches_kubectl_kustomize(base):
    if shutil.which("kubectl") is None:
        pytest.skip("no kubectl here: the manifests were rendered by render_without_kubectl")
    ours = render_without_kubectl(DEPLOY / "kubernetes" / "base")
    assert sorted(ours, key=kind_and_name) == sorted(base, key=kind_and_name)


def kind_and_name(doc: dict[str, Any]) -> tuple[str, str]:
    return doc["kind"], doc["metadata"]["name"]


def test_service_hpa_and_pdb_select_the_deployments_pods(base):
    deployment = one(base, "Deployment")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    service = one(base, "Service")
    assert service["spec"]["selector"].items() <= pod_labels.items()
    pdb = one(base, "PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    target = one(base, "HorizontalPodAutoscaler")["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
    named = {p["name"]: p["containerPort"] for p in container(base)["ports"]}
    ports = {p["name"]: p for p in service["spec"]["ports"]}
    assert ports["grpc"]["appProtocol"] == "grpc"
    assert {p["targetPort"] for p in ports.values()} <= set(named)
    config_map = one(base, "ConfigMap")
    volumes = deployment["spec"]["template"]["spec"]["volumes"]
    assert {"name": config_map["metadata"]["name"]} in [v.get("configMap") for v in volumes]


def test_grace_period_covers_prestop_drain_and_unload(base):
    pod = one(base, "Deployment")["spec"]["template"]["spec"]
    args = container(base)["args"]
    drain_s = float(flag(args, "drain_timeout_seconds") or 30)
    pre_stop = container(base)["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    min_unload_s = 10  # cli_serve._MIN_UNLOAD_WAIT_S: models get at least this long to unload
    assert pod["terminationGracePeriodSeconds"] > float(pre_stop[1]) + drain_s + min_unload_s


def test_config_map_is_a_model_config_the_server_accepts(base):
    text = one(base, "ConfigMap")["data"]["models.yaml"]
    config = parse_config_text(text, "/etc/pyserving/models.yaml")
    assert all(m.base_path.startswith("s3://") for m in config.models)


def test_deployment_ports_probes_flags_and_scrape_path_are_the_servers(base, tmp_path):
    deployment = one(base, "Deployment")
    spec = container(base)
    ports = {p["name"]: p["containerPort"] for p in spec["ports"]}
    assert int(flag(spec["args"], "port") or 0) == ports["grpc"]
    assert int(flag(spec["args"], "rest_api_port") or 0) == ports["http"]
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert int(annotations["prometheus.io/port"]) == ports["http"]
    probes = [spec[p]["httpGet"] for p in ("startupProbe", "readinessProbe", "livenessProbe")]
    assert {p["port"] for p in probes} == {"http"}
    assert probes[2]["path"] == "/v2/health/live"
    assert probes[1]["path"] == "/v2/health/ready"

    # An emptyDir is writable by everyone: the server refuses a cache directory in one.
    cache = flag(spec["args"], "model_cache_dir") or ""
    assert not any(cache.startswith(m["mountPath"]) for m in spec.get("volumeMounts", ()))

    root = tmp_path / "root"
    free = free_ports("port", "rest_api_port")
    args = localized(spec["args"], root, free)
    # The ConfigMap's models, each from a local directory instead of S3.
    models = yaml.safe_load(one(base, "ConfigMap")["data"]["models.yaml"])["models"]
    marker = flag(args, "version_ready_marker")
    for model in models:
        model["base_path"] = str(tmp_path / "s3" / model["name"])
        make_mlp(Path(model["base_path"]) / "1" / "model.onnx", seed=0)
        if marker:
            (Path(model["base_path"]) / "1" / marker).touch()
    config = Path(flag(args, "model_config_file") or "")
    config.parent.mkdir(parents=True)
    config.write_text(yaml.safe_dump({"models": models}))
    with serving(args, tmp_path / "server.log") as url:
        wait_until_ready(url + probes[1]["path"])
        assert httpx.get(url + probes[2]["path"]).status_code == 200
        metrics = httpx.get(url + annotations["prometheus.io/path"])
        assert metrics.status_code == 200 and "pyserving_" in metrics.text
        for model in models:
            assert httpx.get(f"{url}/v1/models/{model['name']}").status_code == 200
        with socket.create_connection(("127.0.0.1", free["port"]), timeout=5):
            pass  # the gRPC port listens


def test_kserve_runtime_has_the_fields_kserve_requires(runtime):
    assert runtime["apiVersion"] == "serving.kserve.io/v1alpha1"
    assert DNS_LABEL.match(runtime["metadata"]["name"])
    spec = runtime["spec"]
    formats = {f["name"] for f in spec["supportedModelFormats"]}
    assert formats == KSERVE_FORMATS
    for model_format in spec["supportedModelFormats"]:
        assert isinstance(model_format.get("version", ""), str)
        assert isinstance(model_format.get("autoSelect", False), bool)
    assert set(spec["protocolVersions"]) <= KSERVE_PROTOCOLS
    assert {"v1", "v2"} <= set(spec["protocolVersions"])
    assert spec.get("multiModel", False) is False
    containers = spec["containers"]
    assert containers[0]["name"] == "kserve-container" and containers[0]["image"]
    # The containers are Kubernetes containers: validate them as a pod's.
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "runtime"},
        "spec": {"containers": containers},
    }
    for version in K8S_VERSIONS:
        kubernetes_validate.validate(pod, version, strict=True)


def test_kserve_inference_service_names_the_runtime_and_a_format_it_serves(
    runtime, inference_service
):
    assert inference_service["apiVersion"] == "serving.kserve.io/v1beta1"
    assert inference_service["kind"] == "InferenceService"
    assert DNS_LABEL.match(inference_service["metadata"]["name"])
    model = inference_service["spec"]["predictor"]["model"]
    assert model["runtime"] == runtime["metadata"]["name"]
    assert model["modelFormat"]["name"] in {
        f["name"] for f in runtime["spec"]["supportedModelFormats"]
    }
    assert model.get("protocolVersion", "v1") in runtime["spec"]["protocolVersions"]
    assert KSERVE_STORAGE.match(model["storageUri"])


def test_kserve_runtime_args_serve_mnt_models_over_v1_and_v2(runtime, tmp_path):
    spec = runtime["spec"]["containers"][0]
    assert flag(spec["args"], "model_base_path") == "/mnt/models"
    assert flag(spec["args"], "model_name") == "{{.Name}}"
    http_port = spec["ports"][0]["containerPort"]
    assert int(flag(spec["args"], "rest_api_port") or 0) == http_port
    assert spec["readinessProbe"]["httpGet"]["port"] == http_port
    annotations = runtime["spec"]["annotations"]
    assert int(annotations["prometheus.kserve.io/port"]) == http_port

    root = tmp_path / "root"
    args = [a.replace("{{.Name}}", "mlp") for a in spec["args"]]
    args = localized(args, root, free_ports("port", "rest_api_port"))
    make_mlp(root / "mnt" / "models" / "1" / "model.onnx", seed=0)  # what storageUri holds
    with serving(args, tmp_path / "server.log") as url:
        wait_until_ready(url + spec["readinessProbe"]["httpGet"]["path"])
        row = [0.5] * 64
        v1 = httpx.post(f"{url}/v1/models/mlp:predict", json={"instances": [row]})
        assert v1.status_code == 200 and len(v1.json()["predictions"][0]) == 10
        infer = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 64], "data": row}]}
        v2 = httpx.post(f"{url}/v2/models/mlp/infer", json=infer)
        assert v2.status_code == 200 and v2.json()["model_version"] == "1"
        assert httpx.get(url + annotations["prometheus.kserve.io/path"]).status_code == 200


def wait_until_ready(url: str) -> None:
    wait_until(lambda: httpx.get(url, timeout=2).status_code == 200, 60, f"{url} to answer 200")
