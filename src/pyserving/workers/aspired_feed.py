"""AspiredFeed: the supervisor's decisions for every worker at once — which versions each
worker's Manager is sent, and which versions the workers route to and show as AVAILABLE.

TF Serving's availability-preserving transition, made to hold across processes: when the Source
replaces version 1 by version 2, every worker is sent [1, 2] first (so none unloads 1), and only
once 2 is AVAILABLE in every listening worker — and every worker routes new requests to it — is
[2] sent, so that 1 unloads. A version that fails to load in every worker settles it too: the
workers' own availability-preserving policy then keeps 1, as a single process does; one that
fails in some workers only keeps 1 aspired everywhere, so every worker goes on answering with 1.

The Gate is what keeps status and answers in step: `latest` is the version a request naming none
goes to, `published` the versions status may call AVAILABLE; both hold only versions AVAILABLE in
every listening worker. The supervisor moves `latest` in every worker before `published`, so a
client that read "version 2 AVAILABLE" from any worker gets version 2 from every worker.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from pyserving.core.ids import ServableData

#: `send(name, items)`: the list every worker's Manager is to aspire for `name`
FeedSender = Callable[[str, list[ServableData[str]]], None]


@dataclass(frozen=True, slots=True)
class WorkerReport:
    """What one worker serves: per model, its AVAILABLE versions and those that failed to load."""

    available: Mapping[str, frozenset[int]] = field(default_factory=dict)
    failed: Mapping[str, frozenset[int]] = field(default_factory=dict)
    #: models loaded on their first request: each worker decides alone, none is gated
    on_demand: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class Gate:
    """Per model: the version a request naming none goes to, and the versions status shows as
    AVAILABLE. A model absent from `published` is not gated (the worker shows its own state)."""

    latest: Mapping[str, int] = field(default_factory=dict)
    published: Mapping[str, frozenset[int]] = field(default_factory=dict)


def compute_gate(names: Iterable[str], reports: list[WorkerReport]) -> Gate | None:
    """The gate for `names` over the listening workers' `reports`: a version is published when
    it is AVAILABLE in every one of them; None when no worker listens (nothing to gate)."""
    if not reports:
        return None
    on_demand = frozenset().union(*(r.on_demand for r in reports))
    published: dict[str, frozenset[int]] = {}
    for name in sorted(set(names).union(*(r.available for r in reports)) - on_demand):
        published[name] = functools.reduce(
            frozenset.intersection, (r.available.get(name, frozenset()) for r in reports)
        )
    latest = {name: max(versions) for name, versions in published.items() if versions}
    return Gate(latest, published)


class AspiredFeed:
    """The Source's target in the supervisor: it forwards each model's aspired list to every
    worker, holding the versions being replaced until their replacements serve everywhere.

    Thread-safety: not thread-safe; the supervisor calls it from its one coordinating thread.
    """

    def __init__(self, availability_preserving: bool, send: FeedSender) -> None:
        self._availability_preserving = availability_preserving
        self._send = send
        self._aspired: dict[str, list[ServableData[str]]] = {}  # the Source's last lists
        self._fed: dict[str, list[ServableData[str]]] = {}  # what the workers were last sent
        self._gate = Gate()

    @property
    def gate(self) -> Gate:
        """The gate every worker applies (the last one `set_gate` took)."""
        return self._gate

    def names(self) -> list[str]:
        return sorted(self._aspired)

    def current(self) -> dict[str, list[ServableData[str]]]:
        """What a new worker is sent: every model's list as the others have it."""
        return {name: list(items) for name, items in self._fed.items()}

    def aspire_versions(self, name: str, items: list[ServableData[str]]) -> None:
        """The Source's list for `name`: sent on, plus the published versions it drops while
        their replacements do not serve in every worker yet."""
        self._aspired[name] = list(items)
        self._feed(name, self._held(name))

    def set_gate(self, gate: Gate) -> None:
        """Record the gate that every listening worker has now applied."""
        self._gate = gate

    def release(self, reports: list[WorkerReport]) -> None:
        """Stop holding replaced versions of the models whose aspired versions are AVAILABLE in
        every listening worker, or failed in every one; call after the gate moved to them."""
        if not reports:
            return
        for name, items in list(self._aspired.items()):
            fed = self._fed.get(name, [])
            if len(fed) == len(items):
                continue
            if all(_settled(item.id.version, name, reports) for item in items):
                self._feed(name, [])

    def _held(self, name: str) -> list[ServableData[str]]:
        if not self._availability_preserving:
            return []  # resource-preserving: every worker unloads first, as one process does
        published = self._gate.published.get(name)
        if published is None:
            return []  # not gated: loaded on demand, or not AVAILABLE anywhere yet
        wanted = {item.id.version for item in self._aspired[name]}
        return [
            item
            for item in self._fed.get(name, [])
            if item.id.version not in wanted and item.id.version in published
        ]

    def _feed(self, name: str, held: list[ServableData[str]]) -> None:
        items = sorted([*self._aspired[name], *held], key=lambda item: item.id.version)
        if items == self._fed.get(name):
            return
        self._fed[name] = items
        if not items:
            del self._aspired[name]
            del self._fed[name]
        self._send(name, items)


def _settled(version: int, name: str, reports: list[WorkerReport]) -> bool:
    """AVAILABLE in every worker, or failed in every worker (each then keeps the old version,
    as one process does). Failed in some only, the old version stays aspired everywhere, so
    that every worker keeps answering with it."""
    return all(version in r.available.get(name, frozenset()) for r in reports) or all(
        version in r.failed.get(name, frozenset()) for r in reports
    )
