"""A sharded table on Ray Serve: one deployment per shard plus the router deployment.

The model config is the one a plain server reads; its sharded tables (`shard: {count: n}`, the
`index` is set per deployment) become n deployments `pyserving-shard-<i>`, each one replica
holding shard i of every sharded table, and the router deployment `pyserving` (Ray's HTTP
ingress) serving each sharded table as a `platform: shards` model, plus the models that are not
sharded. The router talks to the shards as on Kubernetes, over V2 gRPC: each shard replica
serves gRPC on a free port of its node's IP and tells its address through `address()`. Ray
replicas have no fixed addresses, so the router asks every shard deployment (through the handle
Ray gives it) at start, whenever one of its answers is a 503 or 504, and every
`_RESOLVE_EVERY_S`; a changed address is applied as a config change (the next request uses it).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import Mapping, Sequence
from typing import Any, cast

import ray
from ray import serve
from ray.serve.deployment import Application, Deployment
from ray.serve.handle import DeploymentHandle

from pyserving import __version__
from pyserving.api.grpc.server import GrpcOptions, GrpcServer
from pyserving.api.limits import RequestBytesBudget
from pyserving.api.rest.asgi import ASGIApp, Receive, Scope, Send
from pyserving.integrations.ray import (
    DEPLOYMENT_DEFAULTS,
    DEPLOYMENT_NAME,
    CoreReplica,
    RayServingOptions,
)
from pyserving.platforms.shards import SHARDS_PLATFORM
from pyserving.serving.config import ModelConfig, ModelServerConfig

__all__ = [
    "SHARD_DEPLOYMENT",
    "PyServingShard",
    "PyServingShardRouter",
    "router_config",
    "shard_config",
    "shard_count",
    "sharded_app",
]

logger = logging.getLogger("pyserving.ray")

#: shard i's deployment is named SHARD_DEPLOYMENT.format(index=i)
SHARD_DEPLOYMENT = "pyserving-shard-{index}"
#: how often the router asks the shard deployments for their addresses without a failure
_RESOLVE_EVERY_S = 5.0
#: one ask of one shard deployment; a replica Ray is replacing answers once the new one runs
_ASK_TIMEOUT_S = 2.0
#: a burst of failed requests asks the shards at most this often
_RESOLVE_MIN_GAP_S = 0.5

#: a stopping shard lets its gRPC calls in flight finish within this long
_GRPC_GRACE_S = 10.0

#: Ray options a shard deployment may not take: the router reaches one address per shard
_SHARD_REFUSED = {
    "num_replicas": "a shard deployment has one replica (the router reaches one address per shard)",
    "autoscaling_config": "a shard deployment has one replica: scale the router instead",
}


def shard_count(config: ModelServerConfig) -> int:
    """The shard count n of the config's sharded tables; ValueError when they differ or one
    is not `{count: n}` with n >= 1 (an `index`, if given, is replaced per deployment)."""
    counts = {}
    for model in config.models:
        shard = model.options.get("shard")
        if shard is None:
            continue
        count = shard.get("count") if isinstance(shard, Mapping) else None
        if not isinstance(count, int) or isinstance(count, bool) or count < 1:
            raise ValueError(f'model "{model.name}": shard must be {{count: n}} with n >= 1')
        counts[model.name] = count
    if len(set(counts.values())) > 1:
        listed = ", ".join(f"{name}: {count}" for name, count in counts.items())
        raise ValueError(
            f"sharded tables on Ray share one deployment per shard, so one count: {listed}"
        )
    return next(iter(counts.values()))


def shard_config(config: ModelServerConfig, index: int) -> ModelServerConfig:
    """What shard deployment `index` serves: shard `index` of every sharded table."""
    return ModelServerConfig(
        tuple(
            dataclasses.replace(m, options={**m.options, "shard": {**shard, "index": index}})
            for m in config.models
            if isinstance(shard := m.options.get("shard"), Mapping)
        )
    )


def router_config(config: ModelServerConfig, addresses: Sequence[str]) -> ModelServerConfig:
    """What the router serves: each sharded table as a router over `addresses` (shard index
    order), keeping its labels and traffic split; every other model as it is."""
    models = []
    for m in config.models:
        if "shard" not in m.options:
            models.append(m)
            continue
        options = {"shards": list(addresses), "model": m.name}
        models.append(
            ModelConfig(
                m.name, "", SHARDS_PLATFORM, labels=m.labels, options=options, traffic=m.traffic
            )
        )
    return ModelServerConfig(tuple(models))


@serve.deployment(name=SHARD_DEPLOYMENT.format(index=0), **DEPLOYMENT_DEFAULTS)
class PyServingShard(CoreReplica):
    """One shard of the sharded tables: a ServerCore with V2 gRPC on a free port of its node.

    Lifecycle: the constructor loads the shard's rows, then starts gRPC; `__del__` stops gRPC
    (calls in flight finish within the graceful shutdown), then unloads.
    """

    # Ray awaits an async constructor (mypy insists __init__ return None).
    async def __init__(  # type: ignore[misc]
        self, options: RayServingOptions, config: ModelServerConfig
    ) -> None:
        server = dataclasses.replace(options.server, model_config=config, model_config_file=None)
        await self._start_core(options, server)
        host = ray.util.get_node_ip_address()
        self._grpc = GrpcServer(
            self._core.service,
            GrpcOptions(
                host=host,
                port=0,
                max_message_bytes=server.max_request_bytes,
                server_version=__version__,
            ),
            ready_names=self._core.model_names,
            request_budget=RequestBytesBudget(options.max_inflight_request_bytes),
        )
        port = await self._grpc.start()
        self._address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    async def address(self) -> str:
        """This replica's V2 gRPC address, host:port."""
        return self._address

    async def __del__(self) -> None:
        grpc_server = getattr(self, "_grpc", None)
        if grpc_server is not None:
            await grpc_server.stop(_GRPC_GRACE_S)
        await super().__del__()


