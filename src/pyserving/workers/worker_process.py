"""WorkerProcess: one worker as the supervisor sees it — its process, its link, what it said."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Mapping
from typing import Any

from pyserving.sources.storage_path import StoragePathSourceOptions
from pyserving.workers.aspired_feed import WorkerReport
from pyserving.workers.channel import Channel, ChannelClosed
from pyserving.workers.worker import CHANNEL_FD_ENV

logger = logging.getLogger("pyserving.workers")


class WorkerProcess:
    """One worker process and the supervisor's record of it.

    Thread-safety: its reader thread (the supervisor's) writes `acked_gate` and `answers`, the
    coordinator the rest, all under the supervisor's lock; `send` may be called from any thread.
    """

    def __init__(self, slot: int, process: Any, channel: Any) -> None:
        self.slot = slot
        self.process = process
        self.channel = channel
        self.report = WorkerReport()
        self.listening = False
        #: it listens before its first load (a first worker): it counts for the gate from its
        #: start, serving nothing until it reports, so that no version is published (and no
        #: worker ready) while it would answer "not found"
        self.listens_while_loading = False
        self.fed = False  # has been sent the full feed (after its first poll)
        self.options: StoragePathSourceOptions | None = None
        self.options_waiting: list[int] = []  # its requests to answer once options are polled
        self.gone = False
        self.acked_gate = 0  # the last gate sequence number it applied
        self.answers: dict[int, Any] = {}  # apply id → its answer
        self.last_pong = 0.0  # time.monotonic() of its last answer to a ping
        self.killed = False  # killed for not answering

    @classmethod
    def start(cls, slot: int, metrics_dir: str, start: Mapping[str, Any]) -> WorkerProcess:
        """Start `python -m pyserving.workers.worker` with one end of a new socket pair, its
        metrics in `metrics_dir`, and send it `start` (its first message)."""
        ours, theirs = socket.socketpair()
        env = dict(os.environ)
        env["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
        env[CHANNEL_FD_ENV] = str(theirs.fileno())
        process = subprocess.Popen(
            [sys.executable, "-m", "pyserving.workers.worker"],
            env=env,
            pass_fds=(theirs.fileno(),),
            start_new_session=True,  # Ctrl-C reaches the supervisor only; it drains them
        )
        theirs.close()
        worker = cls(slot, process, Channel(ours))
        worker.send("start", {**start, "slot": slot})
        return worker

    @property
    def pid(self) -> int:
        pid: int = self.process.pid
        return pid

    def send(self, *message: Any) -> None:
        with contextlib.suppress(ChannelClosed):  # it died: its reader thread reports it
            self.channel.send(*message)

    def ping_or_kill(self, now: float, hung_after_s: float) -> None:
        """Ping it; kill it when it has not answered for `hung_after_s` (stopped, deadlocked):
        it would keep the connections the kernel gives it and stall model control. The
        supervisor replaces it as it replaces any worker that dies."""
        if now - self.last_pong <= hung_after_s:
            self.send("ping")
        elif not self.killed:
            self.killed = True
            logger.error(
                "worker %d (pid %d) has not answered for %gs: killing it",
                self.slot,
                self.pid,
                hung_after_s,
            )
            self.signal(signal.SIGKILL)

    def signal(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):  # already gone
            self.process.send_signal(sig)
