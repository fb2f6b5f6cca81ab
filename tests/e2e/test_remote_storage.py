"""Model repositories on S3 (moto server), a file:// URI and a plain path, served by a real server.

Each test runs against all three stores. A second model, `clock`, always on local disk and listed
after `mlp` in the config, orders the steps without sleeps: `tick()` publishes a new clock version
and waits until it is AVAILABLE. The source polls models in config order, so after two ticks the
store under test has been polled at least once after any change made before them.
"""

from __future__ import annotations

import os
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import onnx
import pytest
import s3fs

from pyserving.demo import make_mlp
from tests.e2e.server import ServerProcess
from tests.fakes import wait_until
from tests.sources.s3_server import MotoServer

pytestmark = pytest.mark.slow

DIMS = (4, 8, 3)
BUCKET = "models"


class Store:
    """Where `mlp`'s versions live; writes one file at a time, each file atomically."""

    base_path: str
    env: dict[str, str]

    def put(self, relative: str, data: bytes) -> None:
        raise NotImplementedError

    def delete_version(self, version: int) -> None:
        raise NotImplementedError

    def break_(self) -> None:
        """Make the store unreadable (an outage)."""
        raise NotImplementedError

    def repair(self) -> None:
        raise NotImplementedError


class LocalStore(Store):
    def __init__(self, root: Path, as_uri: bool) -> None:
        self.root = root / "mlp"
        self.root.mkdir(parents=True)
        self.base_path = f"file://{self.root}" if as_uri else str(self.root)
        self.env = {}

    def put(self, relative: str, data: bytes) -> None:
        path = self.root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        temp = path.with_name(f".{path.name}.partial")
        temp.write_bytes(data)
        os.replace(temp, path)  # each file appears whole, as an S3 object does

    def delete_version(self, version: int) -> None:
        shutil.rmtree(self.root / str(version))

    def break_(self) -> None:
        self.root.rename(self.root.with_name("mlp-away"))

    def repair(self) -> None:
        self.root.with_name("mlp-away").rename(self.root)


class S3Store(Store):
    def __init__(self, moto: MotoServer) -> None:
        self.moto = moto
        self.base_path = f"s3://{BUCKET}/mlp"
        self.env = moto.env()
        self._fs = self._client()
        self._fs.mkdir(BUCKET)

    def _client(self) -> s3fs.S3FileSystem:
        return s3fs.S3FileSystem(
            key=self.env["AWS_ACCESS_KEY_ID"],
            secret=self.env["AWS_SECRET_ACCESS_KEY"],
            endpoint_url=self.env["AWS_ENDPOINT_URL"],
            skip_instance_cache=True,
        )

    def put(self, relative: str, data: bytes) -> None:
        self._fs.pipe(f"{BUCKET}/mlp/{relative}", data)

    def delete_version(self, version: int) -> None:
        self._fs.rm(f"{BUCKET}/mlp/{version}", recursive=True)

    def break_(self) -> None:
        self.moto.stop()

    def repair(self) -> None:
        self.moto.start()  # moto keeps nothing: the bucket comes back empty
        self._fs = self._client()
        self._fs.mkdir(BUCKET)


@pytest.fixture
def s3_store() -> Iterator[S3Store]:
    moto = MotoServer()
    moto.start()
    try:
        yield S3Store(moto)
    finally:
        moto.stop()


