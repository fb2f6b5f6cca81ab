"""PlatformAdapter: turns version directory paths into Loaders of the right platform."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, Protocol

from pyserving.core.ids import ServableData, ServableId
from pyserving.core.loader import Loader
from pyserving.errors import NotFound
from pyserving.platforms.lookup import LookupLoader
from pyserving.platforms.registry import (
    DEFAULT_REGISTRY,
    PLATFORM_FILES,
    detect_platform,
)
from pyserving.sources.base import SourceAdapter
from pyserving.sources.cache import CachedVersionLoader, ModelCache
from pyserving.sources.storage_path import is_remote, redact_url

_EMPTY: Mapping[str, Any] = MappingProxyType({})


class LoaderMaker(Protocol):
    """What the adapter needs of a registry: a PlatformRegistry, or a wrapper of one."""

    def make_loader(
        self,
        platform: str,
        servable_id: ServableId,
        path: str,
        config: Mapping[str, Any] = ...,
    ) -> Loader: ...


class PlatformAdapter(SourceAdapter[str, Loader]):
    """Builds one Loader per version path: the model config's platform, else detection.

    Building a Loader is cheap (nothing is loaded); a path whose platform cannot be found, or whose
    platform is not installed, becomes an error item naming the reason. With a ModelCache, a
    version on a remote store gets a CachedVersionLoader: the platform loads a local copy.
    Thread-safety: `update_config` may run while a poll adapts; each item sees the old or the new
    configuration, never a mix.
    """

    def __init__(
        self,
        platform_overrides: Mapping[str, str] = _EMPTY,
        config: Mapping[str, Mapping[str, Any]] = _EMPTY,
        registry: LoaderMaker | None = None,
        cache: ModelCache | None = None,
    ) -> None:
        super().__init__()
        self._registry = registry if registry is not None else DEFAULT_REGISTRY
        self._cache = cache
        # replaced as a whole (one attribute assignment is atomic), so readers need no lock
        self._settings = (dict(platform_overrides), dict(config))

    def update_config(
        self, platform_overrides: Mapping[str, str], config: Mapping[str, Mapping[str, Any]]
    ) -> None:
        """Use new per-model platforms and configs for the versions adapted from now on."""
        self._settings = (dict(platform_overrides), dict(config))

    def adapt(self, item: ServableData[str]) -> ServableData[Loader]:
        """A Loader for `item`'s path; raises NotFound when no platform can be determined."""
        assert item.data is not None
        overrides, config = self._settings
        name = item.id.name
        platform = overrides.get(name) or detect_platform(item.data)
        if platform is None:
            expected = ", ".join(file for file, _ in PLATFORM_FILES)
            raise NotFound(
                f"No platform found for model {name} version {item.id.version} at "
                f"{redact_url(item.data)} "
                f"(expected one of: {expected})"
            )
        model_config = config.get(name, _EMPTY)
        if self._cache is None or not is_remote(item.data):
            loader = self._registry.make_loader(platform, item.id, item.data, model_config)
            return ServableData(item.id, loader, revision=item.revision)

        origin = item.data

        def make_loader(path: str) -> Loader:
            loader = self._registry.make_loader(platform, item.id, path, model_config)
            platform_loader = getattr(loader, "inner", loader)  # under a WarmupLoader
            if isinstance(platform_loader, LookupLoader):
                platform_loader.origin = origin  # a delta finds its base next to it
            return loader

        cached = CachedVersionLoader(item.id, item.data, self._cache, make_loader)
        return ServableData(item.id, cached, revision=item.revision)
