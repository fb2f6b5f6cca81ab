"""Version policies as pure functions, one situation per test (TF Serving's policy suites)."""

from pyserving.core.harness import HarnessState as S
from pyserving.core.ids import ServableId
from pyserving.core.policy import (
    Action,
    ActionKind,
    VersionSnapshot,
    availability_preserving,
    resource_preserving,
)


def snap(version: int, state: S, aspired: bool) -> VersionSnapshot:
    return VersionSnapshot(ServableId("m", version), state, aspired)


def load(v: int) -> Action:
    return Action(ActionKind.LOAD, ServableId("m", v))


def unload(v: int) -> Action:
    return Action(ActionKind.UNLOAD, ServableId("m", v))


class TestAvailabilityPreserving:
    def test_loads_highest_new_aspired_first(self):
        assert availability_preserving([snap(1, S.NEW, True), snap(2, S.NEW, True)]) == load(2)

    def test_unloads_non_aspired_once_an_aspired_version_serves(self):
        got = availability_preserving([snap(1, S.READY, False), snap(2, S.READY, True)])
        assert got == unload(1)

    def test_unloads_lowest_non_aspired_when_nothing_aspired(self):
        got = availability_preserving([snap(2, S.READY, False), snap(1, S.READY, False)])
        assert got == unload(1)

    def test_no_action_when_nothing_to_do(self):
        assert availability_preserving([snap(1, S.READY, True)]) is None
        assert availability_preserving([]) is None

    def test_does_not_unload_while_new_version_not_ready(self):
        assert availability_preserving([snap(1, S.READY, False), snap(2, S.LOADING, True)]) is None

    def test_does_not_unload_when_new_version_failed(self):
        assert availability_preserving([snap(1, S.READY, False), snap(2, S.ERROR, True)]) is None

    def test_loads_new_before_unloading_old(self):
        assert availability_preserving([snap(1, S.READY, False), snap(2, S.NEW, True)]) == load(2)

    def test_unloads_if_other_ready_even_if_one_loading(self):
        got = availability_preserving(
            [snap(1, S.READY, False), snap(2, S.READY, True), snap(3, S.LOADING, True)]
        )
        assert got == unload(1)

    def test_unloads_if_other_ready_even_if_one_in_error(self):
        got = availability_preserving(
            [snap(1, S.READY, False), snap(2, S.READY, True), snap(3, S.ERROR, True)]
        )
        assert got == unload(1)

    def test_unloads_lowest_when_several_unaspired_serve(self):
        got = availability_preserving(
            [snap(2, S.READY, False), snap(1, S.READY, False), snap(3, S.NEW, True)]
        )
        assert got == unload(1)


class TestResourcePreserving:
    def test_unloads_non_aspired_first(self):
        assert resource_preserving([snap(1, S.READY, False), snap(2, S.NEW, True)]) == unload(1)

    def test_loads_highest_aspired_when_none_to_unload(self):
        got = resource_preserving([snap(1, S.DISABLED, False), snap(2, S.NEW, True)])
        assert got == load(2)

    def test_no_action_when_none(self):
        assert resource_preserving([snap(1, S.READY, True)]) is None

    def test_does_not_load_while_others_still_unloading(self):
        for state in (S.UNLOAD_REQUESTED, S.QUIESCING, S.UNLOADING):
            assert resource_preserving([snap(1, state, False), snap(2, S.NEW, True)]) is None

    def test_loads_if_unaspired_is_in_error(self):
        assert resource_preserving([snap(1, S.ERROR, False), snap(2, S.NEW, True)]) == load(2)

    def test_keeps_serving_when_every_aspired_version_failed_issue_15(self):
        # e.g. the new version was refused: it cannot fit the budget even after the unload
        assert resource_preserving([snap(1, S.READY, False), snap(2, S.ERROR, True)]) is None

    def test_unloads_when_nothing_is_aspired_or_an_aspired_one_serves(self):
        assert resource_preserving([snap(1, S.READY, False)]) == unload(1)
        got = resource_preserving([snap(1, S.READY, False), snap(2, S.READY, True)])
        assert got == unload(1)
