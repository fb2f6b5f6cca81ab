"""Request-sized work off the event loop: codecs on a few shared threads, small work inline.

Decompressing a body, parsing a large JSON body and decoding BYTES tensors go through
`run_sized(nbytes, fn, *args)`: inline when `nbytes <= OFF_LOOP_BYTES` (64 KiB: bounded work of
tens of microseconds, cheaper than the hop), else on the process's codec threads
(`run_off_loop`, one lane of `CODEC_THREADS`: serving/lane.py). Work whose size is not known up
front (decompression) always uses `run_off_loop`. Model calls never come here: they run on
their model's own threads (serving/execution.py).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import TypeVar, TypeVarTuple

from pyserving.serving.lane import Call, Lane

__all__ = ["CODEC_THREADS", "OFF_LOOP_BYTES", "run_off_loop", "run_sized"]

T = TypeVar("T")
Args = TypeVarTuple("Args")

#: request-sized work on at most this many bytes runs inline on the event loop
OFF_LOOP_BYTES = 64 * 1024
#: threads that run request-sized work (codecs) for every request of the process
CODEC_THREADS = 4

_codec_lock = threading.Lock()  # guards creating _codec_lane
_codec_lane: Lane | None = None


async def run_off_loop(fn: Callable[[*Args], T], *args: *Args) -> T:
    """`fn(*args)` on one of the process's codec threads (`CODEC_THREADS`), awaited.

    For work that grows with the request. The call runs to completion even if the awaiting
    request is cancelled (it owns no model thread and is bounded by the request's size).
    """
    global _codec_lane
    lane = _codec_lane
    if lane is None:
        with _codec_lock:
            if _codec_lane is None:
                _codec_lane = Lane("codec", CODEC_THREADS, 1 << 16, None)
            lane = _codec_lane
    call = Call(lane, fn, args, asyncio.get_running_loop())
    lane.submit(call)
    try:
        return await call.future
    except BaseException:
        call.abandon()
        raise


async def run_sized(nbytes: int, fn: Callable[[*Args], T], *args: *Args) -> T:
    """`fn(*args)` inline when it works on at most `OFF_LOOP_BYTES` bytes, else off the loop."""
    if nbytes <= OFF_LOOP_BYTES:
        return fn(*args)
    return await run_off_loop(fn, *args)
