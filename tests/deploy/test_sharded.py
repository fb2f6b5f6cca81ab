"""deploy/kubernetes/sharded: the overlay validates offline, its pieces agree (shard count,
StatefulSet replicas, router addresses), the init container's own script turns a pod's ordinal
into its shard index, and three shard servers and a router started with the manifests' flags
serve the whole table."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import kubernetes_validate
import numpy as np
import pytest
import yaml

from pyserving.serving.config_file import parse_config_text
from tests.deploy.manifests import (
    DEPLOY,
    flag,
    free_ports,
    localized,
    render,
    render_without_kubectl,
    serving,
)
from tests.fakes import wait_until

OVERLAY = DEPLOY / "kubernetes" / "sharded"
K8S_VERSIONS = ("1.29", kubernetes_validate.latest_version())
KEYS = np.arange(0, 90, dtype=np.int64)


@pytest.fixture(scope="module")
def docs() -> list[dict[str, Any]]:
    return render(OVERLAY)


def named(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    (doc,) = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    return doc


def pod_labels(workload: dict[str, Any]) -> dict[str, str]:
    return workload["spec"]["template"]["metadata"]["labels"]


def models_yaml(docs: list[dict[str, Any]], config_map: str) -> str:
    return named(docs, "ConfigMap", config_map)["data"]["models.yaml"]


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_every_manifest_of_the_overlay_validates_against_the_schemas(docs, version):
    for doc in docs:
        kubernetes_validate.validate(doc, version, strict=True)


def test_our_renderer_matches_kubectl_kustomize(docs):
    if shutil.which("kubectl") is None:
        pytest.skip("no kubectl here: the manifests were rendered by render_without_kubectl")
    key = lambda d: (d["kind"], d["metadata"]["name"])  # noqa: E731
    assert sorted(render_without_kubectl(OVERLAY), key=key) == sorted(docs, key=key)


def test_shard_count_replicas_services_and_router_addresses_agree(docs):
    shards = named(docs, "StatefulSet", "pyserving-shard")
    headless = named(docs, "Service", shards["spec"]["serviceName"])
    assert headless["spec"]["clusterIP"] == "None"
    assert headless["spec"]["selector"].items() <= pod_labels(shards).items()
    router = named(docs, "Deployment", "pyserving-router")
    router_service = named(docs, "Service", "pyserving-router")
    assert router_service["spec"]["selector"].items() <= pod_labels(router).items()
    # the base's Service sends nothing to shards or routers, and they select only their own
    base_service = named(docs, "Service", "pyserving")["spec"]["selector"]
    for workload in (shards, router):
        assert not base_service.items() <= pod_labels(workload).items()
    assert not headless["spec"]["selector"].items() <= pod_labels(router).items()

    shard_config = parse_config_text(models_yaml(docs, "pyserving-shard-models"), "/c/m.yaml")
    (table,) = shard_config.models
    replicas = shards["spec"]["replicas"]
    assert (
        yaml.safe_load(models_yaml(docs, "pyserving-shard-models"))["models"][0]["shard"]["count"]
        == replicas
    )
    router_config = yaml.safe_load(models_yaml(docs, "pyserving-router-models"))
    parse_config_text(models_yaml(docs, "pyserving-router-models"), "/c/m.yaml")
    (entry,) = router_config["models"]
    assert entry["name"] == table.name and entry["platform"] == "shards"
    grpc = next(p["port"] for p in headless["spec"]["ports"] if p["name"] == "grpc")
    name, service = shards["metadata"]["name"], headless["metadata"]["name"]
    assert entry["shards"] == [f"{name}-{i}.{service}:{grpc}" for i in range(replicas)]


@pytest.mark.parametrize(
    ("kind", "name"), [("StatefulSet", "pyserving-shard"), ("Deployment", "pyserving-router")]
)
def test_grace_period_covers_prestop_drain_and_unload(docs, kind, name):
    pod = named(docs, kind, name)["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    drain_s = float(flag(container["args"], "drain_timeout_seconds") or 30)
    pre_stop = container["lifecycle"]["preStop"]["exec"]["command"]
    min_unload_s = 10  # cli_serve._MIN_UNLOAD_WAIT_S
    assert pod["terminationGracePeriodSeconds"] > float(pre_stop[1]) + drain_s + min_unload_s


def shard_index_script(docs: list[dict[str, Any]], root: Path) -> str:
    spec = named(docs, "StatefulSet", "pyserving-shard")["spec"]["template"]["spec"]
    (init,) = spec["initContainers"]
    assert init["command"][:2] == ["python", "-c"]
    return init["command"][2].replace('"/etc/', f'"{root}/etc/')


def write_shard_config(docs: list[dict[str, Any]], root: Path, pod: str) -> Path:
    """Run the init container's script for pod `pod` with its paths under `root`."""
    template = root / "etc" / "pyserving-template" / "models.yaml"
    template.parent.mkdir(parents=True, exist_ok=True)
    template.write_text(models_yaml(docs, "pyserving-shard-models"))
    (root / "etc" / "pyserving").mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [sys.executable, "-c", shard_index_script(docs, root)],
        env={**os.environ, "POD_NAME": pod},
        check=True,
        capture_output=True,
        text=True,
    )
    return root / "etc" / "pyserving" / "models.yaml"


