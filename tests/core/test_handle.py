"""ServableHandle and VersionRefCount: release is atomic under any interleaving of two threads."""

from __future__ import annotations

import sys
import threading

from pyserving.core.handle import ServableHandle, VersionRefCount
from pyserving.core.ids import ServableId

SID = ServableId("m", 1)


def _release_paused_at(handle: ServableHandle, step: int, other: threading.Thread) -> None:
    """Call `handle.release()` with opcode tracing, and before the `step`-th opcode executed in
    `release` itself, run `other` (a second release) to completion: one exact interleaving."""
    counter = {"n": 0}
    code = ServableHandle.release.__code__

    def tracer(frame, event, arg):
        if frame.f_code is not code:
            return None
        frame.f_trace_opcodes = True
        if event == "opcode":
            if counter["n"] == step:
                other.start()
                other.join(10)
            counter["n"] += 1
        return tracer

    sys.settrace(tracer)
    try:
        handle.release()
    finally:
        sys.settrace(None)
    if not other.is_alive() and other.ident is None:
        other.start()  # `step` was past the end of release: run it afterwards
        other.join(10)


def test_concurrent_release_releases_exactly_once_at_every_interleaving_issue_15():
    """b65bd49 read `_ref` then cleared it in two steps: a second release in between released
    the version twice, so its count went below zero and an unload could run under a request."""
    step = 0
    while True:
        ref = VersionRefCount(SID, object())
        assert ref.try_acquire() and ref.try_acquire()  # this handle's and another request's
        handle = ServableHandle(ref)
        other = threading.Thread(target=handle.release)
        _release_paused_at(handle, step, other)
        assert ref.in_flight == 1, f"interleaved at opcode {step}: count {ref.in_flight}"
        if step > 200 or not _reached(handle, step):
            break
        step += 1


def _reached(handle: ServableHandle, step: int) -> bool:
    """Whether `release` of an unreleased handle executes more than `step` opcodes."""
    counter = {"n": 0}
    code = ServableHandle.release.__code__

    def tracer(frame, event, arg):
        if frame.f_code is not code:
            return None
        frame.f_trace_opcodes = True
        if event == "opcode":
            counter["n"] += 1
        return tracer

    ref = VersionRefCount(SID, object())
    ref.try_acquire()
    fresh = ServableHandle(ref)
    sys.settrace(tracer)
    try:
        fresh.release()
    finally:
        sys.settrace(None)
    return counter["n"] > step + 1


def test_many_threads_releasing_one_handle_release_it_once_issue_15():
    ref = VersionRefCount(SID, object())
    for _ in range(200):
        assert ref.try_acquire()
        handle = ServableHandle(ref)
        barrier = threading.Barrier(8)

        def release(h=handle, b=barrier):
            b.wait()
            h.release()

        threads = [threading.Thread(target=release) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert ref.in_flight == 0
