from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from pyserving.demo import make_mlp, make_two_io, write_demo_repository


def run(model: Path, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def test_demo_repository_layout(tmp_path: Path) -> None:
    root = write_demo_repository(tmp_path / "repo")

    assert root == tmp_path / "repo"
    files = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
    assert files == ["mlp/1/model.onnx", "mlp/2/model.onnx", "twoio/1/model.onnx"]
    for path in files:
        model = onnx.load(str(root / path))
        assert model.ir_version == 8
        assert [(o.domain, o.version) for o in model.opset_import] == [("", 17)]


def test_demo_repository_is_deterministic(tmp_path: Path) -> None:
    first = write_demo_repository(tmp_path / "a")
    second = write_demo_repository(tmp_path / "b")
    for path in ("mlp/1/model.onnx", "mlp/2/model.onnx", "twoio/1/model.onnx"):
        assert (first / path).read_bytes() == (second / path).read_bytes()


def test_mlp_versions_have_the_same_shapes_and_different_outputs(tmp_path: Path) -> None:
    root = write_demo_repository(tmp_path)
    x = np.random.default_rng(0).standard_normal((3, 64)).astype(np.float32)

    (v1,) = run(root / "mlp" / "1" / "model.onnx", {"input": x})
    (v2,) = run(root / "mlp" / "2" / "model.onnx", {"input": x})

    assert v1.shape == v2.shape == (3, 10)
    assert v1.dtype == np.float32
    assert not np.allclose(v1, v2)


def test_two_io_computes_sum_and_argmax_of_product(tmp_path: Path) -> None:
    model = make_two_io(tmp_path / "model.onnx")
    a = np.array([[1, 2, 3, 4], [-1, -2, -3, -4]], dtype=np.float32)
    b = np.array([[4, 3, 2, 0], [1, 1, 1, 1]], dtype=np.float32)

    total, max_index = run(model, {"a": a, "b": b})

    np.testing.assert_array_equal(total, a + b)
    assert max_index.dtype == np.int64
    np.testing.assert_array_equal(max_index, [1, 0])


def test_make_mlp_with_other_dims(tmp_path: Path) -> None:
    model = make_mlp(tmp_path / "deep" / "model.onnx", seed=3, dims=(8, 16, 16, 16, 2))
    (out,) = run(model, {"input": np.ones((5, 8), np.float32)})
    assert out.shape == (5, 2)
    with pytest.raises(ValueError, match="at least 2 dims"):
        make_mlp(tmp_path / "bad.onnx", seed=0, dims=(8,))
