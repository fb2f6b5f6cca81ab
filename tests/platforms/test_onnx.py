from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import fsspec
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper
from onnxruntime.capi.onnxruntime_pybind11_state import InvalidArgument as OrtInvalidArgument

from pyserving.core.ids import ServableId
from pyserving.demo import make_mlp, make_two_io
from pyserving.errors import FailedPrecondition, InvalidInput
from pyserving.platforms import Servable, TensorSpec
from pyserving.platforms.onnx import OnnxLoader, OnnxServable

ID = ServableId("m", 1)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("onnx")
    make_mlp(root / "mlp" / "model.onnx", seed=0)
    make_two_io(root / "twoio" / "model.onnx")
    return root


@pytest.fixture
def loaded_mlp(models: Path) -> Iterator[OnnxServable]:
    loader = OnnxLoader(ID, str(models / "mlp"), {})
    yield loader.load()
    loader.unload()


def reference_session(model_path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])


def save(model_dir: Path, graph: onnx.GraphProto) -> Path:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    model_dir.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(model_dir / "model.onnx"))
    return model_dir


def identity_model(model_dir: Path, elem_types: dict[str, int]) -> Path:
    """One Identity per dtype: input "x_<name>" [n] → output "y_<name>" [n]."""
    nodes = [helper.make_node("Identity", [f"x_{n}"], [f"y_{n}"]) for n in elem_types]
    graph = helper.make_graph(
        nodes,
        "identity",
        [helper.make_tensor_value_info(f"x_{n}", t, ["n"]) for n, t in elem_types.items()],
        [helper.make_tensor_value_info(f"y_{n}", t, ["n"]) for n, t in elem_types.items()],
    )
    return save(model_dir, graph)


def test_mlp_signature_from_the_session(loaded_mlp: OnnxServable) -> None:
    assert isinstance(loaded_mlp, Servable)
    assert loaded_mlp.platform == "onnx"
    (signature,) = loaded_mlp.signatures.values()
    assert signature.name == "serving_default"
    assert signature.inputs == (TensorSpec("input", "FP32", (-1, 64)),)
    assert signature.outputs == (TensorSpec("output", "FP32", (-1, 10)),)


def test_mlp_run_equals_onnxruntime(models: Path, loaded_mlp: OnnxServable) -> None:
    x = np.random.default_rng(1).standard_normal((5, 64)).astype(np.float32)

    outputs = loaded_mlp.run("serving_default", {"input": x})

    (expected,) = reference_session(models / "mlp" / "model.onnx").run(None, {"input": x})
    assert list(outputs) == ["output"]
    np.testing.assert_array_equal(outputs["output"], expected)


def test_two_inputs_two_outputs(models: Path) -> None:
    loader = OnnxLoader(ID, str(models / "twoio"), {})
    servable = loader.load()
    signature = servable.signatures["serving_default"]
    a = np.array([[1, 2, 3, 4], [4, 3, 2, 1]], dtype=np.float32)
    b = np.array([[1, 1, 1, 1], [0, 5, 0, 0]], dtype=np.float32)

    outputs = servable.run("serving_default", {"a": a, "b": b})

    assert signature.input_names == ("a", "b")
    assert signature.outputs == (
        TensorSpec("sum", "FP32", (-1, 4)),
        TensorSpec("max_index", "INT64", (-1,)),
    )
    np.testing.assert_array_equal(outputs["sum"], a + b)
    np.testing.assert_array_equal(outputs["max_index"], np.array([3, 1], dtype=np.int64))
    loader.unload()


