"""ShardVersionSource against real gRPC shard stand-ins on 127.0.0.1 (issue 18)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent import futures

import grpc
import pytest

from pyserving.core.ids import ServableData
from pyserving.platforms.shards import find_routes
from pyserving.proto import grpc_service_pb2 as pb
from pyserving.proto.grpc_service_pb2_grpc import (
    GRPCInferenceServiceServicer,
    add_GRPCInferenceServiceServicer_to_server,
)
from pyserving.sources import shard_versions
from pyserving.sources.shard_versions import ShardVersionSource


class Shard(GRPCInferenceServiceServicer):
    """Answers ModelMetadata with the versions a test sets; a held shard answers only once the
    test releases it."""

    def __init__(self) -> None:
        self.versions: list[int] = [1]
        self.asked = threading.Event()
        self.release = threading.Event()
        self.release.set()
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        add_GRPCInferenceServiceServicer_to_server(self, self.server)
        port = self.server.add_insecure_port("127.0.0.1:0")
        self.address = f"127.0.0.1:{port}"
        self.server.start()

    def ModelMetadata(self, request: pb.ModelMetadataRequest, context: object) -> object:
        assert request.name == "t"
        self.asked.set()
        self.release.wait(30)  # bounded: the server's thread ends even when a test fails
        return pb.ModelMetadataResponse(name="t", versions=[str(v) for v in self.versions])


@pytest.fixture
def two_shards() -> Iterator[list[Shard]]:
    started = [Shard(), Shard()]
    try:
        yield started
    finally:
        for shard in started:
            shard.release.set()
            shard.server.stop(None)


def test_aspires_the_versions_every_shard_has_and_keeps_them_while_one_is_down(
    two_shards: list[Shard],
) -> None:
    sent: list[tuple[str, list[int]]] = []
    paths: set[str | None] = set()

    def record(name: str, versions: list[ServableData[str]]) -> None:
        sent.append((name, [item.id.version for item in versions]))
        paths.update(item.data for item in versions)

    source = ShardVersionSource(0)
    source.set_aspired_versions_callback(record)
    try:
        first, second = two_shards
        first.versions, second.versions = [1, 2], [1]
        source.configure({"router": ("t", [first.address, second.address])})
        source.poll_once()
        assert sent == [("router", [1])]
        source.poll_once()  # unchanged: nothing sent
        assert len(sent) == 1
        second.versions = [1, 2]
        source.poll_once()
        assert sent[-1] == ("router", [1, 2])
        second.server.stop(None)  # unreachable: the router keeps its versions
        source.poll_once()
        assert sent[-1] == ("router", [1, 2]) and len(sent) == 2

        # a reload moves the router to other addresses for its next request
        source.configure({"router": ("t", [first.address])})
        (key,) = paths  # every version's path names the router's routes
        assert key is not None
        routes = find_routes(key)
        assert routes is not None
        assert [address for address, _ in routes.view().targets] == [first.address]
        source.configure({})
        assert sent[-1] == ("router", [])
        assert find_routes(key) is None
    finally:
        source.stop()


def test_a_router_without_versions_says_which_shard_and_why(
    two_shards: list[Shard], caplog: pytest.LogCaptureFixture
) -> None:
    first, second = two_shards
    second.versions = []
    source = ShardVersionSource(0)
    source.set_aspired_versions_callback(lambda name, versions: None)
    try:
        source.configure({"router": ("t", [first.address, second.address])})
        source.poll_once()
        problem = source.problem("router")
        assert problem == f"shard 1 ({second.address}) has no AVAILABLE version of model t"
        assert problem in caplog.text
        source.poll_once()  # logged once per change
        assert caplog.text.count(problem) == 1
        source.configure({"router": ("t", [first.address, "no-such-host.invalid:1"])})
        source.poll_once()
        problem = source.problem("router")
        assert problem is not None
        assert problem.startswith("shard 1 (no-such-host.invalid:1) cannot be reached: UNAVAILABLE")
        second.versions = [1]
        source.configure({"router": ("t", [first.address, second.address])})
        source.poll_once()
        assert source.problem("router") is None
    finally:
        source.stop()


def test_new_addresses_send_the_versions_again_with_a_new_revision(
    two_shards: list[Shard],
) -> None:
    sent: list[tuple[list[int], set[str]]] = []

    def record(name: str, versions: list[ServableData[str]]) -> None:
        sent.append(([item.id.version for item in versions], {item.revision for item in versions}))

    first, second = two_shards
    source = ShardVersionSource(0)
    source.set_aspired_versions_callback(record)
    try:
        source.configure({"router": ("t", [second.address, first.address])})
        source.poll_once()
        source.configure({"router": ("t", [second.address, first.address])})  # unchanged
        source.poll_once()
        assert len(sent) == 1
        # reordered by a reload: a version that failed its shard check is tried again
        source.configure({"router": ("t", [first.address, second.address])})
        source.poll_once()
        assert [versions for versions, _ in sent] == [[1], [1]]
        assert sent[0][1] != sent[1][1]
    finally:
        source.stop()


def test_a_slow_shard_delays_neither_a_reload_nor_another_routers_poll(
    two_shards: list[Shard], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(shard_versions, "_METADATA_TIMEOUT_S", 30.0)  # held, not timed out
    slow, quick = two_shards
    slow.release.clear()
    sent: list[tuple[str, list[int]]] = []
    source = ShardVersionSource(0)
    source.set_aspired_versions_callback(
        lambda name, versions: sent.append((name, [item.id.version for item in versions]))
    )
    routers = {"slow": ("t", [slow.address]), "quick": ("t", [quick.address])}
    source.configure(routers)
    poll = threading.Thread(target=source.poll_once, daemon=True)
    reload = threading.Thread(
        target=source.configure, args=({**routers, "new": ("t", [quick.address])},), daemon=True
    )
    try:
        poll.start()
        assert slow.asked.wait(10)
        assert quick.asked.wait(10)  # asked while the slow router's shard has not answered
        reload.start()
        reload.join(10)
        assert not reload.is_alive()  # the reload did not wait for the slow shard
        assert slow.release.is_set() is False and poll.is_alive()
        slow.release.set()
        poll.join(10)
        assert sorted(sent) == [("quick", [1]), ("slow", [1])]
        source.poll_once()  # the router the reload added is asked by the next poll
        assert sent[-1] == ("new", [1])
    finally:
        slow.release.set()
        for thread in (poll, reload):
            if thread.ident is not None:  # started
                thread.join(10)
        source.stop()
