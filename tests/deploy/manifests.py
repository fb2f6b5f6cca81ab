"""Renders the kustomize bases under deploy/ and starts a real server with the flags a manifest
gives it (its absolute paths moved under a test directory, its ports onto free ones)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import yaml

from tests.e2e.server import free_port
from tests.fakes import wait_until

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def render(base: Path) -> list[dict[str, Any]]:
    """The resources of the kustomize base `base`, as `kubectl kustomize` renders them (our
    own renderer of the subset the bases use where there is no kubectl)."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        return render_without_kubectl(base)
    out = subprocess.run(
        [kubectl, "kustomize", str(base)], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def render_without_kubectl(base: Path) -> list[dict[str, Any]]:
    """`resources:` (files, and directories holding a kustomization) and `labels:` (with
    includeSelectors), all that deploy/ uses; anything else in a kustomization fails here
    rather than render wrong."""
    kustomization = yaml.safe_load((base / "kustomization.yaml").read_text())
    unknown = set(kustomization) - {"apiVersion", "kind", "resources", "labels"}
    assert not unknown, f"render_without_kubectl does not know {sorted(unknown)}"
    docs: list[dict[str, Any]] = []
    own: list[dict[str, Any]] = []  # this kustomization's labels apply to these only
    for name in kustomization["resources"]:
        if (base / name).is_dir():
            docs += render_without_kubectl(base / name)
        else:
            own += [doc for doc in yaml.safe_load_all((base / name).read_text()) if doc]
    for entry in kustomization.get("labels", ()):
        pairs = entry["pairs"]
        for doc in own:
            doc["metadata"].setdefault("labels", {}).update(pairs)
            if not entry.get("includeSelectors"):
                continue
            spec = doc.get("spec", {})
            if doc["kind"] == "Service":
                spec.setdefault("selector", {}).update(pairs)
            elif doc["kind"] in ("Deployment", "StatefulSet", "PodDisruptionBudget"):
                spec.setdefault("selector", {}).setdefault("matchLabels", {}).update(pairs)
            if "template" in spec:
                spec["template"].setdefault("metadata", {}).setdefault("labels", {}).update(pairs)
    return docs + own


def one(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = [doc for doc in docs if doc["kind"] == kind]
    assert len(found) == 1, f"{len(found)} {kind} resources"
    return found[0]


def flag(args: list[str], name: str) -> str | None:
    """The value of `--name=value` in `args` (either spelling), the last one winning."""
    wanted = {f"--{name.replace('-', '_')}", f"--{name.replace('_', '-')}"}
    value = None
    for arg in args:
        key, sep, rest = arg.partition("=")
        if sep and key in wanted:
            value = rest
    return value


def localized(args: list[str], root: Path, ports: dict[str, int]) -> list[str]:
    """`args` with every absolute path moved under `root` and the flags in `ports`
    (`--port`, `--rest_api_port`) set to the given ports."""
    out = []
    for arg in args:
        name, sep, value = arg.partition("=")
        key = name.lstrip("-").replace("-", "_")
        if key in ports:
            value = str(ports[key])
        elif value.startswith("/"):
            value = str(root / value.lstrip("/"))
        out.append(f"{name}{sep}{value}")
    return out


@contextmanager
def serving(args: list[str], log: Path) -> Iterator[str]:
    """A `pyserving serve` child with `args` (already localized) on 127.0.0.1; yields the REST
    URL once `/v2/health/live` answers; SIGTERM and a 0 exit code at the end."""
    rest_port = flag(args, "rest_api_port")
    assert rest_port is not None
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "pyserving", "serve", *args, "--host=127.0.0.1"],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    url = f"http://127.0.0.1:{rest_port}"
    try:
        wait_until(lambda: _live(url, proc, log), 60, "the server to answer")
        yield url
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def free_ports(*names: str) -> dict[str, int]:
    return {name: free_port() for name in names}


def _live(url: str, proc: subprocess.Popen, log: Path) -> bool:
    if proc.poll() is not None:
        raise AssertionError(f"the server exited with {proc.returncode}:\n{log.read_text()}")
    try:
        return httpx.get(f"{url}/v2/health/live", timeout=1).status_code == 200
    except httpx.TransportError:
        return False