def test_every_numeric_onnx_type_maps_to_its_v2_datatype(tmp_path: Path) -> None:
    types = {
        "bool": (TensorProto.BOOL, "BOOL", np.bool_),
        "uint8": (TensorProto.UINT8, "UINT8", np.uint8),
        "uint16": (TensorProto.UINT16, "UINT16", np.uint16),
        "uint32": (TensorProto.UINT32, "UINT32", np.uint32),
        "uint64": (TensorProto.UINT64, "UINT64", np.uint64),
        "int8": (TensorProto.INT8, "INT8", np.int8),
        "int16": (TensorProto.INT16, "INT16", np.int16),
        "int32": (TensorProto.INT32, "INT32", np.int32),
        "int64": (TensorProto.INT64, "INT64", np.int64),
        "float16": (TensorProto.FLOAT16, "FP16", np.float16),
        "float": (TensorProto.FLOAT, "FP32", np.float32),
        "double": (TensorProto.DOUBLE, "FP64", np.float64),
    }
    model_dir = identity_model(tmp_path / "1", {n: t for n, (t, _, _) in types.items()})
    servable = OnnxLoader(ID, str(model_dir)).load()
    signature = servable.signatures["serving_default"]
    inputs = {f"x_{n}": np.array([1, 0, 1]).astype(dtype) for n, (_, _, dtype) in types.items()}

    outputs = servable.run("serving_default", inputs)

    for name, (_, datatype, dtype) in types.items():
        assert signature.input(f"x_{name}") == TensorSpec(f"x_{name}", datatype, (-1,))
        assert signature.output(f"y_{name}") == TensorSpec(f"y_{name}", datatype, (-1,))
        assert outputs[f"y_{name}"].dtype == np.dtype(dtype)
        np.testing.assert_array_equal(outputs[f"y_{name}"], inputs[f"x_{name}"])


def test_string_tensors_are_bytes_in_and_out(tmp_path: Path) -> None:
    model_dir = identity_model(tmp_path / "1", {"s": TensorProto.STRING})
    servable = OnnxLoader(ID, str(model_dir)).load()
    assert servable.signatures["serving_default"].input("x_s") == TensorSpec("x_s", "BYTES", (-1,))
    words = np.array([b"caf\xc3\xa9", b"", b"tea"], dtype=object)

    outputs = servable.run("serving_default", {"x_s": words})

    assert outputs["y_s"].dtype == np.dtype(object)
    assert outputs["y_s"].tolist() == [b"caf\xc3\xa9", b"", b"tea"]
    with pytest.raises(InvalidInput, match='input "x_s": BYTES must be UTF-8'):
        servable.run("serving_default", {"x_s": np.array([b"\xff"], dtype=object)})


def test_output_of_a_non_tensor_type_is_left_out_of_the_signature(tmp_path: Path) -> None:
    graph = helper.make_graph(
        [
            helper.make_node("Identity", ["x"], ["y"]),
            helper.make_node("SequenceConstruct", ["x"], ["seq"]),
        ],
        "with_sequence",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
        [
            helper.make_tensor_value_info("y", TensorProto.FLOAT, [2]),
            helper.make_tensor_sequence_value_info("seq", TensorProto.FLOAT, None),
        ],
    )
    servable = OnnxLoader(ID, str(save(tmp_path / "1", graph))).load()

    outputs = servable.run("serving_default", {"x": np.ones(2, np.float32)})

    assert servable.signatures["serving_default"].output_names == ("y",)
    assert list(outputs) == ["y"]


def test_input_of_a_non_tensor_type_fails_the_load(tmp_path: Path) -> None:
    graph = helper.make_graph(
        [helper.make_node("SequenceLength", ["seq"], ["n"])],
        "sequence_input",
        [helper.make_tensor_sequence_value_info("seq", TensorProto.FLOAT, None)],
        [helper.make_tensor_value_info("n", TensorProto.INT64, [])],
    )
    loader = OnnxLoader(ID, str(save(tmp_path / "1", graph)))
    with pytest.raises(FailedPrecondition, match=r'input "seq": ONNX type seq\(tensor\(float\)\)'):
        loader.load()


def test_estimate_is_one_point_two_times_the_model_files_without_loading(tmp_path: Path) -> None:
    model = make_mlp(tmp_path / "1" / "model.onnx", seed=0)
    (tmp_path / "1" / "weights.bin").write_bytes(b"w" * 1000)  # external data next to the model
    (tmp_path / "1" / "pyserving.yaml").write_text("not part of the model\n")
    (tmp_path / "1" / "warmup").mkdir()
    (tmp_path / "1" / "warmup" / "requests").write_bytes(b"r" * 5000)
    loader = OnnxLoader(ID, str(tmp_path / "1"))

    assert loader.estimate_resources() == int((model.stat().st_size + 1000) * 1.2)


def test_intra_op_threads_come_from_the_config(models: Path) -> None:
    assert OnnxLoader(ID, str(models / "mlp")).intra_op_num_threads == 1
    loader = OnnxLoader(ID, str(models / "mlp"), {"intra_op_num_threads": 3})
    assert loader.intra_op_num_threads == 3
    assert loader.load().run("serving_default", {"input": np.zeros((1, 64), np.float32)})
    loader.unload()


