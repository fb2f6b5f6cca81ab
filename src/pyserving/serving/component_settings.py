"""What each component of the serving stack is told by the server options and the model config.

ServerCore builds its Manager, PlatformAdapter, sources, batching and execution threads with
these at start-up, and gives every component its new settings on a config reload.
"""

from __future__ import annotations

from collections.abc import Mapping, Set
from typing import TYPE_CHECKING

from pyserving.batching import BatchingPolicy, load_batching_parameters
from pyserving.core.manager import ManagerOptions
from pyserving.platforms.registry import PlatformRegistry
from pyserving.platforms.shards import SHARDS_PLATFORM
from pyserving.serving.config import ConfigError, ModelServerConfig
from pyserving.serving.on_demand import on_demand_settings
from pyserving.serving.warmup import WarmupOptions, WarmupRegistry
from pyserving.sources.adapter import PlatformAdapter
from pyserving.sources.cache import ModelCache
from pyserving.sources.shard_versions import RouterSpec
from pyserving.sources.storage_path import ServableToMonitor, StoragePathSourceOptions

if TYPE_CHECKING:
    from pyserving.serving.server_core import ServerOptions

__all__ = [
    "adapter_settings",
    "batching_policy",
    "build_adapter",
    "manager_options",
    "model_instances",
    "on_demand_config",
    "shard_routers",
    "source_options",
]


def manager_options(options: ServerOptions) -> ManagerOptions:
    """The Manager's options: the load / unload flags."""
    return ManagerOptions(
        num_load_threads=options.num_load_threads,
        num_unload_threads=options.num_unload_threads,
        max_num_load_retries=options.max_num_load_retries,
        load_retry_interval_micros=options.load_retry_interval_micros,
        version_transition_policy=options.version_transition_policy,
        total_model_memory_limit_bytes=options.total_model_memory_limit_bytes,
    )


def build_adapter(
    options: ServerOptions,
    config: ModelServerConfig,
    registry: PlatformRegistry,
    cache: ModelCache,
) -> PlatformAdapter:
    """The PlatformAdapter for `config`: loaders from `registry` (warmed up unless
    `--enable_model_warmup=false`), remote versions copied into `cache` first."""
    platform_overrides, model_options = adapter_settings(config)
    return PlatformAdapter(
        platform_overrides=platform_overrides,
        config=model_options,
        registry=(
            WarmupRegistry(
                registry,
                WarmupOptions(
                    num_request_iterations_for_warmup=options.num_request_iterations_for_warmup
                ),
            )
            if options.enable_model_warmup
            else registry
        ),
        cache=cache,
    )


def source_options(
    options: ServerOptions, config: ModelServerConfig, unloaded: Set[str]
) -> StoragePathSourceOptions:
    """What the storage path source polls: every configured model with files (not pipelines,
    not shard routers), less those explicitly `unloaded`."""
    return StoragePathSourceOptions(
        servables=tuple(
            ServableToMonitor(
                m.name, m.base_path, m.version_policy, m.servable_versions_always_present
            )
            for m in config.models
            if m.name not in unloaded and "pipeline" not in m.options
            if m.platform != SHARDS_PLATFORM  # routers: ShardVersionSource
        ),
        file_system_poll_wait_seconds=options.file_system_poll_wait_seconds,
        version_ready_marker=options.version_ready_marker,
    )


def batching_policy(options: ServerOptions, config: ModelServerConfig) -> BatchingPolicy:
    """Server-wide batching (`--enable_batching`, `--batching_parameters_file`) plus each
    model's `batching:` setting. Raises ConfigError / BatchingConfigError naming the problem."""
    if options.batching_parameters_file and not options.enable_batching:
        raise ConfigError(
            "server_options.batching_parameters_file is set without setting"
            " server_options.enable_batching to true."
        )
    server = (
        load_batching_parameters(options.batching_parameters_file)
        if options.batching_parameters_file
        else None
    )
    per_model = {m.name: m.options["batching"] for m in config.models if "batching" in m.options}
    return BatchingPolicy.build(options.enable_batching, server, per_model)


def model_instances(config: ModelServerConfig) -> dict[str, int]:
    """Each model's execution thread count from its `instances:` key (others: the default)."""
    # the config parser lets only integers (1..256) through
    return {m.name: n for m in config.models if isinstance(n := m.options.get("instances"), int)}


def on_demand_config(config: ModelServerConfig) -> dict[str, float | None]:
    """Each `load: on_demand` model of `config` → its `idle_unload_seconds` (None: never
    idle-unloaded), for OnDemandModels."""
    return on_demand_settings([(m.name, m.options) for m in config.models])


def adapter_settings(
    config: ModelServerConfig,
) -> tuple[dict[str, str], dict[str, Mapping[str, object]]]:
    """The PlatformAdapter's per-model platforms and options for `config`."""
    return (
        {m.name: m.platform for m in config.models if m.platform},
        {m.name: m.options for m in config.models},
    )


def shard_routers(config: ModelServerConfig) -> RouterSpec:
    """Each shard router's (model name on the shards, shard addresses)."""
    routers = {}
    for m in config.models:
        shards = m.options.get("shards")
        if m.platform == SHARDS_PLATFORM and isinstance(shards, list):  # the parser checked it
            routers[m.name] = (str(m.options.get("model", m.name)), tuple(map(str, shards)))
    return routers
