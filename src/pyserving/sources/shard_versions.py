"""ShardVersionSource: the versions of each shard router are those every one of its shards has
AVAILABLE (docs/big-tables.md).

It polls each shard's V2 ModelMetadata (whose `versions` are the AVAILABLE ones) and aspires, for
the router model, every version all shards list. A router's versions therefore appear only once
the last shard has them, and go when one shard drops them. A shard that cannot be reached keeps
the last list (the router keeps serving and fails requests naming that shard, then recovers when
it answers again), so a shard restart never unloads the router.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping, Sequence

import grpc

from pyserving.core.ids import ServableData, ServableId
from pyserving.platforms.shards import ShardRoutes, routes_for
from pyserving.proto import grpc_service_pb2 as pb
from pyserving.sources.base import AspiredVersionsCallback

__all__ = ["RouterSpec", "ShardVersionSource"]

#: router model name → (the model's name on the shards, the shards' addresses in index order)
RouterSpec = Mapping[str, tuple[str, Sequence[str]]]
_METADATA_TIMEOUT_S = 2.0

_log = logging.getLogger(__name__)


class ShardVersionSource:
    """Emits `ServableData[str]` per router model (data = the key its ShardRoutes are under).

    Thread-safety: `configure`, `poll_once` and `stop` may be called from any thread; polls are
    serialised.
    Blocking: `poll_once` waits for the shards' answers (at most `_METADATA_TIMEOUT_S` each, in
    parallel); `stop` waits for a poll under way.
    """

    def __init__(self, poll_wait_s: float) -> None:
        self._poll_wait_s = poll_wait_s
        self._callback: AspiredVersionsCallback[str] | None = None
        self._lock = threading.Lock()  # guards _routers, _sent; held for a whole poll
        self._routers: dict[str, ShardRoutes] = {}
        self._sent: dict[str, tuple[int, ...]] = {}
        self._stop_event = threading.Event()
        self._thread: threading.Thread | None = None

    def set_aspired_versions_callback(self, callback: AspiredVersionsCallback[str]) -> None:
        self._callback = callback

    def configure(self, routers: RouterSpec) -> None:
        """Use these routers from now on: new ones are polled at once, removed ones get an empty
        list (their versions unload) and their channels close; changed addresses apply to the
        next request."""
        removed = []
        with self._lock:
            for name, (model, addresses) in routers.items():
                routes = self._routers.get(name)
                if routes is None:
                    self._routers[name] = routes = ShardRoutes(model, addresses)
                    routes_for(self._key(name), routes)
                else:
                    routes.update(model, addresses)
            for name in set(self._routers) - set(routers):
                removed.append(name)
                routes_for(self._key(name), None)
                self._routers.pop(name).close()
                self._sent.pop(name, None)
        for name in removed:
            self._send(name, [])
        if self._thread is not None and routers:
            self.poll_once()

    def poll_once(self) -> None:
        """Ask every shard of every router for its versions; send the lists that changed."""
        with self._lock:
            for name, routes in self._routers.items():
                versions = _common_versions(routes)
                if versions is None or self._sent.get(name) == versions:
                    continue
                self._sent[name] = versions
                self._send(name, list(versions))

    def start(self) -> None:
        """Poll every `poll_wait_s` in a daemon thread until `stop()`."""
        if self._poll_wait_s <= 0 or self._thread is not None:
            return
        self._thread = threading.Thread(
            target=self._poll_forever, name="pyserving-shard-versions", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        """Stop polling and close every router's channels."""
        self._stop_event.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join()
        with self._lock:
            for name, routes in self._routers.items():
                routes_for(self._key(name), None)
                routes.close()
            self._routers.clear()

    def _poll_forever(self) -> None:
        while not self._stop_event.wait(self._poll_wait_s):
            try:
                self.poll_once()
            except Exception:  # edge: a poll's failure must not end polling
                _log.exception("polling the shards failed")

    def _send(self, name: str, versions: list[int]) -> None:
        if self._callback is None:
            return
        key = self._key(name)
        self._callback(name, [ServableData(ServableId(name, v), key) for v in versions])

    def _key(self, name: str) -> str:
        return f"shards:{id(self):x}/{name}"


def _common_versions(routes: ShardRoutes) -> tuple[int, ...] | None:
    """The versions every shard has AVAILABLE (sorted), None when some shard did not answer."""
    targets = routes.targets()
    if not targets:
        return None
    request = pb.ModelMetadataRequest(name=routes.model)
    calls = [
        (address, stub.ModelMetadata.future(request, timeout=_METADATA_TIMEOUT_S))
        for address, stub in targets
    ]
    common: set[int] | None = None
    unreachable = False
    for index, (address, call) in enumerate(calls):
        try:
            versions = {int(v) for v in call.result().versions if v.isdigit()}
        except grpc.RpcError as exc:
            code = exc.code() if isinstance(exc, grpc.Call) else None
            if code == grpc.StatusCode.NOT_FOUND:  # answered: it has no version of the model
                versions = set()
            else:
                _log.debug("shard %d (%s) did not answer: %s", index, address, exc)
                unreachable = True
                continue
        common = versions if common is None else common & versions
    if unreachable or common is None:
        return None
    return tuple(sorted(common))
