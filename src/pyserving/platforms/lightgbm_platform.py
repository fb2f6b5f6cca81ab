"""The LightGBM platform: a native Booster saved as `model.lgb` (`Booster.save_model`).

Input `inputs` FP64 [-1, n_features] (feature names from the booster). A `binary` or
`multiclass`/`multiclassova` booster is a classifier (classes 0..k-1): `predictions` INT64 and
`probabilities` FP64 [-1, k]; any other objective serves FP64 `predictions`. See
`TabularServable`.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping
from typing import Any

import lightgbm
import numpy as np

from pyserving.errors import FailedPrecondition
from pyserving.platforms.common import FileLoader, TabularServable, prediction_spec
from pyserving.platforms.signature import Signature

__all__ = ["MODEL_FILE", "LightGBMLoader", "LightGBMServable"]

MODEL_FILE = "model.lgb"
_MULTICLASS = ("multiclass", "multiclassova", "softmax", "multiclass_ova", "ova", "ovr")


class LightGBMLoader(FileLoader):
    """Loads a Booster; config key `num_threads` (default 1) sets its prediction threads."""

    def load_local(self, directory: str, override: Mapping[str, Signature] | None) -> Any:
        file = os.path.join(directory, MODEL_FILE)
        if not os.path.isfile(file):
            raise FailedPrecondition(f"no {MODEL_FILE} in {directory}")
        booster = lightgbm.Booster(model_file=file)
        return LightGBMServable(booster, int(self.config.get("num_threads", 1)))


class LightGBMServable(TabularServable):
    """One Booster; predictions release the GIL inside LightGBM.

    Thread-safety: `run` may be called from many threads; predictions on the one Booster are
    serialised by a lock (its predictor state is shared), batches of rows still run in C.
    """

    platform = "lightgbm"

    def __init__(self, booster: lightgbm.Booster, num_threads: int = 1) -> None:
        self.booster = booster
        self._num_threads = num_threads
        self._lock = threading.Lock()  # guards predictions on booster
        # a Booster read from a file carries its training parameters
        objective = str(booster.params.get("objective", "")).split(" ")[0]
        self.objective = objective
        classes = None
        if objective == "binary":
            classes = np.arange(2, dtype=np.int64)
        elif objective in _MULTICLASS:
            classes = np.arange(booster.num_model_per_iteration(), dtype=np.int64)
        super().__init__(
            booster.num_feature(),
            np.dtype(np.float64),
            booster.feature_name(),
            classes,
            prediction_spec(classes),
        )

    def predict(self, features: np.ndarray) -> np.ndarray:
        if self.classes is not None:
            return np.argmax(self.predict_proba(features), axis=1).astype(np.int64)
        return np.asarray(self._raw(features), dtype=np.float64)

    def predict_proba(self, features: np.ndarray) -> np.ndarray:
        raw = np.asarray(self._raw(features), dtype=np.float64)
        if raw.ndim == 1:
            return np.stack([1.0 - raw, raw], axis=1)
        return raw

    def _raw(self, features: np.ndarray) -> np.ndarray:
        with self._lock:
            return np.asarray(self.booster.predict(features, num_threads=self._num_threads))
