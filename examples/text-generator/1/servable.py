"""An example streaming servable: a token-by-token text generator.

Its `run` is a generator, so each `yield` is one response of a stream: served by
`POST /v2/models/generator/generate_stream` (server-sent events), `/generate` (the last response)
and gRPC `ModelStreamInfer` (see examples/clients/generate_stream.py). The "model" is a bigram
table built from `corpus.txt` at load time; it sleeps `seconds_per_token` (params.json) per token
to behave like a real one. pyserving runs a generator on the model's execution threads, one step
per token, and stops it (its `finally` runs) when the client goes away.
"""

from __future__ import annotations

import itertools
import json
import os
import random
import time
from collections import defaultdict
from collections.abc import Iterator

import numpy as np

from pyserving.platforms import Signature, TensorSpec


class TextGenerator:
    """Continues a prompt one word at a time; `max_tokens` words at most."""

    def __init__(self) -> None:
        self.signatures = {
            "serving_default": Signature(
                "serving_default",
                inputs=(
                    TensorSpec("text_input", "BYTES", (1,)),
                    TensorSpec("max_tokens", "INT32", (1,)),
                ),
                outputs=(TensorSpec("text_output", "BYTES", (1,)),),
            )
        }
        self.following: dict[str, list[str]] = {}
        self.seconds_per_token = 0.02

    def load(self, path: str) -> None:
        with open(os.path.join(path, "corpus.txt"), encoding="utf-8") as stream:
            words = stream.read().lower().split()
        following: dict[str, list[str]] = defaultdict(list)
        for word, after in itertools.pairwise(words):
            following[word].append(after)
        self.following = dict(following)
        params = os.path.join(path, "params.json")
        if os.path.exists(params):
            with open(params, encoding="utf-8") as stream:
                self.seconds_per_token = float(json.load(stream).get("seconds_per_token", 0.02))

    def run(self, signature: str, inputs: dict[str, np.ndarray]) -> Iterator[dict[str, np.ndarray]]:
        prompt = inputs["text_input"][0].decode("utf-8", errors="replace")
        count = max(0, min(int(inputs["max_tokens"][0]), 512))
        rng = random.Random(prompt)  # the same prompt gives the same text
        words = prompt.lower().split()
        word = words[-1] if words else "the"
        try:
            for _ in range(count):
                time.sleep(self.seconds_per_token)  # the "model" computing the next token
                choices = self.following.get(word) or list(self.following)
                word = rng.choice(choices)
                yield {"text_output": np.array([(" " + word).encode()], dtype=object)}
        finally:
            # Runs when the stream ends, fails, or the client goes away mid-stream: release
            # per-request resources (a KV cache, a GPU slot) here.
            pass
