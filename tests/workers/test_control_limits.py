"""Model control under `--workers` whatever its size or timing (red team 4 F1): a call too large
for the workers channel is refused before any worker sees it, a call under way fails when the
supervisor goes instead of holding the worker's drain, and a worker's answer carries only what
the supervisor keeps."""

from __future__ import annotations

import contextlib
import queue
import socket
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from pyserving import errors
from pyserving.workers import supervisor as sup
from pyserving.workers.aspired_feed import Gate
from pyserving.workers.channel import MAX_CONTROL_BYTES, Channel, FrameTooLarge
from pyserving.workers.worker import ControlProxy, WorkerLink
from pyserving.workers.worker_process import WorkerProcess


class Link:
    """A WorkerLink reading its end of a socket pair, and the supervisor's end of the pair."""

    def __init__(self) -> None:
        mine, theirs = socket.socketpair()
        theirs.settimeout(10)
        self.supervisor_end = Channel(theirs)
        self.raw = theirs
        start = {"demo_root": None, "load_before_listening": False, "state": None}
        self.worker_end = Channel(mine)
        self.link = WorkerLink(self.worker_end, {**start, "gate": Gate(), "slot": 0})
        self.reader = threading.Thread(target=self.link._read, daemon=True)
        self.reader.start()
        self.control = ControlProxy(self.link, core=None)  # type: ignore[arg-type]

    def close(self) -> None:
        self.link.close()  # a closed link no longer stops this (test) process
        self.supervisor_end.close()
        self.reader.join(10)
        self.worker_end.close()


@pytest.fixture
def link() -> Iterator[Link]:
    ends = Link()
    try:
        yield ends
    finally:
        ends.close()


def test_a_control_call_over_the_limit_is_refused_naming_its_size_and_the_limit(
    link: Link,
) -> None:
    with pytest.raises(errors.ResourceExhausted) as refused:
        link.control.reload_config(b"x" * MAX_CONTROL_BYTES)  # its pickle: a few bytes over
    assert "model control reload_config" in refused.value.message
    assert f"over the {MAX_CONTROL_BYTES}-byte limit" in refused.value.message
    link.raw.setblocking(False)
    with pytest.raises(BlockingIOError):
        link.raw.recv(1)  # nothing reached the supervisor
    link.raw.setblocking(True)
    with ThreadPoolExecutor(1) as pool:  # and the link still carries the next call
        call = pool.submit(link.control.load_model, "m")
        kind, request_id, method, args = link.supervisor_end.receive()
        assert (kind, method, args) == ("control", "load_model", ("m",))
        link.supervisor_end.send("answer", request_id, None)
        assert call.result(10) is None


def test_a_control_call_under_way_fails_unavailable_when_the_supervisor_goes(
    link: Link,
) -> None:
    with ThreadPoolExecutor(1) as pool:
        call = pool.submit(link.control.unload_model, "m")
        assert link.supervisor_end.receive()[0] == "control"
        link.link.close()  # the test process must not SIGTERM itself when the link drops
        link.supervisor_end.close()
        with pytest.raises(errors.Unavailable, match="the supervisor is gone"):
            call.result(10)  # before: waited forever, and so did the worker's drain
        with pytest.raises(errors.Unavailable):  # a call after the link dropped fails at once
            link.control.load_model("m")


class AnsweringChannel:
    """A worker as the supervisor sees it: answers "apply" with `reply`, or refuses it as too
    large for the channel."""

    def __init__(self, owner: sup.Supervisor, reply: Any = None, too_large: bool = False) -> None:
        self.owner = owner
        self.reply = reply
        self.too_large = too_large
        self.worker: WorkerProcess | None = None
        self.sent: list[tuple[Any, ...]] = []

    def send(self, *message: Any) -> None:
        if message[0] == "apply" and self.too_large:
            raise FrameTooLarge("apply", 70 << 20, 64 << 20)
        self.sent.append(message)
        if message[0] == "apply":
            with self.owner._lock:
                assert self.worker is not None
                self.worker.answers[message[1]] = self.reply
                self.owner._changed.notify_all()

    def close(self) -> None:
        pass


class FakeProcess:
    pid = 1000


def run_control(supervisor: sup.Supervisor, worker: WorkerProcess, method: str) -> None:
    """`_control.apply` on its thread, the coordinator's events run here until it ends."""
    control = threading.Thread(
        target=supervisor._control.apply, args=(worker, 7, method, ("arg",)), daemon=True
    )
    control.start()
    while control.is_alive():
        with contextlib.suppress(queue.Empty):  # nothing queued yet
            supervisor._events.get(timeout=0.1)()
    control.join(10)


def make_worker(supervisor: sup.Supervisor, channel: AnsweringChannel) -> WorkerProcess:
    worker = WorkerProcess(0, FakeProcess(), channel)
    channel.worker = worker
    supervisor._workers[0] = worker
    return worker


def test_an_apply_too_large_for_the_channel_answers_an_error_and_reaches_no_worker(
    tmp_path: Path,
) -> None:
    supervisor = sup.Supervisor([], 1, None, str(tmp_path), True, 1.0)
    channel = AnsweringChannel(supervisor, too_large=True)
    worker = make_worker(supervisor, channel)
    run_control(supervisor, worker, "reload_config")
    kind, request_id, (error_kind, message) = channel.sent[-1]
    assert (kind, request_id, error_kind) == ("answer", 7, "ResourceExhausted")
    assert "73400320 bytes" in message and "67108864-byte limit" in message
    assert not [m for m in channel.sent if m[0] == "apply"] and supervisor._control.state is None


def test_a_load_or_unload_answer_keeps_the_config_the_last_reload_left(tmp_path: Path) -> None:
    """A worker answers a load or unload with its unloaded models only (no config, which
    pickled to about twice the reload that set it); a replacement still gets the config."""
    supervisor = sup.Supervisor([], 1, None, str(tmp_path), True, 1.0)
    channel = AnsweringChannel(supervisor, reply=(None, ("reloaded", frozenset())))
    worker = make_worker(supervisor, channel)
    run_control(supervisor, worker, "reload_config")
    assert supervisor._control.state == ("reloaded", frozenset())
    channel.reply = (None, (None, frozenset({"m"})))
    run_control(supervisor, worker, "unload_model")
    assert supervisor._control.state == ("reloaded", frozenset({"m"}))
    assert channel.sent[-1] == ("answer", 7, None)
