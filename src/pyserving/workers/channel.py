"""Channel: messages between the supervisor and one worker over a private socket pair.

Each message is a tuple whose first item names it, sent as a length-prefixed pickle. Both ends
are processes of this server (the supervisor made the pair and started the worker), so pickle
carries only our own objects; nothing else can reach the socket.
"""

from __future__ import annotations

import contextlib
import io
import logging
import pickle
import socket
import struct
import threading
from typing import Any, NoReturn

_HEADER = struct.Struct("!I")
#: the largest message either end sends or accepts: a longer length received means a broken
#: stream, which closes the channel instead of allocating it; a longer message is not sent
MAX_FRAME_BYTES = 64 << 20
#: the most a message carrying what a client sent (a model-control call, the config it leaves)
#: may take: half the frame, so that the messages that carry it on (the supervisor's "apply",
#: a replacement worker's "start" with its argv and gate) fit in a frame whatever the client sent
MAX_CONTROL_BYTES = MAX_FRAME_BYTES // 2

_log = logging.getLogger(__name__)


class ChannelClosed(Exception):
    """The other end went away (exited, was killed, or closed its socket), or it announced a
    message over the frame limit and this end closed the channel."""


class FrameTooLarge(Exception):
    """A message was not sent: it is over the size limit its sender gave. Nothing was written,
    so the channel stays open."""

    def __init__(self, kind: str, size_bytes: int, limit_bytes: int) -> None:
        super().__init__(
            f"a {kind!r} message of {size_bytes} bytes is over the workers channel's"
            f" {limit_bytes}-byte limit"
        )
        self.size_bytes = size_bytes
        self.limit_bytes = limit_bytes


class Channel:
    """One end of a worker's socket pair.

    Thread-safety: `send` may be called from any thread (one lock keeps messages whole);
    `receive` from one reader thread only.
    Blocking: `send` waits while the socket buffer is full; `receive` waits for a message.
    """

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._send_lock = threading.Lock()  # guards writes to _sock

    def fileno(self) -> int:
        return self._sock.fileno()

    def send(self, *message: Any, limit_bytes: int = MAX_FRAME_BYTES) -> None:
        """Send one message; raises ChannelClosed when the other end is gone, and FrameTooLarge
        (sending nothing, the channel still open) when its pickle is over `limit_bytes`
        (at most MAX_FRAME_BYTES)."""
        buffer = io.BytesIO()
        buffer.write(bytes(_HEADER.size))  # the length goes here once the pickle is written
        pickle.dump(message, buffer, protocol=pickle.HIGHEST_PROTOCOL)
        with buffer.getbuffer() as frame:  # the pickle sent where it was written: no copy
            size = len(frame) - _HEADER.size
            limit_bytes = min(limit_bytes, MAX_FRAME_BYTES)
            if size > limit_bytes:
                raise FrameTooLarge(message[0], size, limit_bytes)
            _HEADER.pack_into(frame, 0, size)
            try:
                with self._send_lock:
                    self._sock.sendall(frame)
            except OSError as exc:
                raise ChannelClosed(str(exc)) from exc

    def receive(self) -> tuple[Any, ...]:
        """The next message; raises ChannelClosed at the end of the stream, or (closing the
        channel) when its length is over MAX_FRAME_BYTES."""
        (size,) = _HEADER.unpack(self._read_exactly(_HEADER.size))
        if size > MAX_FRAME_BYTES:
            self._close_over_limit(f"a message of {size} bytes announced")
        message: tuple[Any, ...] = pickle.loads(self._read_exactly(size))
        return message

    def close(self) -> None:
        with contextlib.suppress(OSError):  # already gone
            self._sock.shutdown(socket.SHUT_RDWR)
        self._sock.close()

    def _close_over_limit(self, what: str) -> NoReturn:
        reason = f"{what}: over the channel's {MAX_FRAME_BYTES}-byte limit; closing the channel"
        _log.error("%s", reason)
        self.close()  # the other end reads the end of the stream
        raise ChannelClosed(reason)

    def _read_exactly(self, size: int) -> bytearray:
        data = bytearray(size)  # received in place: no chunks joined after
        view = memoryview(data)
        while view:
            try:
                count = self._sock.recv_into(view, min(len(view), 1 << 20))
            except OSError as exc:
                raise ChannelClosed(str(exc)) from exc
            if not count:
                raise ChannelClosed("end of stream")
            view = view[count:]
        return data
