"""Channel: messages between the supervisor and one worker over a private socket pair.

Each message is a tuple whose first item names it, sent as a length-prefixed pickle. Both ends
are processes of this server (the supervisor made the pair and started the worker), so pickle
carries only our own objects; nothing else can reach the socket.
"""

from __future__ import annotations

import contextlib
import pickle
import socket
import struct
import threading
from typing import Any

_HEADER = struct.Struct("!I")


class ChannelClosed(Exception):
    """The other end went away (exited, was killed, or closed its socket)."""


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

    def send(self, *message: Any) -> None:
        """Send one message; raises ChannelClosed when the other end is gone."""
        data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
        try:
            with self._send_lock:
                self._sock.sendall(_HEADER.pack(len(data)) + data)
        except OSError as exc:
            raise ChannelClosed(str(exc)) from exc

    def receive(self) -> tuple[Any, ...]:
        """The next message; raises ChannelClosed at the end of the stream."""
        (size,) = _HEADER.unpack(self._read_exactly(_HEADER.size))
        message: tuple[Any, ...] = pickle.loads(self._read_exactly(size))
        return message

    def close(self) -> None:
        with contextlib.suppress(OSError):  # already gone
            self._sock.shutdown(socket.SHUT_RDWR)
        self._sock.close()

    def _read_exactly(self, size: int) -> bytes:
        chunks: list[bytes] = []
        while size:
            try:
                chunk = self._sock.recv(min(size, 1 << 20))
            except OSError as exc:
                raise ChannelClosed(str(exc)) from exc
            if not chunk:
                raise ChannelClosed("end of stream")
            chunks.append(chunk)
            size -= len(chunk)
        return b"".join(chunks)
