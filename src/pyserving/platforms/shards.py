"""The shards platform: a router that serves one table held by several shard servers.

Model config (docs/big-tables.md): `platform: shards`, `shards: ["host:port", ...]` (the shard
servers' V2 gRPC addresses, in shard index order) and optionally `model:` (the model's name on
the shards; default the router's own). Each router version serves that version of the shards'
model; `ShardVersionSource` aspires the versions every shard has AVAILABLE.

A request's keys are split by shard (INT64 `k mod n`, BYTES `crc32(k) mod n`), sent to the shards
at once (one ModelInfer per shard holding keys), and the answers are put back in request order.
Any shard failing fails the whole request (503 / UNAVAILABLE naming the shard; never a partial
answer), and so does an answer that is not the router's signature. One deadline covers the whole
fan-out: the request's own less a margin (504 naming the shards that did not answer), else
`_DEFAULT_TIMEOUT_S`. Before a version serves, shard_checks.py checks each shard is the one
listed at its place and all have one signature.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import grpc
import numpy as np

from pyserving.core.ids import ServableId
from pyserving.core.loader import Loader
from pyserving.errors import (
    DeadlineExceeded,
    FailedPrecondition,
    InvalidInput,
    ServingError,
    Unavailable,
)
from pyserving.platforms.lookup_index import as_bytes_list, shard_of
from pyserving.platforms.servable import Servable, current_deadline
from pyserving.platforms.shard_checks import check_shards, describe_rpc_error
from pyserving.platforms.signature import DEFAULT_SIGNATURE, V2_TO_NUMPY, Signature, TensorSpec
from pyserving.proto import grpc_service_pb2 as pb
from pyserving.proto.grpc_service_pb2_grpc import GRPCInferenceServiceStub
from pyserving.protocols.tensors import raw_tensor

__all__ = [
    "SHARDS_PLATFORM",
    "ShardRouter",
    "ShardRoutes",
    "ShardView",
    "ShardsLoader",
    "find_routes",
    "routes_for",
]

SHARDS_PLATFORM = "shards"
_DEFAULT_TIMEOUT_S = 30.0
# The fan-out ends this much before the request's deadline (at most _FANOUT_MARGIN_S, at most
# this fraction of the time left), so that its answer naming the late shards is the request's,
# not the execution lane's own deadline (which fires at the request's deadline, naming nothing).
_FANOUT_MARGIN_S = 0.25
_FANOUT_MARGIN_FRACTION = 0.2
# a restarted shard is reached again within ~2 s (gRPC's default backoff grows to 120 s)
_CHANNEL_OPTIONS = (
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.min_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 2000),
    ("grpc.max_receive_message_length", 1 << 30),
    ("grpc.max_send_message_length", 1 << 30),
)


class ShardView(NamedTuple):
    """One consistent reading of a router's routes: the model's name on the shards and
    (address, stub) of every shard, in shard index order."""

    model: str
    targets: tuple[tuple[str, GRPCInferenceServiceStub], ...]


class ShardRoutes:
    """The live shard addresses of one router model and one reused channel per address.

    Thread-safety: `update` and `close` may run while requests call `view`; a request uses the
    view it read (model and addresses together, replaced whole), so a reload never gives it
    one's model and the other's addresses.
    Ownership: ShardVersionSource creates, updates and closes it.
    """

    def __init__(self, model: str, addresses: Sequence[str]) -> None:
        self._lock = threading.Lock()  # guards _stubs, _channels
        self._channels: dict[str, grpc.Channel] = {}
        self._stubs: dict[str, GRPCInferenceServiceStub] = {}
        self._view = ShardView(model, ())
        self.update(model, addresses)

    def view(self) -> ShardView:
        """The model and shards as they are now: one snapshot for one request or check."""
        return self._view

    def update(self, model: str, addresses: Sequence[str]) -> None:
        """Use `addresses` (and shard model name `model`) from the next request on; channels to
        addresses no longer listed are closed (a call still on one fails as UNAVAILABLE)."""
        with self._lock:
            for address in addresses:
                if address not in self._stubs:
                    channel = grpc.insecure_channel(address, options=_CHANNEL_OPTIONS)
                    self._channels[address] = channel
                    self._stubs[address] = GRPCInferenceServiceStub(channel)
            self._view = ShardView(model, tuple((a, self._stubs[a]) for a in addresses))
            for gone in set(self._channels) - set(addresses):
                self._stubs.pop(gone)
                self._channels.pop(gone).close()

    def close(self) -> None:
        """Close every channel."""
        with self._lock:
            self._view = ShardView(self._view.model, ())
            for channel in self._channels.values():
                channel.close()
            self._channels.clear()
            self._stubs.clear()


# route key (the version path ShardVersionSource emits) → its model's routes
_ROUTES: dict[str, ShardRoutes] = {}
_ROUTES_LOCK = threading.Lock()  # guards _ROUTES


def routes_for(key: str, routes: ShardRoutes | None) -> None:
    """Register `routes` under `key` (None: forget it); ShardsLoader finds them by its path."""
    with _ROUTES_LOCK:
        if routes is None:
            _ROUTES.pop(key, None)
        else:
            _ROUTES[key] = routes


def find_routes(key: str) -> ShardRoutes | None:
    """The routes registered under `key`, None when there are none."""
    with _ROUTES_LOCK:
        return _ROUTES.get(key)


class ShardsLoader(Loader):
    """Builds a ShardRouter for one version: reads the shards' signature of that version.

    Thread-safety: as Loader.
    """

    def __init__(
        self, servable_id: ServableId, path: str, config: Mapping[str, Any] | None = None
    ) -> None:
        self.servable_id = servable_id
        self.path = path

    def estimate_resources(self) -> int:
        return 0

    def load(self) -> Servable:
        routes = find_routes(self.path)
        view = None if routes is None else routes.view()
        if routes is None or view is None or not view.targets:
            raise FailedPrecondition(f"model {self.servable_id.name}: no shards configured")
        signature = check_shards(view, self.servable_id.version)
        if [t.name for t in signature.inputs] != ["keys"]:
            raise FailedPrecondition(
                f"model {view.model} on the shards takes"
                f" {', '.join(t.name for t in signature.inputs)}; a router needs one input, keys"
            )
        return ShardRouter(routes, self.servable_id.version, signature)

    def unload(self) -> None:
        """Nothing to release: the channels belong to the model's ShardRoutes."""


