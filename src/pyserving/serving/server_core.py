"""ServerCore: options → sources → adapter → manager, plus labels, traffic split, runtime
reload, model control and warmup, and the InferenceService.

Its neighbours: what each component is told by the options and config
(`serving/component_settings.py`), where a new config comes from at run time
(`serving/config_reload.py`), the waits and the repository index of start-up and model control
(`serving/model_availability.py`), and the lifecycle log (`serving/lifecycle_log.py`).
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from pyserving.core.ids import ServableData
from pyserving.core.manager import Manager
from pyserving.errors import NotFound
from pyserving.platforms.registry import DEFAULT_REGISTRY, PlatformRegistry
from pyserving.proto import model_server_config_pb2 as config_pb2
from pyserving.serving import component_settings as settings
from pyserving.serving import config_reload, request_log
from pyserving.serving import model_availability as availability
from pyserving.serving.config import (
    ConfigError,
    ModelServerConfig,
    check_platforms,
    check_transition,
    pipeline_specs,
    single_model_config,
)
from pyserving.serving.config_file import load_config_file, parse_config_text
from pyserving.serving.control_roots import ControlRoots
from pyserving.serving.inference import InferenceOptions, InferenceService
from pyserving.serving.labels import LabelMap, check_label_changes
from pyserving.serving.lifecycle_log import log_transition
from pyserving.serving.monitoring import LifecycleMetrics
from pyserving.serving.on_demand import OnDemandModels
from pyserving.serving.pipeline_source import PipelineSource
from pyserving.sources.base import AspiredVersionsCallback, connect
from pyserving.sources.cache import ModelCache, ModelCacheOptions, default_cache_dir
from pyserving.sources.shard_versions import ShardVersionSource
from pyserving.sources.storage_path import StoragePathSource, StoragePathSourceOptions

logger = logging.getLogger("pyserving")


@dataclass(frozen=True, slots=True)
class ServerOptions:
    """Everything `pyserving serve` can be told; fields match the CLI flags (docs/cli.md)."""

    port: int = 8500
    rest_api_port: int = 8501
    host: str = "0.0.0.0"
    model_name: str = "default"
    model_base_path: str | None = None
    model_config_file: str | None = None
    model_config: ModelServerConfig | None = None
    file_system_poll_wait_seconds: float = 1.0
    num_load_threads: int = 2
    num_unload_threads: int = 1
    max_num_load_retries: int = 5
    load_retry_interval_micros: int = 1_000_000
    total_model_memory_limit_bytes: int | None = None
    version_transition_policy: str = "availability"
    rest_api_timeout_in_ms: int = 30_000
    max_request_bytes: int = 64 * 1024 * 1024
    initial_load_timeout_s: float = 300.0
    model_cache_dir: str | None = None  # None: default_cache_dir(), private to this user
    version_ready_marker: str = ""  # e.g. "_READY": a version counts once this file exists
    enable_batching: bool = False
    batching_parameters_file: str | None = None  # TF text proto, or YAML (.yaml/.yml)
    model_config_file_poll_wait_seconds: float = 0.0  # 0: read the config file once
    enable_model_warmup: bool = True
    num_request_iterations_for_warmup: int = 1
    allow_version_labels_for_unavailable_models: bool = False
    enable_model_control: bool = False
    #: base paths model control may add besides those of the started config (prefixes)
    model_control_roots: tuple[str, ...] = ()
    #: the `--model_base_path` model may load a servable.py (YAML models: `allow_python: true`)
    allow_python_servables: bool = False

    def resolve_model_config(self) -> ModelServerConfig:
        """The model config these options describe; raises ConfigError when there is none."""
        if self.model_config is not None:
            return self.model_config
        if self.model_config_file:
            return load_config_file(self.model_config_file)
        if self.model_base_path:
            return single_model_config(
                self.model_name,
                self.model_base_path,
                {"allow_python": True} if self.allow_python_servables else None,
            )
        raise ConfigError("nothing to serve: give --model_base_path or --model_config_file")


class PolledSource(Protocol):
    """What ServerCore needs of its source: StoragePathSource, or a worker's source that the
    supervisor feeds (`--workers`, pyserving.workers)."""

    def set_aspired_versions_callback(self, callback: AspiredVersionsCallback[str]) -> None: ...
    def poll_once(self) -> None: ...
    def start(self) -> None: ...
    def stop(self) -> None: ...
    def update_config(self, options: StoragePathSourceOptions) -> None: ...


class ServerCore:
    """Builds and owns the serving stack for one model config, and changes that config at run time.

    Thread-safety: `start` and `stop` are called once each, from one thread. `apply_config`,
    `reload_config`, `load_model`, `unload_model` may be called from any thread; they are
    serialised by one lock. Request threads read the label map and the config without a lock
    (both are replaced whole).
    Blocking: `start` waits (bounded by `initial_load_timeout_s`) until each model's first versions
    have loaded or failed; `stop` waits for every version to unload; the model-control methods do
    file-system I/O and wait (bounded by `initial_load_timeout_s`) for the loads or unloads they
    start. None of them may run on the event loop.
    """

    def __init__(
        self,
        options: ServerOptions,
        registry: PlatformRegistry | None = None,
        *,
        source_factory: Callable[[StoragePathSourceOptions], PolledSource] | None = None,
        service_manager: Callable[[Manager], Any] | None = None,
    ) -> None:
        """`source_factory` and `service_manager` (what the InferenceService sees of the
        Manager) let a `--workers` worker take its versions from the supervisor."""
        self.options = options
        self._registry = registry if registry is not None else DEFAULT_REGISTRY
        # Re-reads the config file (`model_config_file_poll_wait_seconds`); None: not from a file.
        self._config_poller: config_reload.ConfigFilePoller | None = None
        if options.model_config is None and options.model_config_file:
            text = config_reload.read_config_file(options.model_config_file)
            self.config = parse_config_text(text, options.model_config_file)
            self._config_poller = config_reload.ConfigFilePoller(
                options.model_config_file, text, functools.partial(self.apply_config, wait=False)
            )
        else:
            self.config = options.resolve_model_config()
        check_platforms(self.config, self._registry.known_platforms())
        # Model control may only point at what the operator configured (docs/operations.md).
        self._control_roots = ControlRoots(
            (m.base_path for m in self.config.models if m.base_path), options.model_control_roots
        )
        self.manager = Manager(settings.manager_options(options))
        self.manager.bus.subscribe(log_transition)
        self.lifecycle_metrics = LifecycleMetrics(self.manager.bus, self.manager.monitor)
        # Serialises config changes (reload, file poll, load/unload); guards _unloaded. The
        # fields below it are replaced whole under it and read without it.
        self._config_lock = threading.RLock()
        self._unloaded: set[str] = set()  # explicitly unloaded; stay so until load_model
        self._label_map = LabelMap.from_config(self.config)
        self.service = InferenceService(
            self.manager if service_manager is None else service_manager(self.manager),
            InferenceOptions(max_tensor_bytes=options.max_request_bytes),
            label_resolver=self.resolve_label,
            batching=settings.batching_policy(options, self.config),
            version_router=self.route,
        )
        self.service.set_instances(settings.model_instances(self.config))
        self.service.request_logs.configure(request_log.configs_of(self.config.models))
        # Remote versions are copied here before they load; unloads remove their copies.
        self._model_cache = ModelCache(
            ModelCacheOptions(cache_dir=options.model_cache_dir or default_cache_dir())
        )
        self._adapter = settings.build_adapter(
            options, self.config, self._registry, self._model_cache
        )
        # `load: on_demand` models' versions reach the adapter (fresh Loaders each time) and
        # the manager only when a request names one
        self.on_demand: OnDemandModels[str] = OnDemandModels(
            self.manager,
            forward=self._adapter.aspire_versions,
            estimate=self._estimate_version,
            load_timeout_s=options.initial_load_timeout_s,
        )
        self.on_demand.configure(settings.on_demand_config(self.config))
        self.service.on_demand = self.on_demand
        self._source = (source_factory or StoragePathSource)(self._source_options_locked())
        connect(self._source, self.on_demand.aspire_versions)
        self._adapter.set_aspired_versions_callback(self.manager.aspire_versions)
        # shard routers have no files: their versions are those all their shards serve
        self._shard_versions = ShardVersionSource(options.file_system_poll_wait_seconds)
        connect(self._shard_versions, self.on_demand.aspire_versions)
        self._shard_versions.configure(settings.shard_routers(self.config))
        self.service.no_version_reason = self._shard_versions.problem
        # pipelines have no files: they serve while their steps do (serving/pipeline_source.py)
        self._pipelines = PipelineSource(self.manager, self.service.acquire)
        self._serve_pipelines_locked()

    # --- requests ----------------------------------------------------------------------------

    def model_names(self) -> list[str]:
        """The configured models, less those explicitly unloaded and those loaded on demand
        (what readiness and the start-up wait for)."""
        unloaded = self._unloaded
        on_demand = self.on_demand
        return [
            name
            for name in self.config.names()
            if name not in unloaded and not on_demand.is_on_demand(name)
        ]

    def resolve_label(self, name: str, label: str) -> int | None:
        """The version `label` names for model `name` (AVAILABLE or not), or None."""
        return self._label_map.resolve(name, label)

    def route(self, name: str) -> int | None:
        """The version a request naming no version or label goes to under `name`'s traffic
        split; None when it has no split or none of its versions is AVAILABLE (then the highest
        AVAILABLE version answers)."""
        split = self._label_map.traffic.get(name)
        if split is None:
            return None
        return split.pick(self.manager.available_versions(name))

    def is_ready(self) -> bool:
        """True when every configured model has an AVAILABLE version and execution threads
        that are not all stuck (the readiness probe)."""
        return self.service.is_ready(self.model_names())

    # --- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        """Poll every base path once, wait for the first loads to settle, then keep polling
        (base paths, and the config file with `model_config_file_poll_wait_seconds`)."""
        started = time.perf_counter()
        self._source.poll_once()
        self._shard_versions.poll_once()
        availability.wait_for_initial_load(
            self.model_names,
            self.manager,
            self._pipelines,
            self.options.initial_load_timeout_s,
            started,
        )
        if self.options.file_system_poll_wait_seconds > 0:
            self._source.start()
            self._shard_versions.start()
        wait_s = self.options.model_config_file_poll_wait_seconds
        if self._config_poller is not None and wait_s > 0:
            self._config_poller.start(wait_s)  # not after stop

    def stop(self, timeout_s: float | None = 60.0) -> bool:
        """Stop polling and unload every version; True when everything unloaded in time."""
        poller = self._config_poller
        if poller is not None:
            poller.request_stop()
        self._pipelines.stop()
        if poller is not None:
            poller.join()
        self._source.stop()
        self._shard_versions.stop()
        self._model_cache.begin_shutdown()  # the next start reuses the cached copies
        self.on_demand.close()
        stopped = self.manager.stop(timeout_s)
        self.service.close()  # batch threads exit once their queues are empty
        return stopped

    # --- runtime reload ----------------------------------------------------------------------

    def apply_config(self, config: ModelServerConfig, wait: bool = True) -> None:
        """Replace the model config, as TF Serving's ReloadConfig: added models load, omitted
        ones unload once their requests finish, changed version policies apply, labels move
        atomically; models whose entry did not change are not disturbed.

        Everything is validated first: a config that fails (unknown platform, changed platform,
        a label it may not move, bad batching) raises ConfigError / FailedPrecondition and
        nothing changes. With `wait`, returns once every newly added model has an AVAILABLE
        version, and raises ServingError naming those that could not load (the new config stays
        in force, as in TF Serving).
        """
        with self._config_lock:
            old = self.config
            check_platforms(config, self._registry.known_platforms())
            check_transition(old, config)
            check_label_changes(
                old,
                config,
                self.manager.available_versions,
                self.options.allow_version_labels_for_unavailable_models,
            )
            batching = settings.batching_policy(self.options, config)
            label_map = LabelMap.from_config(config)
            added = [m.name for m in config.models if old.get(m.name) is None]
            # Commit. Labels first: a label may only move to an AVAILABLE version, which the
            # source update below cannot take away before requests see the new map.
            self.config = config
            self._unloaded = {n for n in self._unloaded if config.get(n) is not None}
            self._label_map = label_map
            self.service.set_batching_policy(batching)
            self.service.set_instances(settings.model_instances(config))
            self.service.request_logs.configure(request_log.configs_of(config.models))
            self.on_demand.configure(settings.on_demand_config(config))
            self._adapter.update_config(*settings.adapter_settings(config))
            self._source.update_config(self._source_options_locked())
            self._shard_versions.configure(settings.shard_routers(config))
            self._serve_pipelines_locked()
        logger.info(
            "model config applied: %s (added: %s, removed: %s)",
            ", ".join(config.names()) or "no models",
            ", ".join(added) or "none",
            ", ".join(n for n in old.names() if config.get(n) is None) or "none",
        )
        if wait:
            self._wait_for_available(added)

    def reload_config(self, config: config_pb2.ModelServerConfig) -> None:
        """ModelControl: apply a `ModelServerConfig` message (gRPC HandleReloadConfigRequest).

        Relative base paths resolve against the config file's directory (the working directory
        without one). A message with no config set is a no-op, as in TF Serving. Raises
        PermissionDenied, before anything changes, for a base path outside the started config's
        base paths and `model_control_roots`; otherwise raises as `apply_config` (with `wait`).
        A model re-sent with its name and base path keeps its YAML-only keys (allow_python,
        batching, instances, traffic, ...), which the message cannot carry; any other model gets
        none, and its local base path is stored as the real path that was checked.
        """
        if config.WhichOneof("config") is None:
            return
        checked = config_reload.checked_models(
            config, self.options.model_config_file, self._control_roots
        )
        with self._config_lock:  # reentrant: the config merged against is the one replaced
            current = self.config
            models = tuple(
                config_reload.merge_reloaded_model(m, real, current.get(m.name))
                for m, real in checked
            )
            self.apply_config(ModelServerConfig(models), wait=False)
        self._wait_for_available([m.name for m in models if current.get(m.name) is None])

    def load_model(self, name: str) -> None:
        """ModelControl: (re)load configured model `name`, undoing an explicit unload; returns
        once it has an AVAILABLE version. Raises NotFound for a model not in the config,
        ServingError when it cannot load."""
        with self._config_lock:
            self._require_configured(name)
            if name in self._unloaded:
                self._unloaded.discard(name)
                self._source.update_config(self._source_options_locked())  # polls it at once
                self._serve_pipelines_locked()
            else:
                self._source.poll_once()  # new versions on disk load at once
        self._wait_for_available([name])

    def unload_model(self, name: str) -> None:
        """ModelControl: unload every version of `name` after its requests finish; it stays
        unloaded (the base-path poller does not bring it back) until `load_model(name)`.
        Returns once no version of it serves. Raises NotFound for a model not in the config."""
        with self._config_lock:
            self._require_configured(name)
            self._unloaded.add(name)
            self._source.update_config(self._source_options_locked())
            self._serve_pipelines_locked()
        if not availability.wait_until_unloaded(
            name, self.manager, self.options.initial_load_timeout_s
        ):
            logger.warning("model %s: still unloading after the wait; it will finish", name)

    def repository_index(self) -> Iterable[Mapping[str, str]]:
        """ModelControl: one entry per known version of every configured model (one entry
        with version "" for a model with none): name, version, state, reason."""
        return availability.repository_index(
            self.config.names(), self._unloaded, self.manager, self.on_demand
        )

    # --- helpers -----------------------------------------------------------------------------

    def _estimate_version(self, item: ServableData[str]) -> int:
        """The memory estimate of one version path (a Loader is cheap to build; none loads)."""
        loader = self._adapter.adapt(item).data
        return loader.estimate_resources() if loader is not None else 0

    def _source_options_locked(self) -> StoragePathSourceOptions:
        return settings.source_options(self.options, self.config, self._unloaded)

    def _serve_pipelines_locked(self) -> None:
        """Serve the configured pipelines, less those explicitly unloaded."""
        self._pipelines.configure(
            pipeline_specs(m for m in self.config.models if m.name not in self._unloaded)
        )

    def _require_configured(self, name: str) -> None:
        if self.config.get(name) is None:
            raise NotFound(
                f'model "{name}" is not in the model config (configured:'
                f" {', '.join(self.config.names()) or 'none'})"
            )

    def _wait_for_available(self, names: Iterable[str]) -> None:
        """Wait until each model has an AVAILABLE version or settles without one; raises
        FailedPrecondition (TF Serving's text) naming those without one."""
        availability.wait_for_available(
            names,
            self.manager,
            self.on_demand,
            self._pipelines,
            self.options.initial_load_timeout_s,
        )
