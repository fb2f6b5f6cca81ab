"""ShardVersionSource: the versions of each shard router are those every one of its shards has
AVAILABLE (docs/big-tables.md).

It polls each shard's V2 ModelMetadata (whose `versions` are the AVAILABLE ones) and aspires, for
the router model, every version all shards list. A router's versions therefore appear only once
the last shard has them, and go when one shard drops them. A shard that cannot be reached keeps
the last list (the router keeps serving and fails requests naming that shard, then recovers when
it answers again), so a shard restart never unloads the router.

While a router has no version for a shard's sake (a shard cannot be reached, does not have the
model, or the shards have no version in common) the source logs a warning naming the shard and
why, once per change, and `problem(name)` says it (status adds it to "Could not find any
versions").
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping, Sequence
from typing import Any

import grpc

from pyserving.core.ids import ServableData, ServableId
from pyserving.platforms.shard_checks import describe_rpc_error
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
    serialised, and a poll's answers for a router that `configure` replaced or changed meanwhile
    are dropped (the next poll asks its new shards).
    Blocking: `poll_once` waits for the shards' answers (every shard of every router asked at
    once, at most `_METADATA_TIMEOUT_S`) without holding the lock `configure` takes, so a slow
    shard delays neither a reload nor the other routers; `stop` waits for a poll under way.
    """

    def __init__(self, poll_wait_s: float) -> None:
        self._poll_wait_s = poll_wait_s
        self._callback: AspiredVersionsCallback[str] | None = None
        self._poll_lock = threading.Lock()  # held for a whole poll: polls one at a time
        self._lock = threading.Lock()  # guards _routers, _sent, _revisions; never while polling
        self._routers: dict[str, ShardRoutes] = {}
        self._sent: dict[str, tuple[int, ...]] = {}
        # router → its model and addresses: the versions' revision, so that a version whose load
        # failed (a shard out of place) is tried again once a reload changes them
        self._revisions: dict[str, str] = {}
        self._problems_lock = threading.Lock()  # guards _problems (read by status, not polls)
        self._problems: dict[str, str] = {}  # router → why it has no version
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
                revision = f"{model}@{','.join(addresses)}"
                if self._revisions.get(name, revision) != revision:
                    self._sent.pop(name, None)  # the next poll sends them again
                self._revisions[name] = revision
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
                self._revisions.pop(name, None)
                with self._problems_lock:
                    self._problems.pop(name, None)
        for name in removed:
            self._send(name, [])
        if self._thread is not None and routers:
            self.poll_once()

    def poll_once(self) -> None:
        """Ask every shard of every router for its versions; send the lists that changed."""
        with self._poll_lock:
            with self._lock:  # starting the calls does not wait for them
                asked = [
                    (name, routes, self._revisions.get(name), *_ask(routes))
                    for name, routes in self._routers.items()
                ]
            answers = [
                (name, routes, revision, _common_versions(model, calls))
                for name, routes, revision, model, calls in asked
            ]
            with self._lock:
                for name, routes, revision, answer in answers:
                    if self._routers.get(name) is routes and self._revisions.get(name) == revision:
                        self._apply_locked(name, *answer)

    def _apply_locked(
        self, name: str, versions: tuple[int, ...] | None, problem: str | None
    ) -> None:
        """Note router `name`'s poll answer; send its versions when they changed."""
        served = versions if versions is not None else self._sent.get(name)
        self._note_problem(name, None if served else problem)
        if versions is None or self._sent.get(name) == versions:
            return
        self._sent[name] = versions
        self._send(name, list(versions))

    def problem(self, name: str) -> str | None:
        """Why router `name` has no version (naming the shard), None when none is known."""
        with self._problems_lock:
            return self._problems.get(name)

    def _note_problem(self, name: str, problem: str | None) -> None:
        with self._problems_lock:
            before = self._problems.get(name)
            if problem is None:
                self._problems.pop(name, None)
            else:
                self._problems[name] = problem
        if problem is not None and problem != before:
            _log.warning("shard router %s has no version: %s", name, problem)
        elif problem is None and before is not None:
            _log.info("shard router %s: every shard answers again", name)

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
        revision = self._revisions.get(name, "")
        self._callback(
            name, [ServableData(ServableId(name, v), key, revision=revision) for v in versions]
        )

    def _key(self, name: str) -> str:
        return f"shards:{id(self):x}/{name}"


def _ask(routes: ShardRoutes) -> tuple[str, list[tuple[str, Any]]]:
    """The model and every shard's ModelMetadata call for it, started (answered later)."""
    model, targets = routes.view()
    request = pb.ModelMetadataRequest(name=model)
    calls = [
        (address, stub.ModelMetadata.future(request, timeout=_METADATA_TIMEOUT_S))
        for address, stub in targets
    ]
    return model, calls


def _common_versions(
    model: str, calls: list[tuple[str, Any]]
) -> tuple[tuple[int, ...] | None, str | None]:
    """The versions every shard has AVAILABLE, from their `calls` (sorted; None when some shard
    did not answer), and why that is none (naming the shard), None when there are some."""
    if not calls:
        return None, "no shards configured"
    common: set[int] | None = None
    problems = []
    unreachable = False
    for index, (address, call) in enumerate(calls):
        where = f"shard {index} ({address})"
        try:
            versions = {int(v) for v in call.result().versions if v.isdigit()}
        except grpc.RpcError as exc:
            code = exc.code() if isinstance(exc, grpc.Call) else None
            if code == grpc.StatusCode.NOT_FOUND:  # answered: it has no version of the model
                versions = set()
            else:
                problems.append(f"{where} cannot be reached: {describe_rpc_error(exc)}")
                unreachable = True
                continue
        if not versions:
            problems.append(f"{where} has no AVAILABLE version of model {model}")
        common = versions if common is None else common & versions
    if unreachable or common is None:
        return None, "; ".join(problems)
    if not common and not problems:
        problems.append(f"the shards have no version of model {model} in common")
    return tuple(sorted(common)), "; ".join(problems) or None
