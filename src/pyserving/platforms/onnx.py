"""The ONNX platform: `model.onnx` served with onnxruntime on the CPU execution provider."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any

import numpy as np
import onnxruntime as ort

from pyserving.core.ids import ServableId
from pyserving.errors import FailedPrecondition, InvalidInput
from pyserving.platforms.common import FileLoader
from pyserving.platforms.servable import Servable
from pyserving.platforms.signature import DEFAULT_SIGNATURE, Signature, TensorSpec

MODEL_FILE = "model.onnx"

# onnxruntime NodeArg.type → V2 datatype.
ONNX_TO_V2: dict[str, str] = {
    "tensor(bool)": "BOOL",
    "tensor(uint8)": "UINT8",
    "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32",
    "tensor(uint64)": "UINT64",
    "tensor(int8)": "INT8",
    "tensor(int16)": "INT16",
    "tensor(int32)": "INT32",
    "tensor(int64)": "INT64",
    "tensor(float16)": "FP16",
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
    "tensor(string)": "BYTES",
}


logger = logging.getLogger(__name__)


class OnnxLoader(FileLoader):
    """Loads `model.onnx` (and its external data) from a version directory into onnxruntime.

    Config keys: `intra_op_num_threads` (default 1). Construction does no I/O; a remote version
    and `pyserving.yaml` signature overrides are handled by FileLoader.
    Thread-safety: as Loader (the Manager serialises load and unload).
    """

    def __init__(
        self, servable_id: ServableId, path: str, config: Mapping[str, Any] | None = None
    ) -> None:
        super().__init__(servable_id, path, config)
        self.intra_op_num_threads = int(self.config.get("intra_op_num_threads", 1))

    def load_local(self, directory: str, override: Mapping[str, Signature] | None) -> Servable:
        """Create the InferenceSession (onnxruntime reads external data during creation)."""
        return OnnxServable(self._create_session(os.path.join(directory, MODEL_FILE)))

    def _create_session(self, model_path: str) -> ort.InferenceSession:
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.intra_op_num_threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        return ort.InferenceSession(
            model_path, sess_options=options, providers=["CPUExecutionProvider"]
        )


class OnnxServable(Servable):
    """One onnxruntime session behind the "serving_default" signature.

    Outputs whose ONNX type has no V2 datatype (sequences, maps) are left out of the signature.
    Thread-safety: `run` may be called from many threads at once (InferenceSession.run is
    thread-safe); `unload` only after the last `run` returned.
    """

    platform = "onnx"

    def __init__(self, session: ort.InferenceSession) -> None:
        self._session: ort.InferenceSession | None = session
        inputs = tuple(_tensor_spec(arg, "input") for arg in session.get_inputs())
        outputs = []
        for arg in session.get_outputs():
            if arg.type in ONNX_TO_V2:
                outputs.append(_tensor_spec(arg, "output"))
            else:
                logger.warning('output "%s": ONNX type %s is not served', arg.name, arg.type)
        self._signature = Signature(DEFAULT_SIGNATURE, inputs, tuple(outputs))
        self._signatures = {DEFAULT_SIGNATURE: self._signature}
        self._output_names = [spec.name for spec in outputs]
        self._string_inputs = frozenset(s.name for s in inputs if s.datatype == "BYTES")
        self._string_outputs = frozenset(s.name for s in outputs if s.datatype == "BYTES")

    @property
    def signatures(self) -> dict[str, Signature]:
        return self._signatures

    def run(self, signature: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the session on every output; BYTES tensors are object arrays of `bytes` both ways.

        Raises InvalidInput when a BYTES input is not UTF-8 (onnxruntime strings are text).
        """
        assert self._session is not None, "run after unload"
        feed = inputs
        if self._string_inputs:
            feed = dict(inputs)
            for name in self._string_inputs & inputs.keys():
                feed[name] = _decode_strings(name, inputs[name])
        results = self._session.run(self._output_names, feed)
        outputs = dict(zip(self._output_names, results, strict=True))
        for name in self._string_outputs:
            outputs[name] = _encode_strings(outputs[name])
        return outputs

    def unload(self) -> None:
        self._session = None


def _tensor_spec(arg: Any, kind: str) -> TensorSpec:
    datatype = ONNX_TO_V2.get(arg.type)
    if datatype is None:
        raise FailedPrecondition(f'{kind} "{arg.name}": ONNX type {arg.type} is not supported')
    shape = tuple(dim if isinstance(dim, int) else -1 for dim in arg.shape)
    return TensorSpec(arg.name, datatype, shape)


def _decode_strings(name: str, array: np.ndarray) -> np.ndarray:
    # onnxruntime turns a `bytes` element into its repr ("b'..'"), so decode to str first.
    if array.dtype.kind == "U":
        return array
    try:
        text = [v.decode() if isinstance(v, bytes) else v for v in array.ravel()]
    except UnicodeDecodeError as exc:
        raise InvalidInput(f'input "{name}": BYTES must be UTF-8 text for ONNX: {exc}') from exc
    return np.array(text, dtype=object).reshape(array.shape)


def _encode_strings(array: np.ndarray) -> np.ndarray:
    encoded = [v.encode() if isinstance(v, str) else v for v in array.ravel()]
    return np.array(encoded, dtype=object).reshape(array.shape)