@serve.deployment(name=DEPLOYMENT_NAME, **DEPLOYMENT_DEFAULTS)
@serve.ingress()
class PyServingShardRouter(CoreReplica):
    """The ingress of a sharded application: the sharded tables' routers (and the models that
    are not sharded) over the REST API, with the shards' addresses asked of their deployments.

    Thread-safety: the address resolver is one task on this replica's event loop; it applies a
    change through ServerCore.apply_config on a thread.
    """

    # Ray awaits an async constructor (mypy insists __init__ return None).
    async def __init__(  # type: ignore[misc]
        self,
        options: RayServingOptions,
        config: ModelServerConfig,
        shards: list[DeploymentHandle],
    ) -> None:
        self._config = config
        self._shards = shards
        self._addresses = await self._first_addresses(options.server.initial_load_timeout_s)
        server = dataclasses.replace(
            options.server,
            model_config=router_config(config, self._addresses),
            model_config_file=None,
        )
        await self._start_core(options, server)
        self._failed = asyncio.Event()
        self._resolver = asyncio.create_task(self._resolve_forever())

    def __serve_build_asgi_app__(self) -> ASGIApp:
        return _noting_failures(super().__serve_build_asgi_app__(), self._failed)

    async def __del__(self) -> None:
        resolver = getattr(self, "_resolver", None)
        if resolver is not None:
            resolver.cancel()
        await super().__del__()

    async def _first_addresses(self, timeout_s: float) -> list[str]:
        """Every shard's address, waiting for the shards to start (they load their rows)."""
        asks = [asyncio.ensure_future(shard.address.remote()) for shard in self._shards]
        try:
            return list(await asyncio.wait_for(asyncio.gather(*asks), timeout_s))
        except TimeoutError:
            missing = [SHARD_DEPLOYMENT.format(index=i) for i, a in enumerate(asks) if not a.done()]
            raise RuntimeError(
                f"no address from {', '.join(missing) or 'the shards'} within {timeout_s} s"
            ) from None

    async def _resolve_forever(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._failed.wait(), _RESOLVE_EVERY_S)
            self._failed.clear()
            try:
                await self._resolve()
            except Exception:  # edge: one failed round must not end resolving
                logger.exception("asking the shard deployments for their addresses failed")
            await asyncio.sleep(_RESOLVE_MIN_GAP_S)

    async def _resolve(self) -> None:
        answers = await asyncio.gather(
            *(self._ask(shard) for shard in self._shards), return_exceptions=True
        )
        addresses = list(self._addresses)
        for index, answer in enumerate(answers):
            if isinstance(answer, str):
                addresses[index] = answer
            else:  # no replica now (Ray is replacing it): keep the last address meanwhile
                logger.debug("shard %d did not tell its address: %r", index, answer)
        if addresses == self._addresses:
            return
        for index, (old, new) in enumerate(zip(self._addresses, addresses, strict=True)):
            if old != new:
                logger.info("shard %d moved from %s to %s", index, old, new)
        self._addresses = addresses
        config = router_config(self._config, addresses)
        await asyncio.to_thread(self._core.apply_config, config, False)

    @staticmethod
    async def _ask(shard: DeploymentHandle) -> str:
        response = shard.address.remote()
        try:
            return cast(str, await asyncio.wait_for(response, _ASK_TIMEOUT_S))
        except TimeoutError:
            response.cancel()
            raise


def sharded_app(
    options: RayServingOptions,
    config: ModelServerConfig,
    shard_deployment: Mapping[str, Any],
    router_deployment: Mapping[str, Any],
) -> Application:
    """The application of a config with sharded tables: a deployment per shard, and the
    router deployment (Ray's ingress) bound to their handles."""
    for key, reason in _SHARD_REFUSED.items():
        if key in shard_deployment:
            raise ValueError(f"shard_deployment.{key}: {reason}")
    count = shard_count(config)
    shards = [
        cast(Deployment, PyServingShard)
        .options(**shard_deployment, name=SHARD_DEPLOYMENT.format(index=index))
        .bind(options, shard_config(config, index))
        for index in range(count)
    ]
    router = cast(Deployment, PyServingShardRouter).options(**router_deployment)
    return router.bind(options, config, shards)


def _noting_failures(app: ASGIApp, failed: asyncio.Event) -> ASGIApp:
    """`app` that sets `failed` when it answers 503 or 504 (a shard may have moved)."""

    async def noting(scope: Scope, receive: Receive, send: Send) -> None:
        async def send_noting(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start" and message["status"] in (503, 504):
                failed.set()
            await send(message)

        await app(scope, receive, send_noting)

    return noting
