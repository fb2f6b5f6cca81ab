"""The XGBoost platform: a native Booster saved as `model.ubj` (UBJSON) or `model.xgb`.

Input `inputs` FP32 [-1, n_features]. A `binary:logistic` or `multi:softprob` booster is a
classifier (classes 0..k-1): `predictions` INT64 and `probabilities` FP64 [-1, k]; any other
objective serves its raw predictions as FP64 `predictions`. See `TabularServable`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

import numpy as np
import xgboost

from pyserving.errors import FailedPrecondition
from pyserving.platforms.common import FileLoader, TabularServable, prediction_spec
from pyserving.platforms.signature import Signature

__all__ = ["MODEL_FILES", "XGBoostLoader", "XGBoostServable"]

MODEL_FILES = ("model.ubj", "model.xgb")
_CLASSIFIERS = ("binary:logistic", "multi:softprob")


class XGBoostLoader(FileLoader):
    """Loads a Booster; config key `num_threads` (default 1) sets its prediction threads."""

    def load_local(self, directory: str, override: Mapping[str, Signature] | None) -> Any:
        candidates = (os.path.join(directory, name) for name in MODEL_FILES)
        file = next((path for path in candidates if os.path.isfile(path)), None)
        if file is None:
            raise FailedPrecondition(f"no {' or '.join(MODEL_FILES)} in {directory}")
        booster = xgboost.Booster()
        booster.load_model(file)
        booster.set_param({"nthread": int(self.config.get("num_threads", 1))})
        return XGBoostServable(booster)


class XGBoostServable(TabularServable):
    """One Booster; `inplace_predict` releases the GIL and is thread-safe.

    Thread-safety: `run` may be called from many threads at once.
    """

    platform = "xgboost"

    def __init__(self, booster: xgboost.Booster) -> None:
        self.booster = booster
        learner = json.loads(booster.save_config())["learner"]
        self.objective = str(learner["objective"]["name"])
        n_class = int(learner["learner_model_param"].get("num_class", "0") or 0)
        classes = None
        if self.objective == "binary:logistic":
            classes = np.arange(2, dtype=np.int64)
        elif self.objective == "multi:softprob":
            classes = np.arange(n_class, dtype=np.int64)
        super().__init__(
            booster.num_features(),
            np.dtype(np.float32),
            booster.feature_names,
            classes,
            prediction_spec(classes),
        )

    def predict(self, features: np.ndarray) -> np.ndarray:
        if self.classes is not None:
            return np.argmax(self.predict_proba(features), axis=1).astype(np.int64)
        return np.asarray(self._raw(features), dtype=np.float64)

    def predict_proba(self, features: np.ndarray) -> np.ndarray:
        raw = np.asarray(self._raw(features), dtype=np.float64)
        if self.objective == "binary:logistic":
            return np.stack([1.0 - raw, raw], axis=1)
        return raw.reshape(len(features), -1)

    def _raw(self, features: np.ndarray) -> np.ndarray:
        return self.booster.inplace_predict(features, validate_features=False)
