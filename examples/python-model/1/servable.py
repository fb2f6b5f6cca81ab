"""An example python servable: scales and shifts FP32 rows, and counts words in BYTES strings.

pyserving imports this file only for a model whose config says `allow_python: true` (see
examples/python.yaml), because it runs as the server's user. The class is built with no
arguments, `load(path)` runs once on a loader thread, and `run` may be called from several
threads at once (this one keeps no mutable state, so it needs no lock).
"""

from __future__ import annotations

import json
import os

import numpy as np

from pyserving.platforms import Signature, TensorSpec


class ScaleAndCount:
    """Two signatures: `serving_default` (y = x * scale + shift) and `count_words`."""

    def __init__(self) -> None:
        self.scale = 1.0
        self.shift = 0.0
        self.signatures = {
            "serving_default": Signature(
                "serving_default",
                inputs=(TensorSpec("x", "FP32", (-1, 4)),),
                outputs=(TensorSpec("y", "FP32", (-1, 4)),),
            ),
            "count_words": Signature(
                "count_words",
                inputs=(TensorSpec("text", "BYTES", (-1,)),),
                outputs=(TensorSpec("words", "INT64", (-1,)),),
            ),
        }

    def load(self, path: str) -> None:
        # `path` is the version directory: read whatever the version ships next to this file.
        params = os.path.join(path, "params.json")
        if os.path.exists(params):
            with open(params, encoding="utf-8") as stream:
                values = json.load(stream)
            self.scale = float(values.get("scale", 1.0))
            self.shift = float(values.get("shift", 0.0))

    def run(self, signature: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        # Inputs were checked against the signature before this call: names, dtypes, shapes.
        if signature == "count_words":
            texts = inputs["text"]  # a numpy object array of bytes
            return {"words": np.array([len(t.split()) for t in texts], dtype=np.int64)}
        return {"y": inputs["x"] * np.float32(self.scale) + np.float32(self.shift)}

    def unload(self) -> None:
        # Called once, after the last request on this version finished; nothing to release here.
        pass
