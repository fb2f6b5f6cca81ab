"""A demo model repository built locally with onnx.helper and numpy (no download, no torch).

Layout written by `write_demo_repository(root)`:

    root/mlp/1/model.onnx    FP32 "input" [batch, 64] → 256, ReLU → 256, ReLU → "output" [batch, 10]
    root/mlp/2/model.onnx    the same shapes, other weights (its outputs differ from version 1's)
    root/twoio/1/model.onnx  FP32 "a", "b" [batch, 4] → "sum" (a + b), "max_index" (argmax a * b)

Weights come from fixed seeds, so the same call always writes the same bytes. `serve --demo`
writes them to a fresh private directory (`write_private_demo_repository`), never to a shared,
predictable path another user could plant a model in.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

_OPSET = 17
_IR_VERSION = 8  # readable by any onnxruntime >= 1.10


def write_demo_repository(root: Path) -> Path:
    """Write the demo models under `root` (created if needed) and return `root`."""
    root = Path(root)
    make_mlp(root / "mlp" / "1" / "model.onnx", seed=0)
    make_mlp(root / "mlp" / "2" / "model.onnx", seed=1)
    make_two_io(root / "twoio" / "1" / "model.onnx")
    return root


def write_private_demo_repository() -> Path:
    """Write the demo models into a new directory only this user can read or write (0700, a
    fresh unpredictable name under the temp dir) and return it; the caller removes it."""
    return write_demo_repository(Path(tempfile.mkdtemp(prefix="pyserving-demo-")))


def make_mlp(path: Path, seed: int, dims: Sequence[int] = (64, 256, 256, 10)) -> Path:
    """Write an MLP: "input" [batch, dims[0]] → Gemm+ReLU layers → "output" [batch, dims[-1]].

    He-initialised weights from `seed`. Benchmarks use a heavy variant, dims=(512, 2048, 2048, 10).
    """
    if len(dims) < 2:
        raise ValueError(f"an MLP needs at least 2 dims, got {list(dims)}")
    rng = np.random.default_rng(seed)
    layers = len(dims) - 1
    initializers, nodes = [], []
    previous = "input"
    for i in range(layers):
        fan_in, fan_out = dims[i], dims[i + 1]
        weight = (rng.standard_normal((fan_in, fan_out)) * np.sqrt(2.0 / fan_in)).astype(np.float32)
        bias = (rng.standard_normal(fan_out) * 0.01).astype(np.float32)
        initializers += [
            numpy_helper.from_array(weight, f"W{i}"),
            numpy_helper.from_array(bias, f"B{i}"),
        ]
        last = i == layers - 1
        gemm_out = "output" if last else f"g{i}"
        gemm = helper.make_node("Gemm", [previous, f"W{i}", f"B{i}"], [gemm_out], name=f"fc{i}")
        nodes.append(gemm)
        previous = gemm_out
        if not last:
            previous = f"h{i}"
            nodes.append(helper.make_node("Relu", [gemm_out], [previous], name=f"relu{i}"))
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", dims[0]])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", dims[-1]])],
        initializer=initializers,
    )
    return _save(graph, path)


def make_two_io(path: Path) -> Path:
    """Write a two-input, two-output model: "sum" = a + b, "max_index" = argmax(a * b, axis=1)."""
    nodes = [
        helper.make_node("Add", ["a", "b"], ["sum"], name="add"),
        helper.make_node("Mul", ["a", "b"], ["product"], name="mul"),
        helper.make_node("ArgMax", ["product"], ["max_index"], name="argmax", axis=1, keepdims=0),
    ]
    graph = helper.make_graph(
        nodes,
        "twoio",
        [
            helper.make_tensor_value_info("a", TensorProto.FLOAT, ["batch", 4]),
            helper.make_tensor_value_info("b", TensorProto.FLOAT, ["batch", 4]),
        ],
        [
            helper.make_tensor_value_info("sum", TensorProto.FLOAT, ["batch", 4]),
            helper.make_tensor_value_info("max_index", TensorProto.INT64, ["batch"]),
        ],
    )
    return _save(graph, path)


def _save(graph: onnx.GraphProto, path: Path) -> Path:
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", _OPSET)], producer_name="pyserving-demo"
    )
    model.ir_version = _IR_VERSION
    onnx.checker.check_model(model)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path
