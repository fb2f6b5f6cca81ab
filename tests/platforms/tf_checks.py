"""TensorFlow platform checks, run by test_tensorflow.py in a process of their own.

Importing TensorFlow costs seconds and hundreds of MiB; the rest of the suite does without it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from pyserving.core.ids import ServableId
from pyserving.errors import FailedPrecondition
from pyserving.platforms.signature import DEFAULT_SIGNATURE
from pyserving.platforms.tensorflow_platform import (
    WARMUP_FILE,
    TensorFlowLoader,
    TensorFlowServable,
)
from tests.platforms import models
from tests.platforms.test_platforms import check_platform_contract


def write_warmup(version_dir: Path, records: list[bytes]) -> None:
    path = version_dir / WARMUP_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    with tf.io.TFRecordWriter(str(path)) as writer:
        for record in records:
            writer.write(record)


def delimited(field: int, payload: bytes) -> bytes:
    """One length-delimited protobuf field (field numbers < 16)."""
    length = bytearray()
    size = len(payload)
    while size > 0x7F:
        length.append(size & 0x7F | 0x80)
        size >>= 7
    length.append(size)
    return bytes([field << 3 | 2]) + bytes(length) + payload


def predict_log(values: list[float]) -> bytes:
    """A serialized PredictionLog{predict_log{request{model_spec, inputs["x"]}}}."""
    tensor = tf.make_tensor_proto(values, dtype=tf.float32).SerializeToString()
    spec = delimited(3, DEFAULT_SIGNATURE.encode())
    entry = delimited(1, b"x") + delimited(2, tensor)
    request = delimited(1, spec) + delimited(2, entry)
    return delimited(6, delimited(1, request))


def classify_log() -> bytes:
    """A serialized PredictionLog{classify_log{request{model_spec{name}}}}."""
    return delimited(2, delimited(1, delimited(1, delimited(1, b"hp2"))))


def test_tensorflow_contract(tmp_path: Path) -> None:
    check_platform_contract("tensorflow", models.make_tensorflow, tmp_path)


def test_signature_defs_are_exposed_as_tf_serving_does(tmp_path: Path) -> None:
    models.make_tensorflow(tmp_path / "1")
    loader = TensorFlowLoader(ServableId("hp2", 1), str(tmp_path / "1"), {})
    servable = loader.load()
    assert isinstance(servable, TensorFlowServable)
    assert list(servable.signatures) == [DEFAULT_SIGNATURE]  # no __saved_model_init_op
    signature = servable.signatures[DEFAULT_SIGNATURE]
    assert signature.method_name == "tensorflow/serving/predict"
    assert [(s.name, s.datatype, s.shape) for s in signature.inputs] == [("x", "FP32", (-1,))]
    assert [(s.name, s.datatype, s.shape) for s in signature.outputs] == [("y", "FP32", (-1,))]
    assert servable.warmup_requests() == []
    loader.unload()


def test_warmup_file_predict_logs_are_offered_for_replay(tmp_path: Path) -> None:
    version_dir = tmp_path / "1"
    models.make_tensorflow(version_dir)
    write_warmup(version_dir, [predict_log([1.0, 2.0]), classify_log(), predict_log([3.0])])
    loader = TensorFlowLoader(ServableId("hp2", 1), str(version_dir), {})
    servable = loader.load()
    requests = servable.warmup_requests()
    assert [name for name, _ in requests] == [DEFAULT_SIGNATURE, DEFAULT_SIGNATURE]
    np.testing.assert_array_equal(requests[0][1]["x"], [1.0, 2.0])
    np.testing.assert_array_equal(requests[1][1]["x"], [3.0])
    out = servable.run(DEFAULT_SIGNATURE, requests[0][1])
    np.testing.assert_allclose(out["y"], [2.5, 3.0])
    loader.unload()


def test_warmup_file_that_is_not_tfrecord_fails_the_load(tmp_path: Path) -> None:
    version_dir = tmp_path / "1"
    models.make_tensorflow(version_dir)
    (version_dir / "assets.extra").mkdir()
    (version_dir / WARMUP_FILE).write_bytes(b"this is not a TFRecord file at all")
    loader = TensorFlowLoader(ServableId("hp2", 1), str(version_dir), {})
    with pytest.raises(FailedPrecondition, match="verify your warmup data is in TFRecord format"):
        loader.load()
