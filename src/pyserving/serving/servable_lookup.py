"""ServableLookup: which version a request names, and what the Manager serves.

The read-only half of `InferenceService` (its base class): a model spec (name, version, label,
traffic split) resolved to a handle, a signature found by name, and the status and readiness
answers of the status and health endpoints. Running a request is `serving/inference.py`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Protocol

from pyserving.core.handle import ServableHandle
from pyserving.core.ids import ServableRequest
from pyserving.core.monitor import VersionStatus
from pyserving.core.resources import ResourceTracker
from pyserving.errors import InvalidInput, NotFound
from pyserving.platforms.signature import Signature
from pyserving.serving.execution import Executor
from pyserving.serving.signature_plan import find_signature

__all__ = ["LabelResolver", "ManagerView", "OnDemand", "ServableLookup", "VersionRouter"]

#: (model name, label) → version, or None for a label the model does not have
LabelResolver = Callable[[str, str], int | None]
#: model name → the version a request naming no version or label goes to (a traffic split),
#: or None for the highest AVAILABLE one
VersionRouter = Callable[[str], int | None]

#: how often a request loads an on-demand model that was evicted before it could take a handle
_ON_DEMAND_TRIES = 3


class _Monitor(Protocol):
    def states(self, name: str) -> list[VersionStatus]: ...


class ManagerView(Protocol):
    """What ServableLookup and InferenceService need of `pyserving.core.manager.Manager`."""

    @property
    def monitor(self) -> _Monitor: ...

    def get_handle(self, request: ServableRequest) -> ServableHandle: ...

    def available_versions(self, name: str) -> list[int]: ...

    def stream_names(self) -> list[str]: ...

    @property
    def resources(self) -> ResourceTracker: ...


class OnDemand(Protocol):
    """What InferenceService needs of `pyserving.serving.on_demand.OnDemandModels`."""

    def is_on_demand(self, name: str) -> bool: ...

    def is_loaded(self, name: str) -> bool: ...

    async def ensure(self, name: str, deadline: float | None) -> bool: ...

    def unpin(self, name: str) -> None: ...


class ServableLookup:
    """Resolves model specs to handles and signatures; answers status and readiness.

    Thread-safety: every method may be called from any thread (`acquire_loaded` is a coroutine).
    Blocking: nothing here waits on another thread; `acquire_loaded` awaits an on-demand load.
    """

    def __init__(
        self,
        manager: ManagerView,
        executor: Executor,
        label_resolver: LabelResolver | None = None,
        version_router: VersionRouter | None = None,
    ) -> None:
        self._manager = manager
        self._label_resolver = label_resolver
        self._version_router = version_router
        #: each model's execution threads (`serving.execution`); readiness asks them for stuck calls
        self.executor = executor
        #: loads `load: on_demand` models on their first request (set once by ServerCore)
        self.on_demand: OnDemand | None = None
        #: why a model has no version, when its source knows (a shard router's shards; set once
        #: by ServerCore): added to "Could not find any versions"
        self.no_version_reason: Callable[[str], str | None] | None = None

    # --- resolving --------------------------------------------------------------------------

    def acquire(
        self, name: str, version: int | None = None, label: str | None = None
    ) -> ServableHandle:
        """A handle on `name` at `version`, at `label`'s version, or else at the version the
        traffic split picks (the highest AVAILABLE one when the model has no split).

        Raises InvalidInput when both a version and a label are given; NotFound for an unknown
        label, model or version.
        """
        if label is None and version is None and self._version_router is not None:
            routed = self._version_router(name)
            if routed is not None:
                try:
                    return self._manager.get_handle(ServableRequest(name, routed))
                except NotFound:
                    pass  # it stopped serving since it was picked: the latest answers instead
        if label is not None:
            if version is not None:
                raise InvalidInput(
                    f'model "{name}": give a version or a label, not both (version {version},'
                    f' label "{label}")'
                )
            version = self._label_version(name, label)
        return self._manager.get_handle(ServableRequest(name, version))

    async def acquire_loaded(
        self,
        name: str,
        version: int | None = None,
        label: str | None = None,
        deadline: float | None = None,
    ) -> ServableHandle:
        """`acquire`, after loading an on-demand model the request names (waiting on the loop,
        within `deadline`). Raises as `acquire` and `OnDemandModels.ensure`."""
        on_demand = self.on_demand
        if on_demand is None or not on_demand.is_on_demand(name):
            return self.acquire(name, version, label)
        for attempt in range(1, _ON_DEMAND_TRIES + 1):
            pinned = await on_demand.ensure(name, deadline)
            try:
                return self.acquire(name, version, label)
            except NotFound:
                # evicted between its ensure and this acquire (memory was short): load it again
                if attempt == _ON_DEMAND_TRIES:
                    raise
            finally:
                if pinned:
                    on_demand.unpin(name)
        raise AssertionError("unreachable: the last attempt returns or raises")

    def _label_version(self, name: str, label: str) -> int:
        """The version `label` names for model `name`; NotFound with TF Serving's text."""
        resolved = self._label_resolver(name, label) if self._label_resolver else None
        if resolved is None:
            raise NotFound(f"Unrecognized servable version label: {label}")
        return resolved

    def signature(self, handle: ServableHandle, name: str | None = None) -> Signature:
        """The named signature; None or "" means "serving_default", or the only one there is.

        Raises FailedPrecondition with TF Serving's text (its code and words) when there is no
        such signature.
        """
        return find_signature(handle.servable.signatures, name)

    # --- status -----------------------------------------------------------------------------

    def model_status(
        self, name: str, version: int | None = None, label: str | None = None
    ) -> list[VersionStatus]:
        """Every known version of `name` (highest first), or only `version` / `label`'s version.

        Raises NotFound with TF Serving's texts; InvalidInput for a version and a label together.
        """
        if label is not None:
            if version is not None:
                raise InvalidInput(f'model "{name}": give a version or a label, not both')
            version = self._label_version(name, label)
        states = self._manager.monitor.states(name)
        if not states and version is None and self._is_on_demand(name):
            return []  # known, never loaded yet: TF's states have no "unloaded" to report
        if not states:
            reason = self.no_version_reason(name) if self.no_version_reason else None
            raise NotFound(
                f"Could not find any versions of model {name}" + (f": {reason}" if reason else "")
            )
        if version is None:
            return states
        found = [s for s in states if s.id.version == version]
        if not found:
            raise NotFound(f"Could not find version {version} of model {name}")
        return found

    def memory(self) -> tuple[int, int | None]:
        """Bytes the loaded versions hold against the budget, and the budget (None: unlimited:
        `--total_model_memory_limit_bytes`)."""
        resources = self._manager.resources
        return resources.used_bytes, resources.total_bytes

    def _is_on_demand(self, name: str) -> bool:
        return self.on_demand is not None and self.on_demand.is_on_demand(name)

    def model_ready(self, name: str, version: int | None = None) -> bool:
        """True when `name` (or that version of it) is AVAILABLE and its execution threads are
        not all stuck in calls past their deadline (`model_not_ready_reason`)."""
        return self.model_not_ready_reason(name, version) is None

    def model_not_ready_reason(self, name: str, version: int | None = None) -> str | None:
        """Why `name` (or that version of it) is not ready: no AVAILABLE version, or every one of
        its execution threads stuck in a call past its deadline; None when it is ready."""
        versions = self._manager.available_versions(name)
        if not (versions if version is None else version in versions):
            return (
                "no AVAILABLE version" if version is None else f"version {version} is not AVAILABLE"
            )
        return self.executor.stuck_reason(name)

    def is_ready(self, configured_names: Iterable[str]) -> bool:
        """True when every name in `configured_names` has an AVAILABLE version (the server's
        readiness: `not_ready_reasons`)."""
        return not self.not_ready_reasons(configured_names)

    def available_versions(self, name: str) -> list[int]:
        """AVAILABLE versions of `name`, highest first."""
        return self._manager.available_versions(name)

    def model_names(self) -> list[str]:
        """Every model the manager knows, loaded or not."""
        return self._manager.stream_names()

    def not_ready(self, configured_names: Iterable[str]) -> list[str]:
        """The names in `configured_names` that have no AVAILABLE version."""
        return list(self.not_ready_reasons(configured_names))

    def not_ready_reasons(self, configured_names: Iterable[str]) -> dict[str, str]:
        """Model name → why the server is not ready for it, for the names in `configured_names`
        that have no AVAILABLE version.

        A model whose threads are all stuck is not ready itself (`model_ready`) but leaves the
        server ready: one client able to hang one model must not take every replica out of the
        load balancer, where the other models still answer.
        """
        reasons: dict[str, str] = {}
        for name in configured_names:
            if not self._manager.available_versions(name):
                reasons[name] = "no AVAILABLE version"
        return reasons
