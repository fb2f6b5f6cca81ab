"""Models for the operations tests: one that fails at run time on a bad value (ONNX), and a
`gated` platform, installed for a server child through an entry point, whose calls block until
the test releases them."""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

#: environment variable naming the gate directory of the `gated` platform
GATE_ENV = "PYSERVING_TEST_GATE_DIR"


def make_gather(version_dir: Path) -> Path:
    """`idx` INT64 [-1] → `y` FP32 [-1] = [10, 20, 30, 40][idx]; an index outside 0..3 (or
    -4..-1) makes onnxruntime raise inside `run`."""
    version_dir.mkdir(parents=True, exist_ok=True)
    table = numpy_helper.from_array(np.array([10, 20, 30, 40], np.float32), "table")
    graph = helper.make_graph(
        [helper.make_node("Gather", ["table", "idx"], ["y"], axis=0)],
        "gather",
        [helper.make_tensor_value_info("idx", TensorProto.INT64, ["batch"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch"])],
        initializer=[table],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = version_dir / "model.onnx"
    onnx.save(model, str(path))
    return path


_GATED_MODULE = '''
"""Test platform: each call records itself in the gate directory, then waits for `release`."""

import itertools
import os
import time

from pyserving.core.loader import Loader
from pyserving.platforms.servable import Servable
from pyserving.platforms.signature import Signature, TensorSpec

_SIGNATURE = Signature(
    "serving_default",
    (TensorSpec("x", "FP32", (-1, 2)),),
    (TensorSpec("y", "FP32", (-1, 2)),),
)


class GatedServable(Servable):
    platform = "gated"

    def __init__(self, gate_dir):
        self._gate_dir = gate_dir
        self._calls = itertools.count()

    @property
    def signatures(self):
        return {"serving_default": _SIGNATURE}

    def run(self, signature, inputs):
        call = next(self._calls)
        open(os.path.join(self._gate_dir, f"entered-{call}"), "w").close()
        release = os.path.join(self._gate_dir, "release")
        deadline = time.monotonic() + 120
        while not os.path.exists(release):
            if time.monotonic() > deadline:
                raise RuntimeError("the test never released the gate")
            time.sleep(0.005)
        return {"y": inputs["x"] * 2}


class GatedLoader(Loader):
    def __init__(self, servable_id, path, config=None):
        self.path = path

    def estimate_resources(self):
        return 0

    def load(self):
        return GatedServable(os.environ["GATE_ENV"])

    def unload(self):
        pass
'''.replace("GATE_ENV", GATE_ENV)


def install_gated_platform(root: Path) -> Path:
    """Write the `gated` platform as a distribution under `root`; returns the directory to put
    on the server child's PYTHONPATH (its entry point is then found like an installed one)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "pyserving_test_gated.py").write_text(_GATED_MODULE)
    dist_info = root / "pyserving_test_gated-0.0.dist-info"
    dist_info.mkdir(exist_ok=True)
    (dist_info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: pyserving-test-gated\nVersion: 0.0\n"
    )
    (dist_info / "entry_points.txt").write_text(
        textwrap.dedent(
            """\
            [pyserving.platforms]
            gated = pyserving_test_gated:GatedLoader
            """
        )
    )
    return root
