"""What the file-based platforms share: a Loader base class, `pyserving.yaml` signature
overrides, and the signatures of tabular estimators (sklearn, XGBoost, LightGBM).

A version directory may hold `pyserving.yaml`; its `signatures` section replaces the signatures
the platform derives from the model (and is required where the model file has none, e.g.
TorchScript). The override renames tensors positionally: the i-th input of an overriding
signature feeds the platform's i-th input of the signature with the same name.

    signatures:
      serving_default:
        method_name: tensorflow/serving/predict        # optional
        inputs:  [{name: x, datatype: FP32, shape: [-1, 4]}]
        outputs: [{name: y, datatype: FP32, shape: [-1, 2]}]
    batching: {max_batch_size: 32, batch_timeout_micros: 2000}   # or true / false

Its `batching` section is the version's own batching setting (BatchingPolicy decides with it: the
model config's `batching:` wins over it, and it wins over `--enable_batching`); FileLoader checks
it and hands it on as the servable's `version_batching`.
"""

from __future__ import annotations

import abc
import contextlib
import os
import posixpath
import tempfile
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from typing import Any

import fsspec
import numpy as np
import yaml
from fsspec.implementations.local import LocalFileSystem

from pyserving.batching.options import BatchingOptions
from pyserving.core.ids import ServableId
from pyserving.core.loader import Loader
from pyserving.errors import FailedPrecondition, InvalidInput
from pyserving.platforms.servable import STREAMING_KINDS, Servable
from pyserving.platforms.signature import (
    DEFAULT_SIGNATURE,
    V2_TO_NUMPY,
    Signature,
    TensorSpec,
    v2_datatype,
)

__all__ = [
    "CLASSIFY_METHOD",
    "OVERRIDE_FILE",
    "PREDICT_METHOD",
    "REGRESS_METHOD",
    "FileLoader",
    "SignatureOverride",
    "TabularServable",
    "local_version_dir",
    "read_override_file",
    "signatures_from_config",
]

OVERRIDE_FILE = "pyserving.yaml"
PREDICT_METHOD = "tensorflow/serving/predict"
CLASSIFY_METHOD = "tensorflow/serving/classify"
REGRESS_METHOD = "tensorflow/serving/regress"

# Files in a version directory that are not part of the model itself.
_NOT_MODEL = (OVERRIDE_FILE, "warmup/")


class FileLoader(Loader):
    """A Loader that reads a version directory (local or remote) once, in `load`.

    Subclasses implement `load_local(directory)`; a remote version is copied to a temporary
    directory for that call only. The resource estimate is `resource_factor` times the size of the
    model files. `pyserving.yaml` signature overrides are applied to what `load_local` returns.
    Thread-safety: as Loader (the Manager serialises load and unload).
    """

    #: RAM taken by a loaded model as a multiple of its files' size
    resource_factor: float = 1.2

    def __init__(
        self, servable_id: ServableId, path: str, config: Mapping[str, Any] | None = None
    ) -> None:
        self.servable_id = servable_id
        self.path = path
        self.config: Mapping[str, Any] = config or {}
        self._servable: Servable | None = None

    def estimate_resources(self) -> int:
        """`resource_factor` times the size of the version directory's model files."""
        fs, root = fsspec.core.url_to_fs(self.path)
        prefix = root.rstrip("/") + "/"
        total = sum(
            info.get("size") or 0
            for name, info in fs.find(root, detail=True).items()
            if not name[len(prefix) :].startswith(_NOT_MODEL)
        )
        return int(total * self.resource_factor)

    def load(self) -> Servable:
        with local_version_dir(self.path) as directory:
            document = read_override_file(directory)
            override = _signature_override(document)
            batching = _batching_setting(document)
            servable = self.load_local(directory, override)
        # a platform that built its signatures from the override (TorchScript) needs no renaming
        if override is not None and servable.signatures != override:
            servable = SignatureOverride(servable, override)
        if batching is not None:
            servable.version_batching = batching
        shard = self.config.get("shard")
        if isinstance(shard, Mapping):  # checked by the platform (lookup) that took it
            servable.config_parameters = {
                "shard_index": str(shard.get("index")),
                "shard_count": str(shard.get("count")),
            }
        self._servable = servable
        return servable

    def unload(self) -> None:
        servable, self._servable = self._servable, None
        if servable is not None:
            servable.unload()

    def resources_after_load(self) -> int | None:
        return self._servable.memory_bytes() if self._servable is not None else None

    @abc.abstractmethod
    def load_local(self, directory: str, override: Mapping[str, Signature] | None) -> Servable:
        """Load the servable from a local `directory`; raise to fail the load.

        `override` is the `pyserving.yaml` signatures (None when there are none); a platform that
        needs them (TorchScript) uses them itself, otherwise FileLoader wraps the result.
        """


