"""One unbatched model call on its model's execution thread: drop it when its deadline passed,
call the servable (its error wrapped once), collect the wanted outputs, count it in the version's
statistics. `InferenceService.run` submits it to the model's lane.
"""

from __future__ import annotations

import time

import numpy as np

from pyserving.errors import DeadlineExceeded
from pyserving.platforms.servable import Servable, call_servable, current_deadline
from pyserving.serving import tracing
from pyserving.serving.signature_plan import SignaturePlan
from pyserving.serving.version_stats import VersionStats

__all__ = ["execute"]


def execute(
    servable: Servable,
    plan: SignaturePlan,
    inputs: dict[str, np.ndarray],
    wanted: tuple[str, ...],
    rows: int,
    deadline: float | None,
    stats: VersionStats,
    submitted_ns: int,
    timing: tracing.CallTiming | None = None,
) -> dict[str, np.ndarray]:
    """On an execution thread: drop expired work, call the servable, wrap its exception once,
    collect the wanted outputs (converting them, which grows with the output, happens here);
    a call that returned is counted in `stats` as `rows` batch items (queued since
    `submitted_ns`, perf_counter), and
    a traced request's `timing` records when it started and returned."""
    started = time.perf_counter_ns()
    if timing is not None:
        timing.started_ns = time.time_ns()
    try:
        if deadline is not None and time.monotonic() >= deadline:
            raise DeadlineExceeded("Deadline exceeded while the request was queued")
        token = current_deadline.set(deadline)
        try:
            results = call_servable(servable, plan.signature.name, inputs)
        finally:
            current_deadline.reset(token)
        called = time.perf_counter_ns()
        outputs = plan.collect(results, wanted)
    finally:
        if timing is not None:
            timing.ended_ns = time.time_ns()
    ended = time.perf_counter_ns()
    stats.called(1, rows, started - submitted_ns, 0, called - started, ended - called)
    return outputs
