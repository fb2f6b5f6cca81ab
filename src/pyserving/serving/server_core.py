"""ServerCore: options → sources → adapter → manager, plus labels and the InferenceService."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass

from pyserving.core.ids import ServableState, ServableStateEvent
from pyserving.core.manager import Manager, ManagerOptions
from pyserving.serving.config import (
    ConfigError,
    ModelServerConfig,
    load_config_file,
    single_model_config,
)
from pyserving.serving.inference import InferenceOptions, InferenceService
from pyserving.sources.adapter import PlatformAdapter
from pyserving.sources.base import connect
from pyserving.sources.storage_path import (
    ServableToMonitor,
    StoragePathSource,
    StoragePathSourceOptions,
)

logger = logging.getLogger("pyserving")
lifecycle_logger = logging.getLogger("pyserving.lifecycle")


@dataclass(frozen=True, slots=True)
class ServerOptions:
    """Everything `pyserving serve` can be told; fields match the CLI flags (INTERFACE.md §2)."""

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

    def resolve_model_config(self) -> ModelServerConfig:
        """The model config these options describe; raises ConfigError when there is none."""
        if self.model_config is not None:
            return self.model_config
        if self.model_config_file:
            return load_config_file(self.model_config_file)
        if self.model_base_path:
            return single_model_config(self.model_name, self.model_base_path)
        raise ConfigError("nothing to serve: give --model_base_path or --model_config_file")


class ServerCore:
    """Builds and owns the serving stack for one model config.

    Thread-safety: `start` and `stop` are called once each, from one thread; everything they
    build is safe to use from request threads.
    Blocking: `start` waits (bounded by `initial_load_timeout_s`) until each model's first versions
    have loaded or failed; `stop` waits for every version to unload.
    """

    def __init__(self, options: ServerOptions) -> None:
        self.options = options
        self.config = options.resolve_model_config()
        self.manager = Manager(
            ManagerOptions(
                num_load_threads=options.num_load_threads,
                num_unload_threads=options.num_unload_threads,
                max_num_load_retries=options.max_num_load_retries,
                load_retry_interval_micros=options.load_retry_interval_micros,
                version_transition_policy=options.version_transition_policy,
                total_model_memory_limit_bytes=options.total_model_memory_limit_bytes,
            )
        )
        self.manager.bus.subscribe(_log_transition)
        self._labels: Mapping[str, Mapping[str, int]] = {
            m.name: dict(m.labels) for m in self.config.models
        }
        self.service = InferenceService(
            self.manager, InferenceOptions(), label_resolver=self.resolve_label
        )
        self._adapter = PlatformAdapter(
            platform_overrides={m.name: m.platform for m in self.config.models if m.platform},
            config={m.name: m.options for m in self.config.models},
        )
        self._source = StoragePathSource(
            StoragePathSourceOptions(
                servables=tuple(
                    ServableToMonitor(m.name, m.base_path, m.version_policy)
                    for m in self.config.models
                ),
                file_system_poll_wait_seconds=options.file_system_poll_wait_seconds,
            )
        )
        connect(self._source, self._adapter.aspire_versions)
        self._adapter.set_aspired_versions_callback(self.manager.aspire_versions)

    def model_names(self) -> list[str]:
        return self.config.names()

    def resolve_label(self, name: str, label: str) -> int | None:
        return self._labels.get(name, {}).get(label)

    def is_ready(self) -> bool:
        """True when every configured model has an AVAILABLE version (the readiness probe)."""
        return all(self.manager.available_versions(name) for name in self.model_names())

    def start(self) -> None:
        """Poll every base path once, wait for the first loads to settle, then keep polling."""
        started = time.perf_counter()
        self._source.poll_once()
        deadline = time.monotonic() + self.options.initial_load_timeout_s
        for name in self.model_names():
            remaining = max(0.0, deadline - time.monotonic())
            if not self.manager.monitor.wait_until_settled(name, remaining):
                logger.warning("model %s: no version settled within the initial load wait", name)
        logger.info(
            "initial load finished in %.2fs: %s",
            time.perf_counter() - started,
            ", ".join(
                f"{n}={self.manager.available_versions(n) or 'none'}" for n in self.model_names()
            ),
        )
        if self.options.file_system_poll_wait_seconds > 0:
            self._source.start()

    def stop(self, timeout_s: float | None = 60.0) -> bool:
        """Stop polling and unload every version; True when everything unloaded in time."""
        self._source.stop()
        return self.manager.stop(timeout_s)


def _log_transition(event: ServableStateEvent) -> None:
    duration = f" duration={event.duration_s:.3f}s" if event.duration_s is not None else ""
    if event.error:
        lifecycle_logger.warning(
            "model=%s version=%d state=%s%s error=%s",
            event.id.name,
            event.id.version,
            event.state.name,
            duration,
            event.error,
        )
    elif event.state in (ServableState.AVAILABLE, ServableState.END, ServableState.LOADING):
        lifecycle_logger.info(
            "model=%s version=%d state=%s%s",
            event.id.name,
            event.id.version,
            event.state.name,
            duration,
        )
    else:
        lifecycle_logger.debug(
            "model=%s version=%d state=%s", event.id.name, event.id.version, event.state.name
        )
