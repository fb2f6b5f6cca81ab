"""The supervisor's order during a swap, with recording workers in place of processes: every
worker routes to the new version before any shows it AVAILABLE, and the old version is let go
only after both (issue 17)."""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from typing import Any

import pytest

from pyserving.core.ids import ServableData, ServableId
from pyserving.workers import supervisor as sup
from pyserving.workers.aspired_feed import Gate, WorkerReport
from pyserving.workers.worker_process import WorkerProcess


class RecordingChannel:
    """Records what the supervisor sends one worker and applies each gate at once."""

    def __init__(self, owner: sup.Supervisor) -> None:
        self.owner = owner
        self.worker: WorkerProcess | None = None
        self.sent: list[tuple[Any, ...]] = []

    def send(self, *message: Any) -> None:
        self.sent.append(message)
        if message[0] == "gate":
            with self.owner._lock:
                assert self.worker is not None
                self.worker.acked_gate = message[1]
                self.owner._changed.notify_all()

    def close(self) -> None:
        pass


class FakeProcess:
    def __init__(self, pid: int) -> None:
        self.pid = pid


def fed_workers(supervisor: sup.Supervisor, count: int) -> list[WorkerProcess]:
    """`count` workers in `supervisor`'s table, each on a RecordingChannel, already fed."""
    workers = []
    for slot in range(count):
        channel = RecordingChannel(supervisor)
        worker = WorkerProcess(slot, FakeProcess(1000 + slot), channel)
        channel.worker = worker
        worker.fed = True
        supervisor._workers[slot] = worker
        workers.append(worker)
    return workers


def item(version: int) -> ServableData[str]:
    return ServableData(ServableId("m", version), f"/m/{version}")


def serving(*versions: int) -> tuple[Any, ...]:
    return ("report", WorkerReport({"m": frozenset(versions)}), True)


def test_swap_routes_everywhere_then_publishes_then_releases_issue_17(tmp_path: Path) -> None:
    supervisor = sup.Supervisor([], 2, None, str(tmp_path), True, 1.0)
    workers = fed_workers(supervisor, 2)
    for worker in workers:
        worker.options = object()
    supervisor._on_list("m", [item(1)])
    for worker in workers:
        supervisor._on_message(worker, serving(1))
    for worker in workers:
        worker.channel.sent.clear()
    supervisor._on_list("m", [item(2)])
    supervisor._on_message(workers[0], serving(1, 2))
    supervisor._on_message(workers[1], serving(1, 2))

    for worker in workers:
        sent = [m for m in worker.channel.sent if m[0] in ("aspire", "gate")]
        assert [(m[0], _what(m)) for m in sent] == [
            ("aspire", [1, 2]),  # version 1 held while 2 loads
            ("gate", ({"m": 2}, {"m": frozenset({1})})),  # requests go to 2 everywhere...
            ("gate", ({"m": 2}, {"m": frozenset({1, 2})})),  # ...then status shows it
            ("aspire", [2]),  # only then may version 1 unload
        ]


def _what(message: tuple[Any, ...]) -> Any:
    if message[0] == "aspire":
        return [i.id.version for i in message[2]]
    gate: Gate = message[2]
    return (dict(gate.latest), dict(gate.published))


class SignalledProcess:
    def __init__(self) -> None:
        self.pid = 4242
        self.signals: list[int] = []

    def send_signal(self, sig: int) -> None:
        self.signals.append(sig)


def test_a_worker_silent_past_the_limit_is_killed_once_issue_17(tmp_path: Path) -> None:
    supervisor = sup.Supervisor([], 1, None, str(tmp_path), True, 1.0)
    process = SignalledProcess()
    channel = RecordingChannel(supervisor)
    worker = WorkerProcess(0, process, channel)
    worker.last_pong = 100.0
    worker.ping_or_kill(now=110.0, hung_after_s=30.0)
    assert channel.sent == [("ping",)] and process.signals == []
    worker.ping_or_kill(now=131.0, hung_after_s=30.0)
    worker.ping_or_kill(now=133.0, hung_after_s=30.0)
    assert process.signals == [signal.SIGKILL]


class HeldApplyChannel(RecordingChannel):
    """Answers an "apply" only once the test lets it, as a worker loading models would."""

    def __init__(self, owner: sup.Supervisor) -> None:
        super().__init__(owner)
        self.asked = threading.Event()
        self.answer = threading.Event()

    def send(self, *message: Any) -> None:
        super().send(*message)
        if message[0] == "apply":
            self.asked.set()
            threading.Thread(target=self._applied, args=(message[1],), daemon=True).start()

    def _applied(self, apply_id: int) -> None:
        self.answer.wait(30)  # bounded: the thread ends even when the test fails
        with self.owner._lock:
            assert self.worker is not None
            self.worker.answers[apply_id] = (None, (None, frozenset()))
            self.owner._changed.notify_all()


def test_a_restart_during_model_control_waits_for_the_call_without_timers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    supervisor = sup.Supervisor([], 2, None, str(tmp_path), True, 1.0)
    spawned: list[int] = []
    monkeypatch.setattr(
        supervisor, "_spawn", lambda slot, load_before_listening: spawned.append(slot)
    )
    channel = HeldApplyChannel(supervisor)
    worker = WorkerProcess(0, FakeProcess(1000), channel)
    channel.worker = worker
    supervisor._workers[0] = worker
    control = threading.Thread(
        target=supervisor._control.apply, args=(worker, 7, "reload_config", ()), daemon=True
    )
    try:
        control.start()
        assert channel.asked.wait(10)  # the call is under way
        supervisor._respawn(1)  # slot 1 died meanwhile
        assert spawned == [] and supervisor._events.empty()
        assert not [t for t in threading.enumerate() if isinstance(t, threading.Timer)]
        channel.answer.set()
        while not spawned:  # the coordinator's part, run here: the gate sync, then the restart
            supervisor._events.get(timeout=10)()
        control.join(10)
        assert spawned == [1]  # started once, after the call ended: with the config it left
        assert channel.sent[-1] == ("answer", 7, None)
    finally:
        channel.answer.set()
        control.join(10)


def test_a_first_worker_still_starting_holds_the_gate_a_replacement_does_not(
    tmp_path: Path,
) -> None:
    # First workers listen while they load: one that has not reported yet would answer "not
    # found", so nothing is published (and no worker is ready) until it serves the version too.
    supervisor = sup.Supervisor([], 2, None, str(tmp_path), True, 1.0)
    workers = fed_workers(supervisor, 2)
    for worker in workers:
        worker.listens_while_loading = True
    supervisor._on_list("m", [item(1)])
    supervisor._on_message(workers[0], serving(1))
    assert dict(supervisor._feed.gate.published) == {"m": frozenset()}
    supervisor._on_message(workers[1], serving(1))
    assert dict(supervisor._feed.gate.published) == {"m": frozenset({1})}
    # a replacement loads before it listens: until it listens it is not counted
    channel = RecordingChannel(supervisor)
    replacement = WorkerProcess(1, FakeProcess(2000), channel)
    channel.worker = replacement
    replacement.fed = True
    supervisor._workers[1] = replacement
    supervisor._on_list("m", [item(1)])
    supervisor._sync_gate()
    assert dict(supervisor._feed.gate.published) == {"m": frozenset({1})}
