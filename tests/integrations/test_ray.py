"""pyserving on a real local Ray cluster of two nodes (both on this machine), through Ray's
HTTP proxy: the same answers as a plain server, new versions everywhere with no failed
request, scaling under load that loses nothing, and a sharded table (a deployment per shard
plus the router) that answers as one server and outlives a killed shard replica.

One module-scoped cluster and one application ("pyserving" at "/") that each test re-deploys
with the Ray options it needs; the replicas' server options never change, so Ray only adds or
removes replicas between tests. The sharded test replaces that application with its own (both
need route "/") and removes it at the end; the next test deploys "pyserving" again."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import pytest
import yaml

ray = pytest.importorskip("ray", reason="Ray is not installed: pip install 'pyserving[ray]'")
serve = pytest.importorskip("ray.serve", reason="Ray Serve is not installed: pyserving[ray]")

from ray.cluster_utils import Cluster  # noqa: E402

from pyserving.demo import make_mlp, make_two_io  # noqa: E402
from pyserving.integrations.ray import REPLICA_HEADER, build_app  # noqa: E402
from tests.e2e.server import ServerProcess, free_port  # noqa: E402
from tests.fakes import wait_until  # noqa: E402

pytestmark = pytest.mark.slow

APP = "pyserving"
ROW = np.linspace(-1, 1, 64, dtype=np.float32).tolist()


@dataclass
class RayServe:
    """The running cluster: the proxy's URL, the model repository and config the app serves."""

    url: str
    repo: Path
    config: Path
    node_ids: set[str]
    log_dirs: list[Path]

    def logged(self, line: str) -> bool:
        """True when a replica (any process of the cluster) logged `line`."""
        return any(
            line in path.read_text(errors="replace")
            for log_dir in self.log_dirs
            for path in log_dir.glob("*.err")
        )

    def deploy(self, **deployment: object) -> None:
        args = {
            "model_config_file": str(self.config),
            "file_system_poll_wait_seconds": 0.2,
            "deployment": {"max_replicas_per_node": 1, **deployment},
        }
        serve.run(build_app(args), name=APP, route_prefix="/", blocking=False)
        wait_until(self._running, 120, "the application to be RUNNING")

    def have_two_replicas(self) -> None:
        """Two replicas, one per node: those the scaling test left, else a fresh deployment."""
        if self.replicas() != 2:
            self.deploy(num_replicas=2)
            wait_until(lambda: self.replicas() == 2, 120, "two running replicas")

    def replicas(self) -> int:
        app = serve.status().applications.get(APP)  # None after the sharded test removed it
        if app is None:
            return 0
        return app.deployments["pyserving"].replica_states.get("RUNNING", 0)

    def _running(self, name: str = APP) -> bool:
        app = serve.status().applications.get(name)
        return app is not None and app.status == "RUNNING"


@pytest.fixture(scope="module")
def ray_serve(tmp_path_factory) -> Iterator[RayServe]:
    repo = tmp_path_factory.mktemp("ray-models")
    make_mlp(repo / "mlp" / "1" / "model.onnx", seed=0)
    make_two_io(repo / "twoio" / "1" / "model.onnx")
    make_mlp(repo / "fresh" / "1" / "model.onnx", seed=0)
    config = repo / "models.yaml"
    config.write_text(
        yaml.safe_dump(
            {"models": [{"name": n, "base_path": str(repo / n)} for n in ("mlp", "twoio", "fresh")]}
        )
    )
    patch = pytest.MonkeyPatch()
    # Ray's proxy sends every request to a replica on its own node while that one has room;
    # the tests need to reach the replica on the other node too.
    patch.setenv("RAY_SERVE_PROXY_PREFER_LOCAL_NODE_ROUTING", "0")
    # Load figures reach the autoscaler every 0.5 s (Ray's default: 10 s).
    patch.setenv("RAY_SERVE_HANDLE_AUTOSCALING_METRIC_PUSH_INTERVAL_S", "0.5")
    patch.setenv("RAY_SERVE_REPLICA_AUTOSCALING_METRIC_PUSH_INTERVAL_S", "0.5")
    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 2, "include_dashboard": False},
    )
    try:
        cluster.add_node(num_cpus=2)
        ray.init(address=cluster.address, include_dashboard=False, log_to_driver=False)
        port = free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port}, proxy_location="HeadOnly")
        node_ids = {node["NodeID"] for node in ray.nodes() if node["Alive"]}
        assert len(node_ids) == 2
        log_dirs = sorted({Path(n.get_logs_dir_path()) for n in cluster.list_all_nodes()})
        yield RayServe(f"http://127.0.0.1:{port}", repo, config, node_ids, log_dirs)
    finally:
        serve.shutdown()
        ray.shutdown()
        cluster.shutdown()
        patch.undo()


def replica_of(response: httpx.Response) -> tuple[str, str]:
    """(replica id, node id) of the replica that answered."""
    replica, _, node = response.headers[REPLICA_HEADER.decode()].partition(" node=")
    return replica, node


