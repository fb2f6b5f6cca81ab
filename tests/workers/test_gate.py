"""GatedManager: a worker routes and shows versions as the supervisor's gate says (issue 17)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from pyserving.core.ids import ServableRequest, ServableState
from pyserving.core.manager import Manager, ManagerOptions
from pyserving.workers.aspired_feed import Gate
from pyserving.workers.gate import GatedManager
from tests.fakes import item, wait_until


@pytest.fixture
def manager() -> Iterator[Manager]:
    manager = Manager(ManagerOptions(num_load_threads=1))
    manager.aspire_versions("m", [item("m", 1), item("m", 2)])
    wait_until(lambda: manager.available_versions("m") == [2, 1], what="both versions")
    try:
        yield manager
    finally:
        manager.stop(10)


def version_of_latest(view: GatedManager) -> int:
    with view.get_handle(ServableRequest.latest("m")) as handle:
        return handle.id.version


def states(view: GatedManager) -> dict[int, ServableState]:
    return {s.id.version: s.state for s in view.monitor.states("m")}


def test_ungated_view_is_the_manager(manager: Manager) -> None:
    view = GatedManager(manager)
    assert version_of_latest(view) == 2
    assert view.available_versions("m") == [2, 1]
    assert states(view) == {2: ServableState.AVAILABLE, 1: ServableState.AVAILABLE}


def test_a_version_not_yet_everywhere_is_loading_and_not_routed(manager: Manager) -> None:
    view = GatedManager(manager)
    view.set_gate(Gate({"m": 1}, {"m": frozenset({1})}))
    assert version_of_latest(view) == 1
    assert view.available_versions("m") == [1]
    assert states(view) == {2: ServableState.LOADING, 1: ServableState.AVAILABLE}
    with view.get_handle(ServableRequest.specific("m", 2)) as handle:  # named: served here
        assert handle.id.version == 2


def test_routing_moves_before_status_shows_the_version(manager: Manager) -> None:
    view = GatedManager(manager)
    view.set_gate(Gate({"m": 2}, {"m": frozenset({1})}))  # the supervisor's first step
    assert version_of_latest(view) == 2
    assert states(view)[2] is ServableState.LOADING
    view.set_gate(Gate({"m": 2}, {"m": frozenset({1, 2})}))  # once every worker routes to 2
    assert states(view)[2] is ServableState.AVAILABLE


def test_a_gate_version_unloaded_here_falls_back_to_this_workers_latest(manager: Manager) -> None:
    view = GatedManager(manager)
    view.set_gate(Gate({"m": 7}, {"m": frozenset({7})}))
    assert version_of_latest(view) == 2
