"""AspiredFeed and compute_gate: what every worker is sent during a version swap, and when."""

from __future__ import annotations

from pyserving.core.ids import ServableData, ServableId
from pyserving.workers.aspired_feed import AspiredFeed, Gate, WorkerReport, compute_gate


def item(version: int) -> ServableData[str]:
    return ServableData(ServableId("m", version), f"/m/{version}")


def serving(*versions: int, failed: tuple[int, ...] = ()) -> WorkerReport:
    return WorkerReport({"m": frozenset(versions)}, {"m": frozenset(failed)})


class Recorder:
    def __init__(self) -> None:
        self.sent: list[list[int]] = []

    def __call__(self, name: str, items: list[ServableData[str]]) -> None:
        self.sent.append([i.id.version for i in items])


def swap_to_2(feed: AspiredFeed, both: list[WorkerReport]) -> None:
    feed.aspire_versions("m", [item(1)])
    gate = compute_gate(feed.names(), both)
    assert gate is not None
    feed.set_gate(gate)
    feed.aspire_versions("m", [item(2)])


def test_replaced_version_is_held_until_its_successor_serves_in_every_worker() -> None:
    sent = Recorder()
    feed = AspiredFeed(availability_preserving=True, send=sent)
    swap_to_2(feed, [serving(1), serving(1)])
    assert sent.sent == [[1], [1, 2]]  # version 1 stays aspired everywhere
    one_has_it = [serving(1, 2), serving(1)]
    feed.release(one_has_it)
    assert sent.sent[-1] == [1, 2]
    both_have_it = [serving(1, 2), serving(1, 2)]
    feed.release(both_have_it)
    assert sent.sent[-1] == [2]


def test_a_successor_failed_everywhere_settles_the_swap_like_one_process() -> None:
    sent = Recorder()
    feed = AspiredFeed(availability_preserving=True, send=sent)
    swap_to_2(feed, [serving(1), serving(1)])
    feed.release([serving(1, failed=(2,)), serving(1, failed=(2,))])
    # [2] lets each worker's availability-preserving policy keep 1, as one process does
    assert sent.sent[-1] == [2]


def test_a_successor_failed_in_one_worker_keeps_the_old_version_everywhere() -> None:
    sent = Recorder()
    feed = AspiredFeed(availability_preserving=True, send=sent)
    swap_to_2(feed, [serving(1), serving(1)])
    feed.release([serving(1, 2), serving(1, failed=(2,))])
    assert sent.sent[-1] == [1, 2]  # the worker that has 2 keeps 1 and answers with it


def test_resource_preserving_forwards_the_source_list_unchanged() -> None:
    sent = Recorder()
    feed = AspiredFeed(availability_preserving=False, send=sent)
    swap_to_2(feed, [serving(1), serving(1)])
    assert sent.sent == [[1], [2]]


def test_a_removed_model_is_sent_an_empty_list_at_once() -> None:
    sent = Recorder()
    feed = AspiredFeed(availability_preserving=True, send=sent)
    feed.aspire_versions("m", [item(1)])
    feed.aspire_versions("m", [])
    assert sent.sent == [[1], []]
    assert feed.current() == {}


def test_gate_publishes_only_what_every_listening_worker_serves() -> None:
    gate = compute_gate(["m", "new"], [serving(1, 2), serving(1)])
    assert gate == Gate({"m": 1}, {"m": frozenset({1}), "new": frozenset()})
    assert compute_gate(["m"], []) is None


def test_on_demand_models_are_not_gated() -> None:
    report = WorkerReport({"od": frozenset({3})}, {}, on_demand=frozenset({"od"}))
    gate = compute_gate(["od"], [report, WorkerReport()])
    assert gate == Gate({}, {})
