"""Streaming servables for the streaming tests: each writes what happened to it (start, every
part, its `finally`) to `events/<tag>.txt` in its version directory, so a test sees whether a
client that left stopped the generator."""

from __future__ import annotations

from pathlib import Path

_COMMON = """
import asyncio
import os
import time

import numpy as np

from pyserving.platforms import Signature, TensorSpec

SIGNATURES = {
    "serving_default": Signature(
        "serving_default",
        inputs=(TensorSpec("text_input", "BYTES", (1,)), TensorSpec("max_tokens", "INT32", (1,))),
        outputs=(TensorSpec("text_output", "BYTES", (1,)), TensorSpec("index", "INT32", (1,))),
    )
}


class Recorder:
    def load(self, path):
        self.events = os.path.join(path, "events")
        os.makedirs(self.events, exist_ok=True)

    def note(self, tag, what):
        with open(os.path.join(self.events, tag + ".txt"), "a") as out:
            out.write(what + "\\n")

    @staticmethod
    def read(inputs):
        tag = inputs["text_input"][0].decode()
        return tag, int(inputs["max_tokens"][0])

    @staticmethod
    def part(tag, i, size):
        text = (f"{tag}-{i};" + "x" * size).encode()
        return {"text_output": np.array([text], dtype=object), "index": np.array([i], np.int32)}
"""

#: a generator: one part every DELAY_S; a tag ending in "big" makes each part 256 KiB; a tag
#: ending in "boom" raises after 2 parts; a tag ending in "bad" yields a list
GENERATOR = (
    _COMMON
    + """
DELAY_S = @DELAY_S@


class Tokens(Recorder):
    signatures = SIGNATURES

    def run(self, signature, inputs):
        tag, count = self.read(inputs)
        size = 256 * 1024 if tag.endswith("big") else 0
        self.note(tag, "start")
        try:
            for i in range(count):
                if i == 2 and tag.endswith("boom"):
                    raise RuntimeError("boom after 2 parts")
                if i == 2 and tag.endswith("bad"):
                    yield [1, 2]
                self.note(tag, f"part {i}")
                yield self.part(tag, i, size)
                if DELAY_S:
                    time.sleep(DELAY_S)
        finally:
            self.note(tag, "finally")
"""
)

#: an async generator on the event loop: one part every 10 ms
ASYNC_GENERATOR = (
    _COMMON
    + """
class AsyncTokens(Recorder):
    signatures = SIGNATURES

    async def run(self, signature, inputs):
        tag, count = self.read(inputs)
        self.note(tag, "start")
        try:
            for i in range(count):
                self.note(tag, f"part {i}")
                yield self.part(tag, i, 0)
                await asyncio.sleep(0.01)
        finally:
            self.note(tag, "finally")
"""
)

#: `async def run` returning one answer
COROUTINE = (
    _COMMON
    + """
class OneAnswer(Recorder):
    signatures = SIGNATURES

    async def run(self, signature, inputs):
        tag, count = self.read(inputs)
        await asyncio.sleep(0)
        return self.part(tag, count, 0)
"""
)


def write(root: Path) -> dict[str, Path]:
    """The streaming models under `root` (name → version 1 directory)."""
    sources = {
        "tokens": GENERATOR.replace("@DELAY_S@", "0.0"),
        "slow_tokens": GENERATOR.replace("@DELAY_S@", "0.02"),
        "async_tokens": ASYNC_GENERATOR,
        "one_answer": COROUTINE,
    }
    dirs = {}
    for name, source in sources.items():
        version = root / name / "1"
        version.mkdir(parents=True)
        (version / "servable.py").write_text(source)
        dirs[name] = version
    return dirs


def events(version: Path, tag: str) -> list[str]:
    """What the servable noted for `tag`, in order."""
    path = version / "events" / f"{tag}.txt"
    return path.read_text().splitlines() if path.exists() else []
