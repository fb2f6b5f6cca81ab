"""ModelControl: what the model-control RPCs need of the server (load, unload, reload, index).

`ServerCore` implements it (issue 7); the servicers take one, or None when the server runs
without `--enable-model-control`, in which case those RPCs answer PERMISSION_DENIED. With
`--control-token-file` they also take a ControlAuth: a call without the token's `authorization`
metadata answers UNAUTHENTICATED (`authorize_call`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Protocol, runtime_checkable

import grpc

from pyserving.api.control_auth import ControlAuth
from pyserving.errors import PermissionDenied
from pyserving.proto.model_server_config_pb2 import ModelServerConfig

__all__ = ["ModelControl", "authorize_call", "require_control"]


@runtime_checkable
class ModelControl(Protocol):
    """Load, unload and reconfigure models at run time.

    Thread-safety: every method may be called from any thread, concurrently.
    Blocking: every method may block (file system, loads); the gRPC layer calls them on a worker
    thread, never on the event loop. Errors are ServingErrors (NotFound for an unknown model,
    InvalidInput for a bad config, FailedPrecondition for an illegal transition, ...).
    """

    def reload_config(self, config: ModelServerConfig) -> None:
        """Replace the model config as TF Serving's ReloadConfig does (omitted models unload).

        `config` holds a `model_config_list` (the caller checked). Returns once every newly added
        model has an AVAILABLE version; raises if one cannot load.
        """

    def load_model(self, name: str) -> None:
        """Load (or reload) the configured model `name`; returns once it is AVAILABLE."""

    def unload_model(self, name: str) -> None:
        """Unload every version of `name`; it stays unloaded until `load_model(name)`."""

    def repository_index(self) -> Iterable[Mapping[str, str]]:
        """Every model of the repository, loaded or not, one entry per version (or per model with
        no version): keys "name", "version" ("" when none), "state" (e.g. "READY",
        "UNAVAILABLE"), "reason" ("" when none) — the V2 REST `/v2/repository/index` items."""


def require_control(control: ModelControl | None) -> ModelControl:
    """`control`, or PermissionDenied naming the flag that enables model control."""
    if control is None:
        raise PermissionDenied(
            "model control is disabled on this server; start it with --enable-model-control"
            " (--enable_model_control) to load, unload or reload models over the network"
        )
    return control


def authorize_call(auth: ControlAuth | None, context: grpc.aio.ServicerContext) -> None:
    """Return when `auth` is None or the call's `authorization` metadata carries its token;
    raise Unauthenticated otherwise."""
    if auth is not None:
        auth.check_metadata(context.invocation_metadata())
