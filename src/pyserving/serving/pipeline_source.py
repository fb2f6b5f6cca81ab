"""PipelineSource: puts each pipeline in the Manager while every one of its steps serves.

A pipeline has no files: its version is aspired by this source instead of a storage-path poller.
It aspires version 1 of a pipeline once every step has an AVAILABLE version (so its status is
AVAILABLE only when every step is), and nothing while a step has none (the pipeline unloads and
comes back with its steps). A reload that changes a pipeline's definition aspires the next
version number: the new definition loads, then the old one unloads, and clients never see a gap.
Loading a version checks the wiring against the steps' signatures (`derive_signature`); a failed
check fails that version's load with the message naming the step, and is tried again when a
step's versions change. A step's new version whose signature changes the pipeline's (or breaks
its wiring) is served as the pipeline's next version too; should that one fail, the version
serving now stays (the Manager never unloads the last serving version for a failed one).
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Protocol

from pyserving.core.handle import ServableHandle
from pyserving.core.ids import ServableData, ServableId, ServableState, ServableStateEvent
from pyserving.core.loader import Loader, PermanentLoadError
from pyserving.core.monitor import EventBus, StateMonitor
from pyserving.errors import FailedPrecondition, ServingError
from pyserving.platforms.servable import STREAMING_KINDS
from pyserving.platforms.signature import DEFAULT_SIGNATURE, Signature
from pyserving.serving.pipeline import PipelineServable
from pyserving.serving.pipeline_config import PipelineError, PipelineSpec, derive_signature
from pyserving.serving.signature_plan import find_signature

__all__ = ["PipelineLoader", "PipelineSource"]

logger = logging.getLogger("pyserving.pipeline")

#: takes a handle on (model, version, label), as `InferenceService.acquire`
Acquire = Callable[[str, int | None, str | None], ServableHandle]


class _Manager(Protocol):
    """What PipelineSource needs of `pyserving.core.manager.Manager`."""

    @property
    def bus(self) -> EventBus: ...

    @property
    def monitor(self) -> StateMonitor: ...

    def aspire_versions(self, name: str, versions: list[ServableData[Loader]]) -> None: ...

    def available_versions(self, name: str) -> list[int]: ...


class PipelineLoader(Loader):
    """Builds one pipeline version from the signatures its steps have now.

    Thread-safety: as Loader.
    """

    def __init__(self, spec: PipelineSpec, acquire: Acquire) -> None:
        self._spec = spec
        self._acquire = acquire

    def estimate_resources(self) -> int:
        return 0  # it holds a definition; its steps' memory is counted by their own versions

    def load(self) -> PipelineServable:
        try:
            return PipelineServable(self._spec, _derive(self._spec, self._acquire))
        except PipelineError as exc:  # the wiring does not fit these steps: retrying cannot help
            raise PermanentLoadError(exc.message) from None

    def unload(self) -> None:
        pass  # nothing held


class PipelineSource:
    """Aspires each configured pipeline's version while all its steps serve, none otherwise.

    Thread-safety: every public method may be called from any thread except an EventBus
    subscriber. One internal thread reacts to lifecycle events; `reconcile` may also run on the
    caller's thread (both are serialised by `_lock`).
    Blocking: `reconcile` and `configure` call the Manager (which queues loads, never waits for
    one); `wait_until_settled` waits (bounded); `stop` joins the thread.
    """

    def __init__(self, manager: _Manager, acquire: Acquire) -> None:
        self._manager = manager
        self._acquire = acquire
        self._lock = threading.Lock()  # guards _specs, _versions, _aspired
        self._specs: dict[str, PipelineSpec] = {}
        self._versions: dict[str, int] = {}  # pipeline → version its definition has (1, 2, ...)
        # pipeline → the (version, steps' versions) last aspired; None: aspired nothing
        self._aspired: dict[str, tuple[int, str] | None] = {}
        # every model some pipeline's step calls: only their events can change what is aspired
        # (replaced whole, read by the event subscriber without the lock)
        self._step_models: frozenset[str] = frozenset()
        self._wake = threading.Event()
        self._stopping = False
        self._unsubscribe = manager.bus.subscribe(self._on_event)
        self._thread: threading.Thread | None = None

    def is_pipeline(self, name: str) -> bool:
        return name in self._specs

    def configure(self, specs: Mapping[str, PipelineSpec]) -> None:
        """Serve exactly these pipelines from now on: new ones load once their steps serve,
        changed ones load as their next version, removed ones unload."""
        with self._lock:
            for name in self._specs:
                if name not in specs:
                    self._aspired.pop(name, None)
                    self._manager.aspire_versions(name, [])
            for name, spec in specs.items():
                before = self._specs.get(name)
                if before is not None and before != spec:
                    self._versions[name] += 1
                    self._aspired.pop(name, None)
                self._versions.setdefault(name, 1)
            # replaced whole: readers outside the lock (event subscriber, status) never see it
            # change under them
            self._specs = dict(specs)
            self._step_models = frozenset(s.model for spec in specs.values() for s in spec.steps)
        self.reconcile()

    def start(self) -> None:
        """Follow lifecycle events from now on (a daemon thread)."""
        self._thread = threading.Thread(
            target=self._follow, name="pyserving-pipelines", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        """Stop following events (the Manager's own stop unloads the pipelines)."""
        self._unsubscribe()
        self._stopping = True
        self._wake.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join()

    def reconcile(self) -> None:
        """Aspire each pipeline's version if every step has an AVAILABLE version, else none."""
        with self._lock:
            if self._stopping:
                return
            for name, spec in self._specs.items():
                steps = self._step_versions(spec)
                before = self._aspired.get(name)
                if (
                    steps is not None
                    and before is not None
                    and before[1] != steps
                    and self._signature_changed(spec, before[0])
                ):
                    # a step's new version changes the pipeline's signature (or breaks its
                    # wiring): serve that as the pipeline's next version; the one serving now
                    # stays until it loads (and stays if it fails, its error naming the step)
                    self._versions[name] += 1
                wanted = None if steps is None else (self._versions[name], steps)
                if name in self._aspired and wanted == self._aspired[name]:
                    continue
                items: list[ServableData[Loader]] = []
                if wanted is not None:
                    # revision: a failed version is tried again when its steps' versions change
                    loader = PipelineLoader(spec, self._acquire)
                    version, revision = wanted
                    items.append(ServableData(ServableId(name, version), loader, revision=revision))
                self._manager.aspire_versions(name, items)
                self._aspired[name] = wanted

    def wait_until_settled(self, names: Iterable[str], timeout_s: float) -> None:
        """Wait (up to `timeout_s`) until each pipeline in `names` is AVAILABLE, failed, or
        waiting for a step that has settled without an AVAILABLE version."""
        deadline = time.monotonic() + timeout_s
        monitor = self._manager.monitor
        for name in names:
            while not self._settled(name, monitor):
                self.reconcile()
                if time.monotonic() >= deadline:
                    return
                monitor.wait_until(functools.partial(self._settled, name, monitor), 0.05)

    # --- helpers -------------------------------------------------------------------------------

    def _settled(self, name: str, monitor: StateMonitor) -> bool:
        spec = self._specs.get(name)
        if spec is None:
            return True
        states = monitor.states(name)
        version = self._versions.get(name)
        mine = [s for s in states if s.id.version == version]
        if mine:
            state = mine[0].state
            return state is ServableState.AVAILABLE or state is ServableState.END
        # not aspired: settled once every step without a version has settled
        return self._step_versions(spec) is None and all(
            self._manager.available_versions(step.model)
            or all(
                s.state in (ServableState.END, ServableState.AVAILABLE)
                or (s.state is ServableState.LOADING and s.error is not None)
                for s in monitor.states(step.model)
            )
            for step in spec.steps
        )

    def _signature_changed(self, spec: PipelineSpec, version: int) -> bool:
        """True when pipeline version `version` serves a signature other than the one its
        steps give now (or one they cannot give); False when that version does not serve."""
        try:
            with self._acquire(spec.name, version, None) as handle:
                serving = handle.servable.signatures.get(DEFAULT_SIGNATURE)
        except ServingError:
            return False  # still loading, or failed: aspiring it again retries it
        try:
            return bool(_derive(spec, self._acquire) != serving)
        except PipelineError:
            return True
        except RuntimeError:
            return False  # a step went away: the next round sees it

    def _step_versions(self, spec: PipelineSpec) -> str | None:
        """Each step's version now ("features:1,mlp:2"), or None when a step has none.

        A step pinned to a version or label its serving model lacks counts as "missing" with
        the versions the model has ("mlp:missing:1.2"): that version is aspired and fails its
        load naming the step (`_derive`), and is tried again when the model's versions change.
        """
        parts = []
        for step in spec.steps:
            try:
                with self._acquire(step.model, step.version, step.label) as handle:
                    parts.append(f"{step.name}:{handle.id.version}")
            except ServingError:
                available = self._manager.available_versions(step.model)
                if not available or (step.version is None and step.label is None):
                    return None  # the step's model does not serve (yet): nothing to aspire
                parts.append(f"{step.name}:missing:{'.'.join(map(str, sorted(available)))}")
        return ",".join(parts)

    def _on_event(self, event: ServableStateEvent) -> None:
        # Subscribers must not call the Manager: wake the thread instead, for a step's model
        # only (a pipeline's own events, and other models', change nothing aspired here).
        if event.id.name in self._step_models:
            self._wake.set()

    def _follow(self) -> None:
        while True:
            self._wake.wait()
            self._wake.clear()
            if self._stopping:
                return
            try:
                self.reconcile()
            except Exception:  # the thread must outlive a bug in one round
                logger.exception("pipelines: reconciling failed")


def _derive(spec: PipelineSpec, acquire: Acquire) -> Signature:
    """The pipeline's signature from the signatures its steps serve now. Raises PipelineError
    naming the step whose signatures do not fit; RuntimeError when a step no longer serves."""
    steps = {}
    for step in spec.steps:
        try:
            with acquire(step.model, step.version, step.label) as handle:
                found = handle.servable.signatures
                streams = handle.servable.run_kind in STREAMING_KINDS
        except ServingError as exc:
            if step.version is not None or step.label is not None:
                # the pinned version or label is missing: tried again when the model's versions
                # change (the revision `_step_versions` gives)
                pin = f"version {step.version}" if step.label is None else f'label "{step.label}"'
                raise PipelineError(
                    f'pipeline "{spec.name}": step "{step.name}" (model "{step.model}"): {pin}'
                    f" does not serve: {exc.message}"
                ) from None
            # it went away since it was seen AVAILABLE: try again
            raise RuntimeError(
                f'pipeline "{spec.name}": step "{step.name}": {exc.message}'
            ) from None
        if streams:  # a step answers once: a stream's parts have nowhere to go
            raise PipelineError(
                f'pipeline "{spec.name}": step "{step.name}" (model "{step.model}") streams its'
                " results (its run is a generator): a pipeline step must answer once"
            )
        try:  # serving_default, or the only signature: as a request that names none
            steps[step.name] = find_signature(found, None)
        except FailedPrecondition:
            raise PipelineError(
                f'pipeline "{spec.name}": step "{step.name}" (model "{step.model}") has no'
                f" {DEFAULT_SIGNATURE} signature (it has: {', '.join(found) or 'none'})"
            ) from None
    return derive_signature(spec, steps)