@pytest.fixture(params=["s3", "file-uri", "plain-path"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Store:
    if request.param == "s3":
        return request.getfixturevalue("s3_store")
    return LocalStore(tmp_path / "store", as_uri=request.param == "file-uri")


def model_files(tmp_path: Path, seed: int) -> dict[str, bytes]:
    """An MLP whose weights live in a second file, so a version missing one file fails to load."""
    work = tmp_path / f"model-{seed}"
    model = onnx.load(str(make_mlp(work / "plain.onnx", seed=seed, dims=DIMS)))
    onnx.save_model(
        model,
        str(work / "model.onnx"),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location="weights.bin",
        size_threshold=0,
    )
    return {name: (work / name).read_bytes() for name in ("model.onnx", "weights.bin")}


def publish(store: Store, tmp_path: Path, version: int, marker: str = "") -> None:
    for name, data in model_files(tmp_path, seed=version).items():
        store.put(f"{version}/{name}", data)
    if marker:
        store.put(f"{version}/{marker}", b"")


class Harness:
    """The server under test, its clock model, and a few REST helpers."""

    def __init__(self, store: Store, tmp_path: Path, *flags: str, marker: str = "") -> None:
        self.tmp_path = tmp_path
        self.clock_root = tmp_path / "clock"
        self.clock_version = 0
        self.marker = marker
        self._write_clock_version()
        config = tmp_path / "models.yaml"
        config.write_text(
            "models:\n"
            f"  - name: mlp\n    base_path: {store.base_path}\n"
            f"  - name: clock\n    base_path: {self.clock_root}\n"
        )
        self.cache_dir = tmp_path / "cache"
        self.server = ServerProcess(
            f"--model_config_file={config}",
            "--file_system_poll_wait_seconds=0.1",
            f"--model_cache_dir={self.cache_dir}",
            "--load_retry_interval_micros=10000",
            *flags,
        )
        self.client = httpx.Client(base_url=self.server.url, timeout=30)

    def close(self) -> int:
        self.client.close()
        return self.server.stop()

    def infer_version(self, version: int | None = None) -> int:
        """Run one request; returns the version that answered (raises on any failure)."""
        path = "/v2/models/mlp" + (f"/versions/{version}" if version is not None else "")
        body = {
            "inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}]
        }
        response = self.client.post(path + "/infer", json=body)
        assert response.status_code == 200, response.text
        return int(response.json()["model_version"])

    def states(self) -> dict[int, tuple[str, str]]:
        """mlp's versions → (state, error message), as TF Serving's status API shows them."""
        response = self.client.get("/v1/models/mlp")
        if response.status_code == 404:
            return {}
        return {
            int(s["version"]): (s["state"], s["status"]["error_message"])
            for s in response.json()["model_version_status"]
        }

    def _write_clock_version(self) -> int:
        self.clock_version += 1
        version = self.clock_version
        make_mlp(self.clock_root / str(version) / "model.onnx", seed=version, dims=DIMS)
        if self.marker:
            (self.clock_root / str(version) / self.marker).write_bytes(b"")
        return version

    def tick(self, times: int = 2) -> None:
        for _ in range(times):
            version = self._write_clock_version()
            wait_until(
                lambda v=version: (
                    self.client.get(f"/v2/models/clock/versions/{v}/ready").status_code == 200
                ),
                timeout_s=30,
            )


class Load:
    """Client threads sending requests without a version until stopped; records what answered."""

    def __init__(self, harness: Harness, threads: int = 3) -> None:
        self._harness = harness
        self._stop = threading.Event()
        self.answered: set[int] = set()
        self.failures: list[str] = []
        self.count = 0
        self._lock = threading.Lock()  # guards answered, failures, count
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]
        for thread in self._threads:
            thread.start()

    def _run(self) -> None:
        with httpx.Client(base_url=self._harness.server.url, timeout=30) as client:
            body = {
                "inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 4], "data": [1] * 4}]
            }
            while not self._stop.is_set():
                try:
                    response = client.post("/v2/models/mlp/infer", json=body)
                    ok = response.status_code == 200
                    detail = response.json()["model_version"] if ok else response.text
                except httpx.HTTPError as exc:
                    ok, detail = False, repr(exc)
                with self._lock:
                    self.count += 1
                    if ok:
                        self.answered.add(int(detail))
                    else:
                        self.failures.append(detail)

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join()


@pytest.fixture
def harness_factory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator:
    """`make(store, *flags)` starts a server on `store`; every server is stopped at the end."""
    made: list[Harness] = []

    def make(store: Store, *flags: str, marker: str = "") -> Harness:
        for key, value in store.env.items():
            monkeypatch.setenv(key, value)  # the server process inherits the AWS variables
        if marker:
            flags = (*flags, f"--version_ready_marker={marker}")
        harness = Harness(store, tmp_path, *flags, marker=marker)
        made.append(harness)
        return harness

    yield make
    for harness in made:
        assert harness.close() == 0, harness.server.log()


def test_swap_rollback_outage_and_recovery(store: Store, tmp_path: Path, harness_factory) -> None:
    publish(store, tmp_path, 1)
    h = harness_factory(store)
    h.server.wait_ready()
    assert h.infer_version() == 1

    # Upload v2: swapped under load with zero failed requests.
    load = Load(h)
    try:
        wait_until(lambda: 1 in load.answered, timeout_s=30)
        publish(store, tmp_path, 2)
        wait_until(lambda: h.states().get(1, ("",))[0] == "END", timeout_s=60)
        wait_until(lambda: 2 in load.answered, timeout_s=30)
    finally:
        load.stop()
    assert load.failures == []
    assert load.answered == {1, 2}
    assert h.infer_version() == 2

    # Delete v2: the latest policy brings v1 back.
    store.delete_version(2)
    wait_until(lambda: h.states().get(2, ("",))[0] == "END", timeout_s=60)
    assert h.infer_version() == 1

    # Outage: v1 keeps serving; the error is logged per poll of the model, never per request.
    store.break_()
    h.tick()
    answered = {h.infer_version() for _ in range(30)}
    h.tick()
    assert answered == {1}
    assert h.states()[1][0] == "AVAILABLE"
    errors = [
        line
        for line in h.server.log().splitlines()
        if "servable mlp" in line and ("access error" in line or "Could not find" in line)
    ]
    assert 1 <= len(errors) <= h.clock_version, errors
    assert "testing-secret" not in h.server.log()

    # The store returns: polling recovers by itself and picks up v3.
    store.repair()
    publish(store, tmp_path, 3)
    wait_until(lambda: h.states().get(3, ("",))[0] == "AVAILABLE", timeout_s=60)
    assert h.infer_version() == 3
    assert "is readable again" in h.server.log()


def test_version_with_ready_marker_is_never_loaded_half_written(
    store: Store, tmp_path: Path, harness_factory
) -> None:
    publish(store, tmp_path, 1, marker="_READY")
    h = harness_factory(store, marker="_READY")
    h.server.wait_ready()

    files = model_files(tmp_path, seed=2)
    store.put("2/model.onnx", files["model.onnx"])
    h.tick()
    store.put("2/weights.bin", files["weights.bin"])
    h.tick()
    assert set(h.states()) == {1}  # complete but not marked: not a version yet
    store.put("2/_READY", b"")
    wait_until(lambda: h.states().get(2, ("",))[0] == "AVAILABLE", timeout_s=60)
    assert h.infer_version() == 2
    assert "version: 2} failed" not in h.server.log()
    assert "model=mlp version=2 state=END" not in h.server.log()


def test_half_written_version_fails_then_loads_once_complete(
    store: Store, tmp_path: Path, harness_factory
) -> None:
    publish(store, tmp_path, 1)
    h = harness_factory(store, "--max_num_load_retries=0")
    h.server.wait_ready()

    files = model_files(tmp_path, seed=2)
    store.put("2/model.onnx", files["model.onnx"])  # its weights are still on their way
    wait_until(lambda: h.states().get(2, ("", ""))[1] != "", timeout_s=60)
    assert h.states()[2][0] == "END"
    assert h.infer_version() == 1  # v1 keeps serving meanwhile

    store.put("2/weights.bin", files["weights.bin"])
    wait_until(lambda: h.states().get(2, ("",))[0] == "AVAILABLE", timeout_s=60)
    assert h.infer_version() == 2


def test_cached_copy_survives_a_restart_and_is_reused(
    s3_store: S3Store, tmp_path: Path, harness_factory
) -> None:
    publish(s3_store, tmp_path, 1)
    first = harness_factory(s3_store)
    first.server.wait_ready()
    assert first.close() == 0
    (copy,) = (first.cache_dir / "mlp").glob("1-*/model.onnx")
    inode = copy.stat().st_ino

    second = harness_factory(s3_store)
    second.server.wait_ready()
    assert second.infer_version() == 1
    assert "using the cached copy" in second.server.log()
    assert copy.stat().st_ino == inode  # not downloaded again

    s3_store.delete_version(1)
    publish(s3_store, tmp_path, 2)
    wait_until(lambda: second.states().get(1, ("",))[0] == "END", timeout_s=60)
    assert not copy.exists()  # unloaded: its copy is removed
