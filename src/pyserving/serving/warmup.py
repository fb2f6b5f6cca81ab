"""Model warmup: replay a version's warmup requests before it becomes AVAILABLE.

As TF Serving (docs/repository.md#warmup), warmup runs inside `Loader.load()`: the version is not
in the serving map and AVAILABLE is not published until every request ran
`num_request_iterations_for_warmup` times, and a failing request fails the load (which then
follows the load-retry policy; the old version keeps serving meanwhile).

Our format, for every platform: `<version dir>/warmup/*.json`, each file one KServe V2 JSON
inference request (`{"inputs": [{"name", "datatype", "shape", "data"}], "parameters":
{"signature_name": ...}}`), replayed in file-name order. A file is read by `protocols.v2`, the
parser of `POST /v2/.../infer`, and decoded against its signature with the same checks, so a
request that warms up is one the server accepts. A platform with warmup records of its own
(TF Serving's `assets.extra/tf_serving_warmup_requests`) gives its servable a
`warmup_requests()` method returning `(signature_name, inputs)` pairs; they are replayed after the
`warmup/` files, checked against the signature as InferenceService checks requests.
"""

from __future__ import annotations

import logging
import posixpath
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

import fsspec
import numpy as np
import orjson

from pyserving.core.ids import ServableId
from pyserving.core.loader import Loader
from pyserving.errors import InvalidInput, ServingError
from pyserving.platforms.registry import PlatformRegistry
from pyserving.platforms.servable import Servable
from pyserving.platforms.signature import DEFAULT_SIGNATURE, Signature
from pyserving.protocols import v2
from pyserving.protocols.request import Decoder
from pyserving.serving.inference import InferenceOptions

__all__ = [
    "MAX_WARMUP_REQUESTS",
    "WARMUP_DIR",
    "WarmupError",
    "WarmupLoader",
    "WarmupOptions",
    "WarmupRegistry",
    "WarmupRequest",
    "read_warmup_requests",
    "replay_warmup",
]

logger = logging.getLogger("pyserving.lifecycle")

_EMPTY: Mapping[str, object] = MappingProxyType({})

WARMUP_DIR = "warmup"
#: TF Serving's limit on warmup records per version
MAX_WARMUP_REQUESTS = 1000
#: the tensor limits warmup files are decoded with (the server's defaults)
_LIMITS = InferenceOptions()
#: JSON nesting a warmup file's tensor data may have (the REST default)
_MAX_JSON_DEPTH = 32
_NO_BINARY = memoryview(b"")


class WarmupError(InvalidInput):
    """A warmup request that cannot be read or that failed; names the request and the reason."""


@dataclass(frozen=True, slots=True)
class WarmupOptions:
    """`--enable_model_warmup` and `--num_request_iterations_for_warmup`."""

    enable_model_warmup: bool = True
    num_request_iterations_for_warmup: int = 1


@dataclass(frozen=True, slots=True)
class WarmupRequest:
    """One request to replay: its origin (for messages), signature ("" = default), and inputs:
    ready arrays, or a file's tensors to decode against the signature."""

    source: str
    signature_name: str
    inputs: dict[str, np.ndarray] | Decoder

    def arrays(self, signature: Signature) -> dict[str, np.ndarray]:
        """The inputs, checked against `signature`; raises WarmupError naming the request."""
        try:
            if isinstance(self.inputs, dict):
                _validate(signature, self.source, self.inputs)
                return self.inputs
            return self.inputs(signature, _LIMITS)
        except WarmupError:
            raise
        except ServingError as exc:
            raise WarmupError(f"warmup request {self.source}: {exc.message}") from exc


class WarmupLoader(Loader):
    """Wraps a platform Loader: loads it, then replays the version's warmup requests.

    A failing warmup unloads what the inner loader loaded and raises WarmupError, so the load
    fails with the request's error. Thread-safety: as `Loader` (the Manager serialises calls).
    """

    def __init__(
        self, inner: Loader, servable_id: ServableId, path: str, options: WarmupOptions
    ) -> None:
        self.inner = inner
        self._id = servable_id
        self._path = path
        self._options = options

    def estimate_resources(self) -> int:
        return self.inner.estimate_resources()

    def load(self) -> Servable:
        """Load through the inner Loader, then warm up; raises WarmupError when warmup fails."""
        servable: Servable = self.inner.load()  # the registry builds platform Loaders
        try:
            requests = read_warmup_requests(self._path)
            extra = getattr(servable, "warmup_requests", None)
            if callable(extra):
                requests.extend(
                    WarmupRequest(f"{type(servable).__name__}.warmup_requests()[{i}]", sig, inputs)
                    for i, (sig, inputs) in enumerate(extra())
                )
            if requests:
                started = time.perf_counter()
                iterations = max(1, self._options.num_request_iterations_for_warmup)
                replay_warmup(servable, requests, iterations)
                logger.info(
                    "model=%s version=%d warmup: %d request(s) x %d iteration(s) in %.3fs",
                    self._id.name,
                    self._id.version,
                    len(requests),
                    iterations,
                    time.perf_counter() - started,
                )
        except BaseException:
            self.inner.unload()
            raise
        return servable

    def unload(self) -> None:
        self.inner.unload()

    def resources_after_load(self) -> int | None:
        return self.inner.resources_after_load()


