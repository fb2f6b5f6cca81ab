"""The `--workers N` supervisor: starts N workers, runs the Source for them, keeps them one server.

It serves no request itself. Each worker binds both ports with SO_REUSEPORT (the kernel spreads
connections) and runs its own Manager; the supervisor polls the model base paths and sends every
worker the same aspired lists through an AspiredFeed, moves the gate (which version requests go
to, which status shows), applies model control in every worker before answering it
(workers/control_fanout.py), replaces a worker that dies, and on SIGTERM drains them all.
Metrics are prometheus-client's multiprocess files in a private directory: `/metrics` from any
worker sums every worker's, those that exited included, so counters never go back.
"""

from __future__ import annotations

import argparse
import functools
import logging
import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from prometheus_client import multiprocess

from pyserving.core.ids import ServableData
from pyserving.listen_ports import PortTaken, bind_listeners, reserve_port
from pyserving.sources.storage_path import StoragePathSource, StoragePathSourceOptions
from pyserving.workers.aspired_feed import AspiredFeed, Gate, compute_gate
from pyserving.workers.channel import ChannelClosed
from pyserving.workers.control_fanout import ControlFanout
from pyserving.workers.worker_process import WorkerProcess

logger = logging.getLogger("pyserving.workers")

#: how long a gate change waits for a worker to apply it before going on without it
_GATE_WAIT_S = 5.0
#: a worker that dies before it listens is restarted after this, doubling up to the maximum
_RESTART_BACKOFF_S = (0.5, 30.0)
#: how often the supervisor pings each worker, and how long one may stay silent before it is
#: taken for hung and killed (a model load that holds the GIL this long would be killed too)
_PING_INTERVAL_S = 2.0
_HUNG_AFTER_S = 30.0
#: beyond the drain timeout, what a worker gets to unload its models before it is killed
_STOP_GRACE_S = 30.0


def run_supervisor(args: argparse.Namespace, argv: Sequence[str], demo_root: Path | None) -> int:
    """Serve with `args.workers` processes until SIGTERM/SIGINT; 0 after a clean drain, 2 when
    the first workers cannot start (a bad flag, config or port: they said why on stderr) or a
    port is taken (by anyone: listen_ports.reserve_port holds both until the workers exited)."""
    try:
        reserved = bind_listeners(args.host, args.rest_api_port, args.port, reserve_port)
    except PortTaken as exc:
        print(exc, file=sys.stderr)
        return 2
    held = [sock for sock in reserved if sock is not None]
    try:
        return _supervise(args, argv, demo_root)
    finally:
        for sock in held:  # after every worker exited: no other server shares the port
            sock.close()


def _supervise(args: argparse.Namespace, argv: Sequence[str], demo_root: Path | None) -> int:
    metrics_dir = tempfile.mkdtemp(prefix="pyserving-metrics-")  # 0700: this user's only
    supervisor = Supervisor(
        argv=list(argv),
        workers=args.workers,
        demo_root=demo_root,
        metrics_dir=metrics_dir,
        availability_preserving=args.version_transition_policy == "availability",
        stop_timeout_s=args.drain_timeout_seconds + _STOP_GRACE_S,
    )
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, _frame: supervisor.request_stop(signum))
    try:
        return supervisor.run()
    finally:
        shutil.rmtree(metrics_dir, ignore_errors=True)


