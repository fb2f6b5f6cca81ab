"""A `--workers` worker: `pyserving serve` in one process, whose versions come from the supervisor.

The supervisor starts `python -m pyserving.workers.worker` with one end of a socket pair in
PYSERVING_WORKER_FD and sends its serve command line first. The worker then serves as a single
process does, but its Source is fed by the supervisor, its InferenceService sees the Manager
through the supervisor's gate, model control goes through the supervisor to every worker, and it
tells the supervisor what it serves after every state change.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import signal
import socket
import threading
import warnings
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Future
from dataclasses import replace
from pathlib import Path
from typing import Any

from pyserving import errors, metrics
from pyserving.core.ids import ServableData, ServableState
from pyserving.core.manager import Manager
from pyserving.serving.server_core import ServerCore, ServerOptions
from pyserving.sources.base import AspiredVersionsCallback
from pyserving.sources.cache import default_cache_dir
from pyserving.sources.storage_path import StoragePathSourceOptions
from pyserving.workers.aspired_feed import WorkerReport
from pyserving.workers.channel import MAX_CONTROL_BYTES, Channel, ChannelClosed, FrameTooLarge
from pyserving.workers.gate import GatedManager

logger = logging.getLogger("pyserving.workers")

#: the environment variable that names the worker's end of its socket pair
CHANNEL_FD_ENV = "PYSERVING_WORKER_FD"
#: how long a config change waits for every worker to monitor the same base paths
_AGREE_TIMEOUT_S = 60.0
#: how often the gauges that are functions of the live state are written (multiprocess metrics)
_GAUGE_INTERVAL_S = 0.5


class WorkerLink:
    """This worker's side of the supervisor: the hooks `pyserving serve` calls (WorkerHooks),
    the messages it answers, and the reports it sends.

    Thread-safety: one reader thread handles the supervisor's messages in order; `send` (the
    channel) may be called from any thread. Model-control calls wait on their own threads.
    """

    def __init__(self, channel: Channel, start: Mapping[str, Any]) -> None:
        self._channel = channel
        self.demo_root: Path | None = start["demo_root"]
        self.load_before_listening: bool = start["load_before_listening"]
        self._state: tuple[Any, frozenset[str]] | None = start["state"]
        self._initial_gate = start["gate"]
        self._slot: int = start["slot"]
        self._core: ServerCore | None = None
        self._view: GatedManager | None = None
        self._source: FedSource | None = None
        self._ids = itertools.count(1)
        self._pending_lock = threading.Lock()  # guards _pending
        self._pending: dict[int, Future[Any]] = {}  # request id → its answer
        self._closed: ChannelClosed | None = None  # set once the link is down (_pending_lock)
        self._listening = False
        self._changed = threading.Event()  # a state change to report
        self._stop = threading.Event()

    # --- WorkerHooks ---------------------------------------------------------------------------

    def build_core(self, options: ServerOptions) -> ServerCore:
        state = self._state
        if state is not None and state[0] is not None:  # reloaded since the server started
            options = replace(options, model_config=state[0])
        # A cached copy of a remote version is counted and removed by the process that uses
        # it: each worker slot keeps its own copies (a replacement reuses its slot's).
        cache_dir = os.path.join(
            options.model_cache_dir or default_cache_dir(), f"worker-{self._slot}"
        )
        options = replace(options, model_cache_dir=cache_dir)

        def view(manager: Manager) -> GatedManager:
            self._view = GatedManager(manager)
            self._view.set_gate(self._initial_gate)
            return self._view

        def source(source_options: StoragePathSourceOptions) -> FedSource:
            self._source = FedSource(self, source_options)
            return self._source

        core = ServerCore(options, source_factory=source, service_manager=view)
        self._core = core
        core.manager.bus.subscribe(lambda _event: self._changed.set())
        threading.Thread(target=self._read, name="pyserving-worker-link", daemon=True).start()
        threading.Thread(target=self._report, name="pyserving-worker-report", daemon=True).start()
        for name in state[1] if state is not None else ():
            core.unload_model(name)  # as the other workers: unloaded until a load_model
        return core

    def model_control(self, core: ServerCore) -> ControlProxy:
        return ControlProxy(self, core)

    def serving(self, core: ServerCore, inflight_bytes: Callable[[], int]) -> None:
        self._listening = True
        self._changed.set()
        logger.info("serving (pid %d)", os.getpid())

        def write_gauges() -> None:
            # multiprocess metrics read files: functions bound with set_function are not seen
            while not self._stop.wait(_GAUGE_INTERVAL_S):
                metrics.PENDING_REQUESTS.set(core.service.pending_requests)
                metrics.INFLIGHT_REQUEST_BYTES.set(inflight_bytes())

        threading.Thread(target=write_gauges, name="pyserving-worker-gauges", daemon=True).start()

    def close(self) -> None:
        """Stop the gauge and report threads; a closed supervisor link no longer stops this
        process."""
        self._stop.set()
        self._changed.set()  # wakes the report thread, which then sees _stop

    # --- requests to the supervisor ------------------------------------------------------------

    def send(self, *message: Any) -> None:
        with contextlib.suppress(ChannelClosed):  # gone: the reader thread stops this worker
            self._channel.send(*message)

    def ask(
        self,
        kind: str,
        *args: Any,
        timeout_s: float | None = None,
        limit_bytes: int = MAX_CONTROL_BYTES,
    ) -> Any:
        """Send a request and wait for its answer. Raises TimeoutError; FrameTooLarge (nothing
        sent) when the request is over `limit_bytes` once encoded; ChannelClosed when the
        supervisor is gone, or goes before it answers (no request waits for a dead link)."""
        request_id = next(self._ids)
        answer: Future[Any] = Future()
        with self._pending_lock:
            if self._closed is not None:
                raise ChannelClosed(str(self._closed))
            self._pending[request_id] = answer
        try:
            self._channel.send(kind, request_id, *args, limit_bytes=limit_bytes)
            return answer.result(timeout_s)
        finally:
            with self._pending_lock:
                self._pending.pop(request_id, None)

    # --- the supervisor's messages -------------------------------------------------------------

    def _read(self) -> None:
        try:
            while True:
                kind, *args = self._channel.receive()
                if kind == "ping":
                    self.send("pong")
                elif kind == "aspire":
                    assert self._source is not None
                    self._source.deliver(args[0], args[1])
                elif kind == "gate":
                    assert self._view is not None
                    self._view.set_gate(args[1])
                    self.send("gate_applied", args[0])
                elif kind == "apply":
                    threading.Thread(target=self._apply, args=args, daemon=True).start()
                elif kind == "answer":
                    with self._pending_lock:
                        answer = self._pending.get(args[0])
                    if answer is not None:
                        answer.set_result(args[1])
        except ChannelClosed as exc:
            with self._pending_lock:  # the requests under way fail: none waits for an answer
                self._closed = exc
                pending, self._pending = list(self._pending.values()), {}
            for answer in pending:
                answer.set_exception(exc)
            if not self._stop.is_set():
                logger.error("the supervisor is gone: stopping")  # lines say which worker
                os.kill(os.getpid(), signal.SIGTERM)  # drains as a SIGTERM from it would

    def _apply(self, request_id: int, method: str, args: tuple[Any, ...]) -> None:
        """Run one model-control call the supervisor sends every worker; answer its outcome."""
        core = self._core
        assert core is not None
        error: tuple[str, str] | None = None
        config_before = core.config
        try:
            getattr(core, method)(*args)
        except errors.ServingError as exc:
            error = (type(exc).__name__, exc.message)
        except Exception as exc:  # edge: one worker's bug is the caller's 500, not a hang
            logger.exception("model control %s failed", method)
            error = ("ServingError", f"{method} failed: {exc}")
        # What the supervisor keeps for a replacement worker: the config only where this call
        # replaced it (None: as before), and the models left unloaded.
        config = core.config if core.config is not config_before and error is None else None
        try:
            self._channel.send(
                "applied",
                request_id,
                error,
                (config, _unloaded(core)),
                limit_bytes=MAX_CONTROL_BYTES,
            )
        except FrameTooLarge as exc:  # a config grown past the limit as its paths resolved
            error = ("ResourceExhausted", f"{method} was applied, but the config it leaves: {exc}")
            self.send("applied", request_id, error, None)
        except ChannelClosed:
            pass  # the reader thread stops this worker

    def _report(self) -> None:
        last: tuple[WorkerReport, bool] | None = None
        while not self._stop.is_set():
            self._changed.wait()
            self._changed.clear()
            core = self._core
            assert core is not None
            report = (_report_of(core), self._listening)
            if report != last:
                last = report
                self.send("report", *report)


class FedSource:
    """ServerCore's Source in a worker: the supervisor's lists, in the order it sent them.

    Thread-safety: `deliver` runs on the link's reader thread; the rest on ServerCore's threads.
    Blocking: `poll_once` waits until the supervisor polled and sent what changed.
    """

    def __init__(self, link: WorkerLink, options: StoragePathSourceOptions) -> None:
        self._link = link
        self._callback: AspiredVersionsCallback[str] | None = None
        link.send("source_options", 0, options)  # the link cannot read answers yet

    def set_aspired_versions_callback(self, callback: AspiredVersionsCallback[str]) -> None:
        self._callback = callback

    def deliver(self, name: str, items: list[ServableData[str]]) -> None:
        assert self._callback is not None
        self._callback(name, items)

    def poll_once(self) -> None:
        """Ask the supervisor to poll now; returns once this worker has the lists it sent, or
        at once when the supervisor is gone (this worker is stopping)."""
        with contextlib.suppress(ChannelClosed):
            self._link.ask("poll")

    def start(self) -> None:
        pass  # the supervisor polls

    def stop(self) -> None:
        pass

    def update_config(self, options: StoragePathSourceOptions) -> None:
        """Tell the supervisor what this worker's config monitors now; returns once it polled
        that (when every worker says the same) and this worker has the lists it sent, as
        StoragePathSource.update_config does, or after a while without (it logs why)."""
        try:
            self._link.ask("source_options", options, timeout_s=_AGREE_TIMEOUT_S)
        except ChannelClosed:
            pass  # the supervisor is gone: this worker is stopping
        except TimeoutError:
            logger.warning(
                "the other workers did not apply the same model config within %gs",
                _AGREE_TIMEOUT_S,
            )


class ControlProxy:
    """Model control under `--workers`: load, unload and reload go to the supervisor, which
    applies them in every worker and answers once all have; the index is this worker's.

    Thread-safety: any thread. Blocking: every call but `repository_index` waits for all workers.
    """

    def __init__(self, link: WorkerLink, core: ServerCore) -> None:
        self._link = link
        self._core = core

    def reload_config(self, config: Any) -> None:
        self._control("reload_config", config)

    def load_model(self, name: str) -> None:
        self._control("load_model", name)

    def unload_model(self, name: str) -> None:
        self._control("unload_model", name)

    def repository_index(self) -> Iterable[Mapping[str, str]]:
        return self._core.repository_index()

    def _control(self, method: str, *args: Any) -> None:
        try:
            error = self._link.ask("control", method, args)
        except FrameTooLarge as exc:  # refused before any worker sees it
            raise errors.ResourceExhausted(
                f"model control {method}: the call is {exc.size_bytes} bytes once encoded for"
                f" the workers, over the {exc.limit_bytes}-byte limit of a model-control call"
                " under --workers"
            ) from None
        except ChannelClosed:
            raise errors.Unavailable(
                f"model control {method}: the supervisor is gone (the server is stopping)"
            ) from None
        if error is not None:
            kind, message = error
            cls = getattr(errors, kind, errors.ServingError)
            raise cls(message)


def _unloaded(core: ServerCore) -> frozenset[str]:
    serving = set(core.model_names())
    return frozenset(
        n for n in core.config.names() if n not in serving and not core.on_demand.is_on_demand(n)
    )


def _report_of(core: ServerCore) -> WorkerReport:
    monitor = core.manager.monitor
    available: dict[str, frozenset[int]] = {}
    failed: dict[str, frozenset[int]] = {}
    for name in monitor.names():
        states = monitor.states(name)
        available[name] = frozenset(
            s.id.version for s in states if s.state is ServableState.AVAILABLE
        )
        failed[name] = frozenset(
            s.id.version
            for s in states
            if s.error is not None and s.state in (ServableState.LOADING, ServableState.END)
        )
    on_demand = frozenset(n for n in core.config.names() if core.on_demand.is_on_demand(n))
    return WorkerReport(available, failed, on_demand)


def _name_worker_in_logs(slot: int) -> None:
    """Start every log message of this process with "worker N:", so that the lines of the
    workers (which share the supervisor's output) can be told apart."""
    make_record = logging.getLogRecordFactory()

    def record_of_worker(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = make_record(*args, **kwargs)
        record.msg = f"worker {slot}: {record.msg}"
        return record

    logging.setLogRecordFactory(record_of_worker)


def main() -> int:
    """The worker process: read the supervisor's start message, then serve."""
    from pyserving.cli_serve import serve_as_worker

    # multiprocess metrics cannot drop a series; on_demand sets a removed one to 0 first
    warnings.filterwarnings("ignore", "Removal of labels has not been implemented")
    channel = Channel(socket.socket(fileno=int(os.environ.pop(CHANNEL_FD_ENV))))
    kind, start = channel.receive()
    assert kind == "start"
    link = WorkerLink(channel, start)
    _name_worker_in_logs(start["slot"])
    try:
        return serve_as_worker(start["argv"], link)
    finally:
        link.close()


if __name__ == "__main__":
    raise SystemExit(main())