def test_load_from_memory_filesystem_equals_local(models: Path) -> None:
    url = f"memory://pyserving-test-{uuid.uuid4().hex}/mlp/1"
    fs, path = fsspec.core.url_to_fs(url)
    fs.pipe(f"{path}/model.onnx", (models / "mlp" / "model.onnx").read_bytes())
    x = np.random.default_rng(2).standard_normal((3, 64)).astype(np.float32)
    try:
        loader = OnnxLoader(ID, url)
        assert loader.estimate_resources() > 0
        outputs = loader.load().run("serving_default", {"input": x})
        loader.unload()
    finally:
        fs.rm(path, recursive=True)

    (expected,) = reference_session(models / "mlp" / "model.onnx").run(None, {"input": x})
    np.testing.assert_array_equal(outputs["output"], expected)


def test_run_from_many_threads_at_once(models: Path, loaded_mlp: OnnxServable) -> None:
    threads = 8
    rng = np.random.default_rng(3)
    batches = [rng.standard_normal((4, 64)).astype(np.float32) for _ in range(threads)]
    session = reference_session(models / "mlp" / "model.onnx")
    expected = [session.run(None, {"input": x})[0] for x in batches]
    barrier = threading.Barrier(threads)
    results: list[np.ndarray | None] = [None] * threads

    def worker(i: int) -> None:
        barrier.wait()
        for _ in range(20):
            results[i] = loaded_mlp.run("serving_default", {"input": batches[i]})["output"]

    pool = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()

    for got, want in zip(results, expected, strict=True):
        np.testing.assert_array_equal(got, want)


def test_an_error_in_the_model_propagates(loaded_mlp: OnnxServable) -> None:
    with pytest.raises(OrtInvalidArgument, match="input"):
        loaded_mlp.run("serving_default", {"input": np.zeros((2, 3), np.float32)})


def test_unload_is_idempotent(models: Path) -> None:
    loader = OnnxLoader(ID, str(models / "mlp"))
    loader.load()
    loader.unload()
    loader.unload()


def test_pyserving_yaml_renames_the_signature_tensors(models: Path, tmp_path: Path) -> None:
    version = tmp_path / "1"
    version.mkdir()
    (version / "model.onnx").write_bytes((models / "mlp" / "model.onnx").read_bytes())
    (version / "pyserving.yaml").write_text(
        "signatures:\n"
        "  serving_default:\n"
        "    inputs:  [{name: features, datatype: FP32, shape: [-1, 64]}]\n"
        "    outputs: [{name: logits, datatype: FP32, shape: [-1, 10]}]\n"
    )
    x = np.random.default_rng(5).standard_normal((2, 64)).astype(np.float32)
    loader = OnnxLoader(ID, str(version))
    servable = loader.load()
    try:
        signature = servable.signatures["serving_default"]
        assert [t.name for t in signature.inputs] == ["features"]
        assert [t.name for t in signature.outputs] == ["logits"]
        outputs = servable.run("serving_default", {"features": x})
    finally:
        loader.unload()
    (expected,) = reference_session(models / "mlp" / "model.onnx").run(None, {"input": x})
    np.testing.assert_array_equal(outputs["logits"], expected)


def test_pyserving_yaml_batching_is_checked_and_handed_to_the_servable(
    models: Path, tmp_path: Path
) -> None:
    version = tmp_path / "1"
    version.mkdir()
    (version / "model.onnx").write_bytes((models / "mlp" / "model.onnx").read_bytes())
    (version / "pyserving.yaml").write_text("batching: {max_batch_size: 8}\n")
    loader = OnnxLoader(ID, str(version))
    assert loader.load().version_batching == {"max_batch_size": 8}
    loader.unload()
    (version / "pyserving.yaml").write_text("batching: {max_batch_size: lots}\n")
    with pytest.raises(InvalidInput, match=r"pyserving.yaml: batching.*max_batch_size"):
        OnnxLoader(ID, str(version)).load()
    (version / "pyserving.yaml").write_text("batching: [1, 2]\n")
    with pytest.raises(FailedPrecondition, match="batching must be a mapping"):
        OnnxLoader(ID, str(version)).load()
