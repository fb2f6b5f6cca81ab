"""serving/version_stats.py StatsTable: a version loaded again (a new servable under the same id)
reads 0 until its first request and never inherits the old servable's counters, even when the
new servable sits at the old one's freed address (F3)."""

from __future__ import annotations

import pytest

from pyserving.core.ids import ServableRequest, ServableState
from pyserving.serving.version_stats import StatsTable
from tests.serving.test_inference import FakeManager


class Model:
    """A servable: the table only compares identities."""


def answered_once(table: StatsTable, manager: FakeManager) -> None:
    with manager.get_handle(ServableRequest.specific("m", 1)) as handle:
        table.get(handle).answered(True, 10)


def test_a_version_loaded_again_reads_nothing_until_its_first_request():
    old = Model()
    manager = FakeManager().add("m", 1, old)
    table = StatsTable(manager)
    answered_once(table, manager)
    assert table.find("m", 1) is not None
    manager.add("m", 1, Model())  # unloaded and loaded again; the old servable still alive
    assert table.find("m", 1) is None
    with manager.get_handle(ServableRequest.specific("m", 1)) as handle:
        assert table.get(handle).snapshot()["inference_stats"]["success"]["count"] == 0
    manager.set_state("m", 1, ServableState.END)
    assert table.find("m", 1) is None  # not loaded: nothing to find


def test_a_new_servable_at_the_old_ones_address_starts_afresh():
    manager = FakeManager().add("m", 1, Model())
    table = StatsTable(manager)
    answered_once(table, manager)
    with manager.get_handle(ServableRequest.specific("m", 1)) as handle:
        old_address = id(handle.servable)
    del handle  # (it holds the servable)
    for _ in range(100):  # free the old servable, then make new ones until one reuses its address
        manager.add("m", 1, Model())
        with manager.get_handle(ServableRequest.specific("m", 1)) as handle:
            if id(handle.servable) == old_address:
                break
    else:
        pytest.skip("the allocator never reused the old servable's address")
    assert table.find("m", 1) is None
    with manager.get_handle(ServableRequest.specific("m", 1)) as handle:
        assert table.get(handle).snapshot()["inference_stats"]["success"]["count"] == 0