class Supervisor:
    """Starts, feeds, coordinates and replaces the workers (module docstring).

    Thread-safety: one coordinator thread makes every feed and gate decision in the order
    events arrive (`_events`); each worker has a reader thread; model-control calls run on
    threads of their own, one at a time (`_control`: workers/control_fanout.py); a pinger
    thread kills hung workers. `_lock` guards the worker table and what the readers write into
    it; `_changed` wakes whoever waits on them.
    """

    def __init__(
        self,
        argv: list[str],
        workers: int,
        demo_root: Path | None,
        metrics_dir: str,
        availability_preserving: bool,
        stop_timeout_s: float,
    ) -> None:
        self._argv = argv
        self._count = workers
        self._demo_root = demo_root
        self._metrics_dir = metrics_dir
        self._stop_timeout_s = stop_timeout_s
        self._lock = threading.Lock()  # guards _workers, each WorkerProcess's fields, _state
        self._changed = threading.Condition(self._lock)
        self._workers: dict[int, WorkerProcess] = {}  # slot → its current worker
        self._events: queue.Queue[Callable[[], None]] = queue.Queue()
        self._feed = AspiredFeed(availability_preserving, self._broadcast_list)
        self._source: StoragePathSource | None = None
        self._source_options: StoragePathSourceOptions | None = None
        self._source_started = False
        self._gate_seq = 0
        # a gate sync moves the gate at most twice, each waiting up to _GATE_WAIT_S
        self._control = ControlFanout(
            self._changed,
            self._workers,
            self._events.put,
            self._sync_gate,
            self._respawn,
            sync_timeout_s=_GATE_WAIT_S * 2,
        )
        self._stopping = threading.Event()
        self._exit_code = 0
        self._restarts: dict[int, float] = {}  # slot → backoff of its next restart

    # --- lifecycle -----------------------------------------------------------------------------

    def request_stop(self, signum: int) -> None:
        """SIGTERM/SIGINT: drain every worker (a second signal kills them)."""
        if self._stopping.is_set():
            logger.warning("received %s again: killing the workers", signal.Signals(signum).name)
            for worker in list(self._workers.values()):
                worker.signal(signal.SIGKILL)
            return
        logger.info("received %s: draining %d worker(s)", signal.Signals(signum).name, self._count)
        self._stopping.set()
        self._events.put(lambda: None)  # wake the coordinator

    def run(self) -> int:
        logger.info("starting %d workers (supervisor pid %d)", self._count, os.getpid())
        for slot in range(self._count):
            self._spawn(slot, load_before_listening=False)
        # its own thread: a slow poll of a remote store in the coordinator must not look like
        # every worker hanging
        threading.Thread(target=self._ping_workers, name="pyserving-pings", daemon=True).start()
        while not self._stopping.is_set():
            try:
                event = self._events.get(timeout=0.5)
            except queue.Empty:
                continue
            try:
                event()
            except Exception:  # edge: the coordinator must outlive a bug in one event
                logger.exception("supervisor event failed")
        return self._stop_all()

    def _ping_workers(self) -> None:
        while not self._stopping.wait(_PING_INTERVAL_S):
            with self._lock:
                workers = [w for w in self._workers.values() if w.options is not None]
            now = time.monotonic()
            for worker in workers:
                worker.ping_or_kill(now, _HUNG_AFTER_S)

    def _stop_all(self) -> int:
        with self._lock:
            workers = list(self._workers.values())
        for worker in workers:
            worker.signal(signal.SIGTERM)
        if self._source is not None:
            self._source.stop()
        deadline = time.monotonic() + self._stop_timeout_s
        code = self._exit_code
        for worker in workers:
            try:
                rc = worker.process.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                logger.error(
                    "worker %d (pid %d) did not stop in time: killing it", worker.slot, worker.pid
                )
                worker.process.kill()
                rc = worker.process.wait()
            # killed by the SIGTERM before it could drain (still starting): nothing to drain
            if rc not in (0, -signal.SIGTERM) and code == 0:
                code = 1
        logger.info("every worker stopped")
        return code

    def _spawn(self, slot: int, load_before_listening: bool) -> None:
        state = self._control.state
        worker = WorkerProcess.start(
            slot,
            self._metrics_dir,
            {
                "argv": self._argv,
                "demo_root": self._demo_root,
                "load_before_listening": load_before_listening,
                "state": state,
                "gate": self._feed.gate,
            },
        )
        worker.listens_while_loading = not load_before_listening
        with self._lock:
            self._workers[slot] = worker
        threading.Thread(
            target=self._read, args=(worker,), name=f"pyserving-worker-{slot}", daemon=True
        ).start()
        logger.info("worker %d started (pid %d)", slot, worker.pid)

    def _read(self, worker: WorkerProcess) -> None:
        """The worker's messages: answers are recorded here, the rest become events."""
        try:
            while True:
                kind, *args = worker.channel.receive()
                if kind == "pong":
                    worker.last_pong = time.monotonic()
                elif kind == "gate_applied":
                    with self._lock:
                        worker.acked_gate = max(worker.acked_gate, args[0])
                        self._changed.notify_all()
                elif kind == "applied":
                    with self._lock:
                        worker.answers[args[0]] = (args[1], args[2])
                        self._changed.notify_all()
                elif kind == "control":
                    threading.Thread(
                        target=self._control.apply, args=(worker, *args), daemon=True
                    ).start()
                else:
                    self._events.put(functools.partial(self._on_message, worker, (kind, *args)))
        except ChannelClosed:
            pass
        rc = worker.process.wait()
        self._events.put(functools.partial(self._on_gone, worker, rc))

    # --- coordinator events --------------------------------------------------------------------

    def _on_message(self, worker: WorkerProcess, message: tuple[Any, ...]) -> None:
        kind, *args = message
        if worker.gone:
            return
        if kind == "source_options":
            if worker.options is None:
                worker.last_pong = time.monotonic()  # its link is up: pings start
            request_id, worker.options = args
            if request_id:
                worker.options_waiting.append(request_id)
            self._apply_source_options()
        elif kind == "poll":
            self._poll(worker, args[0])
        elif kind == "report":
            with self._lock:
                worker.report, worker.listening = args
                self._changed.notify_all()
            if worker.listening:
                self._restarts.pop(worker.slot, None)
            self._sync_gate()

    def _on_gone(self, worker: WorkerProcess, rc: int) -> None:
        with self._lock:
            worker.gone = True
            if self._workers.get(worker.slot) is worker:
                del self._workers[worker.slot]
            self._changed.notify_all()
        worker.channel.close()
        multiprocess.mark_process_dead(worker.pid, self._metrics_dir)  # its live gauges go
        if self._stopping.is_set():
            return
        self._apply_source_options()  # the others may agree now
        if rc == 2 and not worker.listening and not self._ever_listened():
            logger.error("worker %d could not start (exit status 2): stopping", worker.slot)
            self._exit_code = 2
            self._stopping.set()
            return
        logger.error(
            "worker %d (pid %d) exited with status %s: replacing it", worker.slot, worker.pid, rc
        )
        self._sync_gate()
        delay = 0.0
        if not worker.listening:  # died while starting: do not spin
            delay = self._restarts.get(worker.slot, _RESTART_BACKOFF_S[0])
            self._restarts[worker.slot] = min(delay * 2, _RESTART_BACKOFF_S[1])
        timer = threading.Timer(
            delay, self._events.put, (functools.partial(self._respawn, worker.slot),)
        )
        timer.daemon = True  # a pending restart never holds up the exit
        timer.start()

    def _respawn(self, slot: int) -> None:
        if self._stopping.is_set():
            return
        if self._control.defer_respawn(slot):
            return  # a model-control call is being applied: the slot restarts after it
        self._spawn(slot, load_before_listening=True)

    def _ever_listened(self) -> bool:
        with self._lock:
            return any(w.listening for w in self._workers.values())

    def _apply_source_options(self) -> None:
        """Poll what the workers' configs monitor, once every live worker says the same."""
        with self._lock:
            # a worker still starting has said nothing yet; the others must agree
            said = [w.options for w in self._workers.values() if w.options is not None]
        options = said[0] if said else None
        if options is None or any(o != options for o in said):
            return
        if options != self._source_options:
            self._poll_new_options(options)
        # after the lists the poll queued: then each waiting worker has them
        self._events.put(self._answer_options)

    def _answer_options(self) -> None:
        with self._lock:
            workers = list(self._workers.values())
        for worker in workers:
            waiting, worker.options_waiting = worker.options_waiting, []
            for request_id in waiting:
                worker.send("answer", request_id, None)

    def _poll_new_options(self, options: StoragePathSourceOptions) -> None:
        if self._source is None:
            self._source = StoragePathSource(options)
            self._source.set_aspired_versions_callback(self._on_source_list)
        else:
            try:
                self._source.update_config(options)
            except ValueError as exc:
                logger.error("model config change not applied to the source: %s", exc)
                return
        self._source_options = options

    def _on_source_list(self, name: str, items: list[ServableData[str]]) -> None:
        # Called inside poll_once / update_config (the coordinator) or by the polling thread.
        self._events.put(lambda: self._on_list(name, items))

    def _on_list(self, name: str, items: list[ServableData[str]]) -> None:
        self._feed.aspire_versions(name, items)
        self._sync_gate()

    def _poll(self, worker: WorkerProcess, request_id: int) -> None:
        if self._source is not None:
            self._source.poll_once()
            if not self._source_started:
                self._source_started = True
                self._source.start()
        # after the lists that poll queued: then the worker has what it asked for
        self._events.put(lambda: self._answer_poll(worker, request_id))

    def _answer_poll(self, worker: WorkerProcess, request_id: int) -> None:
        if not worker.fed:
            worker.fed = True
            for name, items in self._feed.current().items():
                worker.send("aspire", name, items)
        worker.send("answer", request_id, None)

    def _broadcast_list(self, name: str, items: list[ServableData[str]]) -> None:
        with self._lock:
            workers = [w for w in self._workers.values() if w.fed]
        for worker in workers:
            worker.send("aspire", name, items)

    def _sync_gate(self) -> None:
        """Move the gate to what the listening workers serve (first workers count from their
        start: they listen while they load): `latest` in every worker first, then `published`;
        then let replaced versions go where their successors settled."""
        with self._lock:
            reports = [
                w.report for w in self._workers.values() if w.listening or w.listens_while_loading
            ]
        gate = compute_gate(self._feed.names(), reports)
        if gate is not None and gate != self._feed.gate:
            routed = Gate(gate.latest, self._feed.gate.published)
            if routed != self._feed.gate:
                self._send_gate(routed)
            self._send_gate(gate)
            self._feed.set_gate(gate)
        self._feed.release(reports)

    def _send_gate(self, gate: Gate) -> None:
        self._gate_seq += 1
        seq = self._gate_seq
        with self._lock:
            workers = list(self._workers.values())
        for worker in workers:
            worker.send("gate", seq, gate)
        # a worker still importing reads it before it listens: no need to wait for that one
        workers = [w for w in workers if w.options is not None]
        deadline = time.monotonic() + _GATE_WAIT_S
        with self._lock:
            applied = self._changed.wait_for(
                lambda: all(w.gone or w.acked_gate >= seq for w in workers),
                max(0.0, deadline - time.monotonic()),
            )
        if not applied:
            logger.warning("a worker did not apply the gate within %gs", _GATE_WAIT_S)