@dataclass
class Load:
    """Clients posting V2 infer and TF predict in a loop; every failure is kept."""

    url: str
    model: str
    failures: list[str] = field(default_factory=list)
    #: replica id → model versions it answered with
    versions: dict[str, set[str]] = field(default_factory=dict)
    requests: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self, clients: int) -> Load:
        for i in range(clients):
            thread = threading.Thread(target=self._run, args=(i,), daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(60)

    def replica_ids(self) -> set[str]:
        with self._lock:
            return set(self.versions)

    def replicas_answering(self, version: str) -> set[str]:
        with self._lock:
            return {r for r, seen in self.versions.items() if version in seen}

    def _run(self, i: int) -> None:
        v2 = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 64], "data": ROW}]}
        with httpx.Client(base_url=self.url, timeout=60) as client:
            while not self._stop.is_set():
                try:
                    if i % 2:
                        response = client.post(f"/v2/models/{self.model}/infer", json=v2)
                        version = response.json().get("model_version")
                    else:
                        response = client.post(
                            f"/v1/models/{self.model}:predict", json={"instances": [ROW]}
                        )
                        version = None
                    ok = response.status_code == 200
                    with self._lock:
                        self.requests += 1
                        if not ok:
                            self.failures.append(f"{response.status_code} {response.text}")
                        elif version is not None:
                            self.versions.setdefault(replica_of(response)[0], set()).add(version)
                except httpx.HTTPError as exc:
                    with self._lock:
                        self.failures.append(repr(exc))


def test_autoscaling_from_one_to_two_replicas_under_load_loses_nothing(ray_serve):
    ray_serve.deploy(
        autoscaling_config={
            "min_replicas": 1,
            "max_replicas": 2,
            # 4 clients keep more than 0.1 requests in flight: Ray wants a second replica
            "target_ongoing_requests": 0.1,
            "upscale_delay_s": 0,
            "look_back_period_s": 10.5,  # must pass the (deprecated) 10 s metrics_interval_s
            "downscale_delay_s": 600,  # the next tests use both replicas
        }
    )
    wait_until(lambda: ray_serve.replicas() == 1, 120, "one replica")
    load = Load(ray_serve.url, "mlp").start(clients=4)
    try:
        wait_until(lambda: len(load.replicas_answering("1")) == 1, 60, "the first replica")
        wait_until(lambda: len(load.replicas_answering("1")) == 2, 120, "a second replica")
    finally:
        load.stop()
    assert load.failures == []
    assert load.requests > 0


def test_replicas_on_both_nodes_answer_tf_and_v2_rest_as_a_plain_server(ray_serve):
    ray_serve.have_two_replicas()
    plain = ServerProcess(
        f"--model_config_file={ray_serve.config}", "--file_system_poll_wait_seconds=0"
    )
    try:
        plain.wait_ready()
        nodes = set()
        with (
            httpx.Client(base_url=ray_serve.url, timeout=30) as ray_client,
            httpx.Client(base_url=plain.url, timeout=30) as plain_client,
        ):
            for method, path, body in _PARITY_REQUESTS:
                sent = {"content": body} if isinstance(body, bytes) else {"json": body}
                ours = plain_client.request(method, path, **sent)
                theirs = ray_client.request(method, path, **sent)
                assert (theirs.status_code, theirs.headers["content-type"]) == (
                    ours.status_code,
                    ours.headers["content-type"],
                ), (method, path)
                assert theirs.content == ours.content, (method, path)
                nodes.add(replica_of(theirs)[1])
            for _ in range(200):
                if nodes == ray_serve.node_ids:
                    break
                nodes.add(replica_of(ray_client.get("/v2/health/ready"))[1])
        assert nodes == ray_serve.node_ids, "the replicas are not on both nodes"
    finally:
        plain.stop()


_PARITY_REQUESTS: list[tuple[str, str, object]] = [
    ("GET", "/v1/models/mlp", None),
    ("GET", "/v1/models/mlp/versions/1/metadata", None),
    ("POST", "/v1/models/mlp:predict", {"instances": [ROW, ROW]}),
    ("POST", "/v1/models/twoio:predict", {"inputs": {"a": [[1, 2, 3, 4]], "b": [[4, 3, 2, 1]]}}),
    ("POST", "/v1/models/mlp:predict", {"instances": [[1.0]]}),
    ("GET", "/v1/models/nope", None),
    ("GET", "/v2/health/ready", None),
    ("GET", "/v2/models/mlp", None),
    ("GET", "/v2/models/twoio/ready", None),
    (
        "POST",
        "/v2/models/mlp/infer",
        {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 64], "data": ROW}]},
    ),
    (
        "POST",
        "/v2/models/mlp/versions/1/infer",
        {"inputs": [{"name": "input", "datatype": "INT64", "shape": [1, 2], "data": [1, 2]}]},
    ),
    ("POST", "/v2/models/nope/infer", {"inputs": []}),
    ("POST", "/v2/models/mlp/infer", b'{"inputs": [{"name": "input", "datatype"'),
    ("GET", "/v2/models/ml%2Fp", None),  # a %2F stays part of the name (raw_path)
    ("DELETE", "/v2/models/mlp", None),
]