def test_init_container_gives_each_pod_its_ordinal_as_shard_index(docs, tmp_path):
    written = write_shard_config(docs, tmp_path, "pyserving-shard-2")
    config = yaml.safe_load(written.read_text())
    assert config["models"][0]["shard"] == {"index": 2, "count": 3}
    parse_config_text(written.read_text(), written)
    with pytest.raises(subprocess.CalledProcessError) as past:
        write_shard_config(docs, tmp_path, "pyserving-shard-3")
    assert "pod ordinal 3 is past the shard count 3" in past.value.stderr


def test_shards_and_router_started_with_the_manifests_flags_serve_the_whole_table(docs, tmp_path):
    shards = named(docs, "StatefulSet", "pyserving-shard")
    shard_args = shards["spec"]["template"]["spec"]["containers"][0]["args"]
    router_args = named(docs, "Deployment", "pyserving-router")["spec"]["template"]["spec"][
        "containers"
    ][0]["args"]
    table = tmp_path / "s3" / "embeddings"
    (table / "1").mkdir(parents=True)
    values = np.stack([KEYS * 1.0, -KEYS * 1.0], axis=1).astype(np.float32)
    np.savez(table / "1" / "table.npz", keys=KEYS, values=values)
    marker = flag(shard_args, "version_ready_marker")
    if marker:
        (table / "1" / marker).touch()
    with contextlib.ExitStack() as stack:
        addresses = []
        for i in range(shards["spec"]["replicas"]):
            root = tmp_path / f"pod{i}"
            config = write_shard_config(docs, root, f"pyserving-shard-{i}")
            text = yaml.safe_load(config.read_text())
            text["models"][0]["base_path"] = str(table)  # the table from a local directory
            config.write_text(yaml.safe_dump(text))
            ports = free_ports("port", "rest_api_port")
            args = localized(shard_args, root, ports)
            url = stack.enter_context(serving(args, tmp_path / f"shard{i}.log"))
            wait_until(lambda u=url: ready(u), 60, f"shard {i} ready")
            addresses.append(f"127.0.0.1:{ports['port']}")
        root = tmp_path / "router"
        args = localized(router_args, root, free_ports("port", "rest_api_port"))
        router_config = yaml.safe_load(models_yaml(docs, "pyserving-router-models"))
        router_config["models"][0]["shards"] = addresses
        config = Path(flag(args, "model_config_file") or "")
        config.parent.mkdir(parents=True)
        config.write_text(yaml.safe_dump(router_config))
        url = stack.enter_context(serving(args, tmp_path / "router.log"))
        wait_until(lambda: ready(url), 60, "the router ready (every shard serves version 1)")
        keys = [*KEYS.tolist(), 1000]
        response = httpx.post(
            f"{url}/v2/models/embeddings/infer",
            json={
                "inputs": [
                    {"name": "keys", "datatype": "INT64", "shape": [len(keys)], "data": keys}
                ]
            },
            timeout=30,
        )
        assert response.status_code == 200, response.text
        outputs = {o["name"]: o["data"] for o in response.json()["outputs"]}
        assert outputs["found"] == [True] * len(KEYS) + [False]
        assert outputs["values"][: 2 * len(KEYS)] == values.ravel().tolist()


def ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/v2/health/ready", timeout=2).status_code == 200
    except httpx.TransportError:
        return False
