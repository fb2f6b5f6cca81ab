"""pyserving on Ray Serve: one deployment whose replicas each run a full pyserving core.

Each replica builds a `ServerCore` from the same model config a `pyserving serve` reads and
mounts the REST app unchanged behind Ray's HTTP proxy: TF Serving's `/v1/...` and KServe V2's
`/v2/...` paths answer exactly as on a plain server. Every replica polls the model base paths
itself, so a version published to shared storage is picked up by all of them. Ray owns what is
Ray's: replica count or `autoscaling_config`, placement, HTTP host and port, graceful shutdown.

    serve run pyserving.integrations.ray:build_app model_config_file=models.yaml
    serve deploy examples/ray/serve_config.yaml

A model config with sharded tables (`shard:`) becomes one deployment per shard plus the
router instead (integrations/ray_shards.py).

Each response carries a `pyserving-replica: <replica id> node=<node id>` header, so operators
(and the tests) can see which replica answered.
"""

from __future__ import annotations

import asyncio
import dataclasses
import difflib
import logging
import os
import shutil
from collections.abc import Mapping
from typing import Any, cast

from ray import serve
from ray.serve.deployment import Application, Deployment

from pyserving import __version__
from pyserving.api.limits import RequestBytesBudget
from pyserving.api.rest.app import RestOptions, create_app
from pyserving.api.rest.asgi import ASGIApp, Receive, Scope, Send
from pyserving.errors import ServingError
from pyserving.logs import configure_logging
from pyserving.serving.server_core import ServerCore, ServerOptions
from pyserving.sources.cache import default_cache_dir

__all__ = [
    "DEPLOYMENT_NAME",
    "REPLICA_HEADER",
    "PyServingReplica",
    "RayServingOptions",
    "build_app",
    "pyserving_app",
]

logger = logging.getLogger("pyserving.ray")

#: the deployment's name (what a Serve config's `deployments:` entry overrides)
DEPLOYMENT_NAME = "pyserving"
#: the response header naming the replica (and its Ray node) that answered
REPLICA_HEADER = b"pyserving-replica"

#: Ray's defaults for our deployment; a Serve config or `pyserving_app(**options)` overrides them.
#: Ray's own default of 5 ongoing requests per replica would starve the batcher and the
#: execution lanes, which queue and bound work themselves.
DEPLOYMENT_DEFAULTS: dict[str, Any] = {
    "max_ongoing_requests": 64,
    "graceful_shutdown_timeout_s": 30.0,
}

#: ServerOptions fields that make no sense under Ray: its proxy owns HTTP, and model control
#: through the proxy would reach one replica only
_REFUSED = {
    "port": "Ray's proxy serves HTTP: set http_options in the Serve config",
    "rest_api_port": "Ray's proxy serves HTTP: set http_options in the Serve config",
    "host": "Ray's proxy serves HTTP: set http_options in the Serve config",
    "enable_model_control": (
        "model control through Ray's proxy would reach one replica only: publish versions to"
        " the shared base path or change the model config file instead"
    ),
}