class ShardRouter(Servable):
    """One version of a sharded table, answered by fanning each request out to its shards.

    Thread-safety: `run` may be called from many threads; it blocks its thread (not the event
    loop) until every shard answered or the deadline passed.
    Cancellation: the first failure cancels the other shards' calls.
    """

    platform = SHARDS_PLATFORM

    def __init__(self, routes: ShardRoutes, version: int, signature: Signature) -> None:
        self._routes = routes
        self._version = str(version)
        self._signatures = {DEFAULT_SIGNATURE: signature}
        self._key_datatype = signature.inputs[0].datatype
        self._outputs = {spec.name: spec for spec in signature.outputs}
        self.version_batching = False  # one request is already one call per shard

    @property
    def signatures(self) -> dict[str, Signature]:
        return self._signatures

    def run(self, signature: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        keys = inputs["keys"].reshape(-1)
        deadline = current_deadline.get()
        now = time.monotonic()
        if deadline is None:
            deadline = now + _DEFAULT_TIMEOUT_S
        else:
            deadline -= min(_FANOUT_MARGIN_S, max(0.0, deadline - now) * _FANOUT_MARGIN_FRACTION)
        model, targets = self._routes.view()  # one snapshot: a reload may replace it meanwhile
        if not targets:  # the router is being removed or the server stops
            raise Unavailable(f"model {model}: no shards configured")
        owners = shard_of(keys, len(targets))
        order = np.argsort(owners, kind="stable")
        groups = np.split(order, np.cumsum(np.bincount(owners, minlength=len(targets)))[:-1])
        calls: list[tuple[int, str, np.ndarray, Any]] = []
        for index, ((address, stub), rows) in enumerate(zip(targets, groups, strict=True)):
            if len(rows):
                timeout = deadline - time.monotonic()
                if timeout <= 0:
                    _cancel(calls)
                    raise DeadlineExceeded("Deadline exceeded before the shards were called")
                request = self._request(model, keys[rows])
                calls.append(
                    (index, address, rows, stub.ModelInfer.future(request, timeout=timeout))
                )
        outputs: dict[str, np.ndarray] = {}
        try:
            for index, address, rows, call in calls:
                try:
                    response = call.result()
                except grpc.RpcError as exc:
                    if _code(exc) == grpc.StatusCode.DEADLINE_EXCEEDED:
                        raise DeadlineExceeded(
                            f"{', '.join(_late(calls))} did not answer within the deadline"
                        ) from exc
                    raise _shard_error(index, address, model, self._version, exc) from exc
                parts = _decode(response, index, address, self._outputs)
                for name, part in parts.items():
                    if len(part) != len(rows):
                        raise Unavailable(
                            f"shard {index} ({address}) answered {len(part)} rows of {name!r}"
                            f" for {len(rows)} keys"
                        )
                    if name not in outputs:
                        outputs[name] = _empty(part, len(keys))
                    outputs[name][rows] = part
        except BaseException:
            _cancel(calls)
            raise
        if not calls:  # no keys: empty outputs of the signature's types
            for spec in self._signatures[signature].outputs:
                shape = (0, *(max(d, 0) for d in spec.shape[1:]))
                outputs[spec.name] = np.empty(shape, V2_TO_NUMPY.get(spec.datatype, object))
        return outputs

    def _request(self, model: str, keys: np.ndarray) -> pb.ModelInferRequest:
        request = pb.ModelInferRequest(model_name=model, model_version=self._version)
        tensor = request.inputs.add(name="keys", datatype=self._key_datatype, shape=[len(keys)])
        if self._key_datatype == "BYTES":
            tensor.contents.bytes_contents.extend(as_bytes_list(keys))
        else:
            request.raw_input_contents.append(
                np.ascontiguousarray(keys, dtype=V2_TO_NUMPY[self._key_datatype]).tobytes()
            )
        return request


def _empty(part: np.ndarray, count: int) -> np.ndarray:
    return np.empty((count, *part.shape[1:]), dtype=part.dtype)


def _cancel(calls: list[Any]) -> None:
    for call in calls:
        call[3].cancel()


def _decode(
    response: pb.ModelInferResponse, index: int, address: str, specs: Mapping[str, TensorSpec]
) -> dict[str, np.ndarray]:
    """The answer's outputs; Unavailable naming the shard when they are not the router's
    signature's outputs (names, types, row shapes): a merged answer must be the router's."""
    where = f"shard {index} ({address})"
    raw = response.raw_output_contents
    if len(raw) != len(response.outputs):
        raise Unavailable(f"{where}: an answer without raw output contents")
    names = [t.name for t in response.outputs]
    if sorted(names) != sorted(specs):
        raise Unavailable(
            f"{where} answered outputs {', '.join(names)}; the router's signature has"
            f" {', '.join(specs)}"
        )
    outputs = {}
    for tensor, data in zip(response.outputs, raw, strict=True):
        shape = tuple(tensor.shape)
        spec = specs[tensor.name]
        if (
            tensor.datatype != spec.datatype
            or len(shape) != len(spec.shape)
            or any(d not in (-1, s) for d, s in zip(spec.shape[1:], shape[1:], strict=True))
        ):
            raise Unavailable(
                f"{where} answered {tensor.name!r} as {tensor.datatype} {list(shape)}; the"
                f" router's signature says {spec.datatype} {list(spec.shape)}"
            )
        try:  # the V2 codec's checks: byte counts, BYTES length prefixes, alignment
            outputs[tensor.name] = raw_tensor(
                tensor.datatype, shape, memoryview(data), f"{where} answered {tensor.name!r}"
            )
        except InvalidInput as exc:  # a corrupt answer is the shard's fault, not the client's
            raise Unavailable(exc.message) from exc
    return outputs


def _shard_error(
    index: int, address: str, model: str, version: str, exc: grpc.RpcError
) -> ServingError:
    code = _code(exc)
    where = f"shard {index} ({address})"
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        return InvalidInput(f"{where}: {describe_rpc_error(exc)}")
    if code == grpc.StatusCode.NOT_FOUND:
        return Unavailable(f"{where} does not have version {version} of model {model}")
    return Unavailable(f"{where} is unavailable: {describe_rpc_error(exc)}")


def _code(exc: BaseException | None) -> grpc.StatusCode | None:
    return exc.code() if isinstance(exc, grpc.Call) else None


def _late(calls: list[tuple[int, str, np.ndarray, Any]]) -> list[str]:
    """The shards whose calls have not answered (or ran out of time): all had one deadline."""
    late = []
    for index, address, _, call in calls:
        if not call.done() or _code(call.exception()) == grpc.StatusCode.DEADLINE_EXCEEDED:
            late.append(f"shard {index} ({address})")
    return late
