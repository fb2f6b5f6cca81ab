"""A bare HTTP/2 client for gRPC abuse tests: opens calls and sends only part of their message,
which no gRPC library can do. It answers SETTINGS and PING like a live peer and records, per
stream, when the server ended it (HEADERS with END_STREAM, or RST_STREAM)."""

from __future__ import annotations

import contextlib
import socket
import struct
import threading

_DATA, _HEADERS, _RST_STREAM, _SETTINGS, _PING = 0, 1, 3, 4, 6
_END_STREAM, _END_HEADERS, _ACK = 0x1, 0x4, 0x1


def _frame(kind: int, flags: int, stream_id: int, payload: bytes) -> bytes:
    return (
        struct.pack(">I", len(payload))[1:]
        + bytes([kind, flags])
        + struct.pack(">I", stream_id)
        + payload
    )


def _literal(name: str, value: str) -> bytes:
    """An HPACK literal header field without indexing, new name (lengths under 127)."""
    return b"\x00" + bytes([len(name)]) + name.encode() + bytes([len(value)]) + value.encode()


class RawH2Connection:
    """One plain-text HTTP/2 connection to a gRPC server.

    Thread-safety: `half_call` from one thread; `ended` events are set by the reader thread.
    """

    def __init__(self, host: str, port: int) -> None:
        self._sock = socket.create_connection((host, port), timeout=10)
        self._send_lock = threading.Lock()
        #: stream id → set once the server has ended that stream
        self.ended: dict[int, threading.Event] = {}
        window = struct.pack(">HI", 4, 1 << 30)  # SETTINGS_INITIAL_WINDOW_SIZE: read everything
        self._send(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + _frame(_SETTINGS, 0, 0, window))
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def half_call(self, stream_id: int, path: str, declared: int, sent: int) -> None:
        """Open a gRPC call on `path` whose message declares `declared` bytes; send `sent`
        bytes of it (prefix included), then nothing more."""
        self.ended.setdefault(stream_id, threading.Event())
        headers = b"".join(
            _literal(name, value)
            for name, value in (
                (":method", "POST"),
                (":scheme", "http"),
                (":path", path),
                (":authority", "test"),
                ("content-type", "application/grpc"),
                ("te", "trailers"),
            )
        )
        self._send(_frame(_HEADERS, _END_HEADERS, stream_id, headers))
        data = b"\x00" + struct.pack(">I", declared) + b"\x00" * max(0, sent - 5)
        for start in range(0, len(data), 16384):
            self._send(_frame(_DATA, 0, stream_id, data[start : start + 16384]))

    def close(self) -> None:
        # shutdown wakes the reader's recv (a close alone does not: each close waited the join's
        # full 10 s)
        with contextlib.suppress(OSError):  # the server may have closed it already
            self._sock.shutdown(socket.SHUT_RDWR)
        self._sock.close()
        self._reader.join(10)

    def __enter__(self) -> RawH2Connection:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _send(self, data: bytes) -> None:
        with self._send_lock:
            self._sock.sendall(data)

    def _read(self) -> None:
        buffer = b""
        try:
            while True:
                try:
                    chunk = self._sock.recv(65536)
                except TimeoutError:
                    continue
                if not chunk:
                    return
                buffer += chunk
                while len(buffer) >= 9:
                    length = int.from_bytes(buffer[:3], "big")
                    if len(buffer) < 9 + length:
                        break
                    kind, flags = buffer[3], buffer[4]
                    stream_id = int.from_bytes(buffer[5:9], "big") & 0x7FFFFFFF
                    payload, buffer = buffer[9 : 9 + length], buffer[9 + length :]
                    if kind == _SETTINGS and not flags & _ACK:
                        self._send(_frame(_SETTINGS, _ACK, 0, b""))
                    elif kind == _PING and not flags & _ACK:
                        self._send(_frame(_PING, _ACK, 0, payload))
                    elif kind == _RST_STREAM or (kind == _HEADERS and flags & _END_STREAM):
                        self.ended.setdefault(stream_id, threading.Event()).set()
        except OSError:
            return