@dataclasses.dataclass(frozen=True, slots=True)
class RayServingOptions:
    """What one replica needs: the core's options and the REST limits of `pyserving serve`."""

    server: ServerOptions
    #: request bytes one replica holds at once (`--max-inflight-request-bytes`); 0 = no budget
    max_inflight_request_bytes: int = 512 * 1024 * 1024
    #: a request body must arrive within this time, else 408 (`--body-read-timeout-seconds`)
    body_read_timeout_seconds: float = 60.0
    #: one access-log line per request (`--access-log`)
    access_log: bool = False
    #: the replica's own log lines (`--log-level`, `--log-format`), on its stderr
    log_level: str = "info"
    log_format: str = "text"

    @classmethod
    def from_args(cls, args: Mapping[str, Any]) -> RayServingOptions:
        """Options from a Serve config's `args:` (flag names, `-` or `_`); raises ValueError
        naming an unknown or refused key and the closest known one."""
        server_types = {f.name: str(f.type) for f in dataclasses.fields(ServerOptions)}
        own_types = {f.name: str(f.type) for f in dataclasses.fields(cls)}
        server_fields = set(server_types)
        own_fields = set(own_types) - {"server"}
        server: dict[str, Any] = {}
        own: dict[str, Any] = {}
        for raw_key, value in args.items():
            key = raw_key.replace("-", "_")
            if key in _REFUSED:
                raise ValueError(f"args.{raw_key}: {_REFUSED[key]}")
            if key in own_fields:
                own[key] = _typed(raw_key, own_types[key], value)
            elif key in server_fields and key != "model_config":
                server[key] = _typed(raw_key, server_types[key], value)
            else:
                known = sorted((server_fields | own_fields) - set(_REFUSED) - {"model_config"})
                close = difflib.get_close_matches(key, known, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise ValueError(f"args.{raw_key}: not a pyserving option{hint}")
        return cls(ServerOptions(**server), **own)


class CoreReplica:
    """What every pyserving replica shares: a full ServerCore, started off the event loop, and
    the REST app over it (for the deployments that are Ray's HTTP ingress).

    Lifecycle: `_start_core` loads the first versions before Ray routes anything here; Ray's
    graceful shutdown lets in-flight requests finish, then `__del__` unloads every version and
    removes this replica's model cache.
    Ownership: each replica copies remote versions into its own directory under the model cache
    dir (`ray-<replica id>`): replicas on one node must not remove copies another one uses.
    """

    async def _start_core(self, options: RayServingOptions, server: ServerOptions) -> None:
        self._options = options
        if not logging.getLogger().handlers:
            # A Ray worker's root logger has no handler: version changes and errors would be
            # lost. Ray's own loggers do not propagate to it, so nothing is logged twice.
            configure_logging(options.log_level, options.log_format, options.access_log)
        replica = serve.get_replica_context().replica_id.unique_id
        self._cache_dir = os.path.join(
            server.model_cache_dir or default_cache_dir(), f"ray-{replica}"
        )
        server = dataclasses.replace(server, model_cache_dir=self._cache_dir)
        # Reads the config file and polls storage: blocking work, kept off the event loop.
        self._core = await asyncio.to_thread(ServerCore, server)
        await asyncio.to_thread(self._core.start)

    def __serve_build_asgi_app__(self) -> ASGIApp:
        core, options = self._core, self._options
        app = create_app(
            core.service,
            RestOptions(
                rest_api_timeout_in_ms=options.server.rest_api_timeout_in_ms,
                max_request_bytes=options.server.max_request_bytes,
                server_version=__version__,
                ready_names=core.model_names,
                access_log=options.access_log,
                body_read_timeout_s=options.body_read_timeout_seconds,
                request_budget=RequestBytesBudget(options.max_inflight_request_bytes),
                labels=lambda: {m.name: m.labels for m in core.config.models},
            ),
        )
        return _naming_replica(app, _replica_name().encode())

    async def __del__(self) -> None:
        # Ray has drained this replica's requests (graceful_shutdown_timeout_s) before this.
        core = getattr(self, "_core", None)
        if core is None:
            return
        if await asyncio.to_thread(core.stop, 30.0):
            await asyncio.to_thread(shutil.rmtree, self._cache_dir, True)
        else:
            logger.error("models did not unload in time (a model call is stuck)")


@serve.deployment(name=DEPLOYMENT_NAME, **DEPLOYMENT_DEFAULTS)
@serve.ingress()
class PyServingReplica(CoreReplica):
    """One Ray Serve replica: a full ServerCore and the REST app over it."""

    # Ray awaits an async constructor (mypy insists __init__ return None).
    async def __init__(self, options: RayServingOptions) -> None:  # type: ignore[misc]
        await self._start_core(options, options.server)


def pyserving_app(
    options: RayServingOptions | ServerOptions,
    shard_deployment: Mapping[str, Any] | None = None,
    **deployment: Any,
) -> Application:
    """The Ray Serve application for `options`; `deployment` are Ray deployment options
    (`num_replicas`, `autoscaling_config`, `ray_actor_options`, `max_replicas_per_node`, ...).
    A model config with sharded tables (`shard:`) gives one deployment per shard (Ray options
    `shard_deployment`) plus the router (`deployment`): see integrations/ray_shards.py."""
    if isinstance(options, ServerOptions):
        options = RayServingOptions(options)
    defaults = ServerOptions()
    for key, reason in _REFUSED.items():
        if getattr(options.server, key) != getattr(defaults, key):
            raise ValueError(f"{key}: {reason}")
    # Ray's workers do not run in the caller's directory: relative local paths are made
    # absolute where the application is built (the `serve run` caller's directory).
    local = {
        key: os.path.abspath(path)
        for key in ("model_config_file", "model_base_path", "batching_parameters_file")
        if (path := getattr(options.server, key)) and "://" not in path
    }
    options = dataclasses.replace(options, server=dataclasses.replace(options.server, **local))
    try:  # a bad config fails here, where `serve run` shows it, not in every replica
        config = options.server.resolve_model_config()
    except ServingError as exc:
        raise ValueError(exc.message) from exc
    if any("shard" in m.options for m in config.models):
        from pyserving.integrations.ray_shards import sharded_app

        return sharded_app(options, config, shard_deployment or {}, deployment)
    if shard_deployment:
        raise ValueError("shard_deployment: the model config has no sharded table (shard:)")
    return cast(Deployment, PyServingReplica).options(**deployment).bind(options)


def build_app(args: dict[str, Any]) -> Application:
    """The application builder for `serve run` / `serve deploy` (`import_path:
    pyserving.integrations.ray:build_app`): `args` are pyserving options by flag name, plus
    `deployment:` with Ray deployment options (of the router, for a sharded table) and
    `shard_deployment:` with those of each shard's deployment."""
    args = dict(args)
    deployment = args.pop("deployment", None) or {}
    shard_deployment = args.pop("shard_deployment", None) or {}
    for key, value in (("deployment", deployment), ("shard_deployment", shard_deployment)):
        if not isinstance(value, Mapping):
            raise ValueError(f"args.{key}: expected a mapping of Ray deployment options")
    return pyserving_app(RayServingOptions.from_args(args), shard_deployment, **deployment)


def _typed(key: str, annotation: str, value: Any) -> Any:
    """`value` as the option's type: `serve run ... key=value` passes every arg as a string."""
    if not isinstance(value, str) or annotation.startswith("str"):
        return tuple(value) if annotation.startswith("tuple") else value
    try:
        if annotation.startswith("bool"):
            if value.lower() not in ("true", "false", "1", "0"):
                raise ValueError(value)
            return value.lower() in ("true", "1")
        if annotation.startswith("int"):
            return int(value)
        if annotation.startswith("float"):
            return float(value)
        if annotation.startswith("tuple"):
            return tuple(part for part in value.split(",") if part)
    except ValueError:
        raise ValueError(f"args.{key}: expected {annotation}, got {value!r}") from None
    return value


def _replica_name() -> str:
    import ray

    replica = serve.get_replica_context().replica_id.unique_id
    return f"{replica} node={ray.get_runtime_context().get_node_id()}"


def _naming_replica(app: ASGIApp, name: bytes) -> ASGIApp:
    """`app` with the REPLICA_HEADER added to every HTTP response."""

    async def named(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return

        async def send_named(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                headers = [*message.get("headers", ()), (REPLICA_HEADER, name)]
                message = {**message, "headers": headers}
            await send(message)

        await app(scope, receive, send_named)

    return named