@contextlib.contextmanager
def local_version_dir(path: str) -> Iterator[str]:
    """A local directory holding the version at `path`: itself, or a temporary copy."""
    fs, root = fsspec.core.url_to_fs(path)
    if isinstance(fs, LocalFileSystem):
        yield root
        return
    with tempfile.TemporaryDirectory(prefix="pyserving-version-") as local_dir:
        for remote in fs.find(root):
            local = os.path.join(local_dir, *posixpath.relpath(remote, root).split("/"))
            os.makedirs(os.path.dirname(local), exist_ok=True)
            fs.get_file(remote, local)
        yield local_dir


def read_override_file(directory: str) -> Mapping[str, Any]:
    """`directory/pyserving.yaml` as a mapping (empty when there is none).

    Raises FailedPrecondition naming the file and the problem when it is malformed.
    """
    file = os.path.join(directory, OVERRIDE_FILE)
    if not os.path.isfile(file):
        return {}
    try:
        with open(file, encoding="utf-8") as stream:
            document = yaml.safe_load(stream)
    except (OSError, yaml.YAMLError) as exc:
        raise FailedPrecondition(f"{OVERRIDE_FILE}: cannot read it: {exc}") from exc
    if document is None:
        return {}
    if not isinstance(document, dict):
        raise FailedPrecondition(f"{OVERRIDE_FILE}: expected a mapping at the top level")
    return document


def _signature_override(document: Mapping[str, Any]) -> dict[str, Signature] | None:
    section = document.get("signatures")
    return None if section is None else signatures_from_config(section, OVERRIDE_FILE)


def _batching_setting(document: Mapping[str, Any]) -> Mapping[str, Any] | bool | None:
    """The `batching` section, checked: parameters, true, false, or None when absent."""
    setting = document.get("batching")
    if setting is None or isinstance(setting, bool):
        return setting
    if not isinstance(setting, dict):
        raise FailedPrecondition(
            f"{OVERRIDE_FILE}: batching must be a mapping of parameters, true or false"
        )
    BatchingOptions.from_mapping(setting, f"{OVERRIDE_FILE}: batching")  # raises naming the field
    return setting


def signatures_from_config(section: Any, where: str) -> dict[str, Signature]:
    """Signatures from their YAML form (see the module docstring); FailedPrecondition if bad."""
    if not isinstance(section, dict) or not section:
        raise FailedPrecondition(f"{where}: 'signatures' must map signature names to signatures")
    signatures = {}
    for name, body in section.items():
        if not isinstance(body, dict):
            raise FailedPrecondition(f'{where}: signature "{name}" must be a mapping')
        method = body.get("method_name", PREDICT_METHOD)
        inputs = _tensor_specs(body.get("inputs"), f'{where}: signature "{name}" inputs')
        outputs = _tensor_specs(body.get("outputs"), f'{where}: signature "{name}" outputs')
        signatures[str(name)] = Signature(str(name), inputs, outputs, str(method))
    return signatures


def _tensor_specs(items: Any, where: str) -> tuple[TensorSpec, ...]:
    if not isinstance(items, list) or not items:
        raise FailedPrecondition(f"{where}: expected a non-empty list of {{name, datatype, shape}}")
    specs = []
    for item in items:
        if not isinstance(item, dict) or not {"name", "datatype", "shape"} <= item.keys():
            raise FailedPrecondition(f"{where}: each tensor needs name, datatype and shape")
        datatype = str(item["datatype"]).upper()
        if datatype not in V2_TO_NUMPY:
            raise FailedPrecondition(
                f'{where}: "{item["name"]}" has unknown datatype {datatype}'
                f" (one of {', '.join(V2_TO_NUMPY)})"
            )
        shape = item["shape"]
        if not isinstance(shape, list) or not all(isinstance(d, int) and d >= -1 for d in shape):
            raise FailedPrecondition(f'{where}: "{item["name"]}" shape must be a list of ints')
        specs.append(TensorSpec(str(item["name"]), datatype, tuple(shape)))
    return tuple(specs)


