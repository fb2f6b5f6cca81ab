"""Trust end to end (docs/operations.md, issue 15) against real `pyserving serve` processes:
TLS and mutual TLS on gRPC and REST with certificates made at test time (grpc secure channels,
httpx, tritonclient with SSL), the control token, control-plane base paths limited to the
configured roots, `allow_python` / `--allow-python-servables`, startup refusals for a bad SSL
config or token file, and a private demo directory."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import ssl
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import httpx
import pytest

from pyserving.demo import make_mlp
from pyserving.proto import grpc_service_pb2 as v2
from pyserving.proto import grpc_service_pb2_grpc as v2_grpc
from pyserving.proto import model_server_config_pb2 as config_pb2
from pyserving.proto import model_service_pb2_grpc
from pyserving.proto import tf_serving_apis_pb2 as apis
from tests.certs import Certs, make_certs
from tests.e2e.server import ServerProcess, free_port
from tests.fakes import wait_until
from tests.platforms import models

pytestmark = pytest.mark.slow

TOKEN = "trust-e2e-token-7f3a9c"
INSTANCES = {"instances": [[0.5] * 64]}


@dataclass
class Repo:
    root: Path
    config: Path
    token_file: Path
    marker: Path  # created by any planted servable.py that runs


def _planted_servable(version_dir: Path, marker: Path) -> None:
    """A working servable.py that also leaves `marker` behind when it is imported."""
    models.make_python(version_dir)
    source = (version_dir / "servable.py").read_text()
    (version_dir / "servable.py").write_text(f"open({str(marker)!r}, 'a').close()\n{source}")


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("certs"))


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Repo:
    root = tmp_path_factory.mktemp("trust")
    marker = root / "planted-code-ran"
    make_mlp(root / "models" / "mlp" / "1" / "model.onnx", seed=1)
    _planted_servable(root / "models" / "py" / "1", marker)
    models.make_python(root / "models" / "pyok" / "1")
    make_mlp(root / "extra" / "added" / "1" / "model.onnx", seed=2)
    _planted_servable(root / "outside" / "evil" / "1", marker)
    os.symlink(root / "outside", root / "models" / "mlp" / "link")
    config = root / "models.yaml"
    config.write_text(
        "models:\n"
        f"  - {{name: mlp, base_path: {root / 'models' / 'mlp'}}}\n"
        f"  - {{name: py, base_path: {root / 'models' / 'py'}}}\n"
        f"  - {{name: pyok, base_path: {root / 'models' / 'pyok'}, allow_python: true}}\n"
    )
    token_file = root / "token"
    token_file.write_text(f"\n  {TOKEN}  \n")
    return Repo(root, config, token_file, marker)


def _client_context(certs: Certs, with_cert: Path | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(certs.ca.cert_file))
    if with_cert is not None:
        context.load_cert_chain(with_cert.with_suffix(".crt"), with_cert.with_suffix(".key"))
    return context


class TlsServer:
    """A ServerProcess on https with a gRPC port, and clients that present the client cert."""

    def __init__(
        self, certs: Certs, ssl_config: Path, *flags: str, client_cert: bool = True
    ) -> None:
        self.grpc_port = free_port()
        self.process = ServerProcess(
            f"--ssl_config_file={ssl_config}", f"--port={self.grpc_port}", *flags
        )
        self.url = f"https://127.0.0.1:{self.process.port}"
        self.grpc_address = f"127.0.0.1:{self.grpc_port}"
        self.certs = certs
        own = certs.client.cert_file.with_suffix("") if client_cert else None
        self.http = httpx.Client(base_url=self.url, verify=_client_context(certs, own), timeout=10)

    def channel(self, client_cert: bool = True) -> grpc.Channel:
        pem = self.certs.client if client_cert else None
        credentials = grpc.ssl_channel_credentials(
            root_certificates=self.certs.ca.cert.encode(),
            private_key=pem.key.encode() if pem else None,
            certificate_chain=pem.cert.encode() if pem else None,
        )
        return grpc.secure_channel(self.grpc_address, credentials)

    def wait_ready(self, names: tuple[str, ...] = ("mlp",)) -> None:
        def ready() -> bool:
            if self.process.proc.poll() is not None:
                raise AssertionError(f"server exited:\n{self.process.log()}")
            try:
                return all(
                    self.http.get(f"/v2/models/{name}/ready").status_code == 200 for name in names
                )
            except httpx.TransportError:
                return False

        wait_until(ready, timeout_s=60, what=f"{names} ready over https:\n{self.process.log()}")

    def stop(self) -> int:
        self.http.close()
        return self.process.stop()


@pytest.fixture(scope="module")
def mtls(certs: Certs, repo: Repo) -> Iterator[TlsServer]:
    ssl_config = repo.root / "mtls.conf"
    ssl_config.write_text(certs.ssl_config(client_verify=True))
    server = TlsServer(
        certs,
        ssl_config,
        f"--model_config_file={repo.config}",
        "--enable_model_control",
        f"--control_token_file={repo.token_file}",
        f"--model_control_roots={repo.root / 'extra'}",
        "--max_num_load_retries=0",
        "--file_system_poll_wait_seconds=1",
    )
    try:
        server.wait_ready(("mlp", "pyok"))
        yield server
    finally:
        code = server.stop()
    assert code == 0, server.process.log()
    assert TOKEN not in server.process.log()


# --- TLS ---------------------------------------------------------------------------------------


def test_https_with_a_client_cert_serves_and_clients_without_one_are_refused_issue_15(
    mtls: TlsServer, certs: Certs
) -> None:
    response = mtls.http.post("/v1/models/mlp:predict", json=INSTANCES)
    assert response.status_code == 200, response.text
    assert "listening on https://" in mtls.process.log()
    for verify in (
        _client_context(certs),  # no client cert
        _client_context(certs, certs.stranger.cert_file.with_suffix("")),  # another CA's
    ):
        with pytest.raises(httpx.TransportError):
            httpx.get(f"{mtls.url}/v2/health/live", verify=verify, timeout=5).raise_for_status()
    with pytest.raises(httpx.TransportError):  # plain text on the TLS port
        httpx.get(f"http://127.0.0.1:{mtls.process.port}/v2/health/live", timeout=5)


def test_grpc_mutual_tls_serves_a_client_cert_and_refuses_a_client_without_one_issue_15(
    mtls: TlsServer,
) -> None:
    with mtls.channel() as channel:
        stub = v2_grpc.GRPCInferenceServiceStub(channel)
        assert stub.ServerLive(v2.ServerLiveRequest(), timeout=10).live
        assert stub.ModelReady(v2.ModelReadyRequest(name="mlp"), timeout=10).ready
    with mtls.channel(client_cert=False) as channel:
        stub = v2_grpc.GRPCInferenceServiceStub(channel)
        with pytest.raises(grpc.RpcError) as caught:
            stub.ServerLive(v2.ServerLiveRequest(), timeout=10)
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    with grpc.insecure_channel(mtls.grpc_address) as channel:
        stub = v2_grpc.GRPCInferenceServiceStub(channel)
        with pytest.raises(grpc.RpcError) as caught:
            stub.ServerLive(v2.ServerLiveRequest(), timeout=10)
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE


def test_tritonclient_grpc_and_http_with_ssl_and_client_certs_issue_15(
    mtls: TlsServer, certs: Certs
) -> None:
    script = Path(__file__).with_name("trust_clients.py")
    result = subprocess.run(
        [
            sys.executable,
            str(script),
            mtls.grpc_address,
            f"127.0.0.1:{mtls.process.port}",
            str(certs.ca.cert_file.parent),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["grpc"]["live"] and out["grpc"]["output_shape"] == [1, 10]
    assert out["grpc"]["without_cert"] == "StatusCode.UNAVAILABLE"
    assert out["http"]["live"] and out["http"]["output_shape"] == [1, 10]


def test_tls_without_client_verify_serves_clients_that_trust_the_ca_issue_15(
    certs: Certs, repo: Repo
) -> None:
    ssl_config = repo.root / "tls.conf"
    ssl_config.write_text(certs.ssl_config())
    server = TlsServer(
        certs, ssl_config, f"--model_base_path={repo.root / 'models' / 'mlp'}", client_cert=False
    )
    try:
        server.wait_ready(("default",))
        assert server.http.post("/v1/models/default:predict", json=INSTANCES).status_code == 200
        with server.channel(client_cert=False) as channel:
            stub = v2_grpc.GRPCInferenceServiceStub(channel)
            assert stub.ModelReady(v2.ModelReadyRequest(name="default"), timeout=10).ready
        with pytest.raises(httpx.TransportError):  # the server's cert is not in the system store
            httpx.get(f"{server.url}/v2/health/live", timeout=5)
    finally:
        assert server.stop() == 0, server.process.log()


# --- code only where the operator said so ------------------------------------------------------


def _status(server: TlsServer, name: str) -> list[dict]:
    response = server.http.get(f"/v1/models/{name}")
    return response.json().get("model_version_status", []) if response.status_code == 200 else []


def test_a_servable_py_without_allow_python_is_refused_naming_the_key_issue_15(
    mtls: TlsServer, repo: Repo
) -> None:
    wait_until(
        lambda: any(s["status"].get("error_message") for s in _status(mtls, "py")),
        timeout_s=30,
        what=f"py's load to fail:\n{mtls.process.log()}",
    )
    (status,) = _status(mtls, "py")
    assert "allow_python: true" in status["status"]["error_message"]
    assert not repo.marker.exists(), "the unopted servable.py ran"
    response = mtls.http.post("/v1/models/pyok:predict", json={"instances": [1.0, 2.0]})
    assert response.status_code == 200, response.text
    assert response.json()["predictions"] == [3.0, 6.0]


def test_allow_python_servables_opts_in_the_command_line_model_issue_15(repo: Repo) -> None:
    base_path = f"--model_base_path={repo.root / 'models' / 'pyok'}"
    refused = ServerProcess(base_path, "--max_num_load_retries=0")
    allowed = ServerProcess(base_path, "--allow_python_servables")
    try:
        allowed.wait_ready()
        response = httpx.post(f"{allowed.url}/v1/models/default:predict", json={"instances": [1.0]})
        assert response.status_code == 200, response.text

        def refusal() -> str:
            got = httpx.get(f"{refused.url}/v1/models/default", timeout=5)
            statuses = got.json().get("model_version_status", []) if got.is_success else []
            return " ".join(s["status"].get("error_message", "") for s in statuses)

        refused.wait_ready(path="/v2/health/live")
        wait_until(lambda: refusal(), timeout_s=30, what=f"a refusal:\n{refused.log()}")
        assert "--allow-python-servables" in refusal()
    finally:
        assert allowed.stop() == 0, allowed.log()
        assert refused.stop() == 0, refused.log()


# --- the control token -------------------------------------------------------------------------


def test_rest_control_calls_need_the_bearer_token_issue_15(mtls: TlsServer) -> None:
    path = "/v2/repository/models/mlp/load"
    missing = mtls.http.post(path)
    assert missing.status_code == 401
    assert missing.headers["www-authenticate"] == "Bearer"
    assert "needs a token" in missing.json()["error"]
    wrong = mtls.http.post(path, headers={"Authorization": f"Bearer {TOKEN}-not"})
    assert wrong.status_code == 401 and "token is wrong" in wrong.json()["error"]
    assert TOKEN not in wrong.text
    right = mtls.http.post(path, headers={"Authorization": f"Bearer {TOKEN}"})
    assert right.status_code == 200, right.text


def test_grpc_control_calls_need_the_token_in_authorization_metadata_issue_15(
    mtls: TlsServer, repo: Repo
) -> None:
    mlp = ("mlp", str(repo.root / "models" / "mlp"))
    reload = apis.ReloadConfigRequest(config=_config_of(mlp))
    with mtls.channel() as channel:
        repository = v2_grpc.GRPCInferenceServiceStub(channel)
        control = model_service_pb2_grpc.ModelServiceStub(channel)
        calls = (
            lambda **kw: repository.RepositoryModelLoad(
                v2.RepositoryModelLoadRequest(model_name="mlp"), timeout=30, **kw
            ),
            lambda **kw: control.HandleReloadConfigRequest(reload, timeout=30, **kw),
        )
        for call in calls:
            for metadata, what in (((), "needs a token"), (_bearer("nope"), "token is wrong")):
                with pytest.raises(grpc.RpcError) as caught:
                    call(metadata=metadata)
                assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
                assert what in caught.value.details()
            call(metadata=_bearer(TOKEN))


# --- control-plane base paths ------------------------------------------------------------------


def test_reload_outside_the_configured_roots_is_permission_denied_saying_why_issue_15(
    mtls: TlsServer, repo: Repo
) -> None:
    mlp = ("mlp", str(repo.root / "models" / "mlp"))
    outside = repo.root / "outside" / "evil"
    refused = {
        "ftp://attacker.example/evil": "no allowed root uses the ftp:// scheme",
        "http://attacker.example/evil": "no allowed root uses the http:// scheme",
        "memory://evil": "no allowed root uses the memory:// scheme",
        str(outside): "outside every allowed root",
        f"{repo.root / 'models' / 'mlp'}/../../outside/evil": "resolves to",
        f"{repo.root / 'models' / 'mlp'}/link/evil": "resolves to",
    }
    with mtls.channel() as channel:
        control = model_service_pb2_grpc.ModelServiceStub(channel)
        for base_path, why in refused.items():
            request = apis.ReloadConfigRequest(config=_config_of(mlp, ("evil", base_path)))
            with pytest.raises(grpc.RpcError) as caught:
                control.HandleReloadConfigRequest(request, timeout=30, metadata=_bearer(TOKEN))
            assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED, base_path
            assert why in caught.value.details() and "--model-control-roots" in (
                caught.value.details()
            )
        assert not repo.marker.exists(), "a refused base path's servable.py ran"
        assert mtls.http.get("/v1/models/evil").status_code == 404
        # under --model_control_roots: allowed
        added = ("added", str(repo.root / "extra" / "added"))
        request = apis.ReloadConfigRequest(config=_config_of(mlp, added))
        response = control.HandleReloadConfigRequest(request, timeout=60, metadata=_bearer(TOKEN))
        assert response.status.error_code == 0
    assert mtls.http.post("/v1/models/added:predict", json=INSTANCES).status_code == 200


def _config_of(*models_: tuple[str, str]) -> config_pb2.ModelServerConfig:
    config = config_pb2.ModelServerConfig()
    for name, base_path in models_:
        config.model_config_list.config.add(name=name, base_path=base_path)
    return config


def _bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


# --- startup refusals --------------------------------------------------------------------------


def _serve_fails(*flags: str) -> str:
    """Run `pyserving serve` expecting it to stop at once; returns its stderr."""
    result = subprocess.run(
        [sys.executable, "-m", "pyserving", "serve", "--rest_api_port=0", "--port=0", *flags],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2, (result.stdout, result.stderr)
    return result.stderr.strip()


def test_a_bad_ssl_config_or_token_file_stops_startup_in_one_line_issue_15(
    tmp_path: Path, certs: Certs
) -> None:
    base = f"--model_base_path={tmp_path}"
    bad_cert = tmp_path / "bad.conf"
    bad_cert.write_text(
        certs.ssl_config().replace(certs.server.cert.splitlines()[1], "Zm9vYmFy" * 8)
    )
    no_ca = tmp_path / "no-ca.conf"
    no_ca.write_text(certs.ssl_config(client_verify=True).replace("custom_ca", "# custom_ca"))
    empty_token = tmp_path / "token"
    empty_token.write_text("\n")
    cases = {
        f"--ssl_config_file={tmp_path / 'missing.conf'}": "cannot read --ssl_config_file",
        f"--ssl_config_file={bad_cert}": "server_cert is not a PEM certificate",
        f"--ssl_config_file={no_ca}": "client_verify is true but custom_ca is empty",
        f"--control_token_file={empty_token}": "is empty",
        f"--control_token_file={tmp_path / 'nope'}": "cannot read --control-token-file",
    }
    for flag, reason in cases.items():
        stderr = _serve_fails(base, flag)
        assert reason in stderr and "\n" not in stderr, (flag, stderr)


# --- private directories -----------------------------------------------------------------------


def test_demo_serves_from_a_fresh_private_dir_not_a_shared_temp_path_issue_15(
    tmp_path: Path,
) -> None:
    shared = Path(tempfile.gettempdir()) / "pyserving-demo"
    if shared.exists():
        pytest.skip(f"{shared} exists already; not touching another user's files")
    marker = tmp_path / "planted-code-ran"
    try:
        _planted_servable(shared / "mlp" / "9", marker)
        server = ServerProcess("--demo")
        try:
            server.wait_ready()
            log = server.log()
            found = re.search(r"demo repository written to (\S+)", log)
            assert found is not None, log
            demo_dir = Path(found.group(1))
            assert demo_dir != shared
            assert stat.S_IMODE(demo_dir.stat().st_mode) == 0o700
            status = httpx.get(f"{server.url}/v1/models/mlp").json()["model_version_status"]
            assert sorted(s["version"] for s in status) == ["1", "2"]
        finally:
            assert server.stop() == 0, server.log()
        assert not marker.exists(), "the planted servable.py ran"
        assert not demo_dir.exists(), "the demo directory was left behind"
    finally:
        shutil.rmtree(shared, ignore_errors=True)


# --- model control: what fsspec opens, re-sent models, refused loads (red team 1) ---------------


@dataclass
class ControlServer:
    process: ServerProcess
    grpc_port: int
    root: Path

    def reload(self, *models_: tuple[str, str]) -> grpc.RpcError | None:
        """Send HandleReloadConfigRequest; None when it succeeded, else the error."""
        request = apis.ReloadConfigRequest(config=_config_of(*models_))
        with grpc.insecure_channel(f"127.0.0.1:{self.grpc_port}") as channel:
            try:
                model_service_pb2_grpc.ModelServiceStub(channel).HandleReloadConfigRequest(
                    request, timeout=60
                )
            except grpc.RpcError as exc:
                return exc
        return None

    def versions(self, name: str) -> dict[str, str]:
        got = httpx.get(f"{self.process.url}/v1/models/{name}", timeout=5)
        statuses = got.json().get("model_version_status", []) if got.is_success else []
        return {s["version"]: s["state"] for s in statuses}


@pytest.fixture(scope="module")
def control(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlServer]:
    root = tmp_path_factory.mktemp("control")
    models_dir = root / "models"
    make_mlp(models_dir / "mlp" / "1" / "model.onnx", seed=1)
    models.make_python(models_dir / "py" / "1")
    (root / "cwd").mkdir()
    config = root / "models.yaml"
    config.write_text(
        "models:\n"
        f"  - {{name: mlp, base_path: {models_dir / 'mlp'}}}\n"
        f"  - {{name: py, base_path: {models_dir / 'py'}, allow_python: true}}\n"
    )
    grpc_port = free_port()
    cwd = Path.cwd()
    os.chdir(root / "cwd")  # the server's working directory: fsspec opens file://HOST/p there
    try:
        process = ServerProcess(
            f"--model_config_file={config}",
            "--enable_model_control",
            f"--model_control_roots={models_dir}",
            "--max_num_load_retries=0",
            "--file_system_poll_wait_seconds=0.2",
            f"--port={grpc_port}",
        )
    finally:
        os.chdir(cwd)
    try:
        process.wait_ready()
        yield ControlServer(process, grpc_port, root)
    finally:
        assert process.stop() == 0, process.log()


def test_a_file_url_host_or_nul_byte_cannot_leave_the_roots_issue_15(
    control: ControlServer,
) -> None:
    started = [
        ("mlp", str(control.root / "models" / "mlp")),
        ("py", str(control.root / "models" / "py")),
    ]
    inside = str(control.root / "models" / "mlp")
    # what fsspec really opens for file://HOST/<inside>: <cwd>/HOST/<inside>, outside every root
    for host in ("", "localhost"):
        make_mlp(control.root / "cwd" / host / inside.lstrip("/") / "1" / "model.onnx", seed=3)
    for base_path, why in (
        ("file:/" + inside, "resolves to"),
        ("file://localhost" + inside, "resolves to"),
        ("local://localhost" + inside, "resolves to"),
        (inside + "\x00", "NUL byte"),
    ):
        error = control.reload(*started, ("evil", base_path))
        assert error is not None, f"{base_path!r} was accepted"
        assert error.code() == grpc.StatusCode.PERMISSION_DENIED, (base_path, error.details())
        assert why in error.details()
    assert control.versions("evil") == {}


def test_a_resent_model_keeps_its_yaml_only_keys_issue_15(control: ControlServer) -> None:
    py = control.root / "models" / "py"
    started = [("mlp", str(control.root / "models" / "mlp")), ("py", str(py))]
    assert control.reload(*started) is None
    # the next version of the python model is still allowed: allow_python survived the reload
    models.make_python(py / ".tmp-2")
    (py / ".tmp-2").rename(py / "2")
    wait_until(
        lambda: control.versions("py").get("2") in ("AVAILABLE", "END"),
        timeout_s=30,
        what=f"py version 2 to settle:\n{control.process.log()}",
    )
    assert control.versions("py")["2"] == "AVAILABLE", control.process.log()


def test_a_reload_whose_new_model_is_refused_is_failed_precondition_issue_15(
    control: ControlServer,
) -> None:
    started = [
        ("mlp", str(control.root / "models" / "mlp")),
        ("py", str(control.root / "models" / "py")),
    ]
    models.make_python(control.root / "models" / "pynew" / "1")
    error = control.reload(*started, ("pynew", str(control.root / "models" / "pynew")))
    assert error is not None
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION, error.details()
    assert "allow_python: true" in error.details()


def test_a_symlink_retargeted_after_the_check_does_not_move_the_model_issue_15(
    control: ControlServer,
) -> None:
    models_dir = control.root / "models"
    started = [("mlp", str(models_dir / "mlp")), ("py", str(models_dir / "py"))]
    make_mlp(models_dir / "target" / "1" / "model.onnx", seed=1)
    make_mlp(control.root / "outside" / "5" / "model.onnx", seed=4)
    os.symlink(models_dir / "target", models_dir / "link")
    assert control.reload(*started, ("vialink", str(models_dir / "link"))) is None
    assert control.versions("vialink") == {"1": "AVAILABLE"}
    os.symlink(control.root / "outside", models_dir / ".link-new")
    os.replace(models_dir / ".link-new", models_dir / "link")
    # a new version in the checked directory: once it is seen, the poll after the swap has run
    make_mlp(models_dir / "target" / ".tmp-2" / "model.onnx", seed=2)
    (models_dir / "target" / ".tmp-2").rename(models_dir / "target" / "2")
    wait_until(
        lambda: "2" in control.versions("vialink") or "5" in control.versions("vialink"),
        timeout_s=30,
        what=f"vialink's next version:\n{control.process.log()}",
    )
    assert "5" not in control.versions("vialink"), "the model followed the symlink out"


def test_a_model_resent_with_another_base_path_gets_no_yaml_only_keys_issue_15(
    control: ControlServer,
) -> None:
    # runs last against `control`: it leaves py without its allow_python
    models.make_python(control.root / "models" / "py2" / "3")
    mlp = ("mlp", str(control.root / "models" / "mlp"))
    assert control.reload(mlp, ("py", str(control.root / "models" / "py2"))) is None

    def error_of_version_3() -> str:
        got = httpx.get(f"{control.process.url}/v1/models/py", timeout=5).json()
        statuses = [s for s in got.get("model_version_status", []) if s["version"] == "3"]
        return statuses[0]["status"].get("error_message", "") if statuses else ""

    wait_until(error_of_version_3, timeout_s=30, what=f"py 3 to fail:\n{control.process.log()}")
    assert "allow_python: true" in error_of_version_3()


def test_grpc_connections_are_capped_so_silent_sockets_cannot_starve_rest_issue_15(
    repo: Repo,
) -> None:
    grpc_port = free_port()
    server = ServerProcess(
        f"--model_base_path={repo.root / 'models' / 'mlp'}",
        f"--port={grpc_port}",
        "--grpc-max-connections=3",
    )
    silent: list[socket.socket] = []
    try:
        server.wait_ready()
        silent = [socket.create_connection(("127.0.0.1", grpc_port)) for _ in range(8)]

        def closed_by_server(sock: socket.socket) -> bool:
            sock.setblocking(False)
            try:
                return sock.recv(1) == b""
            except BlockingIOError:
                return False
            except OSError:
                return True

        wait_until(
            lambda: sum(closed_by_server(s) for s in silent) >= 5,
            timeout_s=30,
            what=f"the connections past the cap to be closed:\n{server.log()}",
        )
        assert httpx.get(f"{server.url}/v2/health/live", timeout=5).status_code == 200
        for sock in silent:
            sock.close()
        with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
            stub = v2_grpc.GRPCInferenceServiceStub(channel)
            assert stub.ServerLive(v2.ServerLiveRequest(), timeout=30, wait_for_ready=True).live
    finally:
        for sock in silent:
            sock.close()
        assert server.stop() == 0, server.log()
