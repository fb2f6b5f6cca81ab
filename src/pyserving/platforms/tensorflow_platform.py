"""The TensorFlow platform: a SavedModel (`saved_model.pb` + `variables/`) run with TF's CPU build.

Signatures are the SavedModel's SignatureDefs as TF Serving exposes them: the same keys, input
and output aliases, dtypes, shapes and method names (read from `saved_model.pb`); internal ones
(`__saved_model_init_op`) are left out. A classify or regress signature takes serialized
`tf.Example`s in its `inputs`, which `serving.classify` builds from `:classify` / `:regress`
requests. `assets.extra/tf_serving_warmup_requests` (TFRecord of PredictionLog) is offered to the
warmup replay through `warmup_requests()`; its predict logs are replayed, other log types are
skipped with a warning.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import tensorflow as tf
from tensorflow.core.framework import tensor_pb2
from tensorflow.core.protobuf import saved_model_pb2

from pyserving.errors import FailedPrecondition
from pyserving.platforms.common import FileLoader
from pyserving.platforms.servable import Servable
from pyserving.platforms.signature import DEFAULT_SIGNATURE, Signature, TensorSpec, v2_datatype

__all__ = ["SAVED_MODEL_FILE", "WARMUP_FILE", "TensorFlowLoader", "TensorFlowServable"]

SAVED_MODEL_FILE = "saved_model.pb"
WARMUP_FILE = os.path.join("assets.extra", "tf_serving_warmup_requests")
_MAX_WARMUP_RECORDS = 1000  # TF Serving's kMaxNumRecords
# PredictionLog field numbers (tensorflow_serving/apis/prediction_log.proto)
_PREDICT_LOG = 6
_REQUEST = 1
# PredictRequest and ModelSpec field numbers (tensorflow_serving/apis/predict.proto, model.proto)
_MODEL_SPEC = 1
_INPUTS = 2
_SIGNATURE_NAME = 3

logger = logging.getLogger(__name__)


class TensorFlowLoader(FileLoader):
    """Loads a SavedModel with `tf.saved_model.load`. Thread-safety: as Loader."""

    resource_factor = 2.0

    def load_local(self, directory: str, override: Mapping[str, Signature] | None) -> Servable:
        with open(os.path.join(directory, SAVED_MODEL_FILE), "rb") as stream:
            saved_model = saved_model_pb2.SavedModel.FromString(stream.read())
        if not saved_model.meta_graphs:
            raise FailedPrecondition(f"{SAVED_MODEL_FILE} holds no MetaGraphDef")
        signature_defs = saved_model.meta_graphs[0].signature_def
        signatures = {
            key: _signature(key, definition)
            for key, definition in signature_defs.items()
            if not key.startswith("__")
        }
        if not signatures:
            raise FailedPrecondition(f"{SAVED_MODEL_FILE} has no serving signatures")
        loaded = tf.saved_model.load(directory, tags=["serve"])
        functions = {key: loaded.signatures[key] for key in signatures}
        warmup = _read_warmup(os.path.join(directory, WARMUP_FILE))
        return TensorFlowServable(loaded, signatures, functions, warmup)


class TensorFlowServable(Servable):
    """A loaded SavedModel; each signature runs its concrete function (TF releases the GIL).

    Thread-safety: `run` may be called from many threads (TF functions are thread-safe).
    """

    platform = "tensorflow"

    def __init__(
        self,
        loaded: Any,
        signatures: dict[str, Signature],
        functions: dict[str, Any],
        warmup: list[tuple[str, dict[str, np.ndarray]]],
    ) -> None:
        self._loaded = loaded  # keeps the functions' variables alive
        self._signatures = signatures
        self._functions = functions
        self._warmup = warmup

    @property
    def signatures(self) -> dict[str, Signature]:
        return self._signatures

    def run(self, signature: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        spec = self._signatures[signature]
        feed = {}
        for tensor in spec.inputs:
            array = inputs[tensor.name]
            if tensor.datatype == "BYTES":
                feed[tensor.name] = tf.constant(array.tolist(), dtype=tf.string)
            else:
                feed[tensor.name] = tf.constant(array)
        results = self._functions[signature](**feed)
        return {name: value.numpy() for name, value in results.items()}

    def warmup_requests(self) -> list[tuple[str, dict[str, np.ndarray]]]:
        """The predict requests of `assets.extra/tf_serving_warmup_requests`, in file order."""
        return list(self._warmup)

    def unload(self) -> None:
        self._functions = {}
        self._loaded = None


def _signature(key: str, definition: Any) -> Signature:
    return Signature(
        key,
        tuple(_tensor_spec(alias, info) for alias, info in sorted(definition.inputs.items())),
        tuple(_tensor_spec(alias, info) for alias, info in sorted(definition.outputs.items())),
        definition.method_name,
    )


def _tensor_spec(alias: str, info: Any) -> TensorSpec:
    dtype = tf.dtypes.as_dtype(info.dtype)
    datatype = "BYTES" if dtype == tf.string else v2_datatype(np.dtype(dtype.as_numpy_dtype))
    if info.tensor_shape.unknown_rank:
        raise FailedPrecondition(f'tensor "{alias}" has an unknown rank; it cannot be served')
    return TensorSpec(alias, datatype, tuple(int(d.size) for d in info.tensor_shape.dim))


def _read_warmup(file: str) -> list[tuple[str, dict[str, np.ndarray]]]:
    if not os.path.isfile(file):
        return []
    try:
        records = [r.numpy() for r in tf.data.TFRecordDataset(file)]
    except tf.errors.OpError as exc:
        raise FailedPrecondition(
            f"{WARMUP_FILE}: {exc.message}. Please verify your warmup data is in TFRecord format."
        ) from exc
    if len(records) > _MAX_WARMUP_RECORDS:
        raise FailedPrecondition(
            f"Number of warmup records exceeds the maximum ({_MAX_WARMUP_RECORDS}) at {file}"
        )
    requests = []
    for index, record in enumerate(records):
        predict_log = _field(record, _PREDICT_LOG)
        if predict_log is None:
            logger.warning("%s record %d: only predict logs are replayed; skipped", file, index)
            continue
        requests.append(_predict_request(_field(predict_log, _REQUEST) or b""))
    return requests


def _predict_request(request: bytes) -> tuple[str, dict[str, np.ndarray]]:
    """(signature name, inputs) of a serialized PredictRequest, decoded field by field: the
    generated `tensorflow.serving` messages must not share a process with TensorFlow's."""
    signature_name = ""
    inputs: dict[str, np.ndarray] = {}
    for field, wire_type, value in _fields(request):
        if wire_type != 2:
            continue
        if field == _MODEL_SPEC:
            signature_name = (_field(value, _SIGNATURE_NAME) or b"").decode()
        elif field == _INPUTS:  # a map entry: key = 1, value = 2 (a TensorProto)
            alias = (_field(value, 1) or b"").decode()
            tensor = tensor_pb2.TensorProto.FromString(_field(value, 2) or b"")
            inputs[alias] = tf.make_ndarray(tensor)
    return signature_name or DEFAULT_SIGNATURE, inputs


def _field(message: bytes, number: int) -> bytes | None:
    """The last length-delimited field `number` of a serialized protobuf message, or None."""
    found = None
    for field, wire_type, value in _fields(message):
        if field == number and wire_type == 2:
            found = value
    return found


def _fields(message: bytes) -> Iterator[tuple[int, int, bytes]]:
    position = 0
    while position < len(message):
        key, position = _varint(message, position)
        wire_type = key & 7
        if wire_type == 0:
            _, position = _varint(message, position)
            yield key >> 3, wire_type, b""
        elif wire_type == 2:
            length, position = _varint(message, position)
            yield key >> 3, wire_type, message[position : position + length]
            position += length
        elif wire_type in (1, 5):
            position += 8 if wire_type == 1 else 4
        else:
            raise FailedPrecondition(f"{WARMUP_FILE}: malformed PredictionLog record")


def _varint(data: bytes, position: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if position >= len(data):
            raise FailedPrecondition(f"{WARMUP_FILE}: truncated PredictionLog record")
        byte = data[position]
        position += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, position
        shift += 7
