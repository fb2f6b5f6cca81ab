"""Waiting for models to load or unload, and reporting what each version is doing: the waits of
ServerCore's start-up and model control, and the V2 repository index.

Every wait here is bounded by its timeout and reads the state monitor; none may run on the
event loop.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Iterable, Mapping, Set
from types import MappingProxyType

from pyserving.core.ids import ServableState
from pyserving.core.manager import Manager
from pyserving.core.monitor import StateMonitor
from pyserving.errors import FailedPrecondition
from pyserving.serving.on_demand import OnDemandModels
from pyserving.serving.pipeline_source import PipelineSource

__all__ = [
    "repository_index",
    "settled",
    "wait_for_available",
    "wait_for_initial_load",
    "wait_until_unloaded",
]

logger = logging.getLogger("pyserving")


def settled(monitor: StateMonitor, name: str) -> bool:
    """No version of `name` is starting, loading or unloading; one waiting out a retry backoff
    (LOADING with its last error) counts as settled, so a wait reports that error at once."""
    busy = (ServableState.START, ServableState.LOADING, ServableState.UNLOADING)
    return all(
        s.state not in busy or (s.state is ServableState.LOADING and s.error is not None)
        for s in monitor.states(name)
    )


def wait_for_initial_load(
    model_names: Callable[[], list[str]],
    manager: Manager,
    pipelines: PipelineSource,
    timeout_s: float,
    started: float,
) -> None:
    """ServerCore's start-up wait, `timeout_s` in all: each model of `model_names()` settles
    (one that does not is logged), then the pipeline source starts and the pipelines among them
    settle (they are aspired once their steps serve). Logs what loaded, timed from `started`
    (a `time.perf_counter()` instant)."""
    deadline = time.monotonic() + timeout_s
    for name in model_names():
        if pipelines.is_pipeline(name):
            continue  # aspired once their steps serve: waited for below
        remaining = max(0.0, deadline - time.monotonic())
        if not manager.monitor.wait_until_settled(name, remaining):
            logger.warning("model %s: no version settled within the initial load wait", name)
    pipelines.start()
    pipelines.wait_until_settled(
        [n for n in model_names() if pipelines.is_pipeline(n)],
        max(0.0, deadline - time.monotonic()),
    )
    logger.info(
        "initial load finished in %.2fs: %s",
        time.perf_counter() - started,
        ", ".join(f"{n}={manager.available_versions(n) or 'none'}" for n in model_names()),
    )


def wait_for_available(
    names: Iterable[str],
    manager: Manager,
    on_demand: OnDemandModels[str],
    pipelines: PipelineSource,
    timeout_s: float,
) -> None:
    """Wait (`timeout_s` in all) until each model has an AVAILABLE version or settles without
    one; on-demand models are skipped (they load on their first request). Raises
    FailedPrecondition (TF Serving's text) naming those without one."""
    monitor = manager.monitor
    deadline = time.monotonic() + timeout_s
    failed: list[str] = []
    for name in names:
        if on_demand.is_on_demand(name):
            continue  # loads on its first request
        if pipelines.is_pipeline(name):
            pipelines.wait_until_settled([name], max(0.0, deadline - time.monotonic()))
        monitor.wait_until(
            functools.partial(_available_or_settled, manager, name),
            max(0.0, deadline - time.monotonic()),
        )
        if not manager.available_versions(name):
            errors = [s.error for s in monitor.states(name) if s.error]
            reason = errors[0] if errors else "no version found or still loading"
            failed.append(f"{{name: {name}}} due to error: {reason}")
    if failed:
        # the models were refused (or broke) on load: a state the caller must fix, not a fault
        raise FailedPrecondition(
            f"{len(failed)} servable(s) did not become available: {{{', '.join(failed)}}}"
        )


def wait_until_unloaded(name: str, manager: Manager, timeout_s: float) -> bool:
    """Wait (up to `timeout_s`) until no version of `name` serves and none is still changing
    state; False when the wait ran out."""
    monitor = manager.monitor
    return monitor.wait_until(
        lambda: not manager.available_versions(name) and settled(monitor, name), timeout_s
    )


def repository_index(
    names: Iterable[str],
    unloaded: Set[str],
    manager: Manager,
    on_demand: OnDemandModels[str],
) -> list[Mapping[str, str]]:
    """One entry per known version of each model in `names` (one entry with version "" for a
    model with none): name, version, state (Triton's names), reason."""
    entries: list[Mapping[str, str]] = []
    for name in names:
        states = manager.monitor.states(name)
        if on_demand.is_on_demand(name) and not on_demand.is_loaded(name):
            held = [str(v) for v in on_demand.held_versions(name)] or [""]
            entries.extend(
                {
                    "name": name,
                    "version": v,
                    "state": "UNAVAILABLE",
                    "reason": "not loaded",
                }
                for v in held
            )
            continue
        if not states:
            reason = "unloaded" if name in unloaded else "no versions found"
            entries.append({"name": name, "version": "", "state": "UNAVAILABLE", "reason": reason})
            continue
        for status in sorted(states, key=lambda s: s.id.version):
            entries.append(
                {
                    "name": name,
                    "version": str(status.id.version),
                    "state": _REPOSITORY_STATE[status.state],
                    "reason": status.error or "",
                }
            )
    return entries


def _available_or_settled(manager: Manager, name: str) -> bool:
    return bool(manager.available_versions(name)) or settled(manager.monitor, name)


#: lifecycle state → the V2 repository index's state names (Triton's)
_REPOSITORY_STATE = MappingProxyType(
    {
        ServableState.UNKNOWN: "UNAVAILABLE",
        ServableState.START: "LOADING",
        ServableState.LOADING: "LOADING",
        ServableState.AVAILABLE: "READY",
        ServableState.UNLOADING: "UNLOADING",
        ServableState.END: "UNAVAILABLE",
    }
)
