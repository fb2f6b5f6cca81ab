"""StateMonitor: latest state per version, states never move back, retry errors are kept."""

from __future__ import annotations

from pyserving.core.ids import ServableId, ServableState, ServableStateEvent
from pyserving.core.monitor import EventBus, StateMonitor, why_unavailable

SID = ServableId("m", 1)
S = ServableState


def publish(bus: EventBus, state: ServableState, error: str | None = None) -> None:
    bus.publish(ServableStateEvent(SID, state, error, "OK" if error is None else "UNKNOWN"))


def test_a_stale_event_never_moves_a_version_back_issue_15():
    bus = EventBus()
    monitor = StateMonitor(bus)
    for state in (S.START, S.LOADING, S.UNLOADING, S.END):
        publish(bus, state)
    publish(bus, S.AVAILABLE)  # what b65bd49 published last
    assert monitor.state(SID).state is S.END
    publish(bus, S.START)  # a new life of the same version is accepted
    assert monitor.state(SID).state is S.START


def test_a_version_waiting_to_retry_shows_loading_with_its_error_and_counts_as_settled():
    bus = EventBus()
    monitor = StateMonitor(bus)
    publish(bus, S.START)
    publish(bus, S.LOADING)
    assert not monitor.wait_until_settled("m", timeout_s=0)
    publish(bus, S.LOADING, "disk hiccup")
    status = monitor.state(SID)
    assert status.state is S.LOADING and status.error == "disk hiccup"
    assert monitor.wait_until_settled("m", timeout_s=0)
    assert (
        why_unavailable(monitor.states("m")) == "version 1 is loading, retrying after: disk hiccup"
    )
    publish(bus, S.END, "disk hiccup")
    assert why_unavailable(monitor.states("m")) == "version 1 failed: disk hiccup"
    assert why_unavailable([]) == "no versions found under its base path"
