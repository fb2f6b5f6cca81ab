"""ControlAuth: the bearer token that model-control calls must carry (`--control-token-file`).

Control calls (V2 repository load/unload on REST and gRPC, TF Serving's
HandleReloadConfigRequest) send `Authorization: Bearer <token>` (gRPC metadata `authorization`).
The token is read once at start and never logged; a wrong one is found in constant time.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable

from pyserving.errors import Unauthenticated

__all__ = ["ControlAuth", "ControlTokenError", "load_control_token"]

_SCHEME = "bearer"


class ControlTokenError(ValueError):
    """The token file cannot be used; the message is one line and never holds the token."""


class ControlAuth:
    """Checks the Authorization value of a control call against the server's token.

    Thread-safety: immutable; `check` may be called from any thread or the event loop.
    Blocking: never.
    """

    __slots__ = ("_token",)

    def __init__(self, token: str) -> None:
        if not token:
            raise ControlTokenError("the control token is empty")
        self._token = token.encode()

    def __repr__(self) -> str:  # never show the token, in a traceback or a log
        return "ControlAuth(token=<hidden>)"

    def check(self, authorization: str | None) -> None:
        """Return when `authorization` is `Bearer <the token>`; raise Unauthenticated saying
        whether it was missing or wrong (without echoing what was sent)."""
        if not authorization:
            raise Unauthenticated(
                "model control needs a token: send the header 'Authorization: Bearer <token>'"
                " (gRPC metadata 'authorization') with the token of --control-token-file"
            )
        scheme, _, credentials = authorization.strip().partition(" ")
        # compare_digest on every path, so the time taken says nothing about the token
        matches = hmac.compare_digest(credentials.strip().encode(), self._token)
        if scheme.lower() != _SCHEME or not matches:
            raise Unauthenticated(
                "model control token is wrong: the 'Authorization: Bearer <token>' sent does not"
                " match --control-token-file"
            )

    def check_metadata(self, metadata: Iterable[tuple[str, str | bytes]] | None) -> None:
        """`check` on the `authorization` entry of gRPC invocation metadata."""
        value: str | None = None
        for key, item in metadata or ():
            if key == "authorization":
                value = item.decode("latin-1") if isinstance(item, bytes) else item
                break
        self.check(value)


def load_control_token(path: str) -> ControlAuth:
    """The ControlAuth for the token in the file at `path` (whitespace around it stripped).

    Raises ControlTokenError (one line, naming the file) when it cannot be read or is empty.
    """
    try:
        with open(path, encoding="utf-8") as stream:
            token = stream.read().strip()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else "not UTF-8 text"
        raise ControlTokenError(f"cannot read --control-token-file {path}: {reason}") from None
    if not token:
        raise ControlTokenError(f"--control-token-file {path} is empty: put the token in it")
    return ControlAuth(token)