class SignatureOverride(Servable):
    """Serves `inner` under the signatures of `pyserving.yaml`, renaming tensors positionally.

    Thread-safety: as `inner`; this wrapper holds no mutable state.
    """

    def __init__(self, inner: Servable, signatures: Mapping[str, Signature]) -> None:
        self.platform = inner.platform
        self.inner = inner
        self._signatures = dict(signatures)
        inner_signatures = inner.signatures
        # name → (inner input names by override name, override output names by inner name)
        self._maps: dict[str, tuple[dict[str, str], dict[str, str]]] = {}
        for name, signature in self._signatures.items():
            base = inner_signatures.get(name)
            if base is None:
                raise FailedPrecondition(
                    f'{OVERRIDE_FILE}: signature "{name}" is not one of the model\'s'
                    f" ({', '.join(inner_signatures) or 'none'})"
                )
            for kind, ours, theirs in (
                ("inputs", signature.inputs, base.inputs),
                ("outputs", signature.outputs, base.outputs),
            ):
                if len(ours) != len(theirs):
                    raise FailedPrecondition(
                        f'{OVERRIDE_FILE}: signature "{name}" declares {len(ours)} {kind}; the'
                        f" model has {len(theirs)} ({', '.join(s.name for s in theirs)})"
                    )
            inputs = {o.name: t.name for o, t in zip(signature.inputs, base.inputs, strict=True)}
            outputs = {t.name: o.name for o, t in zip(signature.outputs, base.outputs, strict=True)}
            self._maps[name] = (inputs, outputs)
        self.feature_names = getattr(inner, "feature_names", None)
        # a stream's parts are renamed one by one (`start`); an `async def run` answering once
        # is driven by inner.run, so the wrapper is a plain function then
        self.run_kind = inner.run_kind if inner.run_kind in STREAMING_KINDS else "function"

    @property
    def signatures(self) -> dict[str, Signature]:
        return self._signatures

    def start(self, signature: str, inputs: dict[str, np.ndarray]) -> Any:
        """The inner servable's stream, each part's outputs renamed (serving/streaming.py)."""
        input_map, output_map = self._maps[signature]
        inner_inputs = {input_map[k]: v for k, v in inputs.items()}
        parts = self.inner.start(signature, inner_inputs)  # type: ignore[attr-defined]
        if self.run_kind == "generator":
            return _renamed_parts(parts, output_map)
        return _renamed_async_parts(parts, output_map)

    def run(self, signature: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        input_map, output_map = self._maps[signature]
        results = self.inner.run(signature, {input_map[k]: v for k, v in inputs.items()})
        return {output_map.get(k, k): v for k, v in results.items()}

    def unload(self) -> None:
        self.inner.unload()

    def memory_bytes(self) -> int | None:
        return self.inner.memory_bytes()


def _renamed_parts(parts: Any, output_map: Mapping[str, str]) -> Iterator[Any]:
    try:
        for part in parts:
            yield _renamed(part, output_map)
    finally:
        parts.close()  # the inner generator's finally runs when this one is closed


async def _renamed_async_parts(parts: Any, output_map: Mapping[str, str]) -> AsyncIterator[Any]:
    try:
        async for part in parts:
            yield _renamed(part, output_map)
    finally:
        await parts.aclose()


def _renamed(part: Any, output_map: Mapping[str, str]) -> Any:
    if not isinstance(part, Mapping):
        return part  # the stream reports what it yielded
    return {output_map.get(k, k): v for k, v in part.items()}


class TabularServable(Servable):
    """A tabular estimator: `inputs` [-1, n_features] → `predictions` (+ `probabilities`).

    Classifiers also get a "classification" signature (TF Serving's classify method: `classes`
    BYTES and `scores` FP32, [-1, n_classes]) and regressors a "regression" one (regress method:
    `outputs` FP32 [-1]), which `serving.classify` uses for `:classify` / `:regress`. A model
    that is neither (`regressor=False` and no classes) serves `predictions` only.
    Thread-safety: `run` may be called from many threads; subclasses' predict calls must be
    thread-safe (sklearn, XGBoost's inplace_predict and LightGBM's predict are).
    """

    def __init__(  # classes: a classifier's labels (with probabilities); None for others
        self,
        n_features: int | None,
        input_dtype: np.dtype,
        feature_names: Sequence[str] | None,
        classes: np.ndarray | None,
        prediction_spec: TensorSpec,
        regressor: bool = True,
    ) -> None:
        self.feature_names: tuple[str, ...] | None = (
            tuple(str(n) for n in feature_names) if feature_names is not None else None
        )
        self.classes = classes
        features = -1 if n_features is None else int(n_features)
        datatype = v2_datatype(np.dtype(input_dtype))
        self._input_dtype = np.dtype(input_dtype)
        inputs = (TensorSpec("inputs", datatype, (-1, features)),)
        outputs = [prediction_spec]
        signatures = {}
        if classes is not None:
            n_classes = len(classes)
            outputs.append(TensorSpec("probabilities", "FP64", (-1, n_classes)))
            self._class_bytes = np.array([_label_bytes(c) for c in classes], dtype=object)
            signatures["classification"] = Signature(
                "classification",
                inputs,
                (
                    TensorSpec("classes", "BYTES", (-1, n_classes)),
                    TensorSpec("scores", "FP32", (-1, n_classes)),
                ),
                CLASSIFY_METHOD,
            )
        elif regressor:
            signatures["regression"] = Signature(
                "regression", inputs, (TensorSpec("outputs", "FP32", (-1,)),), REGRESS_METHOD
            )
        signatures[DEFAULT_SIGNATURE] = Signature(DEFAULT_SIGNATURE, inputs, tuple(outputs))
        self._signatures = signatures

    @property
    def signatures(self) -> dict[str, Signature]:
        return self._signatures

    def run(self, signature: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        features = inputs["inputs"]
        if signature == "classification":
            scores = self.predict_proba(features)
            classes = np.broadcast_to(self._class_bytes, scores.shape)
            return {"classes": classes, "scores": scores.astype(np.float32)}
        if signature == "regression":
            values = np.asarray(self.predict(features))
            if values.ndim > 1:
                raise InvalidInput(
                    f"Regress needs one output per example; this model predicts {values.shape[1:]}"
                )
            return {"outputs": values.astype(np.float32)}
        outputs = {"predictions": np.asarray(self.predict(features))}
        if self.classes is not None:
            outputs["probabilities"] = np.asarray(self.predict_proba(features), dtype=np.float64)
        return outputs

    @abc.abstractmethod
    def predict(self, features: np.ndarray) -> np.ndarray:
        """Predicted labels (classifiers) or values (regressors), one row per example."""

    def predict_proba(self, features: np.ndarray) -> np.ndarray:
        """Class probabilities [n, n_classes]; only called on classifiers."""
        raise NotImplementedError


def prediction_spec(values: np.ndarray | None, n_outputs: int = 1) -> TensorSpec:
    """The `predictions` spec for class labels `values` (None for a regressor's FP64 values)."""
    if values is None:
        shape: tuple[int, ...] = (-1,) if n_outputs == 1 else (-1, n_outputs)
        return TensorSpec("predictions", "FP64", shape)
    datatype = v2_datatype(values.dtype)
    return TensorSpec("predictions", datatype, (-1,) if n_outputs == 1 else (-1, n_outputs))


def encode_labels(values: np.ndarray) -> np.ndarray:
    """`values` as served: strings become object arrays of UTF-8 `bytes`, numbers unchanged."""
    if values.dtype.kind in "OSU":
        return np.array([_label_bytes(v) for v in values.ravel()], dtype=object).reshape(
            values.shape
        )
    return values


def _label_bytes(value: Any) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, np.generic):
        value = value.item()
    return str(value).encode()
