"""Model control under `--workers N`: one call applied in every worker before it is answered.

A worker that receives a model-control call (load, unload, reload) passes it to the supervisor,
which sends it to every worker, waits for each answer, moves the gate to what they now serve,
and answers the worker that received it with the first error any worker met. The config and
unloaded models the call leaves are kept for replacement workers, and a worker that dies while
a call is applied is replaced only after it, so the replacement starts with what the call left.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Mapping
from typing import Any

from pyserving.workers.channel import FrameTooLarge
from pyserving.workers.worker_process import WorkerProcess


class ControlFanout:
    """Applies model-control calls in every worker, one at a time, and remembers what they left.

    Thread-safety: `apply` runs on a thread of its own per call (calls are serialized by
    `_apply_lock`); the worker table and the answers in it belong to the supervisor's lock
    (`changed`'s), which also guards `_state` and `_respawn_after`.
    Blocking: `apply` waits for every live worker's answer and for the gate sync; the other
    methods never wait beyond the supervisor's lock.
    """

    def __init__(
        self,
        changed: threading.Condition,
        workers: Mapping[int, WorkerProcess],
        post_event: Callable[[Callable[[], None]], None],
        sync_gate: Callable[[], None],
        respawn: Callable[[int], None],
        sync_timeout_s: float,
    ) -> None:
        self._changed = changed  # the supervisor's lock and its condition
        self._workers = workers  # slot → its current worker (the supervisor's table)
        self._post_event = post_event  # runs a callable on the coordinator thread
        self._sync_gate = sync_gate
        self._respawn = respawn
        self._sync_timeout_s = sync_timeout_s  # how long a call waits for the gate sync
        self._apply_lock = threading.Lock()  # one model-control call at a time
        self._apply_ids = 0
        #: the config (None: as started) and unloaded models model control left, for replacements
        self._state: tuple[Any, frozenset[str]] | None = None
        # slots whose restart waits for the call under way (guarded by the supervisor's lock)
        self._respawn_after: set[int] = set()

    @property
    def state(self) -> tuple[Any, frozenset[str]] | None:
        """What a replacement worker starts with: (config or None, unloaded models), or None."""
        with self._changed:
            return self._state

    def defer_respawn(self, slot: int) -> bool:
        """True when a call is being applied: `slot` restarts once it ends, with the config it
        leaves. False: restart it now."""
        with self._changed:  # checked and noted at once: apply takes the slots under it
            if self._apply_lock.locked():
                self._respawn_after.add(slot)
                return True
        return False

    def apply(
        self, origin: WorkerProcess, request_id: int, method: str, args: tuple[Any, ...]
    ) -> None:
        """Apply one model-control call in every worker, then answer the one that received it
        with the first error any worker met (None: applied everywhere)."""
        errors: list[tuple[str, str]] = []
        try:
            with self._apply_lock:
                with self._changed:
                    self._apply_ids += 1
                    apply_id = self._apply_ids
                    workers = list(self._workers.values())
                try:
                    for worker in workers:
                        worker.send("apply", apply_id, method, args)
                except FrameTooLarge as exc:
                    # the same message for every worker: the first refused it, none has it
                    # (the worker that took the call checked it against a smaller limit)
                    errors.append(("ResourceExhausted", f"model control {method}: {exc}"))
                    workers = []
                with self._changed:
                    self._changed.wait_for(
                        lambda: all(w.gone or apply_id in w.answers for w in workers)
                    )
                    answers = [w.answers.pop(apply_id) for w in workers if apply_id in w.answers]
                    errors += [error for error, _state in answers if error is not None]
                    if answers and not errors:
                        config, unloaded = answers[0][1]
                        if config is None and self._state is not None:  # not replaced
                            config = self._state[0]
                        self._state = (config, unloaded)
                synced = threading.Event()

                def sync() -> None:
                    self._sync_gate()
                    synced.set()

                self._post_event(sync)
                synced.wait(self._sync_timeout_s)
        finally:
            self._restart_deferred()
        origin.send("answer", request_id, errors[0] if errors else None)

    def _restart_deferred(self) -> None:
        """Queue the restarts that waited for the call that just ended."""
        with self._changed:
            waiting, self._respawn_after = self._respawn_after, set()
        for slot in sorted(waiting):
            self._post_event(functools.partial(self._respawn, slot))
