"""AdaptiveWait: when an open batch stops waiting for more rows (`batch_wait: adaptive`).

While a batch of its model runs, an open batch waits as with the fixed wait (until full or its
timeout), so that a second instance of the model gets a full batch. When no batch of the model
runs, the batch runs as soon as waiting stops paying:
- it holds the rows due back: those that waited while the last batch ran plus those the last
  batch answered (closed-loop clients send again once answered), or
- its rows took at least two calls' time to arrive (`rows * gap between rows >= 2 * run time`):
  the model outpaces its arrivals, so holding them only idles it, or
- rows stopped coming: none for two average gaps (at least half a call) since the last row or
  the last batch's end.
Until a batch has run and two rows have arrived nothing is measured, and the batch runs at once.
A lone client's request therefore runs at once, as if unbatched; closed-loop clients of a slow
model settle into one full batch per call instead of splitting into groups that alternate (a batch
run at the first idle moment sends its clients back while the other group runs); and a batch
never runs early beside a running one, where small batches would crowd a CPU-bound model's
instances (each small call costs nearly a full one).
"""

from __future__ import annotations

__all__ = ["AdaptiveWait"]

#: how much each new gap between rows moves their average (about the last twenty count: rows come
#: in bursts, and a short average dips low at the end of every burst)
_GAP_WEIGHT = 0.05
#: how much each batch's run time moves its average (about the last five count)
_RUN_WEIGHT = 0.2
#: a batch whose rows took this many calls' time to arrive runs at once (not 1: in a closed loop
#: N clients' rows take just over one call to come back, and must not run as N - 1)
_OUTPACED = 2.0
#: rows stop being awaited after this many average gaps without one, or half a call if longer
#: (a gap's jitter is not the end of the stream; half a call is all that waiting may cost)
_PATIENCE_GAPS = 2.0
_PATIENCE_RUNS = 0.5


class AdaptiveWait:
    """One queue's measured arrivals and run times, and the wait they advise.

    Thread-safety: none of its own; the queue calls it under the scheduler's lock.
    """

    __slots__ = ("_cap", "_due_back", "_last_arrival", "_last_event", "_row_gap", "_run_time")

    def __init__(self, timeout_s: float) -> None:
        # a gap counts up to twice the timeout: one long idle spell weighs like sparse traffic
        self._cap = 2 * timeout_s
        self._last_arrival: float | None = None
        self._last_event = 0.0  # the later of the last arrival and the last batch's end
        self._row_gap: float | None = None  # average time between rows
        self._run_time: float | None = None  # average time one batch takes
        self._due_back = 0  # rows expected in the next batch: waiting + answered by the last

    def arrived(self, now: float, rows: int) -> None:
        if self._last_arrival is not None:
            gap = min(now - self._last_arrival, self._cap) / max(rows, 1)
            self._row_gap = (
                gap if self._row_gap is None else _moved(self._row_gap, gap, _GAP_WEIGHT)
            )
        self._last_arrival = self._last_event = now

    def ran(self, seconds: float, ended_at: float, rows: int, waiting: int) -> None:
        """A batch of `rows` rows took `seconds` and ended at `ended_at`, `waiting` rows queued."""
        self._due_back = rows + waiting
        self._run_time = (
            seconds if self._run_time is None else _moved(self._run_time, seconds, _RUN_WEIGHT)
        )
        self._last_event = max(self._last_event, ended_at)

    def runs_now(self, rows: int, now: float, model_idle: bool) -> bool:
        """Whether an open batch of `rows` rows should run now, before its timeout."""
        if not model_idle:
            return False
        gap, run_time = self._row_gap, self._run_time
        if gap is None or run_time is None or self._last_arrival is None:
            return True
        if rows >= self._due_back or rows * gap >= _OUTPACED * run_time:
            return True
        return now >= self._last_event + _patience(gap, run_time)  # rows stopped coming

    def wakeup_at(self, timeout_at: float, model_idle: bool) -> float:
        """When a waiting open batch must be looked at again: when rows may have stopped coming
        on an idle model; beside a running batch only its timeout (the batch's end notifies, and
        an earlier time already past would wake the batch threads in a loop)."""
        if not model_idle or self._row_gap is None or self._run_time is None:
            return timeout_at
        return min(timeout_at, self._last_event + _patience(self._row_gap, self._run_time))


def _patience(gap: float, run_time: float) -> float:
    return max(_PATIENCE_GAPS * gap, _PATIENCE_RUNS * run_time)


def _moved(average: float, sample: float, weight: float) -> float:
    return average + (sample - average) * weight
