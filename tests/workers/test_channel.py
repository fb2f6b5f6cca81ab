"""The supervisor ↔ worker channel: whole messages both ways; a frame length received over the
limit closes the channel with an error naming it instead of allocating it; a message to send over
the limit raises to its sender and leaves the channel open."""

from __future__ import annotations

import socket
import struct
import threading
from collections.abc import Iterator

import pytest

from pyserving.workers import channel as channel_module
from pyserving.workers.channel import MAX_FRAME_BYTES, Channel, ChannelClosed, FrameTooLarge


@pytest.fixture
def pair() -> Iterator[tuple[Channel, socket.socket]]:
    """A channel and the raw socket of its other end (reads time out: a test never hangs)."""
    mine, theirs = socket.socketpair()
    mine.settimeout(10)
    theirs.settimeout(10)
    try:
        yield Channel(mine), theirs
    finally:
        mine.close()
        theirs.close()


def test_messages_large_and_small_arrive_whole_and_in_order() -> None:
    mine, theirs = socket.socketpair()
    ends = Channel(mine), Channel(theirs)
    big = bytes(range(256)) * 20_000  # several socket buffers: sent while the reader reads
    sender = threading.Thread(
        target=lambda: [ends[0].send("blob", big), ends[0].send("ping")], daemon=True
    )
    try:
        sender.start()
        assert ends[1].receive() == ("blob", big)
        assert ends[1].receive() == ("ping",)
    finally:
        sender.join(10)
        for end in ends:
            end.close()


def test_a_frame_announced_over_the_limit_closes_the_channel_naming_it(
    pair: tuple[Channel, socket.socket],
) -> None:
    channel, other_end = pair
    other_end.sendall(struct.pack("!I", MAX_FRAME_BYTES + 1))
    with pytest.raises(ChannelClosed, match=f"message of {MAX_FRAME_BYTES + 1} bytes announced"):
        channel.receive()
    assert other_end.recv(1) == b""  # closed: the other end reads the end of the stream


def test_a_message_over_the_limit_raises_to_its_sender_and_the_channel_stays_open(
    pair: tuple[Channel, socket.socket], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Red team 4 F1: one oversized model-control call closed the worker's channel, and the
    worker stopped itself; now only the call fails."""
    channel, other_end = pair
    monkeypatch.setattr(channel_module, "MAX_FRAME_BYTES", 1000)
    with pytest.raises(
        FrameTooLarge, match=r"'big' message of \d+ bytes is over .*1000-byte limit"
    ):
        channel.send("big", b"x" * 2000)
    with pytest.raises(FrameTooLarge, match="500-byte limit") as refused:
        channel.send("control", b"x" * 600, limit_bytes=500)  # a sender's own, smaller limit
    assert refused.value.size_bytes > 600 and refused.value.limit_bytes == 500
    channel.send("small", b"x" * 100)
    assert Channel(other_end).receive() == ("small", b"x" * 100)  # nothing else was written


def test_the_end_of_the_stream_mid_message_is_a_closed_channel(
    pair: tuple[Channel, socket.socket],
) -> None:
    channel, other_end = pair
    other_end.sendall(struct.pack("!I", 100) + b"cut")
    other_end.shutdown(socket.SHUT_WR)
    with pytest.raises(ChannelClosed, match="end of stream"):
        channel.receive()
