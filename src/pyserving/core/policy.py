"""Version transition policies: pure functions from one stream's snapshots to the next action.

A policy sees every version of one stream — its harness state and whether it is still aspired —
and returns at most one action. The Manager calls it again after every action it starts and after
every load or unload that finishes, so a policy never has to plan more than one step.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from pyserving.core.harness import HarnessState
from pyserving.core.ids import ServableId


class ActionKind(enum.Enum):
    LOAD = "load"
    UNLOAD = "unload"


@dataclass(frozen=True, slots=True)
class Action:
    """Load or unload one version."""

    kind: ActionKind
    id: ServableId


@dataclass(frozen=True, slots=True)
class VersionSnapshot:
    """What a policy knows of one version: its id, harness state and whether it is aspired."""

    id: ServableId
    state: HarnessState
    is_aspired: bool


Policy = Callable[[Sequence[VersionSnapshot]], Action | None]


def _highest_aspired_new(snapshots: Sequence[VersionSnapshot]) -> ServableId | None:
    candidates = [s.id for s in snapshots if s.is_aspired and s.state is HarnessState.NEW]
    return max(candidates, key=lambda i: i.version, default=None)


def availability_preserving(snapshots: Sequence[VersionSnapshot]) -> Action | None:
    """Load the new before unloading the old: the last serving version stays until a newer serves.

    As TF Serving: unload the lowest un-aspired READY version when nothing is aspired, when an
    aspired version already serves, or when more than one un-aspired version serves; otherwise load
    the highest aspired NEW version. A failed new version therefore never takes the old one down.
    """
    aspired = [s for s in snapshots if s.is_aspired]
    aspired_serving = any(s.state is HarnessState.READY for s in aspired)
    unaspired_serving = [
        s.id for s in snapshots if not s.is_aspired and s.state is HarnessState.READY
    ]
    if (not aspired or aspired_serving or len(unaspired_serving) > 1) and unaspired_serving:
        return Action(ActionKind.UNLOAD, min(unaspired_serving, key=lambda i: i.version))
    to_load = _highest_aspired_new(snapshots)
    return Action(ActionKind.LOAD, to_load) if to_load is not None else None


def resource_preserving(snapshots: Sequence[VersionSnapshot]) -> Action | None:
    """Unload first, load after: never two versions in memory at once, at the cost of a gap.

    As TF Serving: unload an un-aspired READY version; while any un-aspired version is still on
    its way out (not DISABLED or ERROR), wait; then load the highest aspired NEW version. Unlike
    TF Serving, a serving version is unloaded only for a reason: nothing is aspired any more, an
    aspired version already serves, or an aspired NEW version waits for its room. When every
    aspired version has failed (e.g. refused because it cannot fit the memory budget, which the
    Manager checks before this runs), the serving version stays.
    """
    aspired = [s for s in snapshots if s.is_aspired]
    has_reason = (
        not aspired
        or any(s.state is HarnessState.READY for s in aspired)
        or any(s.state is HarnessState.NEW for s in aspired)
    )
    for s in snapshots:
        if not s.is_aspired and s.state is HarnessState.READY and has_reason:
            return Action(ActionKind.UNLOAD, s.id)
    settled = (HarnessState.DISABLED, HarnessState.ERROR)
    if any(not s.is_aspired and s.state not in settled for s in snapshots):
        return None
    to_load = _highest_aspired_new(snapshots)
    return Action(ActionKind.LOAD, to_load) if to_load is not None else None


POLICIES: dict[str, Policy] = {
    "availability": availability_preserving,
    "resource": resource_preserving,
}
