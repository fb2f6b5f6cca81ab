"""Request parsing and response serialization of a gRPC call run off the event loop once the
message is over `OFF_LOOP_BYTES` (issue 14: parsing a 30 MiB ModelInferRequest of 15M empty
strings held the loop for seconds, and every other call and REST request with it). A real
grpc.aio server and channel; the message type records the thread that parses and serializes."""

from __future__ import annotations

import threading
from typing import Any

import grpc
import pytest

from pyserving.api.grpc.rpc import unary_handler
from pyserving.proto import grpc_service_pb2 as pb
from pyserving.serving.off_loop import OFF_LOOP_BYTES

pytestmark = pytest.mark.asyncio


class Probe:
    """A message of `size` bytes that records where it was parsed and serialized."""

    DESCRIPTOR = pb.ModelInferRequest.DESCRIPTOR  # rpc.py names the type from it
    parsed_on: list[int] = []
    serialized_on: list[int] = []

    def __init__(self, size: int) -> None:
        self.size = size

    @classmethod
    def FromString(cls, data: bytes) -> Probe:
        cls.parsed_on.append(threading.get_ident())
        return cls(len(data))

    def ByteSize(self) -> int:
        return self.size

    def SerializeToString(self) -> bytes:
        self.serialized_on.append(threading.get_ident())
        return bytes(self.size)


async def echo(request: Probe, context: Any) -> Probe:
    return request


@pytest.mark.parametrize(("size", "off_loop"), [(100, False), (OFF_LOOP_BYTES * 4, True)])
async def test_large_messages_are_parsed_and_serialized_off_the_loop_issue_14(
    size: int, off_loop: bool
) -> None:
    Probe.parsed_on.clear()
    Probe.serialized_on.clear()
    server = grpc.aio.server()
    methods = {"Echo": unary_handler(echo, Probe)}  # type: ignore[arg-type]
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("test.Echo", methods),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            call = channel.unary_unary("/test.Echo/Echo")
            answer = await call(bytes(size), timeout=30)
    finally:
        await server.stop(None)
    assert len(answer) == size
    loop_thread = threading.get_ident()
    assert len(Probe.parsed_on) == len(Probe.serialized_on) == 1
    assert (Probe.parsed_on[0] != loop_thread) is off_loop
    assert (Probe.serialized_on[0] != loop_thread) is off_loop
