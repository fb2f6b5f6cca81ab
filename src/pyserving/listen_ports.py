"""The listening ports of `pyserving serve`: binding them, and the supervisor's hold on them.

A `--workers` server's workers bind each port with SO_REUSEPORT, which alone would let a second
server of the same user (or a stale one) share the port silently: the kernel would split the
connections between the two. So the supervisor first binds each port itself *without*
SO_REUSEPORT (any other socket on the port, whoever owns it, makes that fail: status 2, the
same message as one process) and keeps that socket until it exits, turned into an SO_REUSEPORT
one so that its own workers can join it. The held socket never listens (it takes no connection)
and, having dropped SO_REUSEADDR, it makes any later server's check fail too: there is no window
between the check and the workers' binds. SO_REUSEADDR on the check itself lets a port whose
last connections are still in TIME_WAIT be reused, as one process can.
"""

from __future__ import annotations

import socket
from collections.abc import Callable

__all__ = ["PortTaken", "bind_listeners", "bind_port", "reserve_port"]


class PortTaken(Exception):
    """A listener's port could not be bound; `str()` is the line for stderr (exit status 2)."""


def bind_listeners(
    host: str, rest_api_port: int, grpc_port: int, bind: Callable[[str, int], socket.socket]
) -> tuple[socket.socket | None, socket.socket | None]:
    """The (REST, gRPC) sockets `bind` made for the ports that are not 0, REST first (None for
    a port of 0). Raises PortTaken naming the listener, the reason and the flag that moves it,
    after closing what it bound, or when both listeners are given the same port (two bound but
    not yet listening sockets with SO_REUSEADDR share a port: gRPC's listen would fail later)."""
    if rest_api_port and rest_api_port == grpc_port:
        raise PortTaken(
            f"pyserving: --port and --rest_api_port are both {grpc_port}: give gRPC and REST"
            " a port each"
        )
    bound: list[socket.socket | None] = []
    for what, flag, port in (
        ("REST", "--rest_api_port", rest_api_port),
        ("gRPC", "--port", grpc_port),
    ):
        try:
            bound.append(bind(host, port) if port else None)
        except OSError as exc:
            for sock in bound:
                if sock is not None:
                    sock.close()
            raise PortTaken(_port_error(what, flag, host, port, exc)) from exc
    return bound[0], bound[1]


def bind_port(host: str, port: int, reuse_port: bool = False) -> socket.socket:
    """A TCP socket bound to `host:port` (not listening yet); raises OSError when taken."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:  # --workers: every worker listens on the port; the kernel spreads them
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock


def reserve_port(host: str, port: int) -> socket.socket:
    """Check that no socket is on `host:port` and hold it for this user's SO_REUSEPORT workers
    (module docstring); raises OSError when taken. Close the socket to let the port go."""
    sock = bind_port(host, port)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 0)
    return sock


def _port_error(what: str, flag: str, host: str, port: int, exc: OSError) -> str:
    """One line for stderr: which listener could not bind, why, and which flag moves it."""
    reason = exc.strerror or str(exc)
    return (
        f"pyserving: cannot listen for {what} on {host}:{port}: {reason}"
        f" (another server on that port? choose another with {flag}=N, or {flag}=0 for none)"
    )
