"""run_sized / run_off_loop: small work inline, request-sized work on the codec threads."""

from __future__ import annotations

import asyncio
import threading

import pytest

from pyserving.serving import off_loop
from pyserving.serving.off_loop import OFF_LOOP_BYTES, run_off_loop, run_sized


@pytest.mark.asyncio
async def test_work_over_the_size_rule_runs_off_the_loop_and_small_work_inline():
    loop_thread = threading.get_ident()
    assert await run_sized(OFF_LOOP_BYTES, threading.get_ident) == loop_thread
    assert await run_sized(OFF_LOOP_BYTES + 1, threading.get_ident) != loop_thread
    assert await run_off_loop(threading.get_ident) != loop_thread
    results = await asyncio.gather(*(run_off_loop(lambda i=i: i * 2) for i in range(50)))
    assert results == [i * 2 for i in range(50)]
    with pytest.raises(ZeroDivisionError):
        await run_off_loop(lambda: 1 / 0)
    codec = [t for t in threading.enumerate() if t.name.startswith("pyserving-exec-codec-")]
    assert 1 <= len(codec) <= off_loop.CODEC_THREADS