class WarmupRegistry:
    """A platform registry's `make_loader`, with every Loader wrapped in a WarmupLoader (what
    the PlatformAdapter uses when `--enable_model_warmup` is on). Thread-safety: as the inner
    registry; this wrapper holds no state of its own."""

    def __init__(self, inner: PlatformRegistry, options: WarmupOptions) -> None:
        self._inner = inner
        self._options = options

    def make_loader(
        self,
        platform: str,
        servable_id: ServableId,
        path: str,
        config: Mapping[str, object] = _EMPTY,
    ) -> Loader:
        """The inner registry's Loader for `path`, warming up after it loads."""
        inner = self._inner.make_loader(platform, servable_id, path, config)
        return WarmupLoader(inner, servable_id, path, self._options)


def read_warmup_requests(version_path: str) -> list[WarmupRequest]:
    """The requests in `<version_path>/warmup/*.json`, in name order ([] when there is none).

    Raises WarmupError for an unreadable or malformed file, or more than MAX_WARMUP_REQUESTS.
    """
    fs, root = fsspec.core.url_to_fs(version_path)
    directory = posixpath.join(root.rstrip("/"), WARMUP_DIR)
    if not fs.isdir(directory):
        return []
    names = sorted(
        posixpath.basename(p) for p in fs.ls(directory, detail=False) if p.endswith(".json")
    )
    if len(names) > MAX_WARMUP_REQUESTS:
        raise WarmupError(
            f"Number of warmup records exceeds the maximum ({MAX_WARMUP_REQUESTS}) at {directory}"
        )
    requests = []
    for name in names:
        source = f"{WARMUP_DIR}/{name}"
        try:
            with fs.open(posixpath.join(directory, name), "rb") as file:
                document = orjson.loads(file.read())
        except (OSError, orjson.JSONDecodeError) as exc:
            raise WarmupError(f"warmup request {source}: cannot read it: {exc}") from exc
        requests.append(_parse_request(document, source))
    return requests


def replay_warmup(
    servable: Servable, requests: Iterable[WarmupRequest], iterations: int = 1
) -> int:
    """Run each request `iterations` times on `servable`, in order; returns the calls made.

    Each request is checked against its signature first. Raises WarmupError naming the request
    and the error (the servable's own message when it raised).
    """
    calls = 0
    signatures: Mapping[str, Signature] = servable.signatures
    for request in requests:
        signature = _signature(signatures, request)
        inputs = request.arrays(signature)
        for _ in range(iterations):
            try:
                servable.run(signature.name, inputs)
            except Exception as exc:
                detail = exc.message if isinstance(exc, ServingError) else str(exc)
                raise WarmupError(
                    f"warmup request {request.source} failed: {detail or type(exc).__name__}"
                ) from exc
            calls += 1
    return calls


# --- helpers ---------------------------------------------------------------------------------


def _parse_request(document: object, source: str) -> WarmupRequest:
    try:
        request, _, _ = v2.request_from_json("", None, document, _NO_BINARY, None, _MAX_JSON_DEPTH)
    except ServingError as exc:
        raise WarmupError(f"warmup request {source}: {exc.message}") from exc
    return WarmupRequest(source, request.signature_name or "", request.inputs)


def _signature(signatures: Mapping[str, Signature], request: WarmupRequest) -> Signature:
    name = request.signature_name or DEFAULT_SIGNATURE
    found = signatures.get(name)
    if found is None and not request.signature_name and len(signatures) == 1:
        found = next(iter(signatures.values()))
    if found is None:
        raise WarmupError(
            f'warmup request {request.source}: signature "{name}" not found'
            f" (have: {', '.join(sorted(signatures))})"
        )
    return found


def _validate(signature: Signature, source: str, inputs: Mapping[str, np.ndarray]) -> None:
    wanted = {spec.name: spec for spec in signature.inputs}
    if set(inputs) != set(wanted):
        raise WarmupError(
            f"warmup request {source}: inputs {sorted(inputs)} do not match"
            f' signature "{signature.name}" inputs {sorted(wanted)}'
        )
    for name, array in inputs.items():
        spec = wanted[name]
        dtype_ok = (
            array.dtype.kind == "O"
            if spec.datatype == "BYTES"
            else (array.dtype == spec.numpy_dtype)
        )
        if not dtype_ok or not spec.shape_matches(array.shape):
            raise WarmupError(
                f'warmup request {source}: input "{name}": expected {spec.describe()},'
                f" got {array.dtype} {list(array.shape)}"
            )
