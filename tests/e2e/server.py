"""Starts a real `pyserving serve` process on a free 127.0.0.1 port and stops it by PID."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import yaml

from pyserving.demo import make_mlp


def serve_to_exit(*flags: str, timeout_s: float = 60) -> subprocess.CompletedProcess[str]:
    """Run `python -m pyserving serve --host=127.0.0.1 *flags` to its exit (a server refused at
    start-up); its stdout and stderr are captured as text."""
    return subprocess.run(
        [sys.executable, "-m", "pyserving", "serve", "--host=127.0.0.1", *flags],
        capture_output=True,
        text=True,
        timeout=timeout_s,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ServerProcess:
    """One `python -m pyserving serve` child; its log goes to a file the tests can read.

    gRPC is off unless `grpc` is true (then on a free port, at `grpc_address`).
    """

    def __init__(self, *flags: str, grpc: bool = False) -> None:
        self.port = free_port()
        self.grpc_port = free_port() if grpc else 0
        self.log_path = Path(tempfile.mkstemp(prefix="pyserving-e2e-", suffix=".log")[1])
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "pyserving",
                "serve",
                "--host=127.0.0.1",
                f"--rest_api_port={self.port}",
                f"--port={self.grpc_port}",
                *flags,
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        self.url = f"http://127.0.0.1:{self.port}"
        self.address = f"127.0.0.1:{self.port}"
        self.grpc_address = f"127.0.0.1:{self.grpc_port}" if grpc else ""

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, timeout_s: float = 60.0, path: str = "/v2/health/ready") -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited with {self.proc.returncode}:\n{self.log()}")
            try:
                if httpx.get(self.url + path, timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        raise AssertionError(f"server not ready after {timeout_s}s:\n{self.log()}")

    def stop(self, timeout_s: float = 30.0) -> int:
        """SIGTERM, wait, return the exit code (SIGKILL if it does not stop in time)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode


@contextlib.contextmanager
def running(*flags: str, grpc: bool = False) -> Iterator[ServerProcess]:
    """A ready ServerProcess for the block (or a fixture's yield); SIGTERM must stop it with 0."""
    proc = ServerProcess(*flags, grpc=grpc)
    try:
        proc.wait_ready()
        yield proc
    finally:
        assert proc.stop() == 0, proc.log()


def plain_and_batched_config(root: Path) -> str:
    """A YAML config under `root` serving two small MLPs (FP32 [b, 4] → [b, 3]): "mlp", and
    "batched" with batching (max 8 rows, 1 ms); returns its path."""

    make_mlp(root / "mlp" / "1" / "model.onnx", seed=1, dims=(4, 8, 3))
    make_mlp(root / "batched" / "1" / "model.onnx", seed=2, dims=(4, 8, 3))
    batched = {
        "name": "batched",
        "base_path": str(root / "batched"),
        "batching": {"max_batch_size": 8, "batch_timeout_micros": 1000},
    }
    config = root / "models.yaml"
    models = [{"name": "mlp", "base_path": str(root / "mlp")}, batched]
    config.write_text(yaml.safe_dump({"models": models}))
    return str(config)