def test_a_published_version_reaches_every_replica_with_no_failed_request(ray_serve):
    ray_serve.have_two_replicas()
    load = Load(ray_serve.url, "fresh").start(clients=4)
    try:
        wait_until(lambda: len(load.replicas_answering("1")) == 2, 60, "both replicas at v1")
        staging = ray_serve.repo / "fresh" / ".staging"
        make_mlp(staging / "model.onnx", seed=1)
        staging.rename(ray_serve.repo / "fresh" / "2")  # published whole, in one step
        wait_until(lambda: len(load.replicas_answering("2")) == 2, 60, "both replicas at v2")
    finally:
        load.stop()
    assert load.failures == []
    # each replica logs its version changes, as a plain server does
    wait_until(lambda: ray_serve.logged("model=fresh version=2 state=AVAILABLE"), 10, "the log")


def test_a_rolling_redeploy_that_replaces_every_replica_under_load_loses_nothing(ray_serve):
    ray_serve.have_two_replicas()
    load = Load(ray_serve.url, "mlp").start(clients=4)
    try:
        wait_until(lambda: len(load.replica_ids()) == 2, 60, "both replicas answering")
        old = load.replica_ids()
        # serve.run again: a new code version, so Ray starts new replicas and drains the old
        # ones (graceful_shutdown_timeout_s), then our __del__ unloads their models
        ray_serve.deploy(num_replicas=2)
        wait_until(lambda: len(load.replica_ids() - old) == 2, 120, "two new replicas answering")
    finally:
        load.stop()
    assert load.failures == []


KEYS = np.arange(-20, 80, dtype=np.int64)


def test_a_sharded_table_as_shard_deployments_and_a_router_answers_as_one_server(
    ray_serve, tmp_path
):
    base = tmp_path / "table"
    (base / "1").mkdir(parents=True)
    np.savez(base / "1" / "table.npz", keys=KEYS, values=np.stack([KEYS * 0.5, -KEYS], 1))
    entry = {"name": "table", "base_path": str(base)}
    sharded = tmp_path / "sharded.yaml"
    sharded.write_text(yaml.safe_dump({"models": [{**entry, "shard": {"count": 2}}]}))
    whole = tmp_path / "whole.yaml"
    whole.write_text(yaml.safe_dump({"models": [entry]}))
    probe = [*KEYS.tolist(), -1000, 999]  # every key, and two missing ones
    requests = [
        (
            "/v2/models/table/infer",
            {
                "inputs": [
                    {"name": "keys", "datatype": "INT64", "shape": [len(probe)], "data": probe}
                ]
            },
        ),
        ("/v1/models/table:predict", {"inputs": {"keys": probe}}),
    ]
    half_cpu = {"ray_actor_options": {"num_cpus": 0.5}}
    serve.delete(APP)  # the sharded application takes route "/"
    app = build_app(
        {
            "model_config_file": str(sharded),
            "file_system_poll_wait_seconds": 0.2,
            "deployment": half_cpu,
            "shard_deployment": half_cpu,
        }
    )
    serve.run(app, name="sharded", route_prefix="/", blocking=False)
    plain = ServerProcess(f"--model_config_file={whole}", "--file_system_poll_wait_seconds=0")
    try:
        plain.wait_ready()
        wait_until(lambda: ray_serve._running("sharded"), 120, "the sharded application")
        with (
            httpx.Client(base_url=ray_serve.url, timeout=30) as ray_client,
            httpx.Client(base_url=plain.url, timeout=30) as plain_client,
        ):
            expected = [plain_client.post(path, json=body) for path, body in requests]
            assert [r.status_code for r in expected] == [200, 200]
            for (path, body), ours in zip(requests, expected, strict=True):
                assert ray_client.post(path, json=body).content == ours.content, path

            # Kill shard 1's replica: Ray starts another (a new port, maybe another node);
            # meanwhile the router answers 503 naming shard 1, then answers again.
            (name,) = [
                actor["name"]
                for actor in ray.util.list_named_actors(all_namespaces=True)
                if "#pyserving-shard-1#" in actor["name"]
            ]
            ray.kill(ray.get_actor(name, namespace="serve"), no_restart=True)

            def answers_again() -> bool:
                time.sleep(0.2)  # a few requests a second: the 2 CPUs also restart the shard
                path, body = requests[0]
                response = ray_client.post(path, json=body)
                if response.status_code == 503:
                    assert "shard 1 (" in response.text, response.text
                    return False
                assert response.status_code == 200, response.text
                return response.content == expected[0].content

            wait_until(answers_again, 120, "the router to answer again")
            (renamed,) = [
                actor["name"]
                for actor in ray.util.list_named_actors(all_namespaces=True)
                if "#pyserving-shard-1#" in actor["name"]
            ]
            assert renamed != name  # a new replica answered, not the killed one
            for (path, body), ours in zip(requests, expected, strict=True):
                assert ray_client.post(path, json=body).content == ours.content, path
    finally:
        plain.stop()
        serve.delete("sharded")
